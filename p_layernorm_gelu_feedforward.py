"""LayerNorm, GELU and FeedForward: the parts of a transformer block (sections 4.2-4.3).

Layer normalisation rescales each token's activations to mean 0 and variance 1 (then applies a
learned scale and shift), which keeps a deep network's training stable. GELU is a smooth ReLU that
lets small negative values through. The feed-forward network widens each token's vector to four
times its size, applies GELU and projects it back, every token on its own.

Run: python p_layernorm_gelu_feedforward.py
"""

import torch
import torch.nn as nn

from n_dummy_gpt_model import GPT_CONFIG_124M
from plumbing import output_path, run_main, save_figure


class LayerNorm(nn.Module):
    def __init__(self, emb_dim):
        super().__init__()
        self.eps = 1e-5  # keeps the division defined when the variance is zero
        self.scale = nn.Parameter(torch.ones(emb_dim))
        self.shift = nn.Parameter(torch.zeros(emb_dim))

    def forward(self, x):
        mean = x.mean(dim=-1, keepdim=True)
        var = x.var(dim=-1, keepdim=True, unbiased=False)  # biased, as GPT-2 (and TensorFlow) do
        norm_x = (x - mean) / torch.sqrt(var + self.eps)
        return self.scale * norm_x + self.shift


class GELU(nn.Module):
    """The tanh approximation of GELU that GPT-2 was trained with."""

    def forward(self, x):
        return 0.5 * x * (1 + torch.tanh(
            torch.sqrt(torch.tensor(2.0 / torch.pi)) * (x + 0.044715 * torch.pow(x, 3))))


class FeedForward(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        # Beyond the book: an optional config key "d_ff" sets the width (train_own_text.py --d-ff).
        d_ff = cfg.get("d_ff", 4 * cfg["emb_dim"])
        self.layers = nn.Sequential(
            nn.Linear(cfg["emb_dim"], d_ff),  # expand (4x in the book) ...
            GELU(),
            nn.Linear(d_ff, cfg["emb_dim"]),  # ... and project back
        )

    def forward(self, x):
        return self.layers(x)


def plot_gelu_relu(path):
    """Save GELU and ReLU side by side as a PNG; GELU is smooth and lets small negatives through."""
    import matplotlib.pyplot as plt  # imported here so that importing this module stays light

    gelu, relu = GELU(), nn.ReLU()
    x = torch.linspace(-3, 3, 100)
    y_gelu, y_relu = gelu(x), relu(x)
    fig = plt.figure(figsize=(8, 3))
    for i, (y, label) in enumerate(zip([y_gelu, y_relu], ["GELU", "ReLU"]), 1):
        plt.subplot(1, 2, i)
        plt.plot(x, y)
        plt.title(f"{label} activation function")
        plt.xlabel("x")
        plt.ylabel(f"{label}(x)")
        plt.grid(True)
    return save_figure(fig, path)


def main():
    # 4.2: normalise the outputs of a small layer by hand.
    torch.manual_seed(123)
    batch_example = torch.randn(2, 5)  # two examples with five features each
    layer = nn.Sequential(nn.Linear(5, 6), nn.ReLU())
    out = layer(batch_example)
    print("Layer outputs:\n", out)

    mean = out.mean(dim=-1, keepdim=True)
    var = out.var(dim=-1, keepdim=True)
    print("Mean:\n", mean)
    print("Variance:\n", var)

    out_norm = (out - mean) / torch.sqrt(var)
    mean = out_norm.mean(dim=-1, keepdim=True)
    var = out_norm.var(dim=-1, keepdim=True)
    print("\nNormalized layer outputs:\n", out_norm)
    print("Mean:\n", mean)
    print("Variance:\n", var)

    torch.set_printoptions(sci_mode=False)  # show 1e-9 as 0.0000
    print("\nMean without scientific notation:\n", mean)
    print("Variance:\n", var)

    # The same with the LayerNorm module (biased variance, so exactly 1 up to eps).
    ln = LayerNorm(emb_dim=5)
    out_ln = ln(batch_example)
    mean = out_ln.mean(dim=-1, keepdim=True)
    var = out_ln.var(dim=-1, unbiased=False, keepdim=True)
    print("\nLayerNorm mean:\n", mean)
    print("LayerNorm variance:\n", var)

    # 4.3: GELU against ReLU, and the feed forward module.
    path = plot_gelu_relu(output_path("gelu_vs_relu.png"))
    print(f"\nSaved the GELU vs ReLU plot to {path}")

    ffn = FeedForward(GPT_CONFIG_124M)
    x = torch.rand(2, 3, 768)  # (batch, tokens, emb_dim)
    out = ffn(x)
    print("\nFeedForward output shape:", out.shape)


if __name__ == "__main__":
    run_main(main)
