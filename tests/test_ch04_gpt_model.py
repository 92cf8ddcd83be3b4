"""Chapter 4: the GPT model's parts, the whole model, its size, and greedy generation.
Tiny configs wherever the book's numbers do not need the real 124M model."""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from n_dummy_gpt_model import GPT_CONFIG_124M, DummyGPTModel
from p_layernorm_gelu_feedforward import GELU, FeedForward, LayerNorm
from q_shortcut_dnn import LAYER_SIZES, ExampleDeepNeuralNetwork, gradient_means
from r_transformer_block import TransformerBlock
from s_gpt_model import GPTModel, count_parameters, generate_text_simple, model_configs

TINY = {"vocab_size": 50, "context_length": 8, "emb_dim": 16, "n_heads": 2, "n_layers": 2,
        "drop_rate": 0.0, "qkv_bias": True}
# "Every effort moves you", "Every day holds a"
BOOK_BATCH = torch.tensor([[6109, 3626, 6100, 345], [6109, 1110, 6622, 257]])
HELLO_I_AM = [15496, 11, 314, 716]


def test_gpt_config_124m_is_the_books():
    assert GPT_CONFIG_124M == {"vocab_size": 50257, "context_length": 1024, "emb_dim": 768,
                               "n_heads": 12, "n_layers": 12, "drop_rate": 0.1, "qkv_bias": False}


def test_dummy_gpt_model_is_embeddings_straight_into_the_output_layer():
    torch.manual_seed(123)
    model = DummyGPTModel({**TINY, "drop_rate": 0.5}).eval()
    idx = torch.tensor([[1, 2, 3], [4, 5, 6]])
    x = model.tok_emb(idx) + model.pos_emb(torch.arange(3))
    assert torch.allclose(model(idx), model.out_head(x))
    assert model.out_head.bias is None
    assert sum(p.numel() for p in model.trf_blocks.parameters()) == 0


def test_layer_norm_gives_mean_0_variance_1_and_matches_torch():
    torch.manual_seed(123)
    x = torch.randn(2, 5) * 3 + 7
    ln = LayerNorm(emb_dim=5)
    out = ln(x)
    assert torch.allclose(out.mean(dim=-1), torch.zeros(2), atol=1e-5)
    assert torch.allclose(out.var(dim=-1, unbiased=False), torch.ones(2), atol=1e-4)
    with torch.no_grad():
        ln.scale.copy_(torch.arange(1.0, 6.0))
        ln.shift.copy_(torch.full((5,), 0.5))
    assert torch.allclose(ln(x), F.layer_norm(x, (5,), ln.scale, ln.shift, eps=1e-5), atol=1e-6)


def test_book_layer_outputs_before_normalisation():
    torch.manual_seed(123)
    batch_example = torch.randn(2, 5)
    out = nn.Sequential(nn.Linear(5, 6), nn.ReLU())(batch_example)
    assert torch.allclose(out, torch.tensor([[0.2260, 0.3470, 0.0000, 0.2216, 0.0000, 0.0000],
                                             [0.2133, 0.2394, 0.0000, 0.5198, 0.3297, 0.0000]]),
                          atol=1e-4)
    assert torch.allclose(out.mean(dim=-1), torch.tensor([0.1324, 0.2170]), atol=1e-4)


def test_gelu_is_the_tanh_approximation():
    x = torch.linspace(-6, 6, 1001)
    assert torch.allclose(GELU()(x), F.gelu(x, approximate="tanh"), atol=1e-6)
    assert not torch.allclose(GELU()(x), torch.relu(x), atol=1e-2)  # smooth, negative below 0
    assert GELU()(torch.tensor(-1.0)) < 0


def test_feed_forward_expands_four_times_and_keeps_the_shape():
    torch.manual_seed(0)
    ffn = FeedForward(TINY)
    assert ffn.layers[0].out_features == 4 * TINY["emb_dim"]
    x = torch.rand(2, 3, TINY["emb_dim"])
    expected = ffn.layers[2](F.gelu(ffn.layers[0](x), approximate="tanh"))
    assert torch.allclose(ffn(x), expected, atol=1e-6)
    ffn_124m = FeedForward(GPT_CONFIG_124M)
    assert sum(p.numel() for p in ffn_124m.parameters()) == 4_722_432  # exercise 4.1


def test_shortcuts_keep_the_first_layers_gradients_large():
    sample_input = torch.tensor([[1.0, 0.0, -1.0]])
    torch.manual_seed(123)
    without = gradient_means(ExampleDeepNeuralNetwork(LAYER_SIZES, use_shortcut=False), sample_input)
    torch.manual_seed(123)
    with_shortcut = gradient_means(ExampleDeepNeuralNetwork(LAYER_SIZES, use_shortcut=True), sample_input)
    book_without = [0.00020173587836325169, 0.0001201116101583466, 0.0007152041653171182,
                    0.001398873864673078, 0.005049646366387606]
    book_with = [0.22169792652130127, 0.20694105327129364, 0.32896995544433594,
                 0.2665732502937317, 1.3258541822433472]
    names = [f"layers.{i}.0.weight" for i in range(5)]
    assert list(without) == names and list(with_shortcut) == names
    assert list(without.values()) == pytest.approx(book_without, rel=1e-4)
    assert list(with_shortcut.values()) == pytest.approx(book_with, rel=1e-4)
    assert with_shortcut[names[0]] > 1000 * without[names[0]]


def test_shortcut_is_skipped_where_the_shapes_differ():
    torch.manual_seed(0)
    model = ExampleDeepNeuralNetwork([3, 3, 2], use_shortcut=True)
    x = torch.randn(4, 3)
    first = model.layers[0](x) + x
    assert torch.allclose(model(x), model.layers[1](first))


def reference_block(block, x):
    """TransformerBlock computed from its weights with PyTorch's own layer_norm, scaled dot-product
    attention and tanh-GELU (dropout off)."""
    def ln(norm, t):
        return F.layer_norm(t, t.shape[-1:], norm.scale, norm.shift, eps=1e-5)

    att, (b, n, d) = block.att, x.shape
    h = ln(block.norm1, x)
    q, k, v = (w(h).view(b, n, att.num_heads, att.head_dim).transpose(1, 2)
               for w in (att.W_query, att.W_key, att.W_value))
    a = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(b, n, d)
    x = x + att.out_proj(a)
    ff = block.ff.layers
    return x + ff[2](F.gelu(ff[0](ln(block.norm2, x)), approximate="tanh"))


def test_transformer_block_matches_a_reference_computation():
    torch.manual_seed(0)
    block = TransformerBlock(TINY).eval()
    with torch.no_grad():
        for norm in (block.norm1, block.norm2):  # make the norms' parameters matter
            norm.scale.uniform_(0.5, 1.5)
            norm.shift.uniform_(-0.5, 0.5)
        x = torch.randn(2, 6, TINY["emb_dim"])
        out = block(x)
        assert out.shape == x.shape
        assert torch.allclose(out, reference_block(block, x), atol=1e-5)


def test_gpt_model_matches_a_reference_computation_and_is_causal():
    torch.manual_seed(0)
    model = GPTModel(TINY).eval()
    idx = torch.randint(0, TINY["vocab_size"], (2, 7))
    with torch.no_grad():
        x = model.tok_emb(idx) + model.pos_emb(torch.arange(7))
        for block in model.trf_blocks:
            x = reference_block(block, x)
        x = F.layer_norm(x, (TINY["emb_dim"],), model.final_norm.scale, model.final_norm.shift, eps=1e-5)
        logits = model(idx)
        assert logits.shape == (2, 7, TINY["vocab_size"])
        assert torch.allclose(logits, model.out_head(x), atol=1e-5)
        changed = idx.clone()
        changed[:, 4] = (changed[:, 4] + 1) % TINY["vocab_size"]
        new_logits = model(changed)
        assert torch.allclose(new_logits[:, :4], logits[:, :4], atol=1e-6)
        assert not torch.allclose(new_logits[:, 4], logits[:, 4])


def gpt_parameter_count(cfg):
    """GPTModel's parameter count from its config, layer by layer."""
    e, v, c = cfg["emb_dim"], cfg["vocab_size"], cfg["context_length"]
    attention = 3 * (e * e + (e if cfg["qkv_bias"] else 0)) + e * e + e  # W_query/key/value, out_proj
    feed_forward = e * 4 * e + 4 * e + 4 * e * e + e
    block = attention + feed_forward + 2 * 2 * e  # two LayerNorms with scale and shift
    return v * e + c * e + cfg["n_layers"] * block + 2 * e + e * v  # embeddings, blocks, final_norm, out_head


@pytest.mark.parametrize("cfg", [TINY,
                                 {**TINY, "qkv_bias": False, "n_layers": 3, "emb_dim": 12, "n_heads": 3}])
def test_parameter_count_formula_matches_the_model(cfg):
    assert count_parameters(GPTModel(cfg))[0] == gpt_parameter_count(cfg)


def test_parameter_counts_of_the_gpt2_models():
    # Exercise 4.2. (On the meta device GPTModel builds in no memory, but its first torch.triu
    # there costs a few seconds of imports, so the test uses the formula checked above.)
    expected = {  # total, total with weight tying
        "gpt2-small (124M)": (163_009_536, 124_412_160),
        "gpt2-medium (355M)": (406_212_608, 354_749_440),
        "gpt2-large (774M)": (838_220_800, 773_891_840),
        "gpt2-xl (1558M)": (1_637_792_000, 1_557_380_800),
    }
    assert list(model_configs) == list(expected)
    for name, sizes in model_configs.items():
        cfg = {**GPT_CONFIG_124M, **sizes}
        total = gpt_parameter_count(cfg)
        assert (total, total - cfg["vocab_size"] * cfg["emb_dim"]) == expected[name], name


@pytest.fixture(scope="module")
def book_model():
    """The book's GPTModel(GPT_CONFIG_124M) under seed 123, and its (training-mode) logits on the
    book's batch, computed right after creation as the book does."""
    torch.manual_seed(123)
    model = GPTModel(GPT_CONFIG_124M)
    with torch.no_grad():
        logits = model(BOOK_BATCH)
    return model.eval(), logits


def test_book_model_size(book_model):
    model, _ = book_model
    total, tied, size_mb = count_parameters(model)
    assert (total, tied, f"{size_mb:.2f}") == (163_009_536, 124_412_160, "621.83")


def test_book_logits(book_model):
    _, logits = book_model
    assert logits.shape == (2, 4, 50257)
    assert torch.allclose(logits[0, 0, :3], torch.tensor([0.3613, 0.4222, -0.0711]), atol=1e-4)
    assert torch.allclose(logits[1, 3, -3:], torch.tensor([1.2630, -0.1858, 0.0388]), atol=1e-4)


def test_generate_text_simple_gives_the_books_token_ids(book_model):
    model, _ = book_model
    out = generate_text_simple(model, torch.tensor([HELLO_I_AM]), max_new_tokens=6,
                               context_size=GPT_CONFIG_124M["context_length"])
    assert out.tolist() == [[15496, 11, 314, 716, 27018, 24086, 47843, 30961, 42348, 7267]]


def test_hello_i_am_token_ids(gpt2_tokenizer):
    assert gpt2_tokenizer.encode("Hello, I am") == HELLO_I_AM
    assert (gpt2_tokenizer.decode([27018, 24086, 47843, 30961, 42348, 7267])
            == " Featureiman Byeswickattribute argue")


def test_generate_text_simple_is_deterministic_and_crops_long_inputs():
    torch.manual_seed(0)
    model = GPTModel(TINY).eval()
    idx = torch.randint(0, TINY["vocab_size"], (2, 12))  # longer than context_length 8
    out = generate_text_simple(model, idx, max_new_tokens=5, context_size=TINY["context_length"])
    assert out.shape == (2, 17)
    assert torch.equal(out[:, :12], idx)
    assert torch.equal(out, generate_text_simple(model, idx, 5, TINY["context_length"]))
    # only the last 8 tokens are seen, so changing the first ones changes nothing
    changed = idx.clone()
    changed[:, :4] = (changed[:, :4] + 1) % TINY["vocab_size"]
    assert torch.equal(generate_text_simple(model, changed, 5, TINY["context_length"])[:, 12:], out[:, 12:])
    # each new token is the argmax of the logits for the cropped context
    with torch.no_grad():
        first = model(idx[:, -8:])[:, -1].argmax(dim=-1)
    assert torch.equal(out[:, 12], first)


def test_a_sequence_longer_than_the_context_is_a_clear_error():
    model = GPTModel(TINY)
    with pytest.raises(ValueError, match=r"9 tokens but the model's context_length is 8"):
        model(torch.zeros(1, 9, dtype=torch.long))


def test_missing_config_key_is_named():
    cfg = dict(TINY)
    del cfg["n_heads"]
    with pytest.raises(ValueError, match="missing the key 'n_heads'"):
        GPTModel(cfg)


def test_emb_dim_not_divisible_by_n_heads_is_a_clear_error():
    with pytest.raises(ValueError, match="must be divisible by num_heads"):
        TransformerBlock({**TINY, "emb_dim": 10, "n_heads": 3})
