"""Greedy generation speed: the KV cache with the book's modules and with the fast path's, against
Hugging Face transformers' generate, all holding the same weights.

A randomly initialised model of the GPT-2 124M architecture (context 1024) extends the book's
prompt "Hello, I am" by 200 tokens with greedy decoding: u_pretraining.generate(..., use_cache=True)
with the book's GPTModel and with the fast path's (fast_config: FastMultiHeadAttention, fused
LayerNorm and GELU; fast_attention.lay_out_weights_for_decoding: float32 weights stored inputs by
outputs, the layout CPU BLAS reads fastest for one token, and each one-token product split among
the threads), and transformers' GPT2LMHeadModel.generate
(SDPA attention, its own KV cache) with the same weights.
--uncached adds the book's loop without a cache, which runs the whole sequence for every token.
The paths take turns for --rounds rounds; each figure is the median. Every path must give the same
ids, and the output says whether they do. Prints figures; it is not a test.

Cached generation reads every weight once per new token, so memory bandwidth bounds it: each
path prints the GB/s of weights it reads and their share of the bandwidth of one large tensor copy
on the same machine.

Run: python benchmarks/bench_generation.py --device cpu [--max-new-tokens 200] [--dtype bfloat16]
     python benchmarks/bench_generation.py --config small --rounds 1     a quick look
"""

import argparse
import statistics
import time

import torch
from common import add_common_args, copy_bandwidth, describe_machine, load_line, setup_from_args, synchronize
from peers import hf_gpt2_with_weights

from fast_attention import lay_out_weights_for_decoding
from fast_pretraining import fast_config
from n_dummy_gpt_model import GPT_CONFIG_124M
from plumbing import run_main
from s_gpt_model import GPTModel
from u_pretraining import generate

HELLO_I_AM = [15496, 11, 314, 716]  # "Hello, I am" in the GPT-2 encoding (section 4.7)
CONFIGS = {"124M": GPT_CONFIG_124M,
           "small": {**GPT_CONFIG_124M, "emb_dim": 256, "n_heads": 4, "n_layers": 4}}  # a quick look
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def weight_bytes_per_token(model):
    """Bytes of weights one new token reads: all of them but the embeddings, of which it reads a row."""
    return sum(p.numel() * p.element_size() for name, p in model.named_parameters()
               if not name.endswith(("tok_emb.weight", "pos_emb.weight", "wte.weight", "wpe.weight")))


def build_paths(cfg, device, dtype, max_new_tokens, uncached):
    """{name: (generate function, model)} for every path, all with the weights of one seeded model."""
    torch.manual_seed(123)
    book = GPTModel(cfg).eval()
    fast = GPTModel(fast_config(cfg)).eval()
    fast.load_state_dict(book.state_dict())
    hf, message = hf_gpt2_with_weights(book.state_dict(), cfg)
    context = cfg["context_length"]

    def ours(model, use_cache):
        return lambda idx: generate(model, idx, max_new_tokens, context, use_cache=use_cache)

    paths = {"book modules, KV cache": (ours(book, True), book),
             "fast path, KV cache": (ours(fast, True), fast)}
    if uncached:
        paths["book modules, no cache (the book's loop)"] = (ours(book, False), book)
    if hf is None:
        print(f"  skipping transformers: {message}")
    else:
        def hf_generate(idx):
            return hf.generate(idx, attention_mask=torch.ones_like(idx), max_new_tokens=max_new_tokens,
                               min_new_tokens=max_new_tokens, do_sample=False, pad_token_id=0)
        paths["transformers generate (SDPA)"] = (hf_generate, hf)
    for _, model in paths.values():
        model.to(device=device, dtype=dtype)
    lay_out_weights_for_decoding(fast)  # as generate_text.py does: on the model's device and dtype
    return paths


def time_rounds(paths, idx, device, rounds):
    """Median seconds per path, the paths taking turns each round; and each path's last ids."""
    for fn, _ in paths.values():  # warm up allocations and kernels
        fn(idx[:, :2])
    times, outputs = {name: [] for name in paths}, {}
    for _ in range(rounds):
        for name, (fn, _) in paths.items():
            synchronize(device)
            start = time.perf_counter()
            with torch.no_grad():
                outputs[name] = fn(idx)
            synchronize(device)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}, outputs


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(parser)
    parser.add_argument("--max-new-tokens", type=int, default=200)
    parser.add_argument("--config", choices=sorted(CONFIGS), default="124M")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32",
                        help="the weights' dtype, the same for every path")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--uncached", action="store_true", help="add the book's loop without a cache (slow)")
    args = parser.parse_args()
    device = setup_from_args(args)
    cfg = CONFIGS[args.config]
    print(describe_machine(device))
    bandwidth = copy_bandwidth(device)
    print(f"{args.config} architecture, context {cfg['context_length']}, {args.dtype} weights, prompt "
          f"{len(HELLO_I_AM)} tokens, {args.max_new_tokens} new tokens, greedy, median of {args.rounds} "
          f"rounds taking turns; memory bandwidth (one large tensor copy) {bandwidth / 1e9:.1f} GB/s",
          load_line())

    paths = build_paths(cfg, device, DTYPES[args.dtype], args.max_new_tokens, args.uncached)
    idx = torch.tensor([HELLO_I_AM], device=device)
    seconds, outputs = time_rounds(paths, idx, device, args.rounds)
    bandwidth = max(bandwidth, copy_bandwidth(device))  # a busy machine lowers it: the best counts
    print(f"  memory bandwidth, best before and after: {bandwidth / 1e9:.1f} GB/s")
    reference = outputs["book modules, KV cache"]
    for name, (_, model) in paths.items():
        tokens_per_s = args.max_new_tokens / seconds[name]
        read = weight_bytes_per_token(model) * tokens_per_s
        print(f"  {name:40s} {tokens_per_s:7.1f} tokens/s ({seconds[name]:6.2f} s)  weights read "
              f"{read / 1e9:5.1f} GB/s = {read / bandwidth:5.1%} of the copy bandwidth; "
              f"same ids as the book's: {torch.equal(outputs[name], reference)}")
    fast = seconds["fast path, KV cache"]
    print("  fast path, KV cache is " + ", ".join(f"{seconds[name] / fast:.2f}x {name}"
                                                  for name in seconds if not name.startswith("fast")))
    print("All paths give identical ids:", all(torch.equal(out, reference) for out in outputs.values()),
          load_line())


if __name__ == "__main__":
    run_main(main)
