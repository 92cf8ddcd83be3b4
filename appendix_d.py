"""Appendix D: a learning rate that warms up and then decays along a cosine, and gradient
clipping, added to chapter 5's training loop as train_model.

Warmup keeps the first, large and noisy updates of a fresh model small; the cosine decay lets the
learning rate shrink smoothly towards the end; clipping scales all gradients down together
whenever their overall norm exceeds 1.0, so that one bad batch cannot throw the weights far.

Run: python appendix_d.py            the schedule, clipping, and 15 epochs of train_model
     python appendix_d.py --quick    a tiny model for a few steps, to check that all runs
"""

import argparse
import math

import torch

from d_tokenizer import get_gpt2_tokenizer
from plumbing import add_device_arg, add_quick_and_epochs_args, output_path, run_main, save_figure
from s_gpt_model import GPTModel
from t_pretraining_basics import START_CONTEXT
from u_pretraining import (SEED, calc_loss_batch, evaluate_model, generate_and_print_sample, make_loaders,
                           plot_losses, start_run, verdict_text)

# Warm up linearly for the first 20% of the steps, then decay along a cosine.
APPENDIX_D_SETTINGS = {
    "batch_size": 2,
    "train_ratio": 0.90,
    "num_epochs": 15,
    "warmup_fraction": 0.2,
    "peak_lr": 0.001,        # the book's errata: 0.001 (the printed 5e-4 was a mistake)
    "initial_lr": 1e-5,
    "min_lr": 1e-5,
    "weight_decay": 0.1,
    "eval_freq": 5,
    "eval_iter": 1,
}
QUICK_APPENDIX_D_SETTINGS = {**APPENDIX_D_SETTINGS, "num_epochs": 2, "eval_iter": 2}


def lr_at_step(global_step, warmup_steps, total_steps, peak_lr, initial_lr, min_lr):
    """Linear warmup from initial_lr to peak_lr, then a half cosine from peak_lr down to min_lr."""
    if global_step < warmup_steps:
        lr_increment = (peak_lr - initial_lr) / warmup_steps
        return initial_lr + global_step * lr_increment
    progress = (global_step - warmup_steps) / (total_steps - warmup_steps)
    return min_lr + (peak_lr - min_lr) * 0.5 * (1 + math.cos(math.pi * progress))


def find_highest_gradient(model):
    max_grad = None
    for param in model.parameters():
        if param.grad is not None:
            max_grad_param = param.grad.flatten().max()
            if max_grad is None or max_grad_param > max_grad:
                max_grad = max_grad_param
    return max_grad


def train_model(model, train_loader, val_loader, optimizer, device, n_epochs, eval_freq, eval_iter,
                start_context, tokenizer, warmup_steps, initial_lr=3e-05, min_lr=1e-6):
    """train_model_simple plus a learning rate schedule (the optimizer's lr is the peak) and
    gradient clipping after warmup. Returns (train_losses, val_losses, track_tokens_seen, track_lrs)."""
    train_losses, val_losses, track_tokens_seen, track_lrs = [], [], [], []
    tokens_seen, global_step = 0, -1
    peak_lr = optimizer.param_groups[0]["lr"]
    total_training_steps = len(train_loader) * n_epochs

    for epoch in range(n_epochs):
        model.train()
        for input_batch, target_batch in train_loader:
            optimizer.zero_grad()
            global_step += 1
            lr = lr_at_step(global_step, warmup_steps, total_training_steps, peak_lr, initial_lr, min_lr)
            for param_group in optimizer.param_groups:
                param_group["lr"] = lr
            track_lrs.append(lr)

            loss = calc_loss_batch(input_batch, target_batch, model, device)
            loss.backward()
            # Clip on every step after warmup (the printed book's `>` skipped the first one).
            if global_step >= warmup_steps:
                torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=1.0)
            optimizer.step()
            tokens_seen += input_batch.numel()

            if global_step % eval_freq == 0:
                train_loss, val_loss = evaluate_model(model, train_loader, val_loader, device, eval_iter)
                train_losses.append(train_loss)
                val_losses.append(val_loss)
                track_tokens_seen.append(tokens_seen)
                print(f"Ep {epoch + 1} (Iter {global_step:06d}): "
                      f"Train loss {train_loss:.3f}, Val loss {val_loss:.3f}")

        generate_and_print_sample(model, tokenizer, device, start_context)

    return train_losses, val_losses, track_tokens_seen, track_lrs


def plot_learning_rates(lrs, path):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3))
    ax.plot(range(len(lrs)), lrs)
    ax.set_xlabel("Steps")
    ax.set_ylabel("Learning rate")
    return save_figure(fig, path)


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_device_arg(parser)
    add_quick_and_epochs_args(parser, APPENDIX_D_SETTINGS["num_epochs"],
                              QUICK_APPENDIX_D_SETTINGS["num_epochs"],
                              "a tiny model for a few steps: checks in seconds that everything runs")
    return parser.parse_args()


def main():
    args = parse_args()
    device, cfg, settings = start_run(args, APPENDIX_D_SETTINGS, QUICK_APPENDIX_D_SETTINGS)
    n_epochs = settings["num_epochs"]
    tokenizer = get_gpt2_tokenizer()
    torch.manual_seed(SEED)
    train_loader, val_loader = make_loaders(verdict_text(args.quick), cfg, settings)

    # D.1 and D.2: the schedule over all steps of the run.
    total_steps = len(train_loader) * n_epochs
    warmup_steps = int(settings["warmup_fraction"] * total_steps)
    print(f"D.1 {total_steps} steps, {warmup_steps} of them warmup")
    lrs = [lr_at_step(step, warmup_steps, total_steps, settings["peak_lr"], settings["initial_lr"],
                      settings["min_lr"]) for step in range(total_steps)]
    print(f"D.2 Peak learning rate {max(lrs):.6f} at step {lrs.index(max(lrs))}, last {lrs[-1]:.6f}")

    # D.3: clipping scales all gradients down together until their overall L2 norm is 1.0.
    torch.manual_seed(SEED)
    model = GPTModel(cfg)
    model.to(device)
    input_batch, target_batch = next(iter(train_loader))
    loss = calc_loss_batch(input_batch, target_batch, model, device)
    loss.backward()
    print("\nD.3 Highest gradient before clipping:", find_highest_gradient(model))
    torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=1.0)
    print("Highest gradient after clipping:", find_highest_gradient(model))

    # D.4: the modified training function.
    print(f"\nD.4 Training with train_model for {n_epochs} epochs")
    torch.manual_seed(SEED)
    model = GPTModel(cfg)
    model.to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings["peak_lr"],
                                  weight_decay=settings["weight_decay"])
    train_losses, val_losses, tokens_seen, lrs = train_model(
        model, train_loader, val_loader, optimizer, device, n_epochs=n_epochs,
        eval_freq=settings["eval_freq"], eval_iter=settings["eval_iter"],
        start_context=START_CONTEXT, tokenizer=tokenizer, warmup_steps=warmup_steps,
        initial_lr=settings["initial_lr"], min_lr=settings["min_lr"])
    path = plot_learning_rates(lrs, output_path("appendix-d-lr-schedule.png", args.quick))
    print("Saved the learning rate schedule to", path)
    epochs_tensor = torch.linspace(1, n_epochs, len(train_losses))
    path = plot_losses(epochs_tensor, tokens_seen, train_losses, val_losses,
                       output_path("appendix-d-loss-plot.png", args.quick))
    print("Saved the appendix D loss plot to", path)


if __name__ == "__main__":
    run_main(main)
