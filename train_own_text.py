"""Train a small GPT on your own text, with chapter 5's training code (u_pretraining.py).

The text: a .txt file, a folder of .txt files, tiny-shakespeare or WikiText-2 (own_text_data.py).
The tokenizer: GPT-2's (tiktoken), character-level, or a byte-level BPE trained on your text
(own_tokenizers.py). Checkpoints are written every few steps; a run that was stopped or killed
continues with --resume and computes exactly what the uninterrupted run would have computed.

Run: python train_own_text.py --data shakespeare --tokenizer char
     python train_own_text.py --data shakespeare --tokenizer bpe --bpe-merges 1000
     python train_own_text.py --data my_texts/ --tokenizer gpt2 --epochs 3
     python train_own_text.py --resume                 continue outputs/own_text.pth
     python train_own_text.py --quick                  a tiny model for a few steps
Then: python generate_text.py "ROMEO:" --checkpoint outputs/own_text.pth
"""

import argparse
import contextlib
import os
import sys
from collections import namedtuple
from pathlib import Path

import torch
import torch.distributed as dist

from checkpoints import load_checkpoint
from fast_pretraining import fast_config, launched_by_torchrun, make_adamw
from own_text_checkpoints import (Run, best_path, checkpoint_lock, new_train_state, plot_path, set_rng_states,
                                  starting_model)
from own_text_data import build_tokenizer, make_datasets, print_unknown_rate, text_digest, training_text
from own_text_training import print_sample, train_own_model
from own_tokenizers import save_tokenizer, tokenizer_from_dict, tokenizer_to_dict
from plumbing import (DATA_DIR, ScriptError, add_device_arg, get_device, outputs_folder, positive_int,
                      run_main)
from s_gpt_model import GPTModel
from y_neural_network_basics import ddp_setup

# A small GPT (3.2M parameters with the char tokenizer) that a laptop CPU can train. vocab_size
# comes from the tokenizer. GPT-2 124M is {"context_length": 1024, "emb_dim": 768, "n_heads": 12,
# "n_layers": 12}.
MODEL_CONFIG = {
    "context_length": 128,
    "emb_dim": 256,
    "n_heads": 4,
    "n_layers": 4,
    "drop_rate": 0.1,
    "qkv_bias": False,
}

TRAIN_SETTINGS = {
    "data": "shakespeare",    # see --data
    "tokenizer": "char",      # see --tokenizer
    "vocab_size": None,       # word and bpe: the vocabulary size; None: every word, or bpe_merges merges
    "bpe_merges": 1000,
    "bpe_path": None,
    "train_ratio": 0.90,      # one text (file, folder, shakespeare): the first 90% trains, the rest validates
    "batch_size": 16,
    "num_epochs": 2,
    "max_steps": None,        # stop earlier than num_epochs, e.g. 500
    "peak_lr": 1e-3,          # appendix D's schedule: warm up to peak_lr, cosine down to min_lr
    "initial_lr": 1e-5,
    "min_lr": 1e-4,
    "warmup_fraction": 0.05,
    "weight_decay": 0.1,
    "eval_freq": 50,          # evaluate every 50 steps ...
    "eval_iter": 10,          # ... on 10 batches of each split
    "checkpoint_every": 100,  # and write a checkpoint every 100 steps (and at the end)
    "seed": 123,
    "fast": False,            # chapter 5's fast path (fast_pretraining.py), see --fast
    "dtype": "auto",          # --fast: bfloat16 autocast where the hardware computes it natively
    "compile": False,         # torch.compile
    "grad_accum": 1,          # batches whose gradients add up before one optimizer step
    "start_context": None,    # None: the first 20 characters of the training text
    "init_from": None,        # None: a new model from the seed; else a GPT-2 size or a checkpoint to continue
    "weights": "tf",          # --init-from GPT-2: OpenAI's TensorFlow files or Hugging Face's safetensors
    "models_dir": None,       # ... in this folder (None: data/gpt2)
    "memmap": False,          # see --memmap
    "quick": False,
}

QUICK_CONFIG = {**MODEL_CONFIG, "context_length": 32, "emb_dim": 32, "n_heads": 2, "n_layers": 2}
QUICK_SETTINGS = {**TRAIN_SETTINGS, "batch_size": 4, "num_epochs": 1, "max_steps": 20, "eval_freq": 10,
                  "eval_iter": 2, "checkpoint_every": 10, "bpe_merges": 200, "quick": True}
QUICK_MAX_CHARS = 100_000  # --quick trains on the start of the text only

DEFAULT_CHECKPOINT = "own_text.pth"  # under outputs/
TORCHRUN_COMMAND = "torchrun --nproc_per_node=2 train_own_text.py --device cpu"
RESUME_HINT = "python train_own_text.py without --resume starts a run that writes it"
SAMPLE_TOKENS = 100  # every run ends with a sample this long (--sample-tokens)

# ---- the options: every flag once ----

# kind: an argparse type, "flag" (on/off) or a tuple of choices. key: "cfg.KEY" or "settings.KEY" is
# the entry of the dicts above that the flag replaces (its default is shown from there). Those flags
# define the run: they are stored in the checkpoint, and --resume ignores them on the command line.
# key None: the flag steers this invocation only, and --resume uses it too.
Option = namedtuple("Option", "flag kind key help")
OPTIONS = (
    Option("--data", str, "settings.data", "a .txt file, a folder of .txt files, 'shakespeare' "
           "(tiny-shakespeare, downloaded) or 'wikitext2' (WikiText-2, downloaded)"),
    Option("--tokenizer", ("gpt2", "char", "word", "bpe"), "settings.tokenizer", "gpt2: tiktoken's GPT-2 "
           "BPE; char: one token per character of the training text; word: chapter 2's words and "
           "punctuation, unknown ones <|unk|>; bpe: a byte-level BPE trained on the training text"),
    Option("--vocab-size", positive_int, "settings.vocab_size", "word: keep the N - 2 most frequent words "
           "(+ <|endoftext|>, <|unk|>); bpe: learn N - 257 merges (256 bytes + merges + <|endoftext|>)"),
    Option("--bpe-merges", positive_int, "settings.bpe_merges", "merges to learn for --tokenizer bpe"),
    Option("--bpe-path", str, "settings.bpe_path", "use this tokenizer JSON (own_tokenizers.py --save, or "
           "a run's *-tokenizer.json) instead of training one"),
    Option("--epochs", positive_int, "settings.num_epochs", "passes over the training text"),
    Option("--max-steps", positive_int, "settings.max_steps", "stop after this many steps in total "
           "(the schedule then spans them)"),
    Option("--batch-size", positive_int, "settings.batch_size", "windows per batch (per process under "
           "torchrun; a step takes --grad-accum batches)"),
    Option("--lr", float, "settings.peak_lr", "peak learning rate"),
    Option("--eval-freq", positive_int, "settings.eval_freq", "evaluate every this many steps"),
    Option("--eval-iter", positive_int, "settings.eval_iter", "batches of each split per evaluation"),
    Option("--checkpoint-every", positive_int, "settings.checkpoint_every",
           "write a checkpoint every this many steps (and at the end)"),
    Option("--seed", int, "settings.seed", "seed of the model's weights, the order and dropout"),
    Option("--fast", "flag", "settings.fast", "chapter 5's fast path (fast_pretraining.py): fused attention, "
           "LayerNorm and GELU (the same weights), fused AdamW, bfloat16 autocast where the hardware "
           "computes it natively, TF32 matmuls on CUDA"),
    Option("--dtype", ("auto", "float32", "bfloat16"), "settings.dtype", "with --fast: the autocast dtype "
           "(auto: bfloat16 where native, else float32)"),
    Option("--compile", "flag", "settings.compile", "torch.compile the model (the first steps compile it)"),
    Option("--grad-accum", positive_int, "settings.grad_accum", "batches whose gradients add up before one "
           "optimizer step: the same step as a --batch-size N times larger, in less memory"),
    Option("--context-length", positive_int, "cfg.context_length", "tokens per window"),
    Option("--emb-dim", positive_int, "cfg.emb_dim", "embedding width"),
    Option("--n-layers", positive_int, "cfg.n_layers", "transformer blocks"),
    Option("--n-heads", positive_int, "cfg.n_heads", "attention heads (they divide --emb-dim)"),
    Option("--d-ff", positive_int, "cfg.d_ff", "feed-forward width (default 4 x --emb-dim)"),
    Option("--drop-rate", float, "cfg.drop_rate", "dropout rate"),
    Option("--start-context", str, "settings.start_context", "text to continue in the samples printed "
           "after each epoch (default: the first 20 characters of the training text)"),
    Option("--memmap", "flag", "settings.memmap", "tokenise the text once into an array of ids in "
           "<data-dir>/tokens (reused by later runs) and train from it through numpy.memmap"),
    Option("--init-from", str, "settings.init_from", "continue the training of OpenAI's GPT-2 (124M, 355M, "
           "774M, 1558M, or a name such as gpt2-medium) or of a checkpoint of the series (PATH) on your "
           "text; its sizes and tokenizer come with it, and --context-length may shrink its context"),
    Option("--weights", ("tf", "safetensors"), "settings.weights", "with --init-from GPT-2: OpenAI's "
           "TensorFlow files (needs TensorFlow) or Hugging Face's safetensors"),
    Option("--models-dir", str, "settings.models_dir", "with --init-from GPT-2: where its folders are "
           "(default <data-dir>/gpt2: data/gpt2, or $LLM_DATA_DIR/gpt2)"),
    Option("--quick", "flag", "settings.quick", "a tiny model for 20 steps on the start of the text, to "
           "check that all runs"),
    Option("--checkpoint", str, None, f"checkpoint to write, or with --resume to continue "
           f"(default outputs/{DEFAULT_CHECKPOINT}); beside it go <name>-best.pth (the lowest validation "
           "loss), <name>-tokenizer.json and <name>-losses.png"),
    Option("--checkpoint-dir", str, None, "folder of --checkpoint when that is a bare name or not given "
           "(default outputs/, outputs/quick/ with --quick, or $LLM_OUTPUTS_DIR); a --checkpoint with a "
           "folder part (./x.pth, runs/x.pth) is used as given"),
    Option("--data-dir", str, None, "where 'shakespeare' and 'wikitext2' are downloaded to and read from, "
           "and where --memmap's tokens/ and the default --models-dir (gpt2/) are (default data/, or "
           "$LLM_DATA_DIR)"),
    Option("--prompt", str, None, "text that the sample at the end of the run continues (default: the "
           "start context)"),
    Option("--sample-tokens", positive_int, None, f"length of that sample in tokens (default "
           f"{SAMPLE_TOKENS})"),
    Option("--resume", "flag", None, "continue the run saved in --checkpoint; its settings come from "
           "the checkpoint"),
    Option("--overwrite", "flag", None, "start a new run over an existing checkpoint"),
    Option("--stop-after", positive_int, None, "train this many steps now, write a checkpoint and exit; "
           "continue later with --resume"),
)
RUN_OPTIONS = [option for option in OPTIONS if option.key]


def dest(option):
    return option.flag[2:].replace("-", "_")


def default_text(key):
    """' (default X; --quick Y)' from the dicts above, for a flag's help."""
    where, name = key.split(".")
    book, quick = (MODEL_CONFIG, QUICK_CONFIG) if where == "cfg" else (TRAIN_SETTINGS, QUICK_SETTINGS)
    if name not in book:
        return ""  # a default computed from other values, which the help text states
    shown = [] if book[name] in (None, False) else [f"default {book[name]}"]
    if quick[name] != book[name] and name != "quick":
        shown.append(f"--quick {quick[name]}")
    return f" ({'; '.join(shown)})" if shown else ""


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    for option in OPTIONS:
        help_text = option.help + (default_text(option.key) if option.key else "")
        # default None everywhere: "not given" is then one test, also for on/off flags.
        if option.kind == "flag":
            parser.add_argument(option.flag, action="store_const", const=True, help=help_text)
        elif isinstance(option.kind, tuple):
            parser.add_argument(option.flag, choices=option.kind, help=help_text)
        else:
            parser.add_argument(option.flag, type=option.kind, help=help_text)
    add_device_arg(parser)
    return parser.parse_args(argv)


def settings_from_args(args):
    """The model config (without vocab_size) and training settings: the dicts above, then the flags."""
    cfg = dict(QUICK_CONFIG if args.quick else MODEL_CONFIG)
    settings = dict(QUICK_SETTINGS if args.quick else TRAIN_SETTINGS)
    for option in RUN_OPTIONS:
        value = getattr(args, dest(option))
        if value is not None:
            where, key = option.key.split(".")
            (cfg if where == "cfg" else settings)[key] = value
    if cfg["emb_dim"] % cfg["n_heads"]:
        raise ScriptError(f"--emb-dim {cfg['emb_dim']} must be divisible by --n-heads {cfg['n_heads']}")
    cfg.setdefault("d_ff", 4 * cfg["emb_dim"])  # in the config, so that every loader builds this width
    fixed_by_start = [f"--{name.replace('_', '-')}" for name in ("tokenizer", "vocab_size", "bpe_merges",
                      "bpe_path", "emb_dim", "n_layers", "n_heads", "d_ff") if getattr(args, name)]
    if args.init_from and fixed_by_start:
        raise ScriptError(f"--init-from {args.init_from} brings its own sizes and tokenizer; leave out "
                          + ", ".join(fixed_by_start))
    if args.vocab_size and args.bpe_merges:
        raise ScriptError("give --vocab-size or --bpe-merges, not both: the vocabulary size sets the merges")
    if settings["fast"]:
        cfg = fast_config(cfg)  # stored in the checkpoint: every loader rebuilds the fast modules
    if args.bpe_path:
        if args.tokenizer not in (None, "bpe"):
            raise ScriptError(f"--bpe-path loads a BPE tokenizer; it does not go with --tokenizer "
                              f"{args.tokenizer}")
        settings["tokenizer"] = "bpe"
    if args.bpe_merges and (settings["tokenizer"] != "bpe" or args.bpe_path):
        other = "a loaded --bpe-path has its own" if args.bpe_path else \
            f"--tokenizer {settings['tokenizer']} learns none"
        raise ScriptError(f"--bpe-merges sets the merges that --tokenizer bpe learns; {other}")
    return cfg, settings


def ignored_on_resume(args):
    # --quick still picks the folder of a bare --checkpoint name (outputs/quick/): not ignored.
    return [option.flag for option in RUN_OPTIONS
            if getattr(args, dest(option)) is not None and option.flag != "--quick"]


# ---- starting and resuming ----

def token_folder(settings, data_dir):
    """Where --memmap keeps the token arrays (None: the windows stay in memory)."""
    return Path(data_dir or DATA_DIR) / "tokens" if settings.get("memmap") else None


def new_model_and_optimizer(cfg, settings, device, model=None):
    """A new model from the seed (or the --init-from model, seeded the same for its dropout) and AdamW."""
    torch.manual_seed(settings["seed"])
    model = GPTModel(cfg) if model is None else model
    model.to(device)
    optimizer = make_adamw(model.parameters(), lr=settings["peak_lr"], weight_decay=settings["weight_decay"],
                           fused=settings.get("fast", False))
    return model, optimizer


def start_run(args, cfg, settings, checkpoint_path, device, rank=0, world_size=1):
    """A fresh run of settings_from_args's (cfg, settings): text, tokenizer, model and optimizer, all
    from the seed."""
    if checkpoint_path.exists() and not args.overwrite:
        raise ScriptError(f"{checkpoint_path} already exists: add --resume to continue that run, "
                          "--overwrite to start again over it, or --checkpoint to name a new one")
    train_text, val_text, description = training_text(settings, args.data_dir, QUICK_MAX_CHARS)
    print(f"Text: {description}: {len(train_text):,} training and {len(val_text):,} validation characters")
    settings["text_sha256"] = text_digest(train_text, val_text)
    settings["start_context"] = settings["start_context"] or train_text[:20]

    model = None
    if settings["init_from"]:
        models_dir = settings["models_dir"] or (Path(args.data_dir) / "gpt2" if args.data_dir else None)
        model, cfg, tokenizer = starting_model(settings["init_from"], settings["weights"], models_dir,
                                               args.context_length, args.drop_rate)
        settings["tokenizer"] = tokenizer_to_dict(tokenizer)["kind"]
    else:
        tokenizer = build_tokenizer(settings["tokenizer"], train_text, settings["bpe_merges"],
                                    settings["bpe_path"], settings["vocab_size"])
    cfg["vocab_size"] = tokenizer.n_vocab
    train_set, val_set = make_datasets(train_text, val_text, tokenizer, cfg["context_length"],
                                       settings["batch_size"], token_folder(settings, args.data_dir))
    print_unknown_rate(tokenizer, val_text)
    settings["world_size"] = world_size  # a resumed run needs as many processes
    batches_per_epoch = len(train_set) // (settings["batch_size"] * world_size)
    steps_per_epoch = batches_per_epoch // settings["grad_accum"]
    if steps_per_epoch < 1:
        processes = f" of {world_size} processes" if world_size > 1 else ""
        raise ScriptError(f"--grad-accum {settings['grad_accum']} asks for more batches than the "
                          f"{batches_per_epoch} of an epoch{processes}")
    total_steps = steps_per_epoch * settings["num_epochs"]
    if settings["max_steps"]:
        total_steps = min(total_steps, settings["max_steps"])
    settings["total_steps"] = total_steps
    settings["warmup_steps"] = int(settings["warmup_fraction"] * total_steps)
    if settings["tokenizer"] != "gpt2" and rank == 0:  # after every check: a refused run writes nothing
        tokenizer_path = checkpoint_path.with_name(checkpoint_path.stem + "-tokenizer.json")
        print("Saved the tokenizer to", save_tokenizer(tokenizer, tokenizer_path))
    model, optimizer = new_model_and_optimizer(cfg, settings, device, model)
    return Run(model, optimizer, tokenizer, cfg, settings, new_train_state(), train_set, val_set, device,
               checkpoint_path, rank=rank, world_size=world_size)


def resume_run(checkpoint_path, device, data_dir=None, rank=0, world_size=1):
    """The run saved in a checkpoint, at the step it was saved, with its RNG states."""
    checkpoint = load_checkpoint(checkpoint_path, device="cpu", hint=RESUME_HINT)
    if "train_state" not in checkpoint or "run_settings" not in checkpoint:
        raise ScriptError(f"{checkpoint_path} holds no training state; only checkpoints written by "
                          "train_own_text.py can be resumed")
    cfg, settings, state = checkpoint["config"], checkpoint["run_settings"], checkpoint["train_state"]
    if settings.get("world_size", 1) != world_size:
        raise ScriptError(f"{checkpoint_path} was trained by {settings.get('world_size', 1)} process(es); "
                          f"resume it with as many (torchrun --nproc_per_node=N), not {world_size}")
    tokenizer = tokenizer_from_dict(checkpoint["tokenizer"])
    train_text, val_text, description = training_text(settings, data_dir, QUICK_MAX_CHARS)
    if text_digest(train_text, val_text) != settings["text_sha256"]:
        raise ScriptError(f"the text of {description} changed since {checkpoint_path} was written; "
                          "resume with the same text, or start a new run")
    train_set, val_set = make_datasets(train_text, val_text, tokenizer, cfg["context_length"],
                                       settings["batch_size"], token_folder(settings, data_dir))
    print(f"Resuming {checkpoint_path} at step {state['global_step']} of {settings['total_steps']} "
          f"(epoch {state['epoch'] + 1}); the settings come from the checkpoint")
    model, optimizer = new_model_and_optimizer(cfg, settings, device)
    model.load_state_dict(checkpoint["model_state_dict"])
    optimizer.load_state_dict(checkpoint["optimizer_state_dict"])
    set_rng_states(state.pop("rng"), device)
    return Run(model, optimizer, tokenizer, cfg, settings, state, train_set, val_set, device,
               checkpoint_path, saved_step=state["global_step"], rank=rank, world_size=world_size)


# ---- the entry point ----

def print_summary(run):
    print(f"Model: {sum(p.numel() for p in run.model.parameters()) / 1e6:.2f}M parameters, vocabulary "
          f"{run.cfg['vocab_size']:,} ({run.settings['tokenizer']}), context {run.cfg['context_length']}; "
          f"device {run.device}")
    print(f"Data: {len(run.train_set):,} training and {len(run.val_set):,} validation windows; "
          f"{run.settings['total_steps']} steps of batch {run.settings['batch_size']}")


def print_next_steps(run):
    path, settings, state = run.path, run.settings, run.state
    print(f"Checkpoint: {path} (step {state['global_step']} of {settings['total_steps']})")
    if state["global_step"] < settings["total_steps"]:
        print(f"Continue with: python train_own_text.py --resume --checkpoint {path}")
    if state["eval_steps"]:
        print("Loss plot:", plot_path(path))
    if state.get("best_step") is not None:
        print(f"Best checkpoint: {best_path(path)} (step {state['best_step']}, validation loss "
              f"{state['best_val_loss']:.3f})")
    first_line = next((line.strip() for line in settings["start_context"].splitlines() if line.strip()), "")
    print(f'Generate with: python generate_text.py "{first_line}" --checkpoint {path}')


def main(argv=None):
    """One process, or under torchrun every process of a data-parallel run (rank 0 alone prints,
    holds the lock and writes; every process draws the same dropout masks, so that rank 0's RNG
    state resumes them all)."""
    if not launched_by_torchrun():
        return train(parse_args(argv), 0, 1, None)
    args = parse_args(argv)
    rank, world_size, device = ddp_setup(args.device, command=TORCHRUN_COMMAND)
    try:
        with open(os.devnull, "w", encoding="utf-8") as devnull, \
                contextlib.redirect_stdout(sys.stdout if rank == 0 else devnull):
            state = train(args, rank, world_size, device)
        dist.barrier()
        return state
    finally:
        dist.destroy_process_group()


def checkpoint_location(checkpoint, checkpoint_dir, quick):
    """--checkpoint as given when it names a folder (runs/x.pth, ./x.pth, an absolute path); a bare
    name goes into --checkpoint-dir, by default outputs/, or outputs/quick/ for a --quick run, where
    it cannot replace a full run's files."""
    checkpoint = checkpoint or DEFAULT_CHECKPOINT
    if os.path.dirname(checkpoint):  # Path("./x.pth") drops the "./" that says "here"
        return Path(checkpoint)
    return Path(checkpoint_dir or outputs_folder(quick=quick)) / checkpoint


def train(args, rank, world_size, device):
    device = device or get_device(args.device)
    checkpoint_path = checkpoint_location(args.checkpoint, args.checkpoint_dir, args.quick)
    if args.resume:
        if not checkpoint_path.is_file():  # say so before the lock creates anything beside it
            load_checkpoint(checkpoint_path, hint=RESUME_HINT)
        ignored = ignored_on_resume(args)
        if ignored:
            print("note: --resume takes the run's settings from the checkpoint; ignoring", ", ".join(ignored))
    else:
        cfg, settings = settings_from_args(args)  # mistaken flags stop the run before it touches the disk
    with checkpoint_lock(checkpoint_path) if rank == 0 else contextlib.nullcontext():
        run = resume_run(checkpoint_path, device, args.data_dir, rank, world_size) if args.resume else \
            start_run(args, cfg, settings, checkpoint_path, device, rank, world_size)
        print_summary(run)
        if run.state["global_step"] >= run.settings["total_steps"]:
            print("This run is already complete.")
            return run.state
        try:
            train_own_model(run, stop_after=args.stop_after)
        except KeyboardInterrupt:
            print(f"\nStopped. The last checkpoint written is intact; continue with: "
                  f"python train_own_text.py --resume --checkpoint {checkpoint_path}")
            raise
        if rank == 0:
            print_sample(run, args.prompt or run.settings["start_context"],
                         args.sample_tokens or SAMPLE_TOKENS)
    print_next_steps(run)
    return run.state


if __name__ == "__main__":
    run_main(main)
