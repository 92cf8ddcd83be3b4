"""MultiHeadAttention: all heads in one module by splitting the weights (section 3.6.2).

Run: python m_efficient_multi_head_attention.py
"""

import torch
import torch.nn as nn
import torch.nn.functional as F

from gpt_download import run_main
from h_self_attention import inputs


class MultiHeadAttention(nn.Module):
    def __init__(self, d_in, d_out, context_length, dropout, num_heads, qkv_bias=False):
        super().__init__()
        if d_out % num_heads != 0:
            raise ValueError(f"d_out ({d_out}) must be divisible by num_heads ({num_heads})")
        self.d_out = d_out
        self.num_heads = num_heads
        self.head_dim = d_out // num_heads  # each head works on a slice of this size
        self.W_query = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.W_key = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.W_value = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.out_proj = nn.Linear(d_out, d_out)  # combines the heads' outputs
        self.dropout = nn.Dropout(dropout)
        self.register_buffer("mask", torch.triu(torch.ones(context_length, context_length), diagonal=1))

    def forward(self, x):
        b, num_tokens, d_in = x.shape
        keys = self.W_key(x)  # (b, num_tokens, d_out)
        queries = self.W_query(x)
        values = self.W_value(x)

        # Split the last dimension into heads: (b, num_tokens, num_heads, head_dim),
        # then move the heads in front so each head attends independently.
        keys = keys.view(b, num_tokens, self.num_heads, self.head_dim).transpose(1, 2)
        queries = queries.view(b, num_tokens, self.num_heads, self.head_dim).transpose(1, 2)
        values = values.view(b, num_tokens, self.num_heads, self.head_dim).transpose(1, 2)

        attn_scores = queries @ keys.transpose(2, 3)
        mask_bool = self.mask.bool()[:num_tokens, :num_tokens]
        attn_scores.masked_fill_(mask_bool, -torch.inf)
        attn_weights = torch.softmax(attn_scores / keys.shape[-1] ** 0.5, dim=-1)
        attn_weights = self.dropout(attn_weights)

        # (b, num_heads, num_tokens, head_dim) -> (b, num_tokens, num_heads, head_dim) -> merge heads
        context_vec = (attn_weights @ values).transpose(1, 2)
        context_vec = context_vec.contiguous().view(b, num_tokens, self.d_out)
        return self.out_proj(context_vec)


# ---- beyond the book: the same attention, faster, and a key-value cache for generation ----

class FastMultiHeadAttention(nn.Module):
    """MultiHeadAttention's computation with one fused query/key/value projection and PyTorch's
    scaled_dot_product_attention (FlashAttention on CUDA, which never builds the attention matrix).
    It loads MultiHeadAttention's weights: fast.load_state_dict(book_mha.state_dict())."""

    def __init__(self, d_in, d_out, context_length, dropout, num_heads, qkv_bias=False):
        super().__init__()
        if d_out % num_heads != 0:
            raise ValueError(f"d_out ({d_out}) must be divisible by num_heads ({num_heads})")
        self.d_out = d_out
        self.num_heads = num_heads
        self.head_dim = d_out // num_heads
        self.context_length = context_length
        # Drawn as the book's three layers in the book's order, then stacked, so that the same seed
        # gives MultiHeadAttention's starting weights.
        W_query, W_key, W_value = (nn.Linear(d_in, d_out, bias=qkv_bias) for _ in range(3))
        self.W_qkv = nn.utils.skip_init(nn.Linear, d_in, 3 * d_out, bias=qkv_bias,
                                        device=W_query.weight.device)
        with torch.no_grad():
            self.W_qkv.weight.copy_(torch.cat([W_query.weight, W_key.weight, W_value.weight]))
            if qkv_bias:
                self.W_qkv.bias.copy_(torch.cat([W_query.bias, W_key.bias, W_value.bias]))
        self.out_proj = nn.Linear(d_out, d_out)
        self.dropout = dropout  # a probability: scaled_dot_product_attention applies it itself
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
        dropout_p = self.dropout if self.training else 0.0
        mask, is_causal = None, True
        if kv_cache is not None:
            start = kv_cache.length
            keys, values = kv_cache.append(keys, values)
            if start > 0:  # is_causal assumes queries and keys start at the same position
                mask, is_causal = ~cached_causal_mask(start, num_tokens, x.device), False
        context_vec = F.scaled_dot_product_attention(queries, keys, values, attn_mask=mask,
                                                     dropout_p=dropout_p, is_causal=is_causal)
        context_vec = context_vec.transpose(1, 2).reshape(b, num_tokens, self.d_out)
        return self.out_proj(context_vec)


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


def main():
    # Batched matrix multiplication: @ multiplies the last two dimensions for every batch and head.
    a = torch.tensor([[[[0.2745, 0.6584, 0.2775, 0.8573],  # (b=1, num_heads=2, num_tokens=3, head_dim=4)
                        [0.8993, 0.0390, 0.9268, 0.7388],
                        [0.7179, 0.7058, 0.9156, 0.4340]],
                       [[0.0772, 0.3565, 0.1479, 0.5331],
                        [0.4066, 0.2318, 0.4545, 0.9737],
                        [0.4606, 0.5159, 0.4220, 0.5786]]]])
    print("a @ a.transpose(2, 3):\n", a @ a.transpose(2, 3))

    first_head = a[0, 0, :, :]
    print("\nFirst head:\n", first_head @ first_head.T)
    second_head = a[0, 1, :, :]
    print("\nSecond head:\n", second_head @ second_head.T)

    batch = torch.stack((inputs, inputs), dim=0)
    torch.manual_seed(123)
    batch_size, context_length, d_in = batch.shape
    d_out = 2
    mha = MultiHeadAttention(d_in, d_out, context_length, 0.0, num_heads=2)
    context_vecs = mha(batch)
    print("\nMultiHeadAttention output:\n", context_vecs)
    print("context_vecs.shape:", context_vecs.shape)

    # Exercise 3.3: a GPT-2-sized attention module (768 dimensions, 12 heads, 1024 tokens).
    mha_gpt2 = MultiHeadAttention(d_in=768, d_out=768, context_length=1024, dropout=0.0, num_heads=12)
    num_params = sum(p.numel() for p in mha_gpt2.parameters())
    print(f"\nExercise 3.3, GPT-2-sized MultiHeadAttention: {num_params:,} parameters")


if __name__ == "__main__":
    run_main(main)
