"""GPT_CONFIG_124M and DummyGPTModel: the skeleton of the GPT model (section 4.1).

A GPT is token and position embeddings, a stack of transformer blocks, a final layer norm and a
linear head scoring every vocabulary entry. The skeleton has that shape with placeholder blocks
and norms that pass their input through, so the data flow is visible before the parts are built.

Run: python n_dummy_gpt_model.py
"""

import torch
import torch.nn as nn

from plumbing import run_main

GPT_CONFIG_124M = {
    "vocab_size": 50257,     # the GPT-2 BPE vocabulary (tiktoken "gpt2")
    "context_length": 1024,  # the most tokens the model reads at once
    "emb_dim": 768,          # embedding size of each token
    "n_heads": 12,           # attention heads in each transformer block
    "n_layers": 12,          # number of transformer blocks
    "drop_rate": 0.1,        # dropout probability
    "qkv_bias": False,       # bias in the query, key and value projections
}


class DummyGPTModel(nn.Module):
    """The data flow of GPTModel (s_gpt_model.py) with placeholder blocks and normalisation."""

    def __init__(self, cfg):
        super().__init__()
        self.tok_emb = nn.Embedding(cfg["vocab_size"], cfg["emb_dim"])
        self.pos_emb = nn.Embedding(cfg["context_length"], cfg["emb_dim"])
        self.drop_emb = nn.Dropout(cfg["drop_rate"])
        self.trf_blocks = nn.Sequential(*[DummyTransformerBlock(cfg) for _ in range(cfg["n_layers"])])
        self.final_norm = DummyLayerNorm(cfg["emb_dim"])
        self.out_head = nn.Linear(cfg["emb_dim"], cfg["vocab_size"], bias=False)

    def forward(self, in_idx):
        batch_size, seq_len = in_idx.shape
        tok_embeds = self.tok_emb(in_idx)
        pos_embeds = self.pos_emb(torch.arange(seq_len, device=in_idx.device))
        x = tok_embeds + pos_embeds
        x = self.drop_emb(x)
        x = self.trf_blocks(x)
        x = self.final_norm(x)
        return self.out_head(x)


class DummyTransformerBlock(nn.Module):
    """Stands in for r_transformer_block.TransformerBlock; passes its input through unchanged."""

    def __init__(self, cfg):
        super().__init__()

    def forward(self, x):
        return x


class DummyLayerNorm(nn.Module):
    """Stands in for p_layernorm_gelu_feedforward.LayerNorm; same arguments, does nothing."""

    def __init__(self, normalized_shape, eps=1e-5):
        super().__init__()

    def forward(self, x):
        return x


def main():
    print("GPT_CONFIG_124M:")
    for key, value in GPT_CONFIG_124M.items():
        print(f"  {key}: {value}")

    model = DummyGPTModel(GPT_CONFIG_124M)
    print("\nDummyGPTModel:\n", model, sep="")
    print("(o_use_dummy_gpt_model.py runs it on tokenized text)")


if __name__ == "__main__":
    run_main(main)
