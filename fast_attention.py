"""Beyond the book: the transformer block's modules made fast, and a key-value cache for generation.

FastMultiHeadAttention computes what the book's MultiHeadAttention (section 3.6.2) computes, with
one fused query/key/value projection and PyTorch's scaled_dot_product_attention. A GPT config
selects it with "attention": "fast". FastLayerNorm, FastGELU and FastFeedForward compute what the
book's LayerNorm, GELU and FeedForward (4.2-4.3) compute, in PyTorch's fused kernels; a config
selects them with "fast_layers": True. Both keep the book's parameter names, so checkpoints load
either way. use_fast_dropout(model) swaps a model's dropout modules for FastDropout, which draws
cheaper masks than the book's (other masks from the same seed). The KV cache keeps each generated
token's keys and values, so that generate(..., use_cache=True) runs one new token per step instead
of the whole sequence; lay_out_weights_for_decoding(model) makes that token's matrix products read
the weights faster on CPU.

Not a chapter: the first script that imports it is r_transformer_block.py, so it imports only
earlier letters (m, p).
"""

import torch
import torch.nn as nn
import torch.nn.functional as F

from m_efficient_multi_head_attention import MultiHeadAttention
from p_layernorm_gelu_feedforward import GELU, FeedForward, LayerNorm


class FastMultiHeadAttention(nn.Module):
    """MultiHeadAttention's computation with one fused query/key/value projection and PyTorch's
    scaled_dot_product_attention (FlashAttention on CUDA, which never builds the attention matrix).
    It loads MultiHeadAttention's weights: fast.load_state_dict(book_mha.state_dict())."""

    def __init__(self, d_in, d_out, context_length, dropout, num_heads, qkv_bias=False):
        super().__init__()
        # The book's module, built first, checks the sizes and draws the starting weights in the
        # book's order, so that the same seed gives the same weights; its query, key and value
        # matrices are then stacked into one.
        book = MultiHeadAttention(d_in, d_out, context_length, dropout, num_heads, qkv_bias)
        self.d_out, self.num_heads, self.head_dim = book.d_out, book.num_heads, book.head_dim
        self.context_length = context_length
        self.W_qkv = nn.utils.skip_init(nn.Linear, d_in, 3 * d_out, bias=qkv_bias,
                                        device=book.W_query.weight.device)
        with torch.no_grad():
            self.W_qkv.weight.copy_(torch.cat([book.W_query.weight, book.W_key.weight, book.W_value.weight]))
            if qkv_bias:
                self.W_qkv.bias.copy_(torch.cat([book.W_query.bias, book.W_key.bias, book.W_value.bias]))
        self.out_proj = book.out_proj
        self.dropout = nn.Dropout(dropout)  # on the attention weights, as the book's
        self.register_load_state_dict_pre_hook(_fuse_book_qkv)

    @classmethod
    def from_book(cls, mha):
        """A FastMultiHeadAttention holding a copy of MultiHeadAttention `mha`'s weights."""
        d_out, d_in = mha.W_query.weight.shape
        with torch.device("meta"):  # no weights are drawn, so the random number stream is untouched
            fast = cls(d_in, d_out, mha.mask.shape[0], mha.dropout.p, mha.num_heads,
                       qkv_bias=mha.W_query.bias is not None)
        fast = fast.to_empty(device=mha.out_proj.weight.device).to(mha.out_proj.weight.dtype)
        fast.load_state_dict(mha.state_dict())
        return fast.train(mha.training)

    def forward(self, x, kv_cache=None):
        b, num_tokens, _ = x.shape
        qkv = self.W_qkv(x).view(b, num_tokens, 3, self.num_heads, self.head_dim)
        queries, keys, values = qkv.permute(2, 0, 3, 1, 4)  # each (b, num_heads, num_tokens, head_dim)
        start = 0
        if kv_cache is not None:
            start = kv_cache.length
            keys, values = kv_cache.append(keys, values)
        if self.training and self.dropout.p > 0:
            if isinstance(self.dropout, FastDropout) and x.device.type != "cpu" and start == 0:
                # The masks need not be the book's: the fused kernel draws its own (FlashAttention on CUDA).
                context_vec = F.scaled_dot_product_attention(queries, keys, values, dropout_p=self.dropout.p,
                                                             is_causal=True)
            else:
                context_vec = attention_with_dropout(queries, keys, values, self.dropout,
                                                     cached_causal_mask(start, num_tokens, x.device))
        elif start > 0 and num_tokens > 1:  # is_causal assumes queries and keys start at the same position
            mask = ~cached_causal_mask(start, num_tokens, x.device)
            context_vec = F.scaled_dot_product_attention(queries, keys, values, attn_mask=mask)
        else:  # one new token may look at every cached one: no mask at all
            context_vec = F.scaled_dot_product_attention(queries, keys, values, is_causal=start == 0)
        context_vec = context_vec.transpose(1, 2).reshape(b, num_tokens, self.d_out)
        return self.out_proj(context_vec)


def attention_with_dropout(queries, keys, values, dropout, mask):
    """Causal attention with `dropout` (a module) on the attention weights, as MultiHeadAttention
    computes it; with nn.Dropout, also with the same random mask. On CPU scaled_dot_product_attention
    has no fused kernel with dropout and falls back to a math path that does more work than this
    (about 1.7x the time at context 256). mask: True where a query may NOT look."""
    # Scaling the queries rather than the scores touches head_dim values per query, not num_tokens.
    scores = torch.matmul(queries * queries.shape[-1] ** -0.5, keys.transpose(-2, -1))
    weights = torch.softmax(scores.masked_fill_(mask, -torch.inf), dim=-1)
    return torch.matmul(dropout(weights), values)


class FastDropout(nn.Dropout):
    """nn.Dropout with cheaper masks on CPU: each element's mask compares 16 random bits with a
    threshold, so one 64-bit number from the generator serves four elements, where nn.Dropout draws
    a number for each (the masks of a 124M step took 6% of its time). An element is kept with
    probability 1 - p, rounded to a multiple of 1/65,536, and scaled by its inverse, so the expected
    value stays the input. The masks are not nn.Dropout's for the same seed. On GPUs, whose kernels
    fuse the masks, it is nn.Dropout. torch.compile keeps it on the CPU: Inductor's own masks there
    cost more than nn.Dropout's eager ones."""

    def forward(self, x):
        if not self.training or self.p == 0:
            return x
        if x.device.type != "cpu" or self.p == 1:
            return super().forward(x)
        return fast_dropout(x, self.p)


def fast_dropout(x, p):
    """x with each element kept with probability 1 - p (to within 1/65,536) and scaled by its inverse."""
    dropped = round(p * 65536)  # of the 65,536 values 16 bits take, this many drop an element
    # uniform over -32768..32767; the operator only where it is needed: in eager mode a call through
    # it took 8% longer (170 us more for 2 x 256 x 3072 elements), the same bits
    bits = random_int16(x.detach()) if torch.compiler.is_compiling() else _random_int16(x)
    return torch.where(bits >= dropped - 32768, x * (65536 / (65536 - dropped)), 0.0)


def _random_int16(like: torch.Tensor) -> torch.Tensor:
    """16 random bits per element of `like` (its shape and device) from torch's generator."""
    # random_() alone would leave each number's top bit 0; from -2**63 it draws all 64 bits.
    bits = torch.empty((like.numel() + 3) // 4, dtype=torch.int64, device=like.device).random_(-2 ** 63, None)
    return bits.view(torch.int16)[:like.numel()].view(like.shape)


# An operator of its own, so that torch.compile keeps it whole: traced, Tensor.random_ breaks the
# graph, and a break inside FastMultiHeadAttention crashed torch 2.13's compiled step. The tag
# says it draws random numbers, so the backward pass never draws again. One catch: compiled code
# merges two calls on the very same tensor into one draw (its common-subexpression pass spares only
# aten's random operators); each dropout of a GPT has an input of its own.
try:
    random_int16 = torch.library.custom_op("fast_attention::random_int16", _random_int16, mutates_args=(),
                                           tags=(torch.Tag.nondeterministic_seeded,))
    random_int16.register_fake(lambda like: torch.empty(like.shape, dtype=torch.int16, device=like.device))
except (AttributeError, TypeError):  # an older torch without custom_op(tags=...): the same masks,
    random_int16 = _random_int16  # and a graph break in compiled code


def use_fast_dropout(model):
    """Replace every nn.Dropout in `model` (the embeddings', the shortcuts', the attention weights')
    with a FastDropout of the same probability; dropout has no weights, so checkpoints are unchanged.
    Returns the model."""
    for parent in list(model.modules()):
        for name, child in parent.named_children():
            if type(child) is nn.Dropout:
                setattr(parent, name, FastDropout(child.p, child.inplace).train(child.training))
    return model


def _fuse_book_qkv(module, state_dict, prefix, *args):
    """Let FastMultiHeadAttention load a MultiHeadAttention state dict (GPTModel checkpoints too):
    stack W_query, W_key and W_value into W_qkv and drop the mask, which it does not need."""
    names = [prefix + f"W_{part}.weight" for part in ("query", "key", "value")]
    if all(name in state_dict for name in names):
        state_dict[prefix + "W_qkv.weight"] = torch.cat([state_dict.pop(name) for name in names])
        biases = [name[:-len("weight")] + "bias" for name in names]
        if all(name in state_dict for name in biases):
            state_dict[prefix + "W_qkv.bias"] = torch.cat([state_dict.pop(name) for name in biases])
        state_dict.pop(prefix + "mask", None)


class FastLayerNorm(LayerNorm):
    """The book's LayerNorm (same eps, same scale and shift parameters) in PyTorch's fused kernel,
    which makes one pass over the values instead of the half dozen of mean, var, sub, div, mul, add."""

    def forward(self, x):
        return F.layer_norm(x, self.scale.shape, self.scale, self.shift, self.eps)


class FastGELU(GELU):
    """The book's tanh approximation of GELU, as one fused kernel (the same formula)."""

    def forward(self, x):
        return F.gelu(x, approximate="tanh")


class FastFeedForward(FeedForward):
    """The book's FeedForward with FastGELU: the same layers, weights and random draws."""

    def __init__(self, cfg):
        super().__init__(cfg)
        self.layers[1] = FastGELU()


def layer_classes(cfg):
    """(LayerNorm class, FeedForward class) for a GPT config: the book's, or the fused ones with the
    optional key "fast_layers": True."""
    return (FastLayerNorm, FastFeedForward) if cfg.get("fast_layers") else (LayerNorm, FeedForward)


class KVCache:
    """One attention layer's keys and values for up to `max_len` positions, allocated once: each
    forward pass writes its new positions in place, so generating a token costs one token's work."""

    def __init__(self, batch_size, num_heads, max_len, head_dim, device=None, dtype=None):
        self.keys = torch.zeros(batch_size, num_heads, max_len, head_dim, device=device, dtype=dtype)
        self.values = torch.zeros_like(self.keys)
        self.length = 0  # positions filled so far

    def append(self, keys, values):
        """Store the new positions' keys and values; return those of all positions so far."""
        end = self.length + keys.shape[2]
        if end > self.keys.shape[2]:
            raise ValueError(f"the cache holds {self.keys.shape[2]} positions and is full; "
                             "reset it and feed the last tokens again")
        self.keys[:, :, self.length:end] = keys
        self.values[:, :, self.length:end] = values
        self.length = end
        return self.keys[:, :, :end], self.values[:, :, :end]

    def reset(self):
        self.length = 0


def cached_causal_mask(start, num_new, device=None):
    """True where a new token may NOT look: new token i sits at position start + i and sees 0..start + i."""
    positions = torch.arange(start + num_new, device=device)
    return positions[None, :] > (start + torch.arange(num_new, device=device))[:, None]


def multi_head_attention_with_cache(mha, x, kv_cache):
    """MultiHeadAttention.forward for new tokens `x` that also attend to the positions in `kv_cache`
    (the book's class and its forward stay as they are)."""
    b, num_tokens, d_in = x.shape
    keys = mha.W_key(x).view(b, num_tokens, mha.num_heads, mha.head_dim).transpose(1, 2)
    queries = mha.W_query(x).view(b, num_tokens, mha.num_heads, mha.head_dim).transpose(1, 2)
    values = mha.W_value(x).view(b, num_tokens, mha.num_heads, mha.head_dim).transpose(1, 2)
    start = kv_cache.length
    keys, values = kv_cache.append(keys, values)

    attn_scores = queries @ keys.transpose(2, 3)  # (b, num_heads, num_tokens, start + num_tokens)
    attn_scores.masked_fill_(cached_causal_mask(start, num_tokens, x.device), -torch.inf)
    attn_weights = torch.softmax(attn_scores / keys.shape[-1] ** 0.5, dim=-1)
    attn_weights = mha.dropout(attn_weights)
    context_vec = (attn_weights @ values).transpose(1, 2)
    context_vec = context_vec.contiguous().view(b, num_tokens, mha.d_out)
    return mha.out_proj(context_vec)


def attend_with_cache(att, x, kv_cache):
    """Run attention module `att` (the book's or the fast one) on new tokens `x` that also attend
    to the positions already in `kv_cache`."""
    if isinstance(att, MultiHeadAttention):
        return multi_head_attention_with_cache(att, x, kv_cache)
    return att(x, kv_cache)


def block_with_cache(block, x, kv_cache):
    """TransformerBlock.forward (section 4.5) for new tokens `x` that continue the tokens in the
    block's `kv_cache`: the same pre-LayerNorm sublayers, dropouts and shortcuts."""
    x = x + block.drop_shortcut(attend_with_cache(block.att, block.norm1(x), kv_cache))
    return x + block.drop_shortcut(block.ff(block.norm2(x)))


def gpt_with_cache(model, in_idx, kv_cache):
    """GPTModel.forward (section 4.6) for token ids `in_idx` that continue the tokens already in
    `kv_cache` (new_kv_cache's, one KVCache a block): their positions start after the cached ones,
    and they also attend to them. Returns the logits of the new tokens."""
    start, num_new = kv_cache[0].length, in_idx.shape[1]
    context_length = model.pos_emb.num_embeddings
    if start + num_new > context_length:
        raise ValueError(f"the cache holds {start} tokens and the input {num_new} more, but the model's "
                         f"context_length is {context_length}")
    positions = torch.arange(start, start + num_new, device=in_idx.device)
    x = model.drop_emb(model.tok_emb(in_idx) + model.pos_emb(positions))
    for block, layer_cache in zip(model.trf_blocks, kv_cache):
        x = block_with_cache(block, x, layer_cache)
    return model.out_head(model.final_norm(x))


def new_kv_cache(model, batch_size, max_len=None):
    """One pre-allocated KVCache per transformer block for up to max_len positions (default: the
    model's context length), for gpt_with_cache."""
    max_len = max_len or model.pos_emb.num_embeddings
    weight = model.out_head.weight
    caches = []
    for block in model.trf_blocks:
        caches.append(KVCache(batch_size, block.att.num_heads, max_len, block.att.head_dim,
                              device=weight.device, dtype=weight.dtype))
    return caches


def lay_out_weights_for_decoding(model):
    """Store every float32 nn.Linear weight of `model` on the CPU transposed in memory: the same
    values, shape, names and state dict, in the layout transformers' Conv1D keeps GPT-2's weights
    (inputs by outputs). One new token multiplies a vector by each matrix and is bound by reading
    the matrices; CPU BLAS reads this layout faster (about 1.1-1.7x here) than nn.Linear's (outputs
    by inputs), while training and longer inputs run at the same speed in either. Plain nn.Linear
    layers so laid out also become DecodingLinear, which splits such a product among the threads.
    bfloat16 weights stay as they are (laid out, a cached token took 1.05x as long at GPT-2 124M and
    1.13x at Qwen3-0.6B's size), and so do a GPU's (not measured). Call it after moving the model
    to its device and dtype (a later .to() keeps the layout). Returns the model."""
    for module in model.modules():
        weight = module.weight if isinstance(module, nn.Linear) else None
        if weight is None or weight.dtype != torch.float32 or weight.device.type != "cpu":
            continue
        weight.data = weight.data.t().contiguous().t()
        if type(module) is nn.Linear:  # subclasses keep their own forward
            # The class, not a new module: the parameters, their hooks and an optimizer's
            # references to them stay as they are.
            module.__class__ = DecodingLinear
    return model


# Up to this many rows (tokens times sequences) split_k_linear clearly beat F.linear with the same
# laid-out weights (768 x 3072, 2 threads, two runs: 1.1-1.3x for 1 row, 1.6x for 2, 1.7-1.9x for
# 4); from 6 rows on it gave 1.0-1.2x, within the runs' scatter.
DECODING_ROWS = 4


class DecodingLinear(nn.Linear):
    """nn.Linear (the same parameters and state dict) that multiplies up to DECODING_ROWS rows with
    a laid-out float32 weight as split_k_linear's products, one per thread, on CPU with MKL (the
    only BLAS it was measured with); everything else runs nn.Linear's forward."""

    def forward(self, x):
        splits = decoding_splits(x, self.weight)
        if splits == 1:
            return super().forward(x)
        return split_k_linear(x, self.weight, self.bias, splits)


def decoding_splits(x, weight):
    """Into how many blocks of inputs DecodingLinear splits x @ weight.t(): the most threads that
    divide the inputs evenly where the split was measured faster, otherwise 1."""
    n_in = weight.shape[1]
    # bfloat16 products run in oneDNN, which uses every thread (one 6.1, two 10.9 GB/s): no split
    if (x.device.type != "cpu" or x.dtype != torch.float32 or x.numel() > DECODING_ROWS * n_in
            or not weight.t().is_contiguous() or not torch.backends.mkl.is_available()):
        return 1
    return max(n for n in range(1, torch.get_num_threads() + 1) if n_in % n == 0)


def split_k_linear(x, weight, bias, splits):
    """F.linear(x, weight, bias) for a weight laid out inputs by outputs, as `splits` products of
    consecutive blocks of x's inputs with the matching rows of weight.t(), added up. MKL multiplies
    one row by a matrix (a GEMV) on one thread: a second thread lifted 124M's 768 x 3072 matrices
    from 16.7 to 17.9 GB/s of weights read here, where torch.bmm gives each block's product a thread
    (split in two: 16-26 GB/s by shape, against 11-20 unsplit; summing the weights reads 24-32).
    The sums run in another order than F.linear's, so the results differ in float32 rounding."""
    n_out, n_in = weight.shape
    rows = x.numel() // n_in
    blocks = weight.t().view(splits, n_in // splits, n_out)  # each block is contiguous in memory
    x_blocks = x.reshape(rows, splits, n_in // splits).transpose(0, 1)  # (splits, rows, n_in / splits)
    y = torch.bmm(x_blocks, blocks).sum(0)
    if bias is not None:
        y += bias
    return y.view(*x.shape[:-1], n_out)


class CachedNextTokenLogits:
    """Gives what model(idx[:, -context_size:])[:, -1, :] gives, but keeps the keys and values of
    the tokens it has seen, so each call only runs the tokens added since the last call.

    While idx fits in context_size, a new token is one short forward pass. Once it does not, the
    window slides and every position changes (the embeddings are absolute), so, like the book's
    loop, each step runs the whole window of the last context_size tokens again."""

    def __init__(self, model, context_size):
        self.model = model
        self.context_size = context_size  # beyond the model's context, GPTModel raises as in the book
        self.kv_cache = None
        self.seen = 0  # tokens of idx whose keys and values are in the cache

    def __call__(self, idx):
        """idx: (batch, n) token ids that extend the idx of the previous call."""
        if self.kv_cache is None or self.kv_cache[0].keys.shape[0] != idx.shape[0]:
            max_len = min(self.context_size, self.model.pos_emb.num_embeddings)
            self.kv_cache = new_kv_cache(self.model, idx.shape[0], max_len)
            self.seen = 0
        num_new = idx.shape[1] - self.seen
        if num_new < 1 or self.kv_cache[0].length + num_new > self.context_size:
            for layer_cache in self.kv_cache:
                layer_cache.reset()
            new_tokens = idx[:, -self.context_size:]
        else:
            new_tokens = idx[:, self.seen:]
        with torch.no_grad():
            logits = gpt_with_cache(self.model, new_tokens, self.kv_cache)
        self.seen = idx.shape[1]
        return logits[:, -1, :]
