"""train_own_text.py's training (not a chapter): chapter 5's loop with appendix D's schedule and
clipping, made resumable, and the sample that ends every run.
"""

import time

import torch
import torch.distributed as dist
from torch.utils.data import Subset

from appendix_d import lr_at_step
from fast_attention import use_fast_dropout
from fast_pretraining import accumulate_gradients, accumulation_groups, autocast_dtype_for, enable_fast_math
from own_text_checkpoints import plot_path, write_best_checkpoint, write_checkpoint
from own_text_data import epoch_order, loader
from own_tokenizers import ENDOFTEXT
from u_pretraining import evaluate_model, generate, generate_and_print_sample, plot_losses

SAMPLING = {"temperature": 0.8, "top_k": 50}  # the sample's draws, as generate_text.py's defaults


def optimizer_step(run, batches, trained_model, autocast_dtype):
    """One step of appendix D's training: the scheduled learning rate, the loss of `batches` (their
    gradients add up: fast_pretraining.accumulate_gradients), clipping after warmup. Returns the mean
    loss and the learning rate."""
    settings, step = run.settings, run.state["global_step"]
    lr = lr_at_step(step, settings["warmup_steps"], settings["total_steps"], settings["peak_lr"],
                    settings["initial_lr"], settings["min_lr"])
    for param_group in run.optimizer.param_groups:
        param_group["lr"] = lr
    run.optimizer.zero_grad()
    mean_loss = accumulate_gradients(trained_model, batches, run.device, autocast_dtype)
    if step >= settings["warmup_steps"]:
        torch.nn.utils.clip_grad_norm_(run.model.parameters(), max_norm=1.0)
    run.optimizer.step()
    if run.world_size > 1:  # the loss of the whole global batch, the same in every process
        dist.all_reduce(mean_loss)
        mean_loss = mean_loss / run.world_size
    return mean_loss.item(), lr


def evaluate_and_record(run, eval_loaders, write):
    """Rank 0 alone evaluates (on the plain model: nothing to synchronise) and keeps the losses."""
    if run.rank != 0:
        return
    state = run.state
    train_loss, val_loss = evaluate_model(run.model, *eval_loaders, run.device, run.settings["eval_iter"])
    state["train_losses"].append(train_loss)
    state["val_losses"].append(val_loss)
    state["track_tokens_seen"].append(state["tokens_seen"])
    state["eval_steps"].append(state["global_step"])
    write(f"Ep {state['epoch'] + 1} (Step {state['global_step']:06d}): "
          f"Train loss {train_loss:.3f}, Val loss {val_loss:.3f}")
    if state.get("best_val_loss") is None or val_loss < state["best_val_loss"]:
        state["best_val_loss"], state["best_step"] = val_loss, state["global_step"]
        write_best_checkpoint(run)


def train_epoch(run, bar, eval_loaders, session, stop_after, trained_model, autocast_dtype):
    """The rest of the current epoch, in its shuffled order. True when the run ended inside it
    (all steps done, or --stop-after reached); False when the epoch ran to its end."""
    settings, state = run.settings, run.state
    batch_size = settings["batch_size"]
    order = epoch_order(len(run.train_set), settings["seed"], state["epoch"])
    # A global batch is world_size batches: this process takes its own one of each, so the run
    # is a pure function of (seed, epoch, position), also when it resumes.
    per_batch = batch_size * run.world_size
    left = order[state["batch_in_epoch"] * per_batch:]
    left = left[:len(left) // per_batch * per_batch].view(-1, run.world_size, batch_size)[:, run.rank]
    remaining = Subset(run.train_set, left.reshape(-1).tolist())
    grad_accum = settings.get("grad_accum", 1)  # not in the checkpoints of older versions
    for batches in accumulation_groups(loader(remaining, batch_size, drop_last=True), grad_accum):
        if len(batches) < grad_accum:
            break  # the end of the epoch: too few batches left for a whole step
        loss, lr = optimizer_step(run, batches, trained_model, autocast_dtype)
        num_tokens = sum(input_batch.numel() for input_batch, _ in batches) * run.world_size  # all processes'
        state["global_step"] += 1
        state["batch_in_epoch"] += len(batches)
        state["tokens_seen"] += num_tokens
        state["step_losses"].append(loss)
        session["tokens"] += num_tokens
        session["steps"] += 1
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.3f}", lr=f"{lr:.1e}",
                        tok_s=f"{session['tokens'] / (time.perf_counter() - session['start']):,.0f}")

        done = state["global_step"] == settings["total_steps"]
        if state["global_step"] % settings["eval_freq"] == 0 or state["global_step"] == 1 or done:
            evaluate_and_record(run, eval_loaders, bar.write)
        stopped = stop_after is not None and session["steps"] >= stop_after
        if state["global_step"] % settings["checkpoint_every"] == 0 or done or stopped:
            write_checkpoint(run)
        if done or stopped:
            return True
    return False


def fast_paths(run):
    """(the model to train, the autocast dtype) for the run's settings: with "fast", FastDropout's
    cheaper masks, bfloat16 autocast where native (or --dtype) and TF32 on CUDA; with "compile",
    torch.compile's wrapper, which trains the same parameters that run.model holds and saves."""
    settings = run.settings
    autocast_dtype = None
    if settings.get("fast"):
        enable_fast_math(run.device)
        use_fast_dropout(run.model)
        autocast_dtype = autocast_dtype_for(settings["dtype"], run.device)
    trained_model = run.model
    if run.world_size > 1:
        from torch.nn.parallel import DistributedDataParallel

        device_ids = [run.device.index] if run.device.type == "cuda" else None
        trained_model = DistributedDataParallel(run.model, device_ids=device_ids)
    if settings.get("compile"):
        trained_model = torch.compile(trained_model)
    used = (["fast path"] if settings.get("fast") else []) + \
        ([f"{autocast_dtype} autocast".replace("torch.", "")] if autocast_dtype else []) + \
        (["torch.compile"] if settings.get("compile") else []) + \
        ([f"{settings['grad_accum']} batches per step"] if settings.get("grad_accum", 1) > 1 else []) + \
        ([f"{run.world_size} processes ({dist.get_backend()})"] if run.world_size > 1 else [])
    if used and run.rank == 0:
        print("Using:", ", ".join(used))
    return trained_model, autocast_dtype


def train_own_model(run, stop_after=None):
    """Chapter 5's loop, with appendix D's schedule and clipping, made resumable: it continues from
    run.state (step, epoch, position in the epoch) and checkpoints every settings["checkpoint_every"]
    steps. Then the loss plot, beside the checkpoint."""
    from tqdm import tqdm

    settings, state = run.settings, run.state
    # Fixed batches to measure on, of the global batch size: rank 0 alone evaluates, on the windows
    # that one process with the whole batch would, so the losses do not depend on the process count.
    global_batch = settings["batch_size"] * run.world_size
    eval_loaders = (loader(run.train_set, global_batch, drop_last=True),
                    loader(run.val_set, global_batch, drop_last=False))
    session = {"start": time.perf_counter(), "tokens": 0, "steps": 0}
    trained_model, autocast_dtype = fast_paths(run)
    run.model.train()
    with tqdm(total=settings["total_steps"], initial=state["global_step"], desc="training", unit="step",
              dynamic_ncols=True, disable=None) as bar:
        while state["global_step"] < settings["total_steps"]:
            if train_epoch(run, bar, eval_loaders, session, stop_after, trained_model, autocast_dtype):
                break
            if run.rank == 0:
                with tqdm.external_write_mode():
                    print(f"Sample after epoch {state['epoch'] + 1}: ", end="")
                    generate_and_print_sample(run.model, run.tokenizer, run.device, settings["start_context"])
            state["epoch"] += 1
            state["batch_in_epoch"] = 0
    steps_per_epoch = len(run.train_set) // global_batch // settings.get("grad_accum", 1)
    if steps_per_epoch and state["eval_steps"] and run.rank == 0:
        plot_losses([step / steps_per_epoch for step in state["eval_steps"]], state["track_tokens_seen"],
                    state["train_losses"], state["val_losses"], plot_path(run.path))
    return state


def print_sample(run, prompt, num_tokens):
    """Every run ends with a sample of the model as it is now, also one that stops early. Drawn after
    the last checkpoint, so its random draws change nothing a resumed run computes."""
    ids = run.tokenizer.encode(prompt, allowed_special={ENDOFTEXT}) or [run.tokenizer.eot_token]
    torch.manual_seed(run.settings["seed"])
    run.model.eval()
    with torch.no_grad():
        out = generate(run.model, torch.tensor([ids], device=run.device), num_tokens,
                       run.cfg["context_length"], **SAMPLING)
    print(f"Sample ({num_tokens} tokens, temperature {SAMPLING['temperature']}, top-k {SAMPLING['top_k']}):")
    print(run.tokenizer.decode(out[0].tolist()))
