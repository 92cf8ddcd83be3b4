"""train_own_text.py's training step against the same model's step in chapter 5's fast path
(fast_pretraining.train_step), side by side in one run: both train the same GPT on the same batch,
so their tokens/s should be equal; a gap would be overhead in train_own_text.py's loop.

Run: python benchmarks/bench_own_text.py                    the default own-text model (3.2M, char)
     python benchmarks/bench_own_text.py --book             both without --fast (the book's modules)
     python benchmarks/bench_own_text.py --vocab-size 50257 --emb-dim 768 --n-layers 12 --n-heads 12
"""

import argparse

import torch
from common import add_common_args, describe_machine, load_line, setup_from_args, time_paths

import fast_pretraining
import train_own_text
from own_text_checkpoints import Run
from own_text_training import optimizer_step
from s_gpt_model import GPTModel


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(parser)
    parser.add_argument("--vocab-size", type=int, default=65, help="tiny-shakespeare's characters + 2")
    for name in ("context_length", "emb_dim", "n_layers", "n_heads"):
        parser.add_argument("--" + name.replace("_", "-"), type=int,
                            default=train_own_text.MODEL_CONFIG[name])
    parser.add_argument("--batch-size", type=int, default=train_own_text.TRAIN_SETTINGS["batch_size"])
    parser.add_argument("--book", action="store_true", help="the book's modules and AdamW, no autocast")
    parser.add_argument("--repeats", type=int, default=5)
    return parser.parse_args()


def own_text_step(cfg, settings, device, batch, autocast_dtype):
    """One call = one step of train_own_text.py's loop (its optimizer_step, schedule included)."""
    model, optimizer = train_own_text.new_model_and_optimizer(cfg, settings, device)
    run = Run(model, optimizer, None, cfg, settings, {"global_step": 0}, None, None, device, None)
    model.train()
    return lambda: optimizer_step(run, [batch], model, autocast_dtype)


def chapter5_step(cfg, settings, device, batch, autocast_dtype):
    """One call = one step of fast_pretraining.py's train_step, the same model from the same seed."""
    torch.manual_seed(settings["seed"])
    model = GPTModel(cfg).to(device).train()
    optimizer = fast_pretraining.make_adamw(model.parameters(), lr=settings["peak_lr"],
                                            weight_decay=settings["weight_decay"], fused=settings["fast"])
    return lambda: fast_pretraining.train_step(model, [batch], optimizer, device, autocast_dtype)


def main():
    args = parse_args()
    device = setup_from_args(args)
    cfg = {**train_own_text.MODEL_CONFIG, "vocab_size": args.vocab_size, "emb_dim": args.emb_dim,
           "context_length": args.context_length, "n_layers": args.n_layers, "n_heads": args.n_heads}
    # No clipping in either (the warmup outlasts the benchmark): chapter 5's step does not clip.
    settings = {**train_own_text.TRAIN_SETTINGS, "fast": not args.book, "total_steps": 10 ** 6,
                "warmup_steps": 10 ** 6}
    autocast_dtype = None
    if not args.book:
        cfg = fast_pretraining.fast_config(cfg)
        fast_pretraining.enable_fast_math(device)
        autocast_dtype = fast_pretraining.fast_autocast_dtype(device)
    torch.manual_seed(0)
    inputs = torch.randint(0, args.vocab_size, (args.batch_size, args.context_length + 1), device=device)
    batch = (inputs[:, :-1], inputs[:, 1:])
    paths = {"train_own_text.py": own_text_step(cfg, settings, device, batch, autocast_dtype),
             "fast_pretraining.py": chapter5_step(cfg, settings, device, batch, autocast_dtype)}
    print(describe_machine(device))
    print(f"{'book modules' if args.book else 'fast path'}, autocast {autocast_dtype}, batch "
          f"{args.batch_size} x {args.context_length} tokens, "
          f"{sum(p.numel() for p in GPTModel(cfg).parameters()) / 1e6:.2f}M parameters")
    seconds = time_paths(paths, device, args.repeats)
    tokens = args.batch_size * args.context_length
    for name, value in seconds.items():
        print(f"  {name:20s} {tokens / value:10,.0f} tokens/s  ({value * 1000:.1f} ms per step)")
    ratio = seconds["train_own_text.py"] / seconds["fast_pretraining.py"]
    print(f"train_own_text.py's step takes {ratio:.3f}x the time of chapter 5's fast step {load_line()}")


if __name__ == "__main__":
    main()
