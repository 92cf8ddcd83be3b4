"""Chapter 5 (t, u): the loss, training and decoding, on tiny
models and data the tests make themselves."""

import math

import pytest
import torch
from conftest import CHAR_CFG, CharTokenizer, char_loaders
from torch.utils.data import DataLoader, TensorDataset

from s_gpt_model import GPTModel, generate_text_simple
from t_pretraining_basics import text_to_token_ids, token_ids_to_text
from u_pretraining import (calc_loss_batch, calc_loss_loader, generate, softmax_with_temperature,
                           train_model_simple)


def run_training(seed=123, num_epochs=3):
    torch.manual_seed(seed)
    train_loader, val_loader = char_loaders()
    model = GPTModel(CHAR_CFG)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.004, weight_decay=0.1)
    return train_model_simple(model, train_loader, val_loader, optimizer, "cpu", num_epochs=num_epochs,
                              eval_freq=5, eval_iter=5, start_context="Every effort",
                              tokenizer=CharTokenizer())


# ---- t: text <-> IDs, cross entropy and perplexity ----

def test_text_to_token_ids_round_trip(gpt2_tokenizer):
    ids = text_to_token_ids("every effort moves", gpt2_tokenizer)
    assert ids.tolist() == [[16833, 3626, 6100]]  # the book's first input row
    assert token_ids_to_text(ids, gpt2_tokenizer) == "every effort moves"
    assert token_ids_to_text(ids[0], gpt2_tokenizer) == "every effort moves"
    with pytest.raises(ValueError, match="one sequence"):
        token_ids_to_text(torch.cat([ids, ids]), gpt2_tokenizer)


def test_cross_entropy_and_perplexity_by_hand():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 7)
    targets = torch.tensor([[1, 4, 6], [0, 2, 5]])
    probas = torch.softmax(logits, dim=-1)
    target_probas = torch.cat([probas[i, [0, 1, 2], targets[i]] for i in range(2)])
    neg_avg_log_probas = -torch.mean(torch.log(target_probas))
    loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten())
    assert torch.allclose(neg_avg_log_probas, loss, atol=1e-6)
    assert torch.exp(loss).item() == pytest.approx(math.exp(neg_avg_log_probas.item()), rel=1e-6)
    # A uniform model over V tokens has perplexity V: it hesitates between all of them.
    uniform = torch.nn.functional.cross_entropy(torch.zeros(6, 7), targets.flatten())
    assert torch.exp(uniform).item() == pytest.approx(7.0)


# ---- u: losses and training ----

def test_calc_loss_loader_num_batches():
    torch.manual_seed(1)
    model = GPTModel(CHAR_CFG).eval()
    inputs = torch.randint(0, 96, (8, 16))
    targets = torch.randint(0, 96, (8, 16))
    loader = DataLoader(TensorDataset(inputs, targets), batch_size=2, shuffle=False)
    with torch.no_grad():
        batch_losses = [calc_loss_batch(inputs[i:i + 2], targets[i:i + 2], model, "cpu").item()
                        for i in range(0, 8, 2)]
        assert calc_loss_loader(loader, model, "cpu", num_batches=2) == pytest.approx(
            sum(batch_losses[:2]) / 2, rel=1e-6)
        assert calc_loss_loader(loader, model, "cpu") == pytest.approx(sum(batch_losses) / 4, rel=1e-6)
        # More batches than the loader has: all of them.
        assert calc_loss_loader(loader, model, "cpu", num_batches=10) == pytest.approx(
            sum(batch_losses) / 4, rel=1e-6)
        empty = DataLoader(TensorDataset(inputs[:0], targets[:0]), batch_size=2)
        assert math.isnan(calc_loss_loader(empty, model, "cpu"))


def test_training_lowers_the_loss_and_is_reproducible(capsys):
    train_losses, val_losses, tokens_seen = run_training()
    printed = capsys.readouterr().out
    assert "Ep 1 (Step 000000): Train loss" in printed
    assert printed.count("Every effort") == 3  # one sample per epoch
    assert len(train_losses) == len(val_losses) == len(tokens_seen)
    assert train_losses[-1] < train_losses[0] - 1.0
    assert tokens_seen == sorted(tokens_seen) and tokens_seen[0] == 2 * 16  # one batch of 2 x 16
    # Same seed, same draws (loader shuffles, dropout), same losses to the last bit.
    assert run_training() == (train_losses, val_losses, tokens_seen)
    assert run_training(seed=7, num_epochs=1)[0] != train_losses[:len(train_losses) // 3]


def test_train_model_simple_makes_the_books_random_draws():
    """The book's log reproduces only if every random draw (loader shuffles, dropout) comes in the
    book's order: the plain loop below is the book's, step for step."""
    def books_loop(model, train_loader, val_loader, optimizer, num_epochs, eval_freq, eval_iter):
        losses, global_step = [], -1
        for _ in range(num_epochs):
            model.train()
            for input_batch, target_batch in train_loader:
                optimizer.zero_grad()
                loss = calc_loss_batch(input_batch, target_batch, model, "cpu")
                loss.backward()
                optimizer.step()
                global_step += 1
                if global_step % eval_freq == 0:
                    model.eval()
                    with torch.no_grad():
                        losses.append((calc_loss_loader(train_loader, model, "cpu", eval_iter),
                                       calc_loss_loader(val_loader, model, "cpu", eval_iter)))
                    model.train()
        return losses

    torch.manual_seed(123)
    train_loader, val_loader = char_loaders()
    results = []
    for use_books_loop in (True, False):
        torch.manual_seed(123)
        model = GPTModel({**CHAR_CFG, "drop_rate": 0.5})
        optimizer = torch.optim.AdamW(model.parameters(), lr=0.004, weight_decay=0.1)
        if use_books_loop:
            results.append(books_loop(model, train_loader, val_loader, optimizer, 2, 3, 2))
        else:
            # Samples decode greedily: no random draws, so the book's loop may leave them out.
            train_losses, val_losses, _ = train_model_simple(
                model, train_loader, val_loader, optimizer, "cpu", num_epochs=2, eval_freq=3,
                eval_iter=2, start_context="Every", tokenizer=CharTokenizer())
            results.append(list(zip(train_losses, val_losses)))
    assert results[0] == results[1]


# ---- u: decoding ----

class CountingModel(torch.nn.Module):
    """Predicts token (last + 1) mod vocab with certainty: makes generate's output predictable."""

    def __init__(self, vocab_size=12):
        super().__init__()
        self.vocab_size = vocab_size

    def forward(self, idx):
        return 20.0 * torch.nn.functional.one_hot((idx + 1) % self.vocab_size, self.vocab_size).float()


class FixedLogitsModel(torch.nn.Module):
    """Returns the same next-token logits for every position: one row of logits per sequence."""

    def __init__(self, row_logits):
        super().__init__()
        self.row_logits = row_logits

    def forward(self, idx):
        return self.row_logits[:, None, :].expand(idx.shape[0], idx.shape[1], -1)


def test_generate_with_temperature_zero_is_greedy():
    torch.manual_seed(3)
    model = GPTModel(CHAR_CFG).eval()
    idx = torch.randint(0, 96, (3, 5))
    # 20 new tokens > context_length 16: the context gets cropped along the way.
    expected = generate_text_simple(model, idx, max_new_tokens=20, context_size=16)
    assert torch.equal(generate(model, idx, max_new_tokens=20, context_size=16), expected)
    assert torch.equal(generate(model, idx, 20, 16, temperature=0.0, top_k=5), expected)


def test_top_k_samples_only_from_each_rows_top_k():
    torch.manual_seed(0)
    row_logits = torch.randn(3, 50)
    model = FixedLogitsModel(row_logits)
    k = 4
    allowed = [set(torch.topk(row_logits[row], k).indices.tolist()) for row in range(3)]
    assert allowed[0] != allowed[1]  # a shared threshold would be wrong for some rows
    picked = [set() for _ in range(3)]
    torch.manual_seed(123)
    for _ in range(100):
        out = generate(model, torch.zeros(3, 1, dtype=torch.long), max_new_tokens=3, context_size=8,
                       temperature=5.0, top_k=k)
        for row in range(3):
            picked[row].update(out[row, 1:].tolist())
    for row in range(3):
        assert picked[row] == allowed[row]  # never outside the top k, and all k come up at T=5
    # top_k=1 is greedy whatever the temperature.
    out = generate(model, torch.zeros(3, 1, dtype=torch.long), 2, 8, temperature=2.0, top_k=1)
    assert out[:, 1:].tolist() == [[row_logits[row].argmax().item()] * 2 for row in range(3)]


def test_eos_stops_each_sequence():
    model = CountingModel(vocab_size=12)
    eos_id = 10
    idx = torch.tensor([[7], [4], [2]])
    out = generate(model, idx, max_new_tokens=8, context_size=4, eos_id=eos_id)
    # Rows 0 and 1 finish first and are padded with eos_id; row 2 finishes last, at the 8th token,
    # and that eos_id is not appended because every row is then finished.
    assert out.tolist() == [[7, 8, 9, 10, 10, 10, 10, 10],
                            [4, 5, 6, 7, 8, 9, 10, 10],
                            [2, 3, 4, 5, 6, 7, 8, 9]]
    # A row that never reaches eos_id keeps the others going until max_new_tokens.
    assert generate(model, torch.tensor([[7], [0]]), 5, 4, eos_id=eos_id).tolist() == [
        [7, 8, 9, 10, 10, 10], [0, 1, 2, 3, 4, 5]]
    # A single sequence stops without the eos token, as in the book.
    assert generate(model, torch.tensor([[7]]), 8, 4, eos_id=eos_id).tolist() == [[7, 8, 9]]
    # No eos_id: all max_new_tokens.
    assert generate(model, torch.tensor([[7]]), 5, 4).tolist() == [[7, 8, 9, 10, 11, 0]]
    # Sampling with top_k: the same, the model is certain.
    torch.manual_seed(0)
    assert torch.equal(generate(model, idx, 8, 4, temperature=1.0, top_k=3, eos_id=eos_id), out)


def test_generate_rejects_bad_arguments():
    model = CountingModel()
    with pytest.raises(ValueError, match="temperature"):
        generate(model, torch.tensor([[1]]), 2, 4, temperature=-1.0)
    for bad in (float("nan"), float("inf"), 1e-40):  # nan was silently greedy, the others overflowed
        with pytest.raises(ValueError, match=r"is not a temperature that can be computed with"):
            generate(model, torch.tensor([[1]]), 2, 4, temperature=bad)
    with pytest.raises(ValueError, match="top_k"):
        generate(model, torch.tensor([[1]]), 2, 4, top_k=0)


def test_softmax_with_temperature():
    logits = torch.tensor([4.51, 0.89, -1.90, 6.75, 1.63, -1.62, -1.89, 6.28, 1.79])  # the book's toy logits
    assert torch.allclose(softmax_with_temperature(logits, 1), torch.softmax(logits, dim=0))
    sharp, flat = softmax_with_temperature(logits, 0.1), softmax_with_temperature(logits, 5)
    assert sharp.argmax().item() == 3 and sharp[3] > 0.99  # "forward"
    assert flat.max() < 0.3 and flat.min() > 0.03
    assert sharp.sum().item() == pytest.approx(1.0) and flat.sum().item() == pytest.approx(1.0)
