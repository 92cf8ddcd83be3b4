"""Chapter 2, sections 2.6-2.7: the sliding-window dataset and loader, the seeded embedding layer.
(g_embeddings.py, section 2.8, is checked by its smoke test in test_scripts.py.)"""

import inspect
import math

import pytest
import torch

import f_embeddings
from e_data_preparation import GPTDatasetV1, create_dataloader_v1


class CountingTokenizer:
    """Reads a text of integers, so every token ID in a test is known in advance."""

    def encode(self, txt, allowed_special=None):
        return [int(word) for word in txt.split()]


def numbers(n):
    return " ".join(str(i) for i in range(n))


# ---- GPTDatasetV1 and create_dataloader_v1 (2.6) ----

@pytest.mark.parametrize("n_tokens, max_length, stride", [(20, 4, 1), (20, 4, 3), (20, 4, 4), (20, 4, 7),
                                                          (9, 8, 1), (33, 5, 10)])
def test_windows_shift_by_one_and_follow_stride(n_tokens, max_length, stride):
    dataset = GPTDatasetV1(numbers(n_tokens), CountingTokenizer(), max_length, stride)
    assert len(dataset) == math.ceil((n_tokens - max_length) / stride)
    for k in range(len(dataset)):
        inputs, targets = dataset[k]
        start = k * stride
        assert inputs.tolist() == list(range(start, start + max_length))
        assert targets.tolist() == list(range(start + 1, start + max_length + 1))
    assert dataset[len(dataset) - 1][1][-1] <= n_tokens - 1  # no target runs past the text


def test_one_window_needs_max_length_plus_one_tokens():
    assert len(GPTDatasetV1(numbers(5), CountingTokenizer(), max_length=4, stride=1)) == 1
    with pytest.raises(ValueError, match=r"has 4 tokens.*max_length=4.*max_length \+ 1 = 5"):
        GPTDatasetV1(numbers(4), CountingTokenizer(), max_length=4, stride=1)


def test_short_text_error_from_the_loader(gpt2_tokenizer):
    with pytest.raises(ValueError, match=r"has 3 tokens.*max_length \+ 1 = 257"):
        create_dataloader_v1("Hello, world")


@pytest.mark.parametrize("max_length, stride", [(4, 0), (4, -2), (0, 1), (-1, 1)])
def test_rejects_non_positive_stride_or_max_length(max_length, stride):
    with pytest.raises(ValueError, match="at least 1"):
        GPTDatasetV1(numbers(50), CountingTokenizer(), max_length, stride)


def test_create_dataloader_v1_has_the_books_signature():
    defaults = {name: p.default for name, p in inspect.signature(create_dataloader_v1).parameters.items()}
    assert defaults == {"txt": inspect.Parameter.empty, "batch_size": 4, "max_length": 256, "stride": 128,
                        "shuffle": True, "drop_last": True, "num_workers": 0}


def test_dataloader_batches_gpt2_ids(gpt2_tokenizer):
    text = "In the quiet town, every morning began with the sound of the baker opening his shop. " * 3
    ids = gpt2_tokenizer.encode(text)
    loader = create_dataloader_v1(text, batch_size=3, max_length=6, stride=6, shuffle=False)
    windows = (len(ids) - 6 + 5) // 6
    assert len(loader) == windows // 3  # drop_last drops the incomplete batch
    batches = list(loader)
    inputs, targets = batches[1]
    assert inputs.shape == targets.shape == (3, 6) and inputs.dtype == torch.long
    for row in range(3):
        start = (3 + row) * 6
        assert inputs[row].tolist() == ids[start:start + 6]
        assert targets[row].tolist() == ids[start + 1:start + 7]


def test_shuffled_loader_is_seeded_and_complete(gpt2_tokenizer):
    text = " ".join(f"word{i}" for i in range(40))

    def first_columns():
        torch.manual_seed(123)
        loader = create_dataloader_v1(text, batch_size=2, max_length=4, stride=4, drop_last=False)
        return [x for inputs, _ in loader for x in inputs[:, 0].tolist()]

    ordered = [x for inputs, _ in create_dataloader_v1(text, batch_size=2, max_length=4, stride=4,
                                                       shuffle=False, drop_last=False)
               for x in inputs[:, 0].tolist()]
    shuffled = first_columns()
    assert shuffled == first_columns()
    assert sorted(shuffled) == sorted(ordered) and shuffled != ordered


# ---- the embedding layer (2.7) ----

BOOK_EMBEDDING_WEIGHT = torch.tensor([[0.3374, -0.1778, -0.1690],
                                      [0.9178, 1.5810, 1.3010],
                                      [1.2753, -0.2010, -0.1606],
                                      [-0.4015, 0.9666, -1.1481],
                                      [-1.1589, 0.3255, -0.6315],
                                      [-2.8400, -0.7849, -1.4096]])


def test_seeded_embedding_layer_matches_the_book():
    torch.manual_seed(f_embeddings.SEED)
    layer = torch.nn.Embedding(f_embeddings.VOCAB_SIZE, f_embeddings.OUTPUT_DIM)
    torch.testing.assert_close(layer.weight.detach(), BOOK_EMBEDDING_WEIGHT, atol=1e-4, rtol=0)
    # A lookup selects rows: the same as multiplying one-hot vectors by the weight matrix.
    input_ids = torch.tensor([2, 3, 5, 1])
    out = layer(input_ids).detach()
    torch.testing.assert_close(out, BOOK_EMBEDDING_WEIGHT[[2, 3, 5, 1]], atol=1e-4, rtol=0)
    one_hot = torch.nn.functional.one_hot(input_ids, num_classes=6).float()
    torch.testing.assert_close(one_hot @ layer.weight.detach(), out)



# ---- why position embeddings (2.8): attention alone sees a set of tokens, not a sequence ----

def test_attention_without_positions_only_reorders_its_outputs():
    from g_embeddings import attention_order_gap

    torch.manual_seed(0)
    attention = torch.nn.MultiheadAttention(8, num_heads=1, batch_first=True).eval()
    tokens, positions = torch.randn(2, 5, 8), torch.randn(5, 8)
    order = torch.tensor([3, 0, 4, 1, 2])
    with torch.no_grad():
        out = attention(tokens, tokens, tokens)[0]
        shuffled = tokens[:, order]
        assert torch.allclose(attention(shuffled, shuffled, shuffled)[0], out[:, order], atol=1e-6)
        placed, shuffled_placed = tokens + positions, shuffled + positions
        out_placed = attention(placed, placed, placed)[0][:, order]
        out_shuffled_placed = attention(shuffled_placed, shuffled_placed, shuffled_placed)[0]
        assert not torch.allclose(out_shuffled_placed, out_placed, atol=1e-2)
    assert attention_order_gap(attention, tokens, order) < 1e-6
    assert attention_order_gap(attention, tokens, order, positions) == pytest.approx(
        (out_shuffled_placed - out_placed).abs().max().item())
