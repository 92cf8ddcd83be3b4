"""Shortcut (residual) connections: gradients in a five-layer network with and without them.

Travelling back through many layers, gradients can shrink until the first layers hardly learn (the
vanishing gradient problem). A shortcut adds a layer's input to its output, which gives the
gradient a direct path around the layer; the printed means show the difference.

Book section 4.4. Run: python q_shortcut_dnn.py
"""

import torch
import torch.nn as nn

from p_layernorm_gelu_feedforward import GELU
from plumbing import run_main

LAYER_SIZES = [3, 3, 3, 3, 3, 1]  # five layers; the last one maps to a single output


class ExampleDeepNeuralNetwork(nn.Module):
    def __init__(self, layer_sizes, use_shortcut):
        super().__init__()
        self.use_shortcut = use_shortcut
        self.layers = nn.ModuleList([
            nn.Sequential(nn.Linear(n_in, n_out), GELU())
            for n_in, n_out in zip(layer_sizes[:-1], layer_sizes[1:])])

    def forward(self, x):
        for layer in self.layers:
            layer_output = layer(x)
            # A shortcut adds the layer's input to its output; only possible when the shapes match.
            if self.use_shortcut and x.shape == layer_output.shape:
                x = x + layer_output
            else:
                x = layer_output
        return x


def gradient_means(model, x):
    """Backpropagate an MSE loss against a target of 0 and return {weight name: mean |gradient|}."""
    output = model(x)
    target = torch.tensor([[0.0]])
    loss = nn.MSELoss()(output, target)
    loss.backward()
    return {name: param.grad.abs().mean().item()
            for name, param in model.named_parameters() if "weight" in name}


def print_gradients(model, x):
    for name, mean in gradient_means(model, x).items():
        print(f"{name} has gradient mean of {mean}")


def main():
    sample_input = torch.tensor([[1.0, 0.0, -1.0]])

    torch.manual_seed(123)
    model_without_shortcut = ExampleDeepNeuralNetwork(LAYER_SIZES, use_shortcut=False)
    print("Without shortcut connections (the gradients shrink towards the first layer):")
    print_gradients(model_without_shortcut, sample_input)

    torch.manual_seed(123)
    model_with_shortcut = ExampleDeepNeuralNetwork(LAYER_SIZES, use_shortcut=True)
    print("\nWith shortcut connections (the first layers still get large gradients):")
    print_gradients(model_with_shortcut, sample_input)


if __name__ == "__main__":
    run_main(main)
