"""Pretraining throughput of the book path, the fast path and their peers, in one run (tokens/s).

book path: GPTModel with the book's MultiHeadAttention, LayerNorm and GELU, float32,
torch.optim.AdamW, as in chapter 5.
fast path: what `fast_pretraining.py` trains: fast_config (FastMultiHeadAttention, fused LayerNorm,
GELU and FeedForward), FastDropout's cheaper masks (--book-dropout: nn.Dropout's), fused AdamW, TF32
matmuls on CUDA, and --dtype: auto (default) is bfloat16 autocast where the hardware computes
bfloat16 natively, float32 keeps float32.
--compile adds the fast path under torch.compile.
peers (same config, dropout and dtype, fused AdamW, eager): Hugging Face transformers'
GPT2LMHeadModel with SDPA attention (skipped when transformers is missing) and nanoGPT's GPT from
--nanogpt PATH (its model.py, kept outside this repository; skipped without it). Both get an
output head of their own, as GPTModel has.

Each step trains on one batch of random token ids (speed does not depend on the text). All paths
run with the allocator setting of every script (plumbing.keep_freed_memory, from run_main;
LLM_ALLOCATOR=system in front of the command shows what glibc's default costs). The paths take
turns step by step and each figure is the median of its steps, so a load that comes and goes hits
them all alike. Every figure comes with the machine and its load average. Prints figures; it is not
a test.

Run: python benchmarks/bench_pretraining.py --device cpu --dtype float32 --nanogpt /tmp/nanogpt/model.py
     python benchmarks/bench_pretraining.py --device cpu --compile --paths book fast
     python benchmarks/bench_pretraining.py --config small --steps 3     a quick look
     python benchmarks/bench_pretraining.py --device cpu --dtype float32 --paths fast compile --profile
FLOPs per token: 6 x (weights used in matmuls) + 12 x layers x emb_dim x context (the PaLM paper's
count). Printed as GFLOP/s against the machine's matmul peak (one large torch.mm in the path's dtype,
measured first) and, where the GPU is in the table, as MFU against its dense bfloat16 peak.
"""

import argparse

import torch
from common import (
    add_common_args,
    describe_machine,
    load_line,
    matmul_peak_flops,
    setup_from_args,
    WARMUP_CALLS,
    time_paths,
)
from peers import hf_gpt2, hf_loss, nanogpt, nanogpt_loss

from fast_pretraining import (
    DTYPE_CHOICES,
    autocast_context,
    autocast_dtype_for,
    build_training,
    enable_fast_math,
    fast_config,
    make_adamw,
)
from n_dummy_gpt_model import GPT_CONFIG_124M
from plumbing import run_main
from u_pretraining import calc_loss_batch

CONFIGS = {"124M": GPT_CONFIG_124M,
           "small": {**GPT_CONFIG_124M, "emb_dim": 256, "n_heads": 4, "n_layers": 4}}  # a quick look
SETTINGS = {"learning_rate": 0.0004, "weight_decay": 0.1}  # the book's
PATHS = ("book", "fast", "compile", "hf", "nanogpt")
PATH_NAMES = {"book": "book path (float32)", "fast": "fast path", "compile": "fast + torch.compile",
              "hf": "transformers GPT2LMHeadModel", "nanogpt": "nanoGPT model.py"}
DTYPE_OF = {"float32": torch.float32, "bfloat16": torch.bfloat16}
PEAK_BF16_TFLOPS = {"H100": 989, "H200": 989, "B200": 2250, "A100": 312, "L40S": 362, "L4": 121,
                    "A10": 125, "RTX 4090": 165, "RTX 3090": 71}  # dense, without sparsity


def flops_per_token(cfg, context):
    matmul_weights = 12 * cfg["n_layers"] * cfg["emb_dim"] ** 2 + cfg["emb_dim"] * cfg["vocab_size"]
    return 6 * matmul_weights + 12 * cfg["n_layers"] * cfg["emb_dim"] * context


def gpu_peak_flops(device, peak_tflops):
    if peak_tflops:
        return peak_tflops * 1e12
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((tflops * 1e12 for key, tflops in PEAK_BF16_TFLOPS.items() if key in name), None)


def random_batch(cfg, batch_size, context, device):
    """One batch of random token ids, the same every run (speed does not depend on the text)."""
    return torch.randint(0, cfg["vocab_size"], (batch_size, context + 1),
                         generator=torch.Generator().manual_seed(0)).to(device)


def book_loss(model, inputs, targets):
    return calc_loss_batch(inputs, targets, model, inputs.device)


def make_step(loss_fn, model, optimizer, batch, device, autocast_dtype, tf32):
    inputs, targets = batch[:, :-1].contiguous(), batch[:, 1:].contiguous()
    losses = []

    def step():
        # TF32 is a global switch: on for the fast path's steps only.
        torch.set_float32_matmul_precision("high" if tf32 else "highest")
        with autocast_context(device, autocast_dtype):
            loss = loss_fn(model, inputs, targets)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)  # frees the gradients while the other paths run
        losses.append(loss.item())
    return step, losses


def build_path(name, cfg, device, args):
    """(train step, its losses, the dtype it computes in) for path `name`, or a message why it is skipped."""
    torch.manual_seed(123)
    fast_dtype = autocast_dtype_for(args.dtype, device)
    tf32 = device.type == "cuda"
    if name == "book":
        _, model, optimizer = build_training(cfg, SETTINGS, device)
        return make_step(book_loss, model, optimizer, args.batch, device, None, tf32=False) + (None,)
    if name in ("fast", "compile"):
        enable_fast_math(device)
        _, model, optimizer = build_training(fast_config(cfg), SETTINGS, device, fast=True,
                                             compile_model=name == "compile", book_dropout=args.book_dropout)
        return make_step(book_loss, model, optimizer, args.batch, device, fast_dtype, tf32) + (fast_dtype,)
    model, message = hf_gpt2(cfg) if name == "hf" else nanogpt(cfg, args.nanogpt)
    if model is None:
        return message
    model.to(device).train()
    optimizer = make_adamw(model.parameters(), lr=SETTINGS["learning_rate"],
                           weight_decay=SETTINGS["weight_decay"], fused=True)
    loss_fn = hf_loss if name == "hf" else nanogpt_loss
    return make_step(loss_fn, model, optimizer, args.batch, device, fast_dtype, tf32) + (fast_dtype,)


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(parser)
    parser.add_argument("--config", choices=sorted(CONFIGS), default="124M")
    parser.add_argument("--contexts", type=int, nargs="+", default=[256])
    parser.add_argument("--batch-size", type=int, default=2,
                        help="the book's 2 (a GPU needs far more to be busy)")
    parser.add_argument("--dtype", choices=DTYPE_CHOICES, default="auto",
                        help="the fast path's and the peers' dtype, as fast_pretraining.py --dtype")
    parser.add_argument("--paths", nargs="+", choices=PATHS, default=["book", "fast", "hf", "nanogpt"])
    parser.add_argument("--compile", action="store_true", help="add the fast path under torch.compile")
    parser.add_argument("--book-dropout", action="store_true",
                        help="the fast path with nn.Dropout's masks, as fast_pretraining.py --book-dropout")
    parser.add_argument("--nanogpt", default=None, metavar="PATH", help="nanoGPT's model.py for its row")
    parser.add_argument("--steps", type=int, default=None,
                        help="timed steps per path (default: 20 on CUDA, 4 elsewhere)")
    parser.add_argument("--warmup", type=int, default=None,
                        help=f"untimed steps first (default: {WARMUP_CALLS}, as common.WARMUP_CALLS says "
                             "why; 2 more with --compile)")
    parser.add_argument("--profile", action="store_true",
                        help="after the timing, trace 2 more steps of each path with torch.profiler and "
                             "print where the time goes (its top operators)")
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help="the GPU's dense bfloat16 peak for MFU, if it is not in the table")
    args = parser.parse_args()
    if args.compile and "compile" not in args.paths:
        args.paths.append("compile")
    return args


def report(seconds, dtypes, tokens, cfg, context, peaks, gpu_peak):
    flops = flops_per_token(cfg, context)
    for name, step_seconds in seconds.items():
        tokens_per_s = tokens / step_seconds
        achieved = tokens_per_s * flops
        dtype = "bfloat16" if dtypes[name] == torch.bfloat16 else "float32"
        line = (f"  {PATH_NAMES[name]:30s} {tokens_per_s:9.0f} tokens/s ({step_seconds * 1000:6.0f} ms/step)"
                f"  {achieved / 1e9:7.1f} GFLOP/s = {achieved / peaks[dtype]:5.1%} of {dtype} matmul peak")
        if gpu_peak:
            line += f", MFU {achieved / gpu_peak:5.1%}"
        print(line)
    for base in ("fast", "compile"):
        if base in seconds and len(seconds) > 1:
            ratios = ", ".join(f"{seconds[other] / seconds[base]:.2f}x {PATH_NAMES[other]}"
                               for other in seconds if other != base)
            print(f"  {PATH_NAMES[base]} is {ratios}")


def print_profiles(paths, steps=2, rows=12):
    """Where each path's time goes: torch.profiler's operators over `steps` steps, by their own time
    (a matmul's time is its own; a compiled graph's generated kernels show as one CompiledFxGraph)."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    for name, step in paths.items():
        with profile(activities=activities) as trace:
            for _ in range(steps):
                step()
        print(f"\n{PATH_NAMES[name]}, {steps} steps under torch.profiler:")
        print(trace.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows))


def main():
    args = parse_args()
    device = setup_from_args(args)
    steps = args.steps or (20 if device.type == "cuda" else 4)
    warmup = args.warmup
    if warmup is None:
        warmup = WARMUP_CALLS + 2 * args.compile
    print(describe_machine(device))
    print(f"{args.config} architecture, batch {args.batch_size}, {steps} timed steps per path after "
          f"{warmup} warmup, taking turns; fast path and peers: --dtype {args.dtype} -> "
          f"{autocast_dtype_for(args.dtype, device) or 'float32'}")
    peaks = {"float32": matmul_peak_flops(device)}
    if autocast_dtype_for(args.dtype, device) == torch.bfloat16:
        peaks["bfloat16"] = matmul_peak_flops(device, torch.bfloat16)
    print("matmul peak (one large torch.mm):",
          ", ".join(f"{dtype} {flops / 1e9:.0f} GFLOP/s" for dtype, flops in peaks.items()), load_line())
    for context in args.contexts:
        cfg = {**CONFIGS[args.config], "context_length": context}
        args.batch = random_batch(cfg, args.batch_size, context, device)
        paths, losses, dtypes = {}, {}, {}
        for name in args.paths:
            built = build_path(name, cfg, device, args)
            if isinstance(built, str):
                print(f"  skipping {PATH_NAMES[name]}: {built}")
                continue
            paths[name], losses[name], dtypes[name] = built
        seconds = time_paths(paths, device, repeats=steps, warmup=warmup)
        # A busy machine lowers the peak too: the best of the measurements before and after counts.
        peaks = {dtype: max(flops, matmul_peak_flops(device, DTYPE_OF[dtype]))
                 for dtype, flops in peaks.items()}
        print(f"\ncontext {context}, {args.batch_size * context} tokens per step, "
              f"first losses {', '.join(f'{name} {values[0]:.3f}' for name, values in losses.items())} "
              "(the paths take turns drawing dropout masks from one random stream):")
        report(seconds, dtypes, args.batch_size * context, cfg, context, peaks,
               gpu_peak_flops(device, args.peak_tflops))
        print("  matmul peak, best before and after:",
              ", ".join(f"{dtype} {flops / 1e9:.0f} GFLOP/s" for dtype, flops in peaks.items()))
        print(" ", load_line())
        if args.profile:
            print_profiles(paths)


if __name__ == "__main__":
    run_main(main)
