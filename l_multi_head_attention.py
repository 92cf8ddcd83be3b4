"""MultiHeadAttentionWrapper: several CausalAttention heads side by side, outputs concatenated.

Each head has weights of its own, so each can attend to a different kind of relation between the
tokens; their context vectors are joined along the last dimension. This wrapper runs the heads
one after the other; m_efficient_multi_head_attention.py computes them all at once.

Book section 3.6.1. Run: python l_multi_head_attention.py
"""

import torch
import torch.nn as nn

from h_self_attention import inputs
from k_causal_attention import CausalAttention
from plumbing import run_main


class MultiHeadAttentionWrapper(nn.Module):
    def __init__(self, d_in, d_out, context_length, dropout, num_heads, qkv_bias=False):
        super().__init__()
        self.heads = nn.ModuleList(
            [CausalAttention(d_in, d_out, context_length, dropout, qkv_bias) for _ in range(num_heads)])

    def forward(self, x):
        # The heads run one after another; m_efficient_multi_head_attention.py runs them in one go.
        return torch.cat([head(x) for head in self.heads], dim=-1)


def main():
    batch = torch.stack((inputs, inputs), dim=0)

    torch.manual_seed(123)
    context_length = batch.shape[1]  # the number of tokens
    d_in, d_out = 3, 2
    mha = MultiHeadAttentionWrapper(d_in, d_out, context_length, 0.0, num_heads=2)
    context_vecs = mha(batch)
    print("MultiHeadAttentionWrapper output (2 heads x d_out 2 = 4 columns):\n", context_vecs)
    print("context_vecs.shape:", context_vecs.shape)

    # Exercise 3.2: d_out = 1 per head gives two-dimensional context vectors.
    torch.manual_seed(123)
    mha = MultiHeadAttentionWrapper(d_in, 1, context_length, 0.0, num_heads=2)
    context_vecs = mha(batch)
    print("\nExercise 3.2, d_out=1 per head:\n", context_vecs)
    print("context_vecs.shape:", context_vecs.shape)


if __name__ == "__main__":
    run_main(main)
