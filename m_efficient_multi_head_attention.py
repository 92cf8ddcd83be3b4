"""MultiHeadAttention: all heads in one module by splitting the weights (section 3.6.2).

One query, one key and one value projection of the full width are reshaped into num_heads slices,
so batched matrix products compute every head together; an output projection then mixes the
heads' results. Given the same weights, it computes what the wrapper of l computes.
Not here: PyTorch's fused attention kernel (FastMultiHeadAttention, fast_attention.py).

Run: python m_efficient_multi_head_attention.py
"""

import torch
import torch.nn as nn

from h_self_attention import inputs
from plumbing import run_main


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
