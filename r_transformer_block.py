"""TransformerBlock: attention and feed forward with pre-LayerNorm and shortcuts (section 4.5).

Attention mixes information between the tokens; the feed-forward network then transforms each
token on its own. Each half normalises its input first, applies dropout after, and adds its input
back through a shortcut; the output has the input's shape, so blocks stack (GPT-2 124M has 12).

Run: python r_transformer_block.py
"""

import torch
import torch.nn as nn

from fast_attention import FastMultiHeadAttention, layer_classes
from m_efficient_multi_head_attention import MultiHeadAttention
from n_dummy_gpt_model import GPT_CONFIG_124M
from plumbing import run_main

# The attention a config can ask for with its optional "attention" key (default: the book's).
ATTENTION_CLASSES = {"book": MultiHeadAttention, "fast": FastMultiHeadAttention}


def attention_class(cfg):
    name = cfg.get("attention", "book")
    if name not in ATTENTION_CLASSES:
        raise ValueError(f"unknown attention {name!r} in the model config; use one of "
                         f"{', '.join(map(repr, ATTENTION_CLASSES))}")
    return ATTENTION_CLASSES[name]


class TransformerBlock(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.att = attention_class(cfg)(
            d_in=cfg["emb_dim"],
            d_out=cfg["emb_dim"],
            context_length=cfg["context_length"],
            num_heads=cfg["n_heads"],
            dropout=cfg["drop_rate"],
            qkv_bias=cfg["qkv_bias"])
        # FeedForward and LayerNorm (section 4.2-4.3), or their fused twins with "fast_layers": True
        layer_norm_class, feed_forward_class = layer_classes(cfg)
        self.ff = feed_forward_class(cfg)
        self.norm1 = layer_norm_class(cfg["emb_dim"])
        self.norm2 = layer_norm_class(cfg["emb_dim"])
        self.drop_shortcut = nn.Dropout(cfg["drop_rate"])

    def forward(self, x):
        shortcut = x
        x = self.norm1(x)  # pre-LayerNorm: normalise before the sublayer, as GPT-2 does
        x = self.att(x)
        x = self.drop_shortcut(x)
        x = x + shortcut

        shortcut = x
        x = self.norm2(x)
        x = self.ff(x)
        x = self.drop_shortcut(x)
        return x + shortcut


def main():
    torch.manual_seed(123)
    x = torch.rand(2, 4, 768)  # (batch, tokens, emb_dim)
    block = TransformerBlock(GPT_CONFIG_124M)
    output = block(x)
    print("Input shape:", x.shape)
    print("Output shape:", output.shape)  # unchanged, so blocks can be stacked

    # Exercise 4.1: the feed forward module holds about twice the attention module's parameters.
    ff_params = sum(p.numel() for p in block.ff.parameters())
    att_params = sum(p.numel() for p in block.att.parameters())
    print(f"\nExercise 4.1, parameters in one block: feed forward {ff_params:,}, attention {att_params:,}")


if __name__ == "__main__":
    run_main(main)
