"""Beyond the book: chapter 5's pretraining run for a GPT-2-, a Llama-3.2- and a Qwen3-style model
of about the same size, on "The Verdict" and on tiny-shakespeare.

The three models share chapter 5's data pipeline (GPT-2 tokenizer, 90/10 split by characters,
batches of 2 x 256 tokens), AdamW (lr 0.0004, weight decay 0.1), the seed (the same batch order for
every model) and the number of steps; each model's feed forward is sized so that the three have
(about) the same number of parameters. The script prints each run's losses and training speed,
and saves one plot of the validation losses.

Run: python pretrain_gpt_llama_qwen.py            90 steps (chapter 5's 10 epochs of The Verdict)
     python pretrain_gpt_llama_qwen.py --max-steps 300 --data shakespeare
     python pretrain_gpt_llama_qwen.py --quick    tiny models, a few steps: checks that all runs
"""

import argparse
import time

import torch

from fast_pretraining import train_step
from gpt_to_llama import LLAMA32_CONFIG_1B, Llama3Model, count
from llama_to_qwen3 import Qwen3Model
from plumbing import (
    add_device_arg,
    ensure_writable,
    get_device,
    output_path,
    outputs_folder,
    positive_int,
    run_main,
    save_figure,
)
from s_gpt_model import GPTModel
from own_text_data import load_training_text
from u_pretraining import SEED, TRAIN_SETTINGS, evaluate_model, make_loaders, verdict_text

# The GPT-2-style model: chapter 5's GPTModel (context 256, dropout 0.1), narrower and shallower so
# that six runs fit in minutes on a small CPU. The other two take its size and add their own keys.
# At this size GPT-2's 50,257-token embedding and output layers hold 97% of the weights.
GPT_CONFIG = {"vocab_size": 50257, "context_length": 256, "emb_dim": 64, "n_heads": 4, "n_layers": 4,
              "drop_rate": 0.1, "qkv_bias": False, "attention": "fast"}
# Llama 3.2's choices: 4 query heads share 2 key/value heads (1B: 32 and 8), theta 500,000 and
# its frequency scaling. Untied output layer, as chapter 5's GPTModel, so that all three start
# from PyTorch's default initialisation (a tied N(0, 1) embedding gives huge initial logits).
LLAMA_CONFIG = {**GPT_CONFIG, "n_kv_groups": 2, "rope_base": 500_000.0, "dtype": torch.float32,
                "rope_freq": LLAMA32_CONFIG_1B["rope_freq"], "tie_embeddings": False}
# Qwen3's: RMSNorm on queries and keys, heads twice as wide as emb_dim / n_heads (0.6B: 16 x 128
# in 1024), theta 1,000,000.
QWEN3_CONFIG = {**LLAMA_CONFIG, "head_dim": 32, "qk_norm": True, "rope_base": 1_000_000.0,
                "rope_freq": None, "rms_norm_eps": 1e-6}

MAX_STEPS = 90  # chapter 5: 10 epochs of The Verdict's 9 training batches

QUICK_SIZES = {"context_length": 32, "emb_dim": 32, "n_heads": 2, "n_layers": 2, "n_kv_groups": 1,
               "head_dim": 32}
QUICK_SETTINGS = {**TRAIN_SETTINGS, "eval_freq": 2, "eval_iter": 1}
QUICK_MAX_STEPS, QUICK_MAX_CHARS = 4, 3_000

DATA = ("verdict", "shakespeare")


def matched_hidden_dim(cfg, target_params, model_class):
    """The feed-forward size that brings a Llama/Qwen3 model built from cfg closest to
    target_params parameters (SwiGLU has 3 * emb_dim weights per unit of hidden_dim)."""
    with torch.device("meta"):  # shapes only: counting costs no memory and no random numbers
        without_ff = count(model_class({**cfg, "hidden_dim": 1})) - 3 * cfg["emb_dim"] * cfg["n_layers"]
    return max(1, round((target_params - without_ff) / (3 * cfg["emb_dim"] * cfg["n_layers"])))


def model_configs(quick=False):
    """{name: (model class, config)}, sized to the GPT-2-style model's parameter count."""
    gpt, llama, qwen = ({**cfg, **QUICK_SIZES} if quick else cfg
                        for cfg in (GPT_CONFIG, LLAMA_CONFIG, QWEN3_CONFIG))
    gpt = {key: value for key, value in gpt.items() if key != "head_dim"}
    llama = {**llama, "head_dim": None}  # Llama: emb_dim / n_heads
    with torch.device("meta"):
        target = count(GPTModel(gpt))
    llama["hidden_dim"] = matched_hidden_dim(llama, target, Llama3Model)
    qwen = {**qwen, "hidden_dim": matched_hidden_dim(qwen, target, Qwen3Model)}
    return {"GPT-2": (GPTModel, gpt), "Llama 3.2": (Llama3Model, llama), "Qwen3": (Qwen3Model, qwen)}


def load_text(name, quick=False):
    if name == "verdict":
        return verdict_text(quick)
    text, _, _ = load_training_text("shakespeare", train_ratio=1.0)  # the whole text; split below
    return text[:QUICK_MAX_CHARS] if quick else text


def pretrain(model, train_loader, val_loader, settings, device, max_steps):
    """Chapter 5's loop (one AdamW step per batch, an evaluation every eval_freq steps), for
    max_steps steps over as many epochs as that takes. Returns (steps, train_losses, val_losses,
    training tokens per second), the speed without the evaluations."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings["learning_rate"],
                                  weight_decay=settings["weight_decay"])
    torch.manual_seed(SEED)  # the same shuffles, so every model sees the same batches in order
    steps, train_losses, val_losses = [], [], []
    tokens, train_seconds, step = 0, 0.0, 0
    model.train()
    while step < max_steps:
        for batch in train_loader:
            start = time.perf_counter()
            tokens += train_step(model, [batch], optimizer, device)
            train_seconds += time.perf_counter() - start
            if step % settings["eval_freq"] == 0 or step == max_steps - 1:
                train_loss, val_loss = evaluate_model(model, train_loader, val_loader, device,
                                                      settings["eval_iter"])
                steps.append(step + 1)
                train_losses.append(train_loss)
                val_losses.append(val_loss)
            step += 1
            if step == max_steps:
                break
    return steps, train_losses, val_losses, tokens / train_seconds


def plot_validation_losses(results, path):
    """One panel per data set, one validation curve per model."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(4.2 * len(results), 3.2), squeeze=False)
    for ax, (data_name, runs) in zip(axes[0], results.items()):
        for model_name, run in runs.items():
            ax.plot(run["steps"], run["val_losses"], label=f"{model_name} ({run['params'] / 1e6:.2f}M)")
        ax.set_title(data_name)
        ax.set_xlabel("optimizer steps (batches of 2 x context)")
        ax.set_ylabel("validation loss")
        ax.grid(alpha=0.3)
        ax.legend()
    return save_figure(fig, path)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_device_arg(parser)
    parser.add_argument("--data", nargs="+", choices=DATA, default=list(DATA),
                        help="the texts to train on (default: both)")
    parser.add_argument("--max-steps", type=positive_int, default=None,
                        help=f"optimizer steps per run (default {MAX_STEPS}; --quick {QUICK_MAX_STEPS})")
    parser.add_argument("--quick", action="store_true", help="tiny models on 3,000 characters, a few steps")
    parser.add_argument("--threads", type=positive_int, default=None,
                        help="CPU threads for PyTorch (default: PyTorch's choice)")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    ensure_writable(outputs_folder(args.quick))  # the plot comes after minutes of training
    device = get_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    settings = QUICK_SETTINGS if args.quick else TRAIN_SETTINGS
    max_steps = args.max_steps or (QUICK_MAX_STEPS if args.quick else MAX_STEPS)
    configs = model_configs(args.quick)
    print(f"Device: {device}; {max_steps} steps of batch {settings['batch_size']} per run, AdamW lr "
          f"{settings['learning_rate']}, weight decay {settings['weight_decay']}, seed {SEED}"
          + ("   (--quick: tiny models)" if args.quick else ""))

    results = {}
    for data_name in args.data:
        text = load_text(data_name, args.quick)
        _, first_cfg = configs["GPT-2"]
        torch.manual_seed(SEED)
        train_loader, val_loader = make_loaders(text, first_cfg, settings)
        print(f"\n{data_name}: {len(text):,} characters, {len(train_loader)} training batches, "
              f"{len(val_loader)} validation batches")
        results[data_name] = {}
        for model_name, (model_class, cfg) in configs.items():
            torch.manual_seed(SEED)
            model = model_class(cfg).to(device)
            steps, train_losses, val_losses, speed = pretrain(model, train_loader, val_loader, settings,
                                                              device, max_steps)
            results[data_name][model_name] = {"steps": steps, "val_losses": val_losses,
                                              "params": count(model)}
            print(f"  {model_name:10s} {count(model):>11,} parameters: train loss {train_losses[0]:.3f} -> "
                  f"{train_losses[-1]:.3f}, val loss {val_losses[0]:.3f} -> {val_losses[-1]:.3f} "
                  f"(lowest {min(val_losses):.3f}), {speed:,.0f} training tokens/s")

    path = plot_validation_losses(results, output_path("pretrain-gpt-llama-qwen.png", args.quick))
    print("\nSaved the validation losses to", path)


if __name__ == "__main__":
    run_main(main)
