"""Forward + backward time of the book's attention classes against FastMultiHeadAttention.

The book's MultiHeadAttentionWrapper (3.6.1, one CausalAttention per head, run one after another)
and MultiHeadAttention (3.6.2) against FastMultiHeadAttention (fused QKV projection and
scaled_dot_product_attention), at GPT-2 124M's attention size; with --dropout above 0 also
FastMultiHeadAttention with FastDropout's cheaper masks. Prints figures; it is not a test.

Run: python benchmarks/bench_attention.py [--device cpu] [--contexts 256 1024] [--repeats 5]
"""

import argparse

import torch
from common import add_common_args, describe_machine, setup_from_args, time_paths

from fast_attention import FastMultiHeadAttention, use_fast_dropout
from l_multi_head_attention import MultiHeadAttentionWrapper
from m_efficient_multi_head_attention import MultiHeadAttention
from plumbing import run_main


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(parser)
    parser.add_argument("--contexts", type=int, nargs="+", default=[256, 1024])
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--emb-dim", type=int, default=768)
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--dropout", type=float, default=0.0,
                        help="attention dropout (default 0.0; on CPU, and with dropout anywhere but CUDA, "
                             "scaled_dot_product_attention falls back to its unfused math kernel)")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    device = setup_from_args(args)
    print(describe_machine(device))
    d, h = args.emb_dim, args.heads
    print(f"batch {args.batch_size}, emb_dim {d}, {h} heads, dropout {args.dropout}, training mode, "
          f"median of {args.repeats}")

    for context in args.contexts:
        torch.manual_seed(123)
        wrapper = MultiHeadAttentionWrapper(d, d // h, context, args.dropout, num_heads=h).to(device)
        book = MultiHeadAttention(d, d, context, args.dropout, num_heads=h).to(device)
        fast = FastMultiHeadAttention.from_book(book)
        x = torch.randn(args.batch_size, context, d, device=device, requires_grad=True)

        def forward_backward(module, x=x):
            def run():
                module(x).sum().backward()
                x.grad = None
                module.zero_grad(set_to_none=True)
            return run

        with torch.no_grad():  # the same weights give the same outputs (in eval mode: no dropout)
            max_diff = (fast.eval()(x) - book.eval()(x)).abs().max().item()
        fast.train()
        book.train()
        paths = {"MultiHeadAttentionWrapper (3.6.1)": forward_backward(wrapper),
                 "MultiHeadAttention (3.6.2)": forward_backward(book),
                 "FastMultiHeadAttention": forward_backward(fast)}
        if args.dropout > 0:
            cheap = use_fast_dropout(FastMultiHeadAttention.from_book(book))
            paths["FastMultiHeadAttention, FastDropout"] = forward_backward(cheap)
        times = time_paths(paths, device, repeats=args.repeats)
        print(f"\ncontext {context} (fast vs book max |difference| {max_diff:.1e}):")
        book_time = times["MultiHeadAttention (3.6.2)"]
        for name, seconds in times.items():
            print(f"  {name:34s} {seconds * 1000:9.2f} ms   "
                  f"{book_time / seconds:5.2f}x the book's MultiHeadAttention")


if __name__ == "__main__":
    run_main(main)
