"""Self-attention with trainable weights: queries, keys and values, then SelfAttention_v1.

Three trainable matrices project every input: a query (what the token looks for), a key (what it
can be found by) and a value (what it hands on). Query-key dot products, divided by the square
root of the key size so that softmax does not saturate, give the weights that mix the values.

Book section 3.4.1. Run: python i_compact_self_attention.py
"""

import torch
import torch.nn as nn

from h_self_attention import inputs
from plumbing import run_main


class SelfAttention_v1(nn.Module):
    def __init__(self, d_in, d_out):
        super().__init__()
        # Created in the book's order (query, key, value) so seed 123 gives the book's numbers.
        self.W_query = nn.Parameter(torch.rand(d_in, d_out))
        self.W_key = nn.Parameter(torch.rand(d_in, d_out))
        self.W_value = nn.Parameter(torch.rand(d_in, d_out))

    def forward(self, x):
        keys = x @ self.W_key
        queries = x @ self.W_query
        values = x @ self.W_value
        attn_scores = queries @ keys.T  # omega: one row of scores per query
        # Scaling by sqrt(d_k) keeps the softmax from saturating when the dimension is large.
        attn_weights = torch.softmax(attn_scores / keys.shape[-1] ** 0.5, dim=-1)
        return attn_weights @ values


def main():
    x_2 = inputs[1]  # the second input, "journey", is the query
    d_in = inputs.shape[1]  # 3
    d_out = 2  # GPT models use d_out == d_in; 2 keeps the numbers easy to follow

    torch.manual_seed(123)
    W_query = nn.Parameter(torch.rand(d_in, d_out), requires_grad=False)
    W_key = nn.Parameter(torch.rand(d_in, d_out), requires_grad=False)
    W_value = nn.Parameter(torch.rand(d_in, d_out), requires_grad=False)

    query_2 = x_2 @ W_query
    key_2 = x_2 @ W_key
    value_2 = x_2 @ W_value
    print("query_2:", query_2)
    print("key_2:", key_2)
    print("value_2:", value_2)

    keys = inputs @ W_key
    values = inputs @ W_value
    print("\nkeys.shape:", keys.shape)
    print("values.shape:", values.shape)

    keys_2 = keys[1]
    attn_score_22 = query_2.dot(keys_2)
    print("\nAttention score omega_22:", attn_score_22)

    attn_scores_2 = query_2 @ keys.T  # all scores for query 2
    print("Attention scores for query 2:", attn_scores_2)

    d_k = keys.shape[-1]
    attn_weights_2 = torch.softmax(attn_scores_2 / d_k ** 0.5, dim=-1)
    print("Attention weights for query 2:", attn_weights_2)

    context_vec_2 = attn_weights_2 @ values
    print("Context vector z^2:", context_vec_2)

    # The same computation as a module; the second row is z^2 from above.
    torch.manual_seed(123)
    sa_v1 = SelfAttention_v1(d_in, d_out)
    print("\nSelfAttention_v1 output:\n", sa_v1(inputs))


if __name__ == "__main__":
    run_main(main)
