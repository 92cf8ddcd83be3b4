"""fast_attention.py computes what the book's code computes: FastMultiHeadAttention against
MultiHeadAttention, and KV-cache generation against the uncached loop."""


import pytest
import torch
from conftest import TOKEN_CFG

import checkpoints
import u_pretraining as u
from fast_attention import (
    CachedNextTokenLogits,
    DecodingLinear,
    FastDropout,
    FastFeedForward,
    FastGELU,
    FastLayerNorm,
    FastMultiHeadAttention,
    KVCache,
    fast_dropout,
    decoding_splits,
    gpt_with_cache,
    lay_out_weights_for_decoding,
    new_kv_cache,
    use_fast_dropout,
)
from m_efficient_multi_head_attention import MultiHeadAttention
from p_layernorm_gelu_feedforward import GELU, FeedForward, LayerNorm
from r_transformer_block import TransformerBlock
from s_gpt_model import GPTModel


def copy_of_book_attention(qkv_bias):
    torch.manual_seed(123)
    book = MultiHeadAttention(d_in=6, d_out=8, context_length=10, dropout=0.0, num_heads=2,
                              qkv_bias=qkv_bias)
    return book, FastMultiHeadAttention.from_book(book)


# ---- FastMultiHeadAttention ----

@pytest.mark.parametrize("qkv_bias", [False, True])
def test_fast_attention_matches_the_books_outputs_and_gradients(qkv_bias):
    book, fast = copy_of_book_attention(qkv_bias)
    x = torch.randn(3, 7, 6)
    x_book, x_fast = x.clone().requires_grad_(), x.clone().requires_grad_()
    out_book, out_fast = book(x_book), fast(x_fast)
    assert torch.allclose(out_fast, out_book, atol=1e-6)

    weights = torch.randn_like(out_book)  # a loss that weighs every output differently
    (out_book * weights).sum().backward()
    (out_fast * weights).sum().backward()
    assert torch.allclose(x_fast.grad, x_book.grad, atol=1e-6)
    book_qkv_grad = torch.cat([book.W_query.weight.grad, book.W_key.weight.grad, book.W_value.weight.grad])
    assert torch.allclose(fast.W_qkv.weight.grad, book_qkv_grad, atol=1e-6)
    assert torch.allclose(fast.out_proj.weight.grad, book.out_proj.weight.grad, atol=1e-6)
    if qkv_bias:
        book_bias_grad = torch.cat([book.W_query.bias.grad, book.W_key.bias.grad, book.W_value.bias.grad])
        assert torch.allclose(fast.W_qkv.bias.grad, book_bias_grad, atol=1e-6)


def test_from_book_copies_weights_without_touching_the_random_numbers():
    book, _ = copy_of_book_attention(qkv_bias=False)
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    fast = FastMultiHeadAttention.from_book(book)
    assert torch.equal(torch.rand(3), expected)
    assert fast.W_qkv.weight.data_ptr() != book.W_query.weight.data_ptr()  # a copy, not a view
    assert torch.equal(fast.W_qkv.weight[8:16], book.W_key.weight)
    assert fast.W_qkv.bias is None and fast.dropout.p == 0.0


def test_a_seed_gives_the_fast_model_the_books_weights_and_dropout_masks():
    torch.manual_seed(123)
    book = GPTModel({**TOKEN_CFG, "drop_rate": 0.1})
    torch.manual_seed(123)
    fast = GPTModel({**TOKEN_CFG, "drop_rate": 0.1, "attention": "fast"})
    fast_state = fast.state_dict()
    for name, tensor in book.state_dict().items():  # the book's creation order is unchanged
        if ".att.W_" not in name and not name.endswith(".mask"):
            assert torch.equal(fast_state[name], tensor), name
    assert torch.equal(fast_state["trf_blocks.1.att.W_qkv.bias"][16:32], book.trf_blocks[1].att.W_key.bias)

    # In training mode the fused attention draws its dropout mask from the same random numbers.
    idx = torch.randint(0, TOKEN_CFG["vocab_size"], (2, TOKEN_CFG["context_length"]))
    torch.manual_seed(9)
    book_logits = book(idx)
    torch.manual_seed(9)
    assert torch.allclose(fast(idx), book_logits, atol=1e-5)


def test_fast_model_loads_a_book_checkpoint_and_round_trips_its_own(tmp_path):
    torch.manual_seed(123)
    book = GPTModel(TOKEN_CFG).eval()
    fast = GPTModel({**TOKEN_CFG, "attention": "fast"}).eval()
    fast.load_state_dict(book.state_dict())  # strict: W_query/W_key/W_value become W_qkv
    idx = torch.tensor([[1, 5, 9, 2, 3]])
    assert torch.allclose(fast(idx), book(idx), atol=1e-5)

    path = checkpoints.save_checkpoint(tmp_path / "fast.pth", fast, {**TOKEN_CFG, "attention": "fast"})
    reloaded, cfg = checkpoints.model_from_checkpoint(path)
    assert cfg["attention"] == "fast" and isinstance(reloaded.trf_blocks[0].att, FastMultiHeadAttention)
    assert torch.equal(reloaded(idx), fast(idx))


def test_the_config_picks_the_attention_and_names_an_unknown_one():
    assert isinstance(TransformerBlock(TOKEN_CFG).att, MultiHeadAttention)
    assert isinstance(TransformerBlock({**TOKEN_CFG, "attention": "book"}).att, MultiHeadAttention)
    assert isinstance(TransformerBlock({**TOKEN_CFG, "attention": "fast"}).att, FastMultiHeadAttention)
    with pytest.raises(ValueError, match="unknown attention 'flash'.*'book', 'fast'"):
        GPTModel({**TOKEN_CFG, "attention": "flash"})


def test_fast_attention_with_dropout_draws_the_books_mask_in_forward_and_backward():
    torch.manual_seed(123)
    book = MultiHeadAttention(d_in=6, d_out=8, context_length=10, dropout=0.5, num_heads=2)
    fast = FastMultiHeadAttention.from_book(book)
    x = torch.randn(3, 7, 6)
    x_book, x_fast = x.clone().requires_grad_(), x.clone().requires_grad_()
    torch.manual_seed(4)
    out_book = book(x_book)
    torch.manual_seed(4)
    out_fast = fast(x_fast)
    assert torch.allclose(out_fast, out_book, atol=1e-6)
    torch.manual_seed(5)  # a different mask gives different outputs, so the mask was really drawn
    assert not torch.allclose(fast(x), out_book, atol=1e-3)
    out_book.square().sum().backward()
    out_fast.square().sum().backward()
    assert torch.allclose(x_fast.grad, x_book.grad, atol=1e-5)
    assert torch.allclose(fast.out_proj.weight.grad, book.out_proj.weight.grad, atol=1e-5)


# ---- fused LayerNorm, GELU, FeedForward ----

def outputs_and_gradients(module, x):
    """module(x), and the gradients of a loss that weighs each output differently with respect to x
    and to every parameter."""
    x = x.clone().requires_grad_()
    out = module(x)
    (out * torch.linspace(-1, 2, out.numel()).view_as(out)).sum().backward()
    return out, x.grad, {name: p.grad for name, p in module.named_parameters()}


@pytest.mark.parametrize("make_book, make_fast", [
    (lambda: LayerNorm(16), lambda: FastLayerNorm(16)),
    (GELU, FastGELU),
    (lambda: FeedForward(TOKEN_CFG), lambda: FastFeedForward(TOKEN_CFG)),
])
def test_fused_layers_match_the_books_values_and_gradients(make_book, make_fast):
    torch.manual_seed(123)
    book = make_book()
    torch.manual_seed(123)
    fast = make_fast()
    assert list(fast.state_dict()) == list(book.state_dict())  # scale/shift, layers.0/layers.2
    for name, tensor in book.state_dict().items():
        assert torch.equal(fast.state_dict()[name], tensor), name  # the same random draws
    with torch.no_grad():  # a trained LayerNorm is not ones and zeros
        for p_book, p_fast in zip(book.parameters(), fast.parameters()):
            p_book.uniform_(-1, 1)
            p_fast.copy_(p_book)
    x = 3 * torch.randn(4, 5, 16) + 1
    out_book, x_grad_book, grads_book = outputs_and_gradients(book, x)
    out_fast, x_grad_fast, grads_fast = outputs_and_gradients(fast, x)
    assert torch.allclose(out_fast, out_book, atol=1e-5)
    assert torch.allclose(x_grad_fast, x_grad_book, atol=1e-5)
    for name, grad in grads_book.items():
        assert torch.allclose(grads_fast[name], grad, atol=1e-5), name


def test_fast_layers_keep_the_books_weights_and_checkpoints_load_both_ways(tmp_path):
    torch.manual_seed(123)
    book = GPTModel(TOKEN_CFG).eval()
    torch.manual_seed(123)
    fast = GPTModel({**TOKEN_CFG, "fast_layers": True}).eval()
    assert isinstance(fast.final_norm, FastLayerNorm) and isinstance(fast.trf_blocks[1].norm2, FastLayerNorm)
    assert isinstance(fast.trf_blocks[0].ff.layers[1], FastGELU) and type(book.final_norm) is LayerNorm
    for name, tensor in book.state_dict().items():
        assert torch.equal(fast.state_dict()[name], tensor), name
    idx = torch.tensor([[1, 5, 9, 2, 3]])
    assert torch.allclose(fast(idx), book(idx), atol=1e-5)

    path = checkpoints.save_checkpoint(tmp_path / "fast.pth", fast, {**TOKEN_CFG, "fast_layers": True})
    book_again = GPTModel(TOKEN_CFG).eval()
    book_again.load_state_dict(checkpoints.load_checkpoint(path)["model_state_dict"])  # strict
    assert torch.equal(book_again(idx), book(idx))
    fast_cfg = {**TOKEN_CFG, "fast_layers": True, "attention": "fast"}
    both = GPTModel(fast_cfg).eval()
    both.load_state_dict(book.state_dict())
    assert torch.allclose(both(idx), book(idx), atol=1e-5)


# ---- FastDropout ----

def test_fast_dropout_keeps_nine_in_ten_scaled_and_backpropagates_through_the_same_mask():
    torch.manual_seed(123)
    x = torch.ones(1_000_000, requires_grad=True)
    dropout = FastDropout(0.1)
    out = dropout(x)
    kept = out != 0
    # 1 - p to within 1/65,536: 6,554 of the 65,536 values of 16 random bits drop an element.
    keep = 1 - 6554 / 65536
    assert kept.float().mean().item() == pytest.approx(keep, abs=5 * (keep * (1 - keep) / x.numel()) ** 0.5)
    assert torch.allclose(out[kept], torch.full_like(out[kept], 1 / keep), rtol=1e-6, atol=0)  # mean 1
    out.backward(torch.arange(x.numel(), dtype=torch.float32))
    assert torch.allclose(x.grad, torch.where(kept, torch.arange(x.numel()) / keep, 0.0), rtol=1e-6, atol=0)
    # The bits of one 64-bit draw serve four neighbours, yet neighbours are not kept alike.
    pairs = kept[:-1:2].float() * kept[1::2].float()
    assert pairs.mean().item() == pytest.approx(keep ** 2, abs=0.003)

    torch.manual_seed(123)
    assert torch.equal(dropout(torch.ones(1_000_000)) != 0, kept)  # the seed decides the mask
    torch.manual_seed(123)
    assert not torch.equal(torch.nn.Dropout(0.1)(torch.ones(1_000_000)) != 0, kept)  # not nn.Dropout's
    assert dropout(torch.ones(3, 5, dtype=torch.bfloat16)).dtype == torch.bfloat16
    assert torch.equal(dropout.eval()(x), x) and torch.equal(FastDropout(0.0)(x), x)
    assert torch.equal(FastDropout(1.0)(x), torch.zeros_like(x))


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.jit, which the backend imports
def test_fast_dropout_keeps_its_masks_under_torch_compile_on_cpu():
    """Compiled code on the CPU draws FastDropout's masks too (Inductor's own are slower there),
    in one graph (fullgraph: no break), from the global generator as in eager mode."""
    dropout = FastDropout(1 / 3)
    x = torch.ones(4, 1000)
    torch.manual_seed(5)
    eager = dropout(x)
    torch.manual_seed(5)
    compiled = torch.compile(dropout, backend="aot_eager", fullgraph=True)(x)  # no C++ compiler needed
    assert torch.equal(compiled, eager)
    # 21,845 of 65,536 values drop an element: kept ones are scaled by 65536 / 43691, not nn.Dropout's 1.5.
    assert torch.equal(compiled[compiled != 0].unique(), torch.tensor([65536 / 43691]))

    # With the partitioner Inductor uses: two calls draw two masks, and backward uses the forward's.
    def two_dropouts(z):
        return fast_dropout(z * 2, 0.5), fast_dropout(z * 3, 0.5)
    z = torch.ones(10_000, requires_grad=True)
    first, second = torch.compile(two_dropouts, backend="aot_eager_decomp_partition", fullgraph=True)(z)
    assert not torch.equal(first != 0, second != 0)
    (first + second).sum().backward()
    assert torch.equal(z.grad, 2 * 2 * (first != 0).float() + 3 * 2 * (second != 0).float())  # scale 2


def test_use_fast_dropout_swaps_every_dropout_and_keeps_weights_and_eval_outputs():
    cfg = {**TOKEN_CFG, "drop_rate": 0.1, "attention": "fast", "fast_layers": True}
    torch.manual_seed(123)
    model = GPTModel(cfg)
    book_dropouts = [name for name, module in model.named_modules() if type(module) is torch.nn.Dropout]
    state = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    idx = torch.tensor([[1, 5, 9, 2, 3]])
    eval_logits = model.eval()(idx)
    assert use_fast_dropout(model) is model
    fast_dropouts = [name for name, module in model.named_modules() if isinstance(module, FastDropout)]
    # the embeddings', one per block for the shortcuts, one per block on the attention weights
    assert fast_dropouts == book_dropouts and len(fast_dropouts) == 1 + 2 * TOKEN_CFG["n_layers"]
    assert all(module.p == 0.1 for module in model.modules() if isinstance(module, FastDropout))
    assert state.keys() == model.state_dict().keys()
    assert all(torch.equal(tensor, state[name]) for name, tensor in model.state_dict().items())
    assert torch.equal(model(idx), eval_logits)
    model.train()
    torch.manual_seed(1)
    first = model(idx)
    torch.manual_seed(1)
    assert torch.equal(model(idx), first) and not torch.allclose(first, eval_logits)


# ---- KV cache ----

@pytest.mark.parametrize("attention", ["book", "fast"])
def test_feeding_tokens_in_chunks_through_the_cache_gives_the_full_forward_logits(attention):
    torch.manual_seed(123)
    model = GPTModel({**TOKEN_CFG, "attention": attention}).eval()
    idx = torch.randint(0, TOKEN_CFG["vocab_size"], (2, 11))
    kv_cache = new_kv_cache(model, batch_size=2)
    keys_storage = kv_cache[0].keys.data_ptr()
    with torch.no_grad():
        full = model(idx)
        chunks = [gpt_with_cache(model, idx[:, start:end], kv_cache)
                  for start, end in ((0, 4), (4, 5), (5, 9), (9, 11))]
    assert torch.allclose(torch.cat(chunks, dim=1), full, atol=1e-5)
    assert [layer.length for layer in kv_cache] == [11, 11]
    assert kv_cache[0].keys.data_ptr() == keys_storage  # written in place, never reallocated
    with pytest.raises(ValueError, match="the cache holds 11 tokens and the input 2 more, but the "
                                         "model's context_length is 12"):
        gpt_with_cache(model, idx[:, :2], kv_cache)


def test_weights_laid_out_for_decoding_keep_their_values_ids_and_checkpoints(two_threads):
    torch.manual_seed(123)
    book = GPTModel(TOKEN_CFG).eval()
    fast = GPTModel({**TOKEN_CFG, "attention": "fast", "fast_layers": True}).eval()
    fast.load_state_dict(book.state_dict())
    lay_out_weights_for_decoding(fast)
    weight = fast.trf_blocks[0].ff.layers[0].weight
    emb_dim = TOKEN_CFG["emb_dim"]
    assert weight.shape == (4 * emb_dim, emb_dim) and weight.stride() == (1, 4 * emb_dim)
    assert type(fast.out_head) is DecodingLinear and type(fast.trf_blocks[0].att.W_qkv) is DecodingLinear
    assert decoding_splits(torch.zeros(1, emb_dim), fast.out_head.weight) == two_threads
    assert torch.equal(fast.out_head.weight, book.out_head.weight)
    idx = torch.tensor([[3, 1, 4]])
    assert torch.equal(u.generate(fast, idx, 8, TOKEN_CFG["context_length"], use_cache=True),
                       u.generate(book, idx, 8, TOKEN_CFG["context_length"]))
    book.load_state_dict(fast.state_dict(), strict=False)  # the fused W_qkv aside, the book's names
    assert torch.equal(book.out_head.weight, fast.out_head.weight)


@pytest.mark.parametrize("shape", [(1, 48), (2, 1, 48), (4, 48)])
@pytest.mark.parametrize("bias", [True, False])
def test_decoding_linear_splits_a_few_rows_among_the_threads_and_gives_nn_linears_values(two_threads,
                                                                                        shape, bias):
    torch.manual_seed(123)
    linear = torch.nn.Linear(48, 20, bias=bias)
    decoding = lay_out_weights_for_decoding(torch.nn.Sequential(torch.nn.Linear(48, 20, bias=bias)))[0]
    decoding.load_state_dict(linear.state_dict())
    x = torch.randn(shape, requires_grad=True)
    assert decoding_splits(x, decoding.weight) == two_threads
    out = decoding(x)
    assert out.shape == shape[:-1] + (20,)
    exact = x.double() @ linear.weight.double().t() + (linear.bias.double() if bias else 0)
    assert torch.allclose(out.double(), exact, atol=1e-6)
    assert torch.allclose(out, linear(x), atol=1e-6)
    out.sum().backward()  # the gradient flows through the split as through nn.Linear
    assert torch.allclose(decoding.weight.grad, torch.autograd.grad(linear(x).sum(), linear.weight)[0])


def test_decoding_linear_leaves_what_it_was_not_measured_faster_on_to_nn_linear(two_threads):
    torch.manual_seed(123)
    decoding = lay_out_weights_for_decoding(torch.nn.Sequential(torch.nn.Linear(48, 20)))[0]
    weight, bias = decoding.weight, decoding.bias
    many_rows = torch.randn(5, 48)
    assert decoding_splits(many_rows, weight) == 1
    assert torch.equal(decoding(many_rows), torch.nn.functional.linear(many_rows, weight, bias))
    assert decoding_splits(many_rows[:1].bfloat16(), weight.bfloat16()) == 1
    assert decoding_splits(many_rows[:1], weight.contiguous()) == 1  # nn.Linear's layout
    assert decoding_splits(torch.randn(1, 7), torch.randn(7, 3).t()) == 1  # 7 inputs, laid out: no even split
    torch.set_num_threads(1)
    assert decoding_splits(many_rows[:1], weight) == 1


class LinearOfItsOwn(torch.nn.Linear):
    pass


def test_laying_out_keeps_a_linear_subclass_its_class():
    model = lay_out_weights_for_decoding(torch.nn.Sequential(LinearOfItsOwn(4, 3), torch.nn.Linear(3, 2)))
    assert type(model[0]) is LinearOfItsOwn and model[0].weight.stride() == (1, 3)
    assert type(model[1]) is DecodingLinear


def test_laying_out_leaves_bfloat16_weights_as_they_are():
    """Laid out, bfloat16 products read slower here; the layout and the split are float32's."""
    model = lay_out_weights_for_decoding(torch.nn.Sequential(torch.nn.Linear(4, 3)).bfloat16())
    assert type(model[0]) is torch.nn.Linear and model[0].weight.stride() == (4, 1)


def test_kv_cache_refuses_to_overflow():
    cache = KVCache(batch_size=1, num_heads=2, max_len=3, head_dim=4)
    cache.append(torch.ones(1, 2, 2, 4), torch.ones(1, 2, 2, 4))
    with pytest.raises(ValueError, match="holds 3 positions and is full"):
        cache.append(torch.ones(1, 2, 2, 4), torch.ones(1, 2, 2, 4))
    cache.reset()
    keys, values = cache.append(torch.full((1, 2, 3, 4), 2.0), torch.zeros(1, 2, 3, 4))
    assert keys.shape == (1, 2, 3, 4) and keys.eq(2.0).all()


@pytest.mark.parametrize("attention", ["book", "fast"])
@pytest.mark.parametrize("prompt_len, max_new_tokens, context_size", [
    (1, 6, 12),    # fits in the context
    (4, 20, 12),   # runs past the context: the window slides
    (12, 5, 12),   # starts with a full context
    (15, 4, 12),   # the prompt itself is longer than the context
    (3, 12, 7),    # generate's context_size smaller than the model's
])
def test_cached_generation_gives_the_uncached_ids(attention, prompt_len, max_new_tokens, context_size):
    torch.manual_seed(123)
    model = GPTModel({**TOKEN_CFG, "attention": attention}).eval()
    idx = torch.randint(0, TOKEN_CFG["vocab_size"], (2, prompt_len))
    expected = u.generate(model, idx, max_new_tokens, context_size)
    assert expected.shape == (2, prompt_len + max_new_tokens)
    assert torch.equal(u.generate(model, idx, max_new_tokens, context_size, use_cache=True), expected)


def test_cached_generation_samples_and_stops_like_the_uncached_one():
    torch.manual_seed(123)
    model = GPTModel(TOKEN_CFG).eval()
    idx = torch.randint(0, TOKEN_CFG["vocab_size"], (3, 4))
    torch.manual_seed(1)
    sampled = u.generate(model, idx, 16, 12, temperature=1.5, top_k=10)
    torch.manual_seed(1)
    assert torch.equal(u.generate(model, idx, 16, 12, temperature=1.5, top_k=10, use_cache=True), sampled)

    greedy = u.generate(model, idx, 16, 12)
    eos_id = int(greedy[0, 6])  # a token the first row produces, so that it finishes early
    stopped = u.generate(model, idx, 16, 12, eos_id=eos_id)
    assert stopped.shape[1] < greedy.shape[1] or (stopped[0, 6:] == eos_id).all()
    assert torch.equal(u.generate(model, idx, 16, 12, eos_id=eos_id, use_cache=True), stopped)


def test_cached_logits_past_the_models_context_raise_like_the_book():
    torch.manual_seed(123)
    model = GPTModel(TOKEN_CFG).eval()
    idx = torch.randint(0, TOKEN_CFG["vocab_size"], (1, 10))
    for use_cache in (False, True):  # context_size 20 > context_length 12: the book crashes too
        with pytest.raises(ValueError, match="context_length is 12"):
            u.generate(model, idx, 5, context_size=20, use_cache=use_cache)
    next_logits = CachedNextTokenLogits(model, context_size=12)
    assert torch.allclose(next_logits(idx), model(idx)[:, -1], atol=1e-5)
    assert next_logits.kv_cache[0].length == 10


