"""CausalAttention: self-attention that cannot look ahead, with dropout, on a batch of inputs.

The steps of j in one module that takes a batch [batch, tokens, d_in]. The mask is a registered
buffer: it moves with the module to the GPU and is saved with it, but is not a trained weight.

Book section 3.5.3. Run: python k_causal_attention.py
"""

import torch
import torch.nn as nn

from h_self_attention import inputs
from plumbing import run_main


class CausalAttention(nn.Module):
    def __init__(self, d_in, d_out, context_length, dropout, qkv_bias=False):
        super().__init__()
        self.d_out = d_out
        self.W_query = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.W_key = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.W_value = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.dropout = nn.Dropout(dropout)
        # A buffer moves with the module to the GPU and is saved with it, but is not trained.
        self.register_buffer("mask", torch.triu(torch.ones(context_length, context_length), diagonal=1))

    def forward(self, x):
        b, num_tokens, d_in = x.shape
        keys = self.W_key(x)
        queries = self.W_query(x)
        values = self.W_value(x)

        attn_scores = queries @ keys.transpose(1, 2)  # transpose the token and feature dims, not the batch
        # Cut the mask to the actual number of tokens, which can be less than context_length.
        attn_scores.masked_fill_(self.mask.bool()[:num_tokens, :num_tokens], -torch.inf)
        attn_weights = torch.softmax(attn_scores / keys.shape[-1] ** 0.5, dim=-1)
        attn_weights = self.dropout(attn_weights)
        return attn_weights @ values


def main():
    batch = torch.stack((inputs, inputs), dim=0)  # two copies stand in for a batch of two texts
    print("batch.shape:", batch.shape)

    d_in, d_out = inputs.shape[1], 2
    torch.manual_seed(123)
    context_length = batch.shape[1]
    ca = CausalAttention(d_in, d_out, context_length, 0.0)
    context_vecs = ca(batch)
    print("\nCausalAttention output:\n", context_vecs)
    print("context_vecs.shape:", context_vecs.shape)


if __name__ == "__main__":
    run_main(main)
