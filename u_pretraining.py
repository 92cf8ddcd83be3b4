"""Pretrain the GPT model on "The Verdict", then decode with temperature and top-k, save and reload
the model and optimizer, and (appendix D) train with warmup, cosine decay and gradient clipping.
Book sections 5.1-5.4 and appendix D.

Run: python u_pretraining.py                 the book's run (on CPU it prints the book's loss log)
     python u_pretraining.py --quick         a tiny model for a few steps, to check that all runs
     python u_pretraining.py --appendix-d    also train with appendix D's train_model
Beyond the book (see README, "Fast paths"):
     python u_pretraining.py --fast          5.2 with fast attention, fused AdamW, bfloat16 autocast, TF32
     python u_pretraining.py --compile --grad-accum 4     torch.compile; 4 batches per optimizer step
     torchrun --nproc_per_node=2 u_pretraining.py --fast  5.2 alone, data parallel (DDP) on 2 GPUs
                                             (or 2 CPU processes with --device cpu); rank 0 saves
"""

import argparse
import contextlib
import math
import os
import time
from pathlib import Path

import torch

from a_tokenizer import load_verdict
from d_tokenizer import get_gpt2_tokenizer
from e_data_preparation import create_dataloader_v1
from gpt_download import ScriptError, get_device, output_path, run_main
from s_gpt_model import CachedNextTokenLogits, GPTModel, generate_text_simple
from t_pretraining_basics import GPT_CONFIG_124M, START_CONTEXT, text_to_token_ids, token_ids_to_text

# The model is GPT_CONFIG_124M from t_pretraining_basics: GPT-2 124M with a 256-token context.
# To try another size, override it here, e.g. GPT_CONFIG_124M = {**GPT_CONFIG_124M, "n_layers": 6}

TRAIN_SETTINGS = {
    "train_ratio": 0.90,     # the first 90% of the characters train, the last 10% validate
    "batch_size": 2,
    "learning_rate": 0.0004,
    "weight_decay": 0.1,
    "num_epochs": 10,
    "eval_freq": 5,          # evaluate every 5 optimizer steps ...
    "eval_iter": 5,          # ... on the first 5 batches of each loader
    "continue_epochs": 1,    # epochs of training after reloading the checkpoint (exercise 5.4)
}

# Appendix D: warm up linearly for the first 20% of the steps, then decay along a cosine.
APPENDIX_D_SETTINGS = {
    "num_epochs": 15,
    "warmup_fraction": 0.2,
    "peak_lr": 0.001,        # the book's errata: 0.001 (the printed 5e-4 was a mistake)
    "initial_lr": 1e-5,
    "min_lr": 1e-5,
    "weight_decay": 0.1,
    "eval_freq": 5,
    "eval_iter": 1,
}

# --quick: a tiny model on the first 3,000 characters, to check in seconds that everything runs.
QUICK_CONFIG = {**GPT_CONFIG_124M, "context_length": 32, "emb_dim": 32, "n_heads": 2, "n_layers": 2}
QUICK_SETTINGS = {**TRAIN_SETTINGS, "num_epochs": 2, "eval_iter": 2}
QUICK_APPENDIX_D_SETTINGS = {**APPENDIX_D_SETTINGS, "num_epochs": 2, "eval_iter": 2}
QUICK_MAX_CHARS = 3_000

SEED = 123

# The toy vocabulary of section 5.3 and the logits a model might give for the next token.
TOY_VOCAB = {"closer": 0, "every": 1, "effort": 2, "forward": 3, "inches": 4, "moves": 5,
             "pizza": 6, "toward": 7, "you": 8}
TOY_NEXT_TOKEN_LOGITS = [4.51, 0.89, -1.90, 6.75, 1.63, -1.62, -1.89, 6.28, 1.79]


# ---- 5.1 the loss over batches and loaders ----

def calc_loss_batch(input_batch, target_batch, model, device):
    input_batch, target_batch = input_batch.to(device), target_batch.to(device)
    logits = model(input_batch)
    return torch.nn.functional.cross_entropy(logits.flatten(0, 1), target_batch.flatten())


def calc_loss_loader(data_loader, model, device, num_batches=None):
    """Mean batch loss over the first `num_batches` batches (all of them by default)."""
    total_loss = 0.0
    if len(data_loader) == 0:
        return float("nan")
    elif num_batches is None:
        num_batches = len(data_loader)
    else:
        num_batches = min(num_batches, len(data_loader))
    for i, (input_batch, target_batch) in enumerate(data_loader):
        if i < num_batches:
            loss = calc_loss_batch(input_batch, target_batch, model, device)
            total_loss += loss.item()
        else:
            break
    return total_loss / num_batches


# ---- 5.2 training ----

def evaluate_model(model, train_loader, val_loader, device, eval_iter):
    model.eval()  # no dropout while measuring
    with torch.no_grad():
        train_loss = calc_loss_loader(train_loader, model, device, num_batches=eval_iter)
        val_loss = calc_loss_loader(val_loader, model, device, num_batches=eval_iter)
    model.train()
    return train_loss, val_loss


def generate_and_print_sample(model, tokenizer, device, start_context):
    model.eval()
    context_size = model.pos_emb.weight.shape[0]
    encoded = text_to_token_ids(start_context, tokenizer).to(device)
    with torch.no_grad():
        token_ids = generate_text_simple(model=model, idx=encoded, max_new_tokens=50,
                                         context_size=context_size)
    decoded_text = token_ids_to_text(token_ids, tokenizer)
    print(decoded_text.replace("\n", " "))  # one line per sample
    model.train()


def train_model_simple(model, train_loader, val_loader, optimizer, device, num_epochs,
                       eval_freq, eval_iter, start_context, tokenizer,
                       grad_accum_steps=1, autocast_dtype=None, is_main_process=True):
    """The book's training loop. The extra arguments (defaults: the book's loop) serve the fast
    paths: grad_accum_steps batches add up their gradients before each optimizer step;
    autocast_dtype (e.g. torch.bfloat16) runs forward passes in mixed precision; in a DDP run,
    is_main_process=False (every rank but 0) trains without evaluating or printing."""
    train_losses, val_losses, track_tokens_seen = [], [], []
    tokens_seen, global_step = 0, -1
    eval_model = unwrap_model(model)  # evaluation and samples need no DDP or compiled wrapper

    for epoch in range(num_epochs):
        model.train()
        if hasattr(train_loader.sampler, "set_epoch"):  # DistributedSampler: new order each epoch
            train_loader.sampler.set_epoch(epoch)
        for batches in accumulation_groups(train_loader, grad_accum_steps):
            optimizer.zero_grad()  # gradients from the previous step would add up otherwise
            for i, (input_batch, target_batch) in enumerate(batches):
                with gradient_sync_context(model, sync=i == len(batches) - 1):
                    with autocast_context(device, autocast_dtype):
                        loss = calc_loss_batch(input_batch, target_batch, model, device)
                    (loss / len(batches)).backward()  # backward runs in the forward pass's dtypes
                tokens_seen += input_batch.numel()
            optimizer.step()
            global_step += 1

            if global_step % eval_freq == 0 and is_main_process:
                with autocast_context(device, autocast_dtype):
                    train_loss, val_loss = evaluate_model(eval_model, train_loader, val_loader, device,
                                                          eval_iter)
                train_losses.append(train_loss)
                val_losses.append(val_loss)
                track_tokens_seen.append(tokens_seen)
                print(f"Ep {epoch + 1} (Step {global_step:06d}): "
                      f"Train loss {train_loss:.3f}, Val loss {val_loss:.3f}")

        if is_main_process:
            generate_and_print_sample(eval_model, tokenizer, device, start_context)

    return train_losses, val_losses, track_tokens_seen


def plot_losses(epochs_seen, tokens_seen, train_losses, val_losses, path):
    """Save the training and validation losses against epochs, with tokens seen on a top axis."""
    import matplotlib.pyplot as plt  # imported here so that importing this file stays light
    from matplotlib.ticker import MaxNLocator

    fig, ax1 = plt.subplots(figsize=(5, 3))
    ax1.plot(epochs_seen, train_losses, label="Training loss")
    ax1.plot(epochs_seen, val_losses, linestyle="-.", label="Validation loss")
    ax1.set_xlabel("Epochs")
    ax1.set_ylabel("Loss")
    ax1.legend(loc="upper right")
    ax1.xaxis.set_major_locator(MaxNLocator(integer=True))

    ax2 = ax1.twiny()  # a second x axis sharing the y axis
    ax2.plot(tokens_seen, train_losses, alpha=0)  # invisible: only sets the axis range
    ax2.set_xlabel("Tokens seen")

    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


# ---- 5.3 decoding strategies ----

def softmax_with_temperature(logits, temperature):
    """T > 1 flattens the distribution, T < 1 sharpens it towards the argmax."""
    scaled_logits = logits / temperature
    return torch.softmax(scaled_logits, dim=0)


def generate(model, idx, max_new_tokens, context_size, temperature=0.0, top_k=None, eos_id=None,
             use_cache=False):
    """Extend each row of `idx` by up to `max_new_tokens` tokens.

    temperature 0.0 picks the most likely token (greedy); temperature > 0 samples from the
    softmax of logits / temperature. top_k keeps only each row's k largest logits.
    eos_id: a row that produces eos_id is finished; generation stops once every row is. The
    eos_id that finishes the last rows is not appended (so a single sequence ends without it,
    as in the book); rows that finished earlier are padded with eos_id to keep the batch
    rectangular. So in every row, everything from the first eos_id on is padding.
    use_cache=True (beyond the book) keeps each token's keys and values instead of running the
    whole sequence again for every new token: the same ids, many times faster.
    """
    if temperature < 0.0:
        raise ValueError(f"temperature must be 0.0 (greedy) or positive, got {temperature}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be a positive integer or None, got {top_k}")
    finished = torch.zeros(idx.shape[0], dtype=torch.bool, device=idx.device)
    cached_logits = CachedNextTokenLogits(model, context_size) if use_cache else None

    for _ in range(max_new_tokens):
        if use_cache:
            logits = cached_logits(idx)
        else:
            idx_cond = idx[:, -context_size:]
            with torch.no_grad():
                logits = model(idx_cond)
            logits = logits[:, -1, :]

        if top_k is not None:
            top_logits, _ = torch.topk(logits, min(top_k, logits.shape[-1]))
            min_val = top_logits[:, -1:]  # each row's k-th largest logit, shape (batch, 1)
            logits = torch.where(logits < min_val, torch.tensor(float("-inf")).to(logits.device), logits)

        if temperature > 0.0:
            logits = logits / temperature
            probs = torch.softmax(logits, dim=-1)
            idx_next = torch.multinomial(probs, num_samples=1)
        else:
            idx_next = torch.argmax(logits, dim=-1, keepdim=True)

        if eos_id is not None:
            idx_next = idx_next.masked_fill(finished.unsqueeze(1), eos_id)  # pad finished rows
            finished = finished | (idx_next.squeeze(1) == eos_id)
            if finished.all():
                break
        idx = torch.cat((idx, idx_next), dim=1)

    return idx


def print_sampled_tokens(probas, inverse_vocab):
    """Sample 1,000 next tokens from `probas` and print how often each word came up."""
    torch.manual_seed(123)
    sample = [torch.multinomial(probas, num_samples=1).item() for _ in range(1_000)]
    sampled_ids = torch.bincount(torch.tensor(sample), minlength=len(probas))
    for i, freq in enumerate(sampled_ids):
        print(f"{freq} x {inverse_vocab[i]}")


def plot_temperatures(scaled_probas, temperatures, vocab, path):
    import matplotlib.pyplot as plt

    x = torch.arange(len(vocab))
    bar_width = 0.15
    fig, ax = plt.subplots(figsize=(5, 3))
    for i, temperature in enumerate(temperatures):
        ax.bar(x + i * bar_width, scaled_probas[i], bar_width, label=f"Temperature = {temperature}")
    ax.set_ylabel("Probability")
    ax.set_xticks(x)
    ax.set_xticklabels(vocab.keys(), rotation=90)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


# ---- 5.4 saving and loading: one format for every checkpoint of the series ----

_LOADABLE_TYPES = (type(None), bool, int, float, str, bytes, torch.Tensor, torch.dtype, torch.device,
                   torch.Size)


def _check_loadable(value, name):
    """torch.load(weights_only=True) reads only tensors and plain Python values: refuse the rest now,
    not when someone tries to load the file."""
    if isinstance(value, dict):
        for key, item in value.items():
            _check_loadable(key, f"a key of {name}")
            _check_loadable(item, f"{name}[{key!r}]")
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _check_loadable(item, f"{name}[{i}]")
    elif not isinstance(value, _LOADABLE_TYPES):
        raise ValueError(f"{name} is a {type(value).__name__}, which torch.load(weights_only=True) "
                         "cannot read back; store numbers, strings, lists, dicts or tensors")


def save_checkpoint(path, model, cfg, optimizer=None, **extra):
    """Save {"model_state_dict", "config", ["optimizer_state_dict"], **extra} to `path`.

    Written to a temporary file that is renamed into place, so an interrupted save never leaves a
    half-written checkpoint behind. Returns the path."""
    reserved = {"model_state_dict", "config", "optimizer_state_dict"} & set(extra)
    if reserved:
        raise ValueError(f"{sorted(reserved)[0]!r} is set by save_checkpoint itself; use another name")
    checkpoint = {"model_state_dict": model.state_dict(), "config": dict(cfg)}
    if optimizer is not None:
        checkpoint["optimizer_state_dict"] = optimizer.state_dict()
    checkpoint.update(extra)
    _check_loadable(checkpoint["config"], "config")
    for key, value in extra.items():
        _check_loadable(value, key)

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # A name of our own rather than tempfile.mkstemp, whose files only their owner can read.
    temp_path = path.with_name(f"{path.name}.{os.getpid()}.part")
    try:
        torch.save(checkpoint, temp_path)
        os.replace(temp_path, path)
    finally:
        temp_path.unlink(missing_ok=True)
    return path


def load_checkpoint(path, device="cpu"):
    """Read a checkpoint written by save_checkpoint, with its tensors on `device`."""
    path = Path(path)
    if not path.is_file():
        raise ScriptError(f"there is no checkpoint at {path}; python u_pretraining.py writes "
                          "outputs/model_and_optimizer.pth (or check the path)")
    try:
        checkpoint = torch.load(path, map_location=device, weights_only=True)
    except Exception as error:  # truncated zip, random bytes, pickled objects ...
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ScriptError(f"cannot read the checkpoint {path}: it is damaged, incomplete or not a "
                          f"PyTorch checkpoint ({reason}); delete it and create it again") from error
    if not isinstance(checkpoint, dict) or "model_state_dict" not in checkpoint:
        raise ScriptError(f"{path} is not a checkpoint of this series: it has no 'model_state_dict'")
    return checkpoint


def model_from_checkpoint(path, device="cpu"):
    """Rebuild the GPTModel saved in `path` from the config stored beside its weights.
    Returns (model, cfg) with the model on `device` in eval mode."""
    checkpoint = load_checkpoint(path, device)
    cfg = checkpoint.get("config")
    if not isinstance(cfg, dict):
        raise ScriptError(f"{path} holds no model config; it was not written by save_checkpoint")
    model = GPTModel(cfg)
    try:
        model.load_state_dict(checkpoint["model_state_dict"])
    except RuntimeError as error:
        raise ScriptError(f"the weights in {path} do not fit a GPTModel built from its config: "
                          f"{str(error).splitlines()[0]}") from error
    model.to(device)
    model.eval()
    return model, cfg


# ---- appendix D: learning rate warmup, cosine decay, gradient clipping ----

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
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


# ---- beyond the book: fast and multi-GPU pretraining (--fast, --compile, --grad-accum, torchrun) ----

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


def enable_fast_math(device):
    """--fast on CUDA: float32 matmuls that remain (outside autocast) run on TF32 tensor cores."""
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


def launched_by_torchrun():
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def setup_distributed(device_name=None):
    """Join the process group torchrun prepared; return (rank, world_size, device).
    One GPU per process through NCCL, or CPU processes through gloo."""
    import torch.distributed as dist

    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    device = get_device(device_name)
    if device.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise ScriptError(f"torchrun started more processes on this machine than its "
                              f"{torch.cuda.device_count()} GPU(s); lower --nproc_per_node")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        backend = "nccl"
    elif device.type == "cpu":
        backend = "gloo"
    else:
        raise ScriptError(f"torch.distributed cannot train on {device.type}; use --device cpu or cuda")
    dist.init_process_group(backend=backend, rank=rank, world_size=world_size)
    return rank, world_size, device


def distributed_loader(data_loader, rank, world_size, seed=SEED):
    """A loader over this process's share of data_loader's dataset (DistributedSampler), so the
    processes together see every window once per epoch, in a new shuffled order each epoch."""
    from torch.utils.data import DataLoader, DistributedSampler

    sampler = DistributedSampler(data_loader.dataset, num_replicas=world_size, rank=rank,
                                 shuffle=True, seed=seed, drop_last=True)
    return DataLoader(data_loader.dataset, batch_size=data_loader.batch_size, sampler=sampler,
                      drop_last=True)


def build_training(cfg, settings, device, fast=False, compile_model=False, ddp=False):
    """5.2's model and optimizer, created as the book creates them; with --fast a fused AdamW, with
    DDP and --compile wrapped. Returns (model, wrapped_model, optimizer): train the wrapper
    wrapped_model, save model (the plain GPTModel, whose state dict has the usual names)."""
    torch.manual_seed(SEED)
    model = GPTModel(cfg)
    model.to(device)
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


def setup_fast_paths(args, device):
    """Switch on what --fast asks for globally (TF32); return the train_model_simple arguments
    that --fast and --grad-accum ask for, and a line naming everything in use."""
    train_kwargs = {"grad_accum_steps": args.grad_accum, "autocast_dtype": None}
    used = []
    if args.fast:
        enable_fast_math(device)
        train_kwargs["autocast_dtype"] = fast_autocast_dtype(device)
        used = ["FastMultiHeadAttention", "fused AdamW"]
        if device.type == "cuda":
            used.append("TF32 matmuls")
        if train_kwargs["autocast_dtype"] is not None:
            used.append("bfloat16 autocast")
    if args.compile:
        used.append("torch.compile")
    if args.grad_accum > 1:
        used.append(f"{args.grad_accum} batches per optimizer step")
    return train_kwargs, ", ".join(used)


def pretrain_distributed(args):
    """5.2 only, as one of several processes started by torchrun: each trains on its share of the
    windows, DDP averages the gradients, rank 0 alone prints and saves."""
    import torch.distributed as dist

    rank, world_size, device = setup_distributed(args.device)
    try:
        cfg = QUICK_CONFIG if args.quick else GPT_CONFIG_124M
        cfg = {**cfg, "attention": "fast"} if args.fast else cfg
        settings = QUICK_SETTINGS if args.quick else TRAIN_SETTINGS
        num_epochs = args.epochs or settings["num_epochs"]
        train_kwargs, used = setup_fast_paths(args, device)
        tokenizer = get_gpt2_tokenizer()
        text_data = load_verdict()
        if args.quick:
            text_data = text_data[:QUICK_MAX_CHARS]
        torch.manual_seed(SEED)
        train_loader, val_loader = make_loaders(text_data, cfg, settings)
        train_loader = distributed_loader(train_loader, rank, world_size)
        if len(train_loader) == 0:
            raise ScriptError(f"{world_size} processes x batch_size {settings['batch_size']} is more "
                              "than the training windows; use fewer processes")
        if rank == 0:
            backend = "nccl" if device.type == "cuda" else "gloo"
            global_batch = settings["batch_size"] * world_size * args.grad_accum
            print(f"Device: {device}, {world_size} processes ({backend}); global batch {global_batch}"
                  + (f"; {used}" if used else ""))
            if args.appendix_d:
                print("(under torchrun only 5.2 runs; run --appendix-d without torchrun)")
            print(f"\n5.2 Training for {num_epochs} epochs, {len(train_loader)} batches per process "
                  "per epoch")

        start_time = time.time()
        model, wrapped_model, optimizer = build_training(cfg, settings, device, fast=args.fast,
                                                       compile_model=args.compile, ddp=True)
        torch.manual_seed(SEED + rank)  # the same weights everywhere, different dropout masks
        train_model_simple(wrapped_model, train_loader, val_loader, optimizer, device,
                           num_epochs=num_epochs, eval_freq=settings["eval_freq"],
                           eval_iter=settings["eval_iter"], start_context=START_CONTEXT,
                           tokenizer=tokenizer, is_main_process=rank == 0, **train_kwargs)
        if rank == 0:
            print(f"Training completed in {(time.time() - start_time) / 60:.2f} minutes.")
            path = save_checkpoint(output_path("model_and_optimizer.pth"), model, cfg, optimizer)
            print(f"Saved the model and optimizer to {path}")
        dist.barrier()
    finally:
        dist.destroy_process_group()


# ---- the walk-through ----

def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default=None,
                        help="cpu, cuda or mps (default: cuda, then mps, then cpu); the book's loss "
                             "log reproduces on cpu")
    parser.add_argument("--epochs", type=int, default=None,
                        help=f"training epochs (default: the book's {TRAIN_SETTINGS['num_epochs']}, "
                             f"{QUICK_SETTINGS['num_epochs']} with --quick)")
    parser.add_argument("--quick", action="store_true",
                        help="a tiny model for a few steps: checks in seconds that everything runs")
    parser.add_argument("--appendix-d", action="store_true",
                        help="also train a fresh model with appendix D's train_model (warmup, cosine "
                             "decay, clipping; 15 epochs, about 1.5 times the chapter's training)")
    parser.add_argument("--fast", action="store_true",
                        help="beyond the book: FastMultiHeadAttention, fused AdamW, bfloat16 autocast "
                             "where the hardware computes it natively, TF32 matmuls on CUDA")
    parser.add_argument("--compile", action="store_true",
                        help="beyond the book: train under torch.compile (needs a C++ compiler on CPU)")
    parser.add_argument("--grad-accum", type=int, default=1, metavar="N",
                        help="beyond the book: add up the gradients of N batches per optimizer step")
    args = parser.parse_args()
    if args.epochs is not None and args.epochs < 1:
        parser.error("--epochs must be at least 1")
    if args.grad_accum < 1:
        parser.error("--grad-accum must be at least 1")
    return args


def make_loaders(text_data, cfg, settings):
    """Split by characters and build the book's loaders. The training loader draws a new shuffle
    from torch's global random generator each time it is iterated."""
    split_idx = int(settings["train_ratio"] * len(text_data))
    train_data, val_data = text_data[:split_idx], text_data[split_idx:]
    tokenizer = get_gpt2_tokenizer()
    for name, part in (("training", train_data), ("validation", val_data)):
        num_tokens = len(tokenizer.encode(part, allowed_special={"<|endoftext|>"}))
        if num_tokens <= cfg["context_length"]:
            raise ScriptError(
                f"the {name} part of the text has {num_tokens} tokens, too few for one window of "
                f"context_length={cfg['context_length']} (+1 for the target); use a longer text, "
                "or lower context_length in the config at the top of this script")
    train_loader = create_dataloader_v1(
        train_data, batch_size=settings["batch_size"], max_length=cfg["context_length"],
        stride=cfg["context_length"], drop_last=True, shuffle=True, num_workers=0)
    val_loader = create_dataloader_v1(
        val_data, batch_size=settings["batch_size"], max_length=cfg["context_length"],
        stride=cfg["context_length"], drop_last=False, shuffle=False, num_workers=0)
    if len(train_loader) == 0:
        raise ScriptError(f"the training text gives fewer than batch_size={settings['batch_size']} "
                          "windows; use a longer text or a smaller batch size")
    return train_loader, val_loader


def main():
    args = parse_args()
    if launched_by_torchrun():
        return pretrain_distributed(args)
    device = get_device(args.device)
    cfg = QUICK_CONFIG if args.quick else GPT_CONFIG_124M
    cfg = {**cfg, "attention": "fast"} if args.fast else cfg
    settings = QUICK_SETTINGS if args.quick else TRAIN_SETTINGS
    appendix_d = QUICK_APPENDIX_D_SETTINGS if args.quick else APPENDIX_D_SETTINGS
    num_epochs = args.epochs or settings["num_epochs"]
    print(f"Device: {device}" + ("   (--quick: a tiny model, not the book's numbers)" if args.quick else ""))
    train_kwargs, fast_paths_used = setup_fast_paths(args, device)
    if fast_paths_used:
        print("Beyond the book, 5.2 trains with:", fast_paths_used)

    tokenizer = get_gpt2_tokenizer()

    # 5.1: the untrained model, created exactly as the book creates it.
    torch.manual_seed(SEED)
    model = GPTModel(cfg)
    model.eval()

    # 5.1.3: the data, split 90/10 by characters.
    text_data = load_verdict()
    if args.quick:
        text_data = text_data[:QUICK_MAX_CHARS]
    print("\n5.1.3 Characters:", len(text_data))
    print("Tokens:", len(tokenizer.encode(text_data, allowed_special={"<|endoftext|>"})))

    torch.manual_seed(SEED)
    train_loader, val_loader = make_loaders(text_data, cfg, settings)
    x, y = next(iter(train_loader))
    print(f"Train loader: {len(train_loader)} batches, inputs {tuple(x.shape)}, targets {tuple(y.shape)}")
    x, y = next(iter(val_loader))
    print(f"Validation loader: {len(val_loader)} batches, inputs {tuple(x.shape)}, targets {tuple(y.shape)}")
    train_tokens = sum(input_batch.numel() for input_batch, _ in train_loader)
    val_tokens = sum(input_batch.numel() for input_batch, _ in val_loader)
    print("Training tokens:", train_tokens)
    print("Validation tokens:", val_tokens)
    print("All tokens:", train_tokens + val_tokens)

    model.to(device)
    torch.manual_seed(SEED)  # so that the training loader's shuffle is the book's
    with torch.no_grad():
        train_loss = calc_loss_loader(train_loader, model, device)
        val_loss = calc_loss_loader(val_loader, model, device)
    print("Training loss before training:", train_loss)
    print("Validation loss before training:", val_loss)

    # 5.2: train a fresh model (same seed) with AdamW.
    print(f"\n5.2 Training for {num_epochs} epochs")
    start_time = time.time()
    model, wrapped_model, optimizer = build_training(cfg, settings, device, fast=args.fast,
                                                   compile_model=args.compile)
    train_losses, val_losses, tokens_seen = train_model_simple(
        wrapped_model, train_loader, val_loader, optimizer, device,
        num_epochs=num_epochs, eval_freq=settings["eval_freq"], eval_iter=settings["eval_iter"],
        start_context=START_CONTEXT, tokenizer=tokenizer, **train_kwargs)
    print(f"Training completed in {(time.time() - start_time) / 60:.2f} minutes.")

    epochs_tensor = torch.linspace(0, num_epochs, len(train_losses))
    path = plot_losses(epochs_tensor, tokens_seen, train_losses, val_losses, output_path("loss-plot.png"))
    print("Saved the loss plot to", path)

    # 5.3: decoding. Greedy decoding always gives the same text.
    model.to("cpu")
    model.eval()
    token_ids = generate_text_simple(model=model, idx=text_to_token_ids(START_CONTEXT, tokenizer),
                                     max_new_tokens=25, context_size=cfg["context_length"])
    print("\n5.3 Greedy output text:\n", token_ids_to_text(token_ids, tokenizer))

    # 5.3.1: sampling from the probabilities, on a toy vocabulary of nine words.
    inverse_vocab = {v: k for k, v in TOY_VOCAB.items()}
    next_token_logits = torch.tensor(TOY_NEXT_TOKEN_LOGITS)
    probas = torch.softmax(next_token_logits, dim=0)
    print("\n5.3.1 Toy vocabulary, argmax picks:", inverse_vocab[torch.argmax(probas).item()])
    torch.manual_seed(123)
    print("One multinomial sample picks:", inverse_vocab[torch.multinomial(probas, num_samples=1).item()])
    print("1,000 samples (temperature 1):")
    print_sampled_tokens(probas, inverse_vocab)

    temperatures = [1, 0.1, 5]  # original, sharper, flatter
    scaled_probas = [softmax_with_temperature(next_token_logits, T) for T in temperatures]
    path = plot_temperatures(scaled_probas, temperatures, TOY_VOCAB, output_path("temperature-plot.png"))
    print("Saved the temperature plot to", path)
    for T, scaled in zip(temperatures[1:], scaled_probas[1:]):
        print(f"1,000 samples (temperature {T}):")
        print_sampled_tokens(scaled, inverse_vocab)

    # 5.3.2: top-k keeps the k largest logits and masks the rest with -inf.
    top_k = 3
    top_logits, top_pos = torch.topk(next_token_logits, top_k)
    print("\n5.3.2 Top logits:", top_logits)
    print("Top positions:", top_pos)
    new_logits = torch.where(condition=next_token_logits < top_logits[-1],
                             input=torch.tensor(float("-inf")), other=next_token_logits)
    print("Masked logits:", new_logits)
    print("Top-k probabilities:", torch.softmax(new_logits, dim=0))

    # 5.3.3: temperature and top-k together.
    torch.manual_seed(123)
    token_ids = generate(model=model, idx=text_to_token_ids(START_CONTEXT, tokenizer), max_new_tokens=15,
                         context_size=cfg["context_length"], top_k=25, temperature=1.4)
    print("\n5.3.3 Output text (top_k=25, temperature=1.4):\n", token_ids_to_text(token_ids, tokenizer))

    # 5.4: save model and optimizer (AdamW keeps two moving averages per weight), reload, go on.
    checkpoint_path = save_checkpoint(output_path("model_and_optimizer.pth"), model, cfg, optimizer)
    print(f"\n5.4 Saved the model and optimizer to {checkpoint_path} "
          f"({checkpoint_path.stat().st_size / 1e6:.1f} MB)")
    checkpoint = load_checkpoint(checkpoint_path)
    reloaded = GPTModel(checkpoint["config"])
    reloaded.load_state_dict(checkpoint["model_state_dict"])
    reloaded.eval()
    with torch.no_grad():
        same = torch.equal(model(token_ids), reloaded(token_ids))
    print("The reloaded model gives the same logits:", same)

    reloaded.to(device)  # before the optimizer, so that its state follows the weights to the device
    optimizer = torch.optim.AdamW(reloaded.parameters(), lr=0.0005, weight_decay=0.1)
    optimizer.load_state_dict(checkpoint["optimizer_state_dict"])  # also restores lr 0.0004
    print(f"Continue training the reloaded model for {settings['continue_epochs']} epoch(s):")
    train_model_simple(reloaded, train_loader, val_loader, optimizer, device,
                       num_epochs=settings["continue_epochs"], eval_freq=settings["eval_freq"],
                       eval_iter=settings["eval_iter"], start_context=START_CONTEXT, tokenizer=tokenizer,
                       **train_kwargs)

    # Appendix D: the learning rate schedule, and with --appendix-d a training run that uses it.
    n_epochs = appendix_d["num_epochs"]
    total_steps = len(train_loader) * n_epochs
    warmup_steps = int(appendix_d["warmup_fraction"] * total_steps)
    print(f"\nAppendix D: {total_steps} steps, {warmup_steps} of them warmup")
    if not args.appendix_d:
        lrs = [lr_at_step(step, warmup_steps, total_steps, appendix_d["peak_lr"],
                          appendix_d["initial_lr"], appendix_d["min_lr"]) for step in range(total_steps)]
        path = plot_learning_rates(lrs, output_path("lr-schedule.png"))
        print("Saved the learning rate schedule to", path)
        print("(run with --appendix-d to train a model with it)")
        return

    # D.3: clipping scales all gradients down together until their overall L2 norm is 1.0.
    torch.manual_seed(SEED)
    model = GPTModel(cfg)
    model.to(device)
    input_batch, target_batch = next(iter(train_loader))
    loss = calc_loss_batch(input_batch, target_batch, model, device)
    loss.backward()
    print("D.3 Highest gradient before clipping:", find_highest_gradient(model))
    torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=1.0)
    print("Highest gradient after clipping:", find_highest_gradient(model))

    # D.4: the modified training function.
    print(f"\nD.4 Training with train_model for {n_epochs} epochs")
    torch.manual_seed(SEED)
    model = GPTModel(cfg)
    model.to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=appendix_d["peak_lr"],
                                  weight_decay=appendix_d["weight_decay"])
    train_losses, val_losses, tokens_seen, lrs = train_model(
        model, train_loader, val_loader, optimizer, device, n_epochs=n_epochs,
        eval_freq=appendix_d["eval_freq"], eval_iter=appendix_d["eval_iter"],
        start_context=START_CONTEXT, tokenizer=tokenizer, warmup_steps=warmup_steps,
        initial_lr=appendix_d["initial_lr"], min_lr=appendix_d["min_lr"])
    path = plot_learning_rates(lrs, output_path("lr-schedule.png"))
    print("Saved the learning rate schedule to", path)
    epochs_tensor = torch.linspace(1, n_epochs, len(train_losses))
    path = plot_losses(epochs_tensor, tokens_seen, train_losses, val_losses,
                       output_path("loss-plot-appendix-d.png"))
    print("Saved the appendix D loss plot to", path)


if __name__ == "__main__":
    run_main(main)
