"""train_own_text.py's runs on disk (not a chapter): the state a checkpoint keeps so that a resumed
run computes exactly what an uninterrupted one would, the best-validation checkpoint, the model a
run starts from with --init-from, and the lock that keeps a second run off a checkpoint that a first
one is writing.
"""

import contextlib
from dataclasses import dataclass
from pathlib import Path

import torch
from filelock import FileLock, Timeout

from checkpoints import GPT2_VOCAB_SIZE, load_checkpoint, model_from_checkpoint, save_checkpoint
from d_tokenizer import get_gpt2_tokenizer
from own_tokenizers import tokenizer_from_dict, tokenizer_to_dict
from s_gpt_model import GPTModel
from v_load_gpt2_weights import gpt2_model_name, load_gpt2
from plumbing import ScriptError, ensure_writable, new_folders, remove_empty_folders, remove_stale_parts


@dataclass
class Run:
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    tokenizer: object
    cfg: dict
    settings: dict
    state: dict       # position (step, epoch, batch in the epoch) and the losses so far
    train_set: object
    val_set: object
    device: torch.device
    path: Path        # the checkpoint
    saved_step: int = None  # the step of the checkpoint on disk, None before the first one
    rank: int = 0           # under torchrun: this process's rank; rank 0 alone writes and prints
    world_size: int = 1


def new_train_state():
    return {"global_step": 0, "epoch": 0, "batch_in_epoch": 0, "tokens_seen": 0, "step_losses": [],
            "train_losses": [], "val_losses": [], "track_tokens_seen": [], "eval_steps": [],
            "best_val_loss": None, "best_step": None}


def rng_states(device):
    states = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        states["cuda"] = torch.cuda.get_rng_state(device)
    return states  # python's random and numpy draw nothing here


def set_rng_states(states, device):
    torch.set_rng_state(states["torch"].cpu())
    if device.type == "cuda" and "cuda" in states:
        torch.cuda.set_rng_state(states["cuda"].cpu(), device)


def write_checkpoint(run):
    """Everything a resumed run needs. checkpoints.save_checkpoint writes it atomically: a failed or
    killed write leaves the previous checkpoint as it was, and a failed one is a one-line error."""
    if run.rank != 0:
        return
    try:
        save_checkpoint(run.path, run.model, run.cfg, run.optimizer,
                        tokenizer=tokenizer_to_dict(run.tokenizer), run_settings=run.settings,
                        train_state={**run.state, "rng": rng_states(run.device)})
    except ScriptError as error:
        if run.saved_step is None:
            raise
        raise ScriptError(f"{error} (it holds step {run.saved_step}: continue with python train_own_text.py "
                          f"--resume --checkpoint {run.path})") from error
    run.saved_step = run.state["global_step"]


def best_path(checkpoint_path):
    return checkpoint_path.with_name(checkpoint_path.stem + "-best.pth")


def write_best_checkpoint(run):
    """The model with the lowest validation loss so far, in the series' format (generate_text.py and
    --init-from read it), with its step and loss; without the optimizer, which only --resume needs."""
    if run.rank != 0:
        return
    save_checkpoint(best_path(run.path), run.model, run.cfg, tokenizer=tokenizer_to_dict(run.tokenizer),
                    best={"step": run.state["best_step"], "val_loss": run.state["best_val_loss"]})


def starting_model(init_from, weights, models_dir, context_length=None, drop_rate=None):
    """--init-from: (model, cfg, tokenizer) of OpenAI's GPT-2 (a size or name) or of a checkpoint of
    the series (a path), to train on. A smaller context_length crops the position embeddings and
    causal masks to their first positions, as nanoGPT's crop_block_size does."""
    if Path(init_from).is_file() or init_from.endswith(".pth"):
        model, cfg, tokenizer = checkpoint_language_model(init_from)
        cfg, state = dict(cfg), model.state_dict()
    else:
        try:
            name = gpt2_model_name(init_from)
        except ValueError as error:
            raise ScriptError(f"--init-from {init_from!r} is no checkpoint file and {error}") from None
        model, cfg = load_gpt2(name, weights, models_dir)
        state, tokenizer = model.state_dict(), get_gpt2_tokenizer()
    if context_length is not None:
        if context_length > cfg["context_length"]:
            raise ScriptError(f"--context-length {context_length} is longer than the {cfg['context_length']} "
                              f"positions of {init_from}; a starting model's context can shrink, not grow")
        cfg["context_length"] = context_length
        state = {key: value[:context_length] if key == "pos_emb.weight" else
                 value[:context_length, :context_length] if key.endswith(".att.mask") else value
                 for key, value in state.items()}
    if drop_rate is not None:
        cfg["drop_rate"] = drop_rate
    model = GPTModel(cfg)
    model.load_state_dict(state)
    print(f"Starting from {init_from}: {sum(p.numel() for p in model.parameters()):,} parameters, "
          f"context {cfg['context_length']}")
    return model, cfg, tokenizer


def checkpoint_language_model(path):
    """(model, cfg, tokenizer) of a checkpoint of the series that predicts next tokens, or one line
    that says why it cannot be trained on text: checkpoints.model_from_checkpoint's checks of the
    config and the weights, and chapter 6's classifier named as such."""
    checkpoint = load_checkpoint(path, hint="give --init-from a checkpoint of the series or a GPT-2 size "
                                            "such as 124M")
    if "num_classes" in checkpoint:
        raise ScriptError(f"{path} is chapter 6's classifier: its output layer scores "
                          f"{checkpoint['num_classes']} classes, not the next token, so it cannot be trained "
                          "on text; give --init-from a language model (train_own_text.py's, "
                          "u_pretraining.py's or chapter 7's checkpoint) or a GPT-2 size such as 124M")
    # The small entries only: model_from_checkpoint reads the weights again, and two copies of a
    # large model's weights need not be in memory at once.
    entries = {key: checkpoint[key] for key in ("config", "tokenizer") if key in checkpoint}
    del checkpoint
    model, cfg = model_from_checkpoint(path)
    return model, cfg, checkpoint_tokenizer(entries, path)


def checkpoint_tokenizer(checkpoint, path):
    """The tokenizer a checkpoint was trained with: stored inside (train_own_text.py), else GPT-2's."""
    if "tokenizer" in checkpoint:
        return tokenizer_from_dict(checkpoint["tokenizer"])
    if checkpoint["config"].get("vocab_size") == GPT2_VOCAB_SIZE:
        return get_gpt2_tokenizer()
    vocab_size = checkpoint["config"].get("vocab_size")
    raise ScriptError(f"{path} stores no tokenizer and its vocabulary ({vocab_size} tokens) is not GPT-2's, "
                      "so its token ids cannot be turned into text")


@contextlib.contextmanager
def checkpoint_lock(path):
    """Hold <checkpoint>.lock for the whole run, so that a second run on the same checkpoint stops at
    once instead of deleting the first one's temporary file or overwriting its result. Checks first
    that the folder can be written, before anything is trained. A run that is refused (or fails)
    removes the lock file and the empty folders it created: it leaves nothing but whole files."""
    folders = new_folders(path.parent)
    ensure_writable(path.parent)
    lock_path = path.with_name(path.name + ".lock")
    lock_is_new = not lock_path.exists()
    lock = FileLock(lock_path)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise ScriptError(f"another train_own_text.py run is using {path} (it holds {lock.lock_file}); "
                          "wait for it to finish, or give this run another --checkpoint") from None
    except OSError as error:
        raise ScriptError(f"cannot create the lock file {lock.lock_file} ({error.strerror or error}); "
                          "give --checkpoint a path in a folder you can write to") from error
    try:
        # A run killed while writing leaves its temporary file behind. The lock keeps other runs of
        # this script off, but not another script saving to the same path, nor a process that took a
        # dead run's pid: plumbing's rule, which spares the file of a process that runs, is the safe one.
        remove_stale_parts(path)
        yield
    except BaseException:
        # While the lock is held, so no other run is using the path. A folder that holds other files
        # (a best checkpoint, a tokenizer) stays.
        if lock_is_new:
            with contextlib.suppress(OSError):
                lock_path.unlink(missing_ok=True)
        remove_empty_folders(folders)
        raise
    finally:
        lock.release()


def plot_path(checkpoint_path):
    return checkpoint_path.with_name(checkpoint_path.stem + "-losses.png")
