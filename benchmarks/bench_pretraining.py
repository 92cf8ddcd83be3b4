"""Pretraining throughput of the book path against the fast path (tokens/s; on CUDA also MFU).

book path: GPTModel with MultiHeadAttention, float32, torch.optim.AdamW, as in chapter 5.
fast path: what `fast_pretraining.py` uses: FastMultiHeadAttention, fused AdamW, bfloat16
autocast where the hardware computes bfloat16 natively, TF32 matmuls on CUDA.
With --compile, also the fast path under torch.compile. Each step trains on a batch of random
token ids (speed does not depend on the text). The paths take turns step by step, so a load
that comes and goes hits both alike. Prints figures; it is not a test.

Run: python benchmarks/bench_pretraining.py [--device cpu] [--contexts 256 1024] [--steps 4]
     python benchmarks/bench_pretraining.py --config small --steps 3     a quick look
MFU (model FLOPs utilisation) compares 6 x (weights used in matmuls) + 12 x layers x emb_dim x
context FLOPs per token (the PaLM paper's count) with the GPU's dense bfloat16 peak.
"""

import argparse

import torch
from common import add_common_args, describe_machine, setup_from_args, time_paths

from n_dummy_gpt_model import GPT_CONFIG_124M
from plumbing import run_main
from fast_pretraining import autocast_context, build_training, enable_fast_math, fast_autocast_dtype
from u_pretraining import calc_loss_batch

CONFIGS = {"124M": GPT_CONFIG_124M,
           "small": {**GPT_CONFIG_124M, "emb_dim": 256, "n_heads": 4, "n_layers": 4}}  # a quick look
SETTINGS = {"learning_rate": 0.0004, "weight_decay": 0.1}  # the book's
PEAK_BF16_TFLOPS = {"H100": 989, "H200": 989, "A100": 312, "L40S": 362, "L4": 121, "A10": 125,
                    "RTX 4090": 165, "RTX 3090": 71}  # dense, without sparsity


def flops_per_token(model, cfg, context):
    matmul_weights = sum(p.numel() for p in model.parameters()) - model.tok_emb.weight.numel() \
        - model.pos_emb.weight.numel()  # embeddings are lookups, not matmuls
    return 6 * matmul_weights + 12 * cfg["n_layers"] * cfg["emb_dim"] * context


def peak_flops(device, peak_tflops):
    if peak_tflops:
        return peak_tflops * 1e12
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((tflops * 1e12 for key, tflops in PEAK_BF16_TFLOPS.items() if key in name), None)


def make_step(train_model, optimizer, batch, device, autocast_dtype, tf32):
    inputs, targets = batch[:, :-1], batch[:, 1:]
    losses = []

    def step():
        # TF32 is a global switch: on for the fast path's steps only.
        torch.set_float32_matmul_precision("high" if tf32 else "highest")
        optimizer.zero_grad()
        with autocast_context(device, autocast_dtype):
            loss = calc_loss_batch(inputs, targets, train_model, device)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return step, losses


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(parser)
    parser.add_argument("--config", choices=sorted(CONFIGS), default="124M")
    parser.add_argument("--contexts", type=int, nargs="+", default=[256, 1024])
    parser.add_argument("--batch-size", type=int, default=2,
                        help="the book's 2 (a GPU needs far more to be busy)")
    parser.add_argument("--steps", type=int, default=None,
                        help="timed steps per path (default: 20 on CUDA, 4 elsewhere)")
    parser.add_argument("--warmup", type=int, default=None,
                        help="untimed steps first (default: 3 on CUDA, 1 elsewhere; 2 more with --compile)")
    parser.add_argument("--compile", action="store_true", help="also time the fast path under torch.compile")
    parser.add_argument("--no-book", action="store_true", help="time only the fast path(s)")
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help="the device's dense bfloat16 peak for MFU, if it is not in the table")
    args = parser.parse_args()
    device = setup_from_args(args)
    steps = args.steps or (20 if device.type == "cuda" else 4)
    warmup = args.warmup if args.warmup is not None else (3 if device.type == "cuda" else 1) + 2 * args.compile
    peak = peak_flops(device, args.peak_tflops)
    fast_dtype = fast_autocast_dtype(device)
    print(describe_machine(device))
    print(f"{args.config} architecture, batch {args.batch_size}, {steps} timed steps per path after {warmup} "
          f"warmup; fast path autocast: {fast_dtype}")

    for context in args.contexts:
        cfg = {**CONFIGS[args.config], "context_length": context}
        batch = torch.randint(0, cfg["vocab_size"], (args.batch_size, context + 1),
                              generator=torch.Generator().manual_seed(0)).to(device)
        paths, losses = {}, {}
        if not args.no_book:
            model, train_model, optimizer = build_training(cfg, SETTINGS, device)
            paths["book"], losses["book"] = make_step(train_model, optimizer, batch, device, None, tf32=False)
        variants = [("fast", False)] + ([("fast + torch.compile", True)] if args.compile else [])
        for name, compile_model in variants:
            enable_fast_math(device)
            fast_cfg = {**cfg, "attention": "fast"}
            model, train_model, optimizer = build_training(fast_cfg, SETTINGS, device, fast=True,
                                                           compile_model=compile_model)
            paths[name], losses[name] = make_step(train_model, optimizer, batch, device, fast_dtype,
                                                  tf32=device.type == "cuda")
        seconds = time_paths(paths, device, repeats=steps, warmup=warmup)
        tokens = args.batch_size * context
        print(f"\ncontext {context}, {tokens} tokens per step:")
        for name, step_seconds in seconds.items():
            line = f"  {name:22s} {tokens / step_seconds:10.0f} tokens/s  ({step_seconds * 1000:.0f} ms/step"
            if "book" in seconds and name != "book":
                line += f", {seconds['book'] / step_seconds:.2f}x the book path"
            line += f"; first loss {losses[name][0]:.4f})"
            if peak:
                mfu = tokens / step_seconds * flops_per_token(model, cfg, context) / peak
                line += f"  MFU {mfu:.1%}"
            print(line)
        print(f"  (load average now {describe_machine(device).rsplit(' ', 1)[-1]})")


if __name__ == "__main__":
    run_main(main)
