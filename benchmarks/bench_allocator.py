"""What keep_freed_memory saves: pretraining steps in two processes, one with glibc's default
allocator and one with freed memory kept (plumbing.keep_freed_memory, which every script of the
series turns on), taking turns step by step (tokens/s and page faults per step).

The setting is per process and cannot be undone once the heap holds the freed memory, so the two
settings need two processes; taking turns lets a load that comes and goes hit both alike. Each
process builds bench_pretraining.py's paths (float32, 124M, context 256, batch 2 by default) on
the same random batch, on the CPU. Prints figures; it is not a test. On macOS and Windows, or
with another C library than glibc, there is nothing to compare and it says so.

Run: python benchmarks/bench_allocator.py --device cpu
     python benchmarks/bench_allocator.py --device cpu --paths fast --steps 6
"""

import argparse
import multiprocessing
import statistics
import time

from bench_pretraining import CONFIGS, PATH_NAMES, build_path, random_batch
from common import add_device_arg, describe_machine, load_line

from plumbing import freed_memory_can_be_kept, get_device, keep_freed_memory, run_main

MODES = ("system", "keep")  # glibc's default, then freed memory kept


def worker(mode, args, conn):
    """Build args.paths in this process with allocator `mode`, then run a step of the path that
    each message names, answering (seconds, page faults) until it gets None."""
    import resource  # Unix only: main() starts no worker where keep_freed_memory does not apply

    import torch

    if mode == "keep":
        keep_freed_memory()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    cfg = {**CONFIGS[args.config], "context_length": args.context}
    args.batch = random_batch(cfg, args.batch_size, args.context, device)
    args.dtype, args.nanogpt, args.book_dropout = "float32", None, False
    steps = {name: build_path(name, cfg, device, args)[0] for name in args.paths}
    both = "glibc's default in one process, freed memory kept in the other"
    conn.send(describe_machine(device, allocator=both) if mode == "keep" else "ready")
    while (name := conn.recv()) is not None:
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        start = time.perf_counter()
        steps[name]()
        conn.send((time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults))


def start_workers(args):
    context = multiprocessing.get_context("spawn")
    conns = {}
    for mode in MODES:
        parent, child = context.Pipe()
        context.Process(target=worker, args=(mode, args, child), daemon=True).start()
        conns[mode] = parent
    return conns


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_device_arg(parser)
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for torch in each process")
    parser.add_argument("--config", choices=sorted(CONFIGS), default="124M")
    parser.add_argument("--context", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--paths", nargs="+", choices=("book", "fast"), default=["book", "fast"])
    parser.add_argument("--steps", type=int, default=4, help="timed steps per path and setting, after two")
    args = parser.parse_args()
    if get_device(args.device).type != "cpu":
        print("The allocator compared here holds CPU memory (a GPU's has its own cache); use --device cpu")
        return
    if not freed_memory_can_be_kept():
        print("keep_freed_memory does not apply here: it sets glibc's malloc on Linux "
              "(and LLM_ALLOCATOR=system turns it off)")
        return
    conns = start_workers(args)
    replies = [conns[mode].recv() for mode in MODES]
    print(replies[1], f"\n{args.config}, context {args.context}, batch {args.batch_size}, float32; "
          f"{args.steps} timed steps per path and setting after 2, the two processes taking turns")
    seconds, faults = {}, {}
    for round_number in range(args.steps + 2):
        for name in args.paths:
            for mode in MODES:
                conns[mode].send(name)
                step_seconds, step_faults = conns[mode].recv()
                if round_number >= 2:  # the first rounds fill the heap
                    seconds.setdefault((name, mode), []).append(step_seconds)
                    faults.setdefault((name, mode), []).append(step_faults)
    for conn in conns.values():
        conn.send(None)
    tokens = args.batch_size * args.context
    for name in args.paths:
        line = []
        for mode in MODES:
            median = statistics.median(seconds[(name, mode)])
            step_faults = statistics.median(faults[(name, mode)])
            line.append(f"{mode} {tokens / median:6.0f} tokens/s, {step_faults:7.0f} page faults a step")
        speedup = statistics.median(seconds[(name, "system")]) / statistics.median(seconds[(name, "keep")])
        print(f"  {PATH_NAMES[name]:22s} " + "; ".join(line) + f"; kept memory {speedup:.2f}x")
    print(" ", load_line())


if __name__ == "__main__":
    run_main(main)
