"""SelfAttention_v2 with nn.Linear, then causal attention: masks and dropout on the weights.

nn.Linear does the same products as v1's matrices, with a better initialisation. A GPT predicts
the next token, so a token must not see the ones after it: scores above the diagonal become -inf
before softmax, and their weights 0. Dropout zeroes random weights in training, scaling the rest.

Book sections 3.4.2-3.5.2. Run: python j_linear_self_attention.py
"""

import torch
import torch.nn as nn

from h_self_attention import inputs
from i_compact_self_attention import SelfAttention_v1
from plumbing import run_main


class SelfAttention_v2(nn.Module):
    def __init__(self, d_in, d_out, qkv_bias=False):
        super().__init__()
        # nn.Linear initialises its weights better than torch.rand and stores them transposed.
        self.W_query = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.W_key = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.W_value = nn.Linear(d_in, d_out, bias=qkv_bias)

    def forward(self, x):
        keys = self.W_key(x)
        queries = self.W_query(x)
        values = self.W_value(x)
        attn_scores = queries @ keys.T
        attn_weights = torch.softmax(attn_scores / keys.shape[-1] ** 0.5, dim=-1)
        return attn_weights @ values


def main():
    d_in, d_out = inputs.shape[1], 2

    torch.manual_seed(789)
    sa_v2 = SelfAttention_v2(d_in, d_out)
    print("SelfAttention_v2 output:\n", sa_v2(inputs))

    # Exercise 3.1: SelfAttention_v1 computes the same thing once it holds v2's (transposed) weights.
    sa_v1 = SelfAttention_v1(d_in, d_out)
    sa_v1.W_query.data = sa_v2.W_query.weight.T
    sa_v1.W_key.data = sa_v2.W_key.weight.T
    sa_v1.W_value.data = sa_v2.W_value.weight.T
    print("\nExercise 3.1, SelfAttention_v1 with v2's weights:\n", sa_v1(inputs))

    # 3.5.1: the attention weights, then hide the future with a lower-triangular mask.
    queries = sa_v2.W_query(inputs)
    keys = sa_v2.W_key(inputs)
    attn_scores = queries @ keys.T
    attn_weights = torch.softmax(attn_scores / keys.shape[-1] ** 0.5, dim=-1)
    print("\nAttention weights:\n", attn_weights)

    context_length = attn_scores.shape[0]
    mask_simple = torch.tril(torch.ones(context_length, context_length))
    print("\nSimple mask:\n", mask_simple)
    masked_simple = attn_weights * mask_simple
    print("\nMasked attention weights:\n", masked_simple)

    # Zeroing weights after the softmax leaves rows that no longer sum to 1: renormalise them.
    row_sums = masked_simple.sum(dim=-1, keepdim=True)
    masked_simple_norm = masked_simple / row_sums
    print("\nRenormalised:\n", masked_simple_norm)

    # Cheaper and equivalent: set future scores to -inf before the softmax, whose exp() makes them 0.
    mask = torch.triu(torch.ones(context_length, context_length), diagonal=1)
    masked = attn_scores.masked_fill(mask.bool(), -torch.inf)
    print("\nScores with the -inf mask:\n", masked)
    attn_weights = torch.softmax(masked / keys.shape[-1] ** 0.5, dim=1)
    print("\nCausal attention weights:\n", attn_weights)

    # 3.5.2: dropout zeroes half the entries and scales the rest by 1 / (1 - 0.5) = 2.
    torch.manual_seed(123)
    dropout = nn.Dropout(0.5)
    example = torch.ones(6, 6)
    print("\nDropout on a matrix of ones:\n", dropout(example))

    torch.manual_seed(123)
    print("\nDropout on the causal attention weights:\n", dropout(attn_weights))


if __name__ == "__main__":
    run_main(main)
