"""Generation speed with and without the KV cache, for the book's attention and the fast one.

A randomly initialised model of the GPT-2 124M architecture (context 1024) extends the book's
prompt "Hello, I am" by 200 tokens with greedy decoding, through u_pretraining.generate: without a
cache (the book's loop, which runs the whole sequence again for every token) and with
use_cache=True. The same seed gives both attention classes the same weights, so all four runs
must produce the same token ids. Prints figures; it is not a test.

Run: python benchmarks/bench_generation.py [--device cpu] [--max-new-tokens 200] [--config small]
"""

import argparse
import statistics
import time

import torch
from common import add_common_args, describe_machine, setup_from_args, synchronize

from n_dummy_gpt_model import GPT_CONFIG_124M
from plumbing import run_main
from s_gpt_model import GPTModel
from u_pretraining import generate

HELLO_I_AM = [15496, 11, 314, 716]  # "Hello, I am" in the GPT-2 encoding (section 4.7)
CONFIGS = {"124M": GPT_CONFIG_124M,
           "small": {**GPT_CONFIG_124M, "emb_dim": 256, "n_heads": 4, "n_layers": 4}}  # a quick look


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(parser)
    parser.add_argument("--max-new-tokens", type=int, default=200)
    parser.add_argument("--config", choices=sorted(CONFIGS), default="124M")
    parser.add_argument("--attention", nargs="+", choices=["book", "fast"], default=["book", "fast"])
    args = parser.parse_args()
    device = setup_from_args(args)
    cfg = CONFIGS[args.config]
    print(describe_machine(device))
    print(f"{args.config} architecture, context {cfg['context_length']}, prompt {len(HELLO_I_AM)} tokens, "
          f"{args.max_new_tokens} new tokens, greedy")

    idx = torch.tensor([HELLO_I_AM], device=device)
    outputs = {}
    for attention in args.attention:
        torch.manual_seed(123)
        model = GPTModel({**cfg, "attention": attention}).to(device).eval()
        generate(model, idx, 3, cfg["context_length"], use_cache=True)  # warm up allocations
        times = {False: [], True: []}
        # The short cached run goes before and twice after the long uncached one (median taken), so
        # that a load that comes and goes on a shared machine does not decide the ratio.
        for use_cache in (True, False, True, True):
            synchronize(device)
            start = time.perf_counter()
            outputs[attention, use_cache] = generate(model, idx, args.max_new_tokens, cfg["context_length"],
                                                     use_cache=use_cache)
            synchronize(device)
            times[use_cache].append(time.perf_counter() - start)
        seconds = {use_cache: statistics.median(values) for use_cache, values in times.items()}
        for use_cache in (False, True):
            print(f"  {attention} attention, {'KV cache' if use_cache else 'no cache'}: "
                  f"{args.max_new_tokens / seconds[use_cache]:8.1f} tokens/s ({seconds[use_cache]:.2f} s)")
        same = torch.equal(outputs[attention, True], outputs[attention, False])
        print(f"  {attention} attention: the cache is {seconds[False] / seconds[True]:.1f}x faster; "
              f"identical greedy ids: {same}")
        print(f"  (load average now {describe_machine(device).rsplit(' ', 1)[-1]})")
    reference = next(iter(outputs.values()))
    print("All runs give the same ids:", all(torch.equal(out, reference) for out in outputs.values()))


if __name__ == "__main__":
    run_main(main)
