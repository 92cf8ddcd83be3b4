"""Beyond the book: chapter 5's pretraining (section 5.2), faster, and on several processes.

The model, data, seed and loss are chapter 5's (u_pretraining.py); what changes is how the work is
done: FastMultiHeadAttention (fused projections, scaled_dot_product_attention), LayerNorm and GELU
in PyTorch's fused kernels, cheaper dropout masks (FastDropout; --book-dropout keeps the book's),
fused AdamW, bfloat16 autocast where the hardware computes it natively
(--dtype chooses), TF32 matmuls on CUDA, torch.compile, gradient accumulation, and
DistributedDataParallel under torchrun (appendix A's ddp_setup).

Run: python fast_pretraining.py                       5.2 on the fast path, then save and plot
     python fast_pretraining.py --quick               a tiny model for a few steps
     python fast_pretraining.py --compile --grad-accum 4
     python fast_pretraining.py --dtype float32        the fast path without bfloat16 autocast
     python fast_pretraining.py --book-dropout         the book's dropout masks from the same seed
     python fast_pretraining.py --book-model          the book's attention and AdamW (to compare)
     torchrun --nproc_per_node=2 fast_pretraining.py  data parallel on 2 GPUs (or 2 CPU processes
                                                      with --device cpu); rank 0 logs and saves
"""

import argparse
import contextlib
import os
import time

import torch
import torch.distributed as dist

from checkpoints import save_checkpoint
from d_tokenizer import get_gpt2_tokenizer
from fast_attention import use_fast_dropout
from plumbing import (ScriptError, add_device_arg, add_quick_and_epochs_args, book_or_quick, ensure_writable,
                      get_device, output_path, outputs_folder, positive_int, run_main)
from s_gpt_model import GPTModel
from t_pretraining_basics import START_CONTEXT
from u_pretraining import (GPT_CONFIG_124M, QUICK_CONFIG, QUICK_SETTINGS, SEED, TRAIN_SETTINGS,
                           calc_loss_batch, evaluate_model, generate_and_print_sample, make_loaders,
                           plot_losses, verdict_text)
from y_neural_network_basics import ddp_setup

TORCHRUN_COMMAND = "torchrun --nproc_per_node=2 fast_pretraining.py"
CHECKPOINT_NAME = "fast_pretraining.pth"  # under outputs/ (outputs/quick/ with --quick)
DTYPE_CHOICES = ("auto", "float32", "bfloat16")  # --dtype; auto: bfloat16 where native (fast_autocast_dtype)


def fast_config(cfg):
    """The GPT config `cfg` with the fast path's modules: FastMultiHeadAttention and the fused
    LayerNorm, GELU and FeedForward. The weights and their names stay the book's."""
    return {**cfg, "attention": "fast", "fast_layers": True}


def autocast_context(device, dtype):
    """torch.autocast(dtype) on `device`, or a context that changes nothing when dtype is None."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)


def fast_autocast_dtype(device):
    """bfloat16 where the hardware computes it natively (CUDA GPUs from Ampere on; CPUs with
    AVX512-BF16 or AMX), else None: emulated bfloat16 would be slower than float32."""
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported(including_emulation=False) else None
    if device.type == "cpu":
        try:
            return torch.bfloat16 if torch.ops.mkldnn._is_mkldnn_bf16_supported() else None
        except (AttributeError, RuntimeError):  # a PyTorch built without oneDNN
            return None
    return None


def autocast_dtype_for(choice, device):
    """The autocast dtype for --dtype `choice`: "auto" is fast_autocast_dtype(device), "float32" is
    None (no autocast), "bfloat16" is bfloat16 even where the hardware only emulates it."""
    if choice not in DTYPE_CHOICES:
        raise ValueError(f"unknown dtype {choice!r}; use one of {', '.join(DTYPE_CHOICES)}")
    if choice == "auto":
        return fast_autocast_dtype(device)
    return torch.bfloat16 if choice == "bfloat16" else None


def enable_fast_math(device):
    """The fast path on CUDA: float32 matmuls that remain (outside autocast) run on TF32 tensor cores."""
    if device.type == "cuda":
        torch.set_float32_matmul_precision("high")


def make_adamw(params, lr, weight_decay, fused=False):
    """The book's AdamW; fused=True updates all weights in one kernel where PyTorch supports it."""
    params = list(params)
    if fused:
        try:
            return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=True)
        except RuntimeError:  # a device without a fused AdamW kernel
            pass
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)


def unwrap_model(model):
    """The GPTModel inside torch.compile(DistributedDataParallel(model)) or either wrapper alone."""
    model = getattr(model, "_orig_mod", model)  # torch.compile
    return getattr(model, "module", model)  # DistributedDataParallel


def accumulation_groups(data_loader, grad_accum_steps):
    """The loader's batches in lists of grad_accum_steps (the last list may be shorter): the
    batches whose gradients add up before one optimizer step."""
    group = []
    for batch in data_loader:
        group.append(batch)
        if len(group) == grad_accum_steps:
            yield group
            group = []
    if group:
        yield group


def gradient_sync_context(model, sync):
    """DDP averages gradients across processes in every backward(); with gradient accumulation only
    the group's last backward needs to, so the others skip it with no_sync()."""
    if sync or not hasattr(model, "no_sync"):
        return contextlib.nullcontext()
    return model.no_sync()


def distributed_loader(data_loader, rank, world_size, seed=SEED):
    """A loader over this process's share of data_loader's dataset (DistributedSampler), so the
    processes together see every window once per epoch, in a new shuffled order each epoch."""
    from torch.utils.data import DataLoader, DistributedSampler

    sampler = DistributedSampler(data_loader.dataset, num_replicas=world_size, rank=rank,
                                 shuffle=True, seed=seed, drop_last=True)
    return DataLoader(data_loader.dataset, batch_size=data_loader.batch_size, sampler=sampler,
                      drop_last=True)


def build_training(cfg, settings, device, fast=False, compile_model=False, ddp=False, book_dropout=False):
    """5.2's model and optimizer, created as the book creates them; with fast=True a fused AdamW and,
    unless book_dropout, FastDropout; with DDP and --compile wrapped. Returns (model, wrapped_model,
    optimizer): train the wrapper wrapped_model, save model (the plain GPTModel, whose state dict has
    the usual names)."""
    torch.manual_seed(SEED)
    model = GPTModel(cfg)
    model.to(device)
    if fast and not book_dropout:
        use_fast_dropout(model)
    optimizer = make_adamw(model.parameters(), lr=settings["learning_rate"],
                           weight_decay=settings["weight_decay"], fused=fast)
    wrapped_model = model
    if ddp:
        from torch.nn.parallel import DistributedDataParallel

        device_ids = [device.index] if device.type == "cuda" else None
        wrapped_model = DistributedDataParallel(model, device_ids=device_ids)
    if compile_model:
        wrapped_model = torch.compile(wrapped_model)
    return model, wrapped_model, optimizer


def accumulate_gradients(model, batches, device, autocast_dtype=None):
    """The gradients of `batches` added up as one batch's (gradient accumulation; under DDP averaged
    over the processes in the last backward only). Returns their mean loss, detached."""
    losses = []
    for i, (input_batch, target_batch) in enumerate(batches):
        with gradient_sync_context(model, sync=i == len(batches) - 1):
            with autocast_context(device, autocast_dtype):
                loss = calc_loss_batch(input_batch, target_batch, model, device)
            (loss / len(batches)).backward()  # backward runs in the forward pass's dtypes
        losses.append(loss.detach())
    return torch.stack(losses).mean()


def train_step(model, batches, optimizer, device, autocast_dtype=None):
    """One optimizer step on `batches`, whose gradients add up. Returns the tokens trained on."""
    optimizer.zero_grad()
    accumulate_gradients(model, batches, device, autocast_dtype)
    optimizer.step()
    return sum(input_batch.numel() for input_batch, _ in batches)


def train_model_fast(model, train_loader, val_loader, optimizer, device, num_epochs, eval_freq,
                     eval_iter, start_context, tokenizer, grad_accum_steps=1, autocast_dtype=None,
                     is_main_process=True):
    """train_model_simple's schedule of steps, evaluations and samples, where a step may add up
    grad_accum_steps batches, run under autocast_dtype, and train a DDP or compiled wrapper. In a
    DDP run only is_main_process evaluates and prints. With the defaults it trains as the book's
    loop does. Returns (train_losses, val_losses, track_tokens_seen)."""
    history = ([], [], [])
    tokens_seen, global_step = 0, -1
    processes = dist.get_world_size() if dist.is_initialized() else 1  # each trains on as many tokens
    plain_model = unwrap_model(model)  # evaluation and samples need no DDP or compiled wrapper
    for epoch in range(num_epochs):
        model.train()
        if hasattr(train_loader.sampler, "set_epoch"):  # DistributedSampler: new order each epoch
            train_loader.sampler.set_epoch(epoch)
        for batches in accumulation_groups(train_loader, grad_accum_steps):
            tokens_seen += train_step(model, batches, optimizer, device, autocast_dtype) * processes
            global_step += 1
            if global_step % eval_freq == 0 and is_main_process:
                with autocast_context(device, autocast_dtype):
                    losses = evaluate_model(plain_model, train_loader, val_loader, device, eval_iter)
                for values, value in zip(history, (*losses, tokens_seen)):
                    values.append(value)
                print(f"Ep {epoch + 1} (Step {global_step:06d}): "
                      f"Train loss {losses[0]:.3f}, Val loss {losses[1]:.3f}")
        if is_main_process:
            generate_and_print_sample(plain_model, tokenizer, device, start_context)
    return history


def setup_fast_paths(args, device):
    """Switch on what the fast path asks for globally (TF32); return the train_model_fast arguments
    that the fast path and --grad-accum ask for, and a line naming everything in use."""
    train_kwargs = {"grad_accum_steps": args.grad_accum, "autocast_dtype": None}
    used = []
    if not args.book_model:
        enable_fast_math(device)
        train_kwargs["autocast_dtype"] = autocast_dtype_for(args.dtype, device)
        used = ["FastMultiHeadAttention", "fused AdamW", "fused LayerNorm and GELU",
                "the book's dropout masks" if args.book_dropout else "cheaper dropout masks"]
        if device.type == "cuda":
            used.append("TF32 matmuls")
        if train_kwargs["autocast_dtype"] is not None:
            used.append("bfloat16 autocast")
    if args.compile:
        used.append("torch.compile")
    if args.grad_accum > 1:
        used.append(f"{args.grad_accum} batches per optimizer step")
    return train_kwargs, ", ".join(used)


def launched_by_torchrun():
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_device_arg(parser)
    add_quick_and_epochs_args(parser, TRAIN_SETTINGS["num_epochs"], QUICK_SETTINGS["num_epochs"],
                              "a tiny model for a few steps: checks in seconds that everything runs")
    parser.add_argument("--book-model", action="store_true",
                        help="train the book's attention with the book's AdamW in float32 (the fast "
                             "path's baseline); --compile, --grad-accum and torchrun still apply")
    parser.add_argument("--dtype", choices=DTYPE_CHOICES, default="auto",
                        help="the fast path's compute dtype: auto (default) is bfloat16 autocast where the "
                             "hardware computes bfloat16 natively, else float32")
    parser.add_argument("--book-dropout", action="store_true",
                        help="the fast path with the book's dropout masks (nn.Dropout's, the same from the "
                             "same seed) instead of FastDropout's cheaper ones")
    parser.add_argument("--compile", action="store_true",
                        help="train under torch.compile (needs a C++ compiler on CPU)")
    parser.add_argument("--grad-accum", type=positive_int, default=1, metavar="N",
                        help="add up the gradients of N batches per optimizer step")
    return parser.parse_args()


def pretrain(args, rank, world_size, device):
    """5.2 on this process's share of the windows; rank 0 alone prints, saves and plots."""
    cfg = QUICK_CONFIG if args.quick else GPT_CONFIG_124M
    cfg = cfg if args.book_model else fast_config(cfg)
    settings = book_or_quick(args, TRAIN_SETTINGS, QUICK_SETTINGS)
    ensure_writable(outputs_folder(args.quick))  # before the training, not after it
    train_kwargs, used = setup_fast_paths(args, device)
    tokenizer = get_gpt2_tokenizer()
    torch.manual_seed(SEED)
    train_loader, val_loader = make_loaders(verdict_text(args.quick), cfg, settings)
    if world_size > 1:
        train_loader = distributed_loader(train_loader, rank, world_size)
        if len(train_loader) == 0:
            raise ScriptError(f"{world_size} processes x batch_size {settings['batch_size']} is more "
                              "than the training windows; use fewer processes")
    is_main = rank == 0
    if is_main:
        global_batch = settings["batch_size"] * world_size * args.grad_accum
        processes = f", {world_size} processes ({dist.get_backend()})" if world_size > 1 else ""
        print(f"Device: {device}{processes}; global batch {global_batch}; "
              f"{used or 'the book model and AdamW'}" + ("   (--quick: a tiny model)" if args.quick else ""))
        print(f"\n5.2 Training for {settings['num_epochs']} epochs, {len(train_loader)} batches per "
              "process per epoch")

    start_time = time.time()
    model, wrapped_model, optimizer = build_training(cfg, settings, device, fast=not args.book_model,
                                                   compile_model=args.compile, ddp=world_size > 1,
                                                   book_dropout=args.book_dropout)
    if world_size > 1:
        torch.manual_seed(SEED + rank)  # the same weights everywhere, different dropout masks
    train_losses, val_losses, tokens_seen = train_model_fast(
        wrapped_model, train_loader, val_loader, optimizer, device,
        num_epochs=settings["num_epochs"], eval_freq=settings["eval_freq"],
        eval_iter=settings["eval_iter"], start_context=START_CONTEXT, tokenizer=tokenizer,
        is_main_process=is_main, **train_kwargs)
    if is_main:
        print(f"Training completed in {(time.time() - start_time) / 60:.2f} minutes.")
        path = save_checkpoint(output_path(CHECKPOINT_NAME, args.quick), model, cfg, optimizer)
        print(f"Saved the model and optimizer to {path}")
        epochs_tensor = torch.linspace(0, settings["num_epochs"], len(train_losses))
        path = plot_losses(epochs_tensor, tokens_seen, train_losses, val_losses,
                           output_path("fast-pretraining-loss-plot.png", args.quick))
        print("Saved the loss plot to", path)


def main():
    args = parse_args()
    if not launched_by_torchrun():
        return pretrain(args, 0, 1, get_device(args.device))
    rank, world_size, device = ddp_setup(args.device, command=TORCHRUN_COMMAND)
    try:
        pretrain(args, rank, world_size, device)
        dist.barrier()
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    run_main(main)
