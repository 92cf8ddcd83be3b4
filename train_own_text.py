"""Train a small GPT on your own text, with chapter 5's training code (u_pretraining.py).

The text: a .txt file, a folder of .txt files, tiny-shakespeare or WikiText-2. The tokenizer:
GPT-2's (tiktoken), character-level, or a byte-level BPE trained on your text (own_tokenizers.py).
Checkpoints are written every few steps; a run that was stopped or killed continues with --resume
and computes exactly what the uninterrupted run would have computed.

Run: python train_own_text.py --data shakespeare --tokenizer char
     python train_own_text.py --data shakespeare --tokenizer bpe --bpe-merges 1000
     python train_own_text.py --data my_texts/ --tokenizer gpt2 --epochs 3
     python train_own_text.py --resume                 continue outputs/own_text.pth
     python train_own_text.py --quick                  a tiny model for a few steps
Then: python generate_text.py "ROMEO:" --checkpoint outputs/own_text.pth
"""

import argparse
import hashlib
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Subset

from d_tokenizer import get_gpt2_tokenizer
from e_data_preparation import GPTDatasetV1
from own_tokenizers import (
    ENDOFTEXT,
    BPETokenizer,
    CharTokenizer,
    load_tokenizer,
    save_tokenizer,
    tokenizer_from_dict,
    tokenizer_to_dict,
)
from plumbing import DATA_DIR, ScriptError, download_file, get_device, output_path, run_main
from s_gpt_model import GPTModel
from appendix_d import lr_at_step
from checkpoints import load_checkpoint, save_checkpoint
from u_pretraining import calc_loss_batch, evaluate_model, generate_and_print_sample, plot_losses

# A small GPT (3.2M parameters with the char tokenizer) that a laptop CPU can train. vocab_size
# comes from the tokenizer. GPT-2 124M is {"context_length": 1024, "emb_dim": 768, "n_heads": 12, "n_layers": 12}.
MODEL_CONFIG = {
    "context_length": 128,
    "emb_dim": 256,
    "n_heads": 4,
    "n_layers": 4,
    "drop_rate": 0.1,
    "qkv_bias": False,
}

TRAIN_SETTINGS = {
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
    "bpe_merges": 1000,
}

QUICK_CONFIG = {**MODEL_CONFIG, "context_length": 32, "emb_dim": 32, "n_heads": 2, "n_layers": 2}
QUICK_SETTINGS = {**TRAIN_SETTINGS, "batch_size": 4, "num_epochs": 1, "max_steps": 20, "eval_freq": 10,
                  "eval_iter": 2, "checkpoint_every": 10, "bpe_merges": 200}
QUICK_MAX_CHARS = 100_000  # --quick trains on the start of the text only

DEFAULT_CHECKPOINT = "own_text.pth"  # under outputs/

# tiny-shakespeare: 1.1 MB of Shakespeare's plays in one file (karpathy/char-rnn).
SHAKESPEARE_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
SHAKESPEARE_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"

# WikiText-2 as pytorch/examples ships it (pinned commit). Despite that repository's README these are
# the tokenized splits (wiki.*.tokens): rare words are <unk>, numbers read "1 @,@ 000". train.txt
# (about 10.8 MB) has no checksum here; valid.txt's is pinned.
WIKITEXT2_URL = ("https://raw.githubusercontent.com/pytorch/examples/"
                 "77f55b912142e11fcfdf5b530231fb9c52f181e8/word_language_model/data/wikitext-2/{}")
WIKITEXT2_SHA256 = {
    "train.txt": None,
    "valid.txt": "f0737ed31fc1329026e95cb8b98e19c2a182c39c240ab909dc31abf2f8af58e8",
}


# ---- the text ----

def read_text(path):
    """A file's text, or the .txt files of a folder (sorted, recursive) joined by <|endoftext|>."""
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*.txt") if p.is_file())
        if not files:
            raise ScriptError(f"the folder {path} holds no .txt files")
    elif path.is_file():
        files = [path]
    else:
        raise ScriptError(f"no file or folder at {path}; give --data a .txt file, a folder of .txt "
                          "files, 'shakespeare' or 'wikitext2'")
    texts = []
    for file in files:
        try:
            texts.append(file.read_text(encoding="utf-8"))
        except UnicodeDecodeError as error:
            raise ScriptError(f"{file} is not UTF-8 text ({error.reason} at byte {error.start}); "
                              "convert it to UTF-8 or remove it") from None
    return ENDOFTEXT.join(texts)  # the documents' boundaries stay visible to the model


def load_training_text(data, train_ratio):
    """(train_text, val_text, description) for --data: a path, 'shakespeare' or 'wikitext2'."""
    if data == "shakespeare":
        path = download_file(SHAKESPEARE_URL, DATA_DIR / "tinyshakespeare" / "input.txt",
                             expected_sha256=SHAKESPEARE_SHA256)
        text, description = read_text(path), f"tiny-shakespeare ({path})"
    elif data == "wikitext2":
        folder = DATA_DIR / "wikitext-2"
        paths = {name: download_file(WIKITEXT2_URL.format(name), folder / name, expected_sha256=sha256)
                 for name, sha256 in WIKITEXT2_SHA256.items()}
        # WikiText-2 comes split: train on train.txt, validate on valid.txt.
        return (read_text(paths["train.txt"]), read_text(paths["valid.txt"]),
                f"WikiText-2 ({folder}: train.txt / valid.txt)")
    else:
        text, description = read_text(data), str(data)
    split_idx = int(train_ratio * len(text))
    return text[:split_idx], text[split_idx:], description


def text_digest(*texts):
    digest = hashlib.sha256()
    for text in texts:
        digest.update(text.encode("utf-8"))
        digest.update(b"\0")
    return digest.hexdigest()


def make_datasets(train_text, val_text, tokenizer, context_length, batch_size):
    """Windows of context_length tokens (stride = context_length, as chapter 5), with clear errors
    when a split is too short for one training batch or one validation window."""
    datasets = []
    for name, text in (("training", train_text), ("validation", val_text)):
        try:
            datasets.append(GPTDatasetV1(text, tokenizer, max_length=context_length, stride=context_length))
        except ValueError as error:
            raise ScriptError(f"the {name} text is too short: {error}. Use a longer text, or a smaller "
                              f"--context-length (now {context_length})") from None
    train_set, val_set = datasets
    if len(train_set) < batch_size:
        raise ScriptError(
            f"the training text gives {len(train_set)} windows of {context_length} tokens, fewer than "
            f"one batch of --batch-size {batch_size} (about {batch_size * context_length + 1} tokens "
            "are needed); use a longer text, a smaller --batch-size or a smaller --context-length")
    return train_set, val_set


def build_tokenizer(kind, train_text, bpe_merges, bpe_path):
    if kind == "gpt2":
        return get_gpt2_tokenizer()
    if kind == "char":
        return CharTokenizer.from_text(train_text)
    if bpe_path:
        return load_tokenizer(bpe_path)
    print(f"Training a byte-level BPE with {bpe_merges} merges on the training text")
    start = time.perf_counter()
    tokenizer = BPETokenizer.train(train_text, bpe_merges, progress=True)
    print(f"  {len(tokenizer.merges)} merges in {time.perf_counter() - start:.1f} s")
    return tokenizer


def epoch_order(num_windows, seed, epoch):
    """The shuffled order of an epoch, a pure function of (seed, epoch) so a resumed run has it too."""
    return torch.randperm(num_windows, generator=torch.Generator().manual_seed(seed + epoch))


def loader(dataset, batch_size, drop_last):
    # Its own generator: a DataLoader draws a seed from the global RNG whenever it is iterated, which
    # would shift the dropout masks of a resumed run.
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, drop_last=drop_last, num_workers=0,
                      generator=torch.Generator())


# ---- checkpoints ----

def rng_states(device):
    states = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        states["cuda"] = torch.cuda.get_rng_state(device)
    return states  # python's random and numpy draw nothing here


def set_rng_states(states, device):
    torch.set_rng_state(states["torch"].cpu())
    if device.type == "cuda" and "cuda" in states:
        torch.cuda.set_rng_state(states["cuda"].cpu(), device)


def write_checkpoint(path, model, cfg, optimizer, tokenizer, settings, state, device):
    """Everything a resumed run needs, atomically (checkpoints.save_checkpoint writes a temporary
    file and renames it, so a kill mid-write leaves the previous checkpoint as it was)."""
    return save_checkpoint(path, model, cfg, optimizer, tokenizer=tokenizer_to_dict(tokenizer),
                           run_settings=settings, train_state={**state, "rng": rng_states(device)})


def remove_stale_temp_files(path):
    """A run killed while writing leaves its temporary file (checkpoint.pth.XXXX.part) behind."""
    for stale in path.parent.glob(path.name + ".*.part"):
        stale.unlink(missing_ok=True)


# ---- training ----

def train_own_model(model, optimizer, train_set, val_loader, tokenizer, cfg, settings, state, device,
                    checkpoint_path, stop_after=None):
    """Chapter 5's loop, with appendix D's schedule and clipping, made resumable: it continues from
    `state` (step, epoch, position in the epoch) and checkpoints every settings["checkpoint_every"] steps."""
    from tqdm import tqdm

    batch_size, total_steps = settings["batch_size"], settings["total_steps"]
    steps_per_epoch = len(train_set) // batch_size
    train_eval_loader = loader(train_set, batch_size, drop_last=True)  # fixed batches to measure on
    session_start, session_tokens, session_steps = time.perf_counter(), 0, 0
    bar = tqdm(total=total_steps, initial=state["global_step"], desc="training", unit="step",
               dynamic_ncols=True, disable=None)
    model.train()
    stopped = False
    while state["global_step"] < total_steps and not stopped:
        order = epoch_order(len(train_set), settings["seed"], state["epoch"])
        remaining = Subset(train_set, order[state["batch_in_epoch"] * batch_size:].tolist())
        for input_batch, target_batch in loader(remaining, batch_size, drop_last=True):
            step = state["global_step"]
            lr = lr_at_step(step, settings["warmup_steps"], total_steps, settings["peak_lr"],
                            settings["initial_lr"], settings["min_lr"])
            for param_group in optimizer.param_groups:
                param_group["lr"] = lr
            optimizer.zero_grad()
            loss = calc_loss_batch(input_batch, target_batch, model, device)
            loss.backward()
            if step >= settings["warmup_steps"]:
                torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=1.0)
            optimizer.step()

            state["global_step"] += 1
            state["batch_in_epoch"] += 1
            state["tokens_seen"] += input_batch.numel()
            state["step_losses"].append(loss.item())
            session_tokens += input_batch.numel()
            session_steps += 1
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{lr:.1e}",
                            tok_s=f"{session_tokens / (time.perf_counter() - session_start):,.0f}")

            done = state["global_step"] == total_steps
            if state["global_step"] % settings["eval_freq"] == 0 or state["global_step"] == 1 or done:
                train_loss, val_loss = evaluate_model(model, train_eval_loader, val_loader, device,
                                                      settings["eval_iter"])
                state["train_losses"].append(train_loss)
                state["val_losses"].append(val_loss)
                state["track_tokens_seen"].append(state["tokens_seen"])
                state["eval_steps"].append(state["global_step"])
                bar.write(f"Ep {state['epoch'] + 1} (Step {state['global_step']:06d}): "
                          f"Train loss {train_loss:.3f}, Val loss {val_loss:.3f}")
            stopped = stop_after is not None and session_steps >= stop_after
            if state["global_step"] % settings["checkpoint_every"] == 0 or done or stopped:
                write_checkpoint(checkpoint_path, model, cfg, optimizer, tokenizer, settings, state, device)
            if done or stopped:
                break
        else:  # the epoch ran to its end
            with tqdm.external_write_mode():
                print(f"Sample after epoch {state['epoch'] + 1}: ", end="")
                generate_and_print_sample(model, tokenizer, device, settings["start_context"])
            state["epoch"] += 1
            state["batch_in_epoch"] = 0
    bar.close()
    if steps_per_epoch and state["eval_steps"]:
        epochs_seen = [step / steps_per_epoch for step in state["eval_steps"]]
        plot_losses(epochs_seen, state["track_tokens_seen"], state["train_losses"], state["val_losses"],
                    plot_path(checkpoint_path))
    return state


def plot_path(checkpoint_path):
    return checkpoint_path.with_name(checkpoint_path.stem + "-losses.png")


def new_train_state():
    return {"global_step": 0, "epoch": 0, "batch_in_epoch": 0, "tokens_seen": 0, "step_losses": [],
            "train_losses": [], "val_losses": [], "track_tokens_seen": [], "eval_steps": []}


# ---- the entry point ----

def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data",
                        help="a .txt file, a folder of .txt files, 'shakespeare' (tiny-shakespeare, "
                             "downloaded) or 'wikitext2' (WikiText-2, downloaded); default shakespeare")
    parser.add_argument("--tokenizer", choices=["gpt2", "char", "bpe"],
                        help="gpt2: tiktoken's GPT-2 BPE; char: one token per character of the training "
                             "text; bpe: a byte-level BPE trained on the training text (default char)")
    parser.add_argument("--bpe-merges", type=int, help=f"merges to learn for --tokenizer bpe "
                        f"(default {TRAIN_SETTINGS['bpe_merges']})")
    parser.add_argument("--bpe-path", help="use this tokenizer JSON (own_tokenizers.py --save, or a "
                                           "run's *-tokenizer.json) instead of training one")
    parser.add_argument("--checkpoint", help=f"checkpoint to write, or with --resume to continue "
                                             f"(default outputs/{DEFAULT_CHECKPOINT})")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run saved in --checkpoint; its settings come from the checkpoint")
    parser.add_argument("--overwrite", action="store_true",
                        help="start a new run over an existing checkpoint")
    parser.add_argument("--epochs", type=int, help=f"default {TRAIN_SETTINGS['num_epochs']}")
    parser.add_argument("--max-steps", type=int, help="stop after this many steps in total (the schedule "
                                                      "then spans them)")
    parser.add_argument("--stop-after", type=int, help="train this many steps now, write a checkpoint "
                                                       "and exit; continue later with --resume")
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--lr", type=float, help=f"peak learning rate (default {TRAIN_SETTINGS['peak_lr']})")
    parser.add_argument("--eval-freq", type=int)
    parser.add_argument("--eval-iter", type=int)
    parser.add_argument("--checkpoint-every", type=int)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--context-length", type=int)
    parser.add_argument("--emb-dim", type=int)
    parser.add_argument("--n-layers", type=int)
    parser.add_argument("--n-heads", type=int)
    parser.add_argument("--drop-rate", type=float)
    parser.add_argument("--start-context", help="text to continue in the samples printed after each epoch "
                                                "(default: the first 20 characters of the training text)")
    parser.add_argument("--device", help="cpu, cuda or mps (default: cuda, then mps, then cpu)")
    parser.add_argument("--quick", action="store_true",
                        help="a tiny model for 20 steps on the start of the text, to check that all runs")
    args = parser.parse_args(argv)
    for name in ("epochs", "max_steps", "stop_after", "batch_size", "eval_freq", "eval_iter",
                 "checkpoint_every", "context_length", "emb_dim", "n_layers", "n_heads", "bpe_merges"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    return args


# Flags that define a run; a resumed run keeps the values it started with.
RUN_FLAGS = ("data", "tokenizer", "bpe_merges", "bpe_path", "epochs", "max_steps", "batch_size", "lr",
             "eval_freq", "eval_iter", "checkpoint_every", "seed", "context_length", "emb_dim",
             "n_layers", "n_heads", "drop_rate", "start_context", "quick")


def settings_from_args(args):
    """The model config (without vocab_size) and training settings: the dicts above, then the flags."""
    cfg = dict(QUICK_CONFIG if args.quick else MODEL_CONFIG)
    settings = dict(QUICK_SETTINGS if args.quick else TRAIN_SETTINGS)
    for flag, key in (("context_length", "context_length"), ("emb_dim", "emb_dim"),
                      ("n_layers", "n_layers"), ("n_heads", "n_heads"), ("drop_rate", "drop_rate")):
        if getattr(args, flag) is not None:
            cfg[key] = getattr(args, flag)
    if cfg["emb_dim"] % cfg["n_heads"]:
        raise ScriptError(f"--emb-dim {cfg['emb_dim']} must be divisible by --n-heads {cfg['n_heads']}")
    for flag, key in (("epochs", "num_epochs"), ("max_steps", "max_steps"), ("batch_size", "batch_size"),
                      ("lr", "peak_lr"), ("eval_freq", "eval_freq"), ("eval_iter", "eval_iter"),
                      ("checkpoint_every", "checkpoint_every"), ("seed", "seed"),
                      ("bpe_merges", "bpe_merges")):
        if getattr(args, flag) is not None:
            settings[key] = getattr(args, flag)
    if args.bpe_path and args.tokenizer not in (None, "bpe"):
        raise ScriptError(f"--bpe-path loads a BPE tokenizer; it does not go with --tokenizer "
                          f"{args.tokenizer}")
    tokenizer = args.tokenizer or ("bpe" if args.bpe_path else "char")
    settings.update(data=args.data or "shakespeare", tokenizer=tokenizer, bpe_path=args.bpe_path,
                    quick=args.quick)
    return cfg, settings


def start_run(args, checkpoint_path, device):
    """A fresh run: text, tokenizer, model and optimizer, all from the seed."""
    if checkpoint_path.exists() and not args.overwrite:
        raise ScriptError(f"{checkpoint_path} already exists: add --resume to continue that run, "
                          "--overwrite to start again over it, or --checkpoint to name a new one")
    cfg, settings = settings_from_args(args)
    train_text, val_text, description = load_training_text(settings["data"], settings["train_ratio"])
    if args.quick:
        train_text, val_text = train_text[:QUICK_MAX_CHARS], val_text[:QUICK_MAX_CHARS // 9]
    print(f"Text: {description}: {len(train_text):,} training and {len(val_text):,} validation characters")
    settings["text_sha256"] = text_digest(train_text, val_text)
    settings["start_context"] = args.start_context or train_text[:20]

    tokenizer = build_tokenizer(settings["tokenizer"], train_text, settings["bpe_merges"], args.bpe_path)
    if settings["tokenizer"] != "gpt2":
        print("Saved the tokenizer to", save_tokenizer(tokenizer, checkpoint_path.with_name(
            checkpoint_path.stem + "-tokenizer.json")))
    cfg["vocab_size"] = tokenizer.n_vocab
    train_set, val_set = make_datasets(train_text, val_text, tokenizer, cfg["context_length"],
                                       settings["batch_size"])
    steps_per_epoch = len(train_set) // settings["batch_size"]
    total_steps = steps_per_epoch * settings["num_epochs"]
    if settings["max_steps"]:
        total_steps = min(total_steps, settings["max_steps"])
    settings["total_steps"] = total_steps
    settings["warmup_steps"] = int(settings["warmup_fraction"] * total_steps)

    torch.manual_seed(settings["seed"])
    model = GPTModel(cfg)
    model.to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings["peak_lr"],
                                  weight_decay=settings["weight_decay"])
    return model, optimizer, tokenizer, cfg, settings, new_train_state(), train_set, val_set


def resume_run(checkpoint_path, device):
    """The run saved in a checkpoint, at the step it was saved, with its RNG states."""
    checkpoint = load_checkpoint(checkpoint_path, device="cpu")
    if "train_state" not in checkpoint or "run_settings" not in checkpoint:
        raise ScriptError(f"{checkpoint_path} holds no training state; only checkpoints written by "
                          "train_own_text.py can be resumed")
    cfg, settings, state = checkpoint["config"], checkpoint["run_settings"], checkpoint["train_state"]
    tokenizer = tokenizer_from_dict(checkpoint["tokenizer"])
    train_text, val_text, description = load_training_text(settings["data"], settings["train_ratio"])
    if settings["quick"]:
        train_text, val_text = train_text[:QUICK_MAX_CHARS], val_text[:QUICK_MAX_CHARS // 9]
    if text_digest(train_text, val_text) != settings["text_sha256"]:
        raise ScriptError(f"the text of {description} changed since {checkpoint_path} was written; "
                          "resume with the same text, or start a new run")
    train_set, val_set = make_datasets(train_text, val_text, tokenizer, cfg["context_length"],
                                       settings["batch_size"])
    print(f"Resuming {checkpoint_path} at step {state['global_step']} of {settings['total_steps']} "
          f"(epoch {state['epoch'] + 1}); the settings come from the checkpoint")

    model = GPTModel(cfg)
    model.load_state_dict(checkpoint["model_state_dict"])
    model.to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings["peak_lr"],
                                  weight_decay=settings["weight_decay"])
    optimizer.load_state_dict(checkpoint["optimizer_state_dict"])
    set_rng_states(state.pop("rng"), device)
    return model, optimizer, tokenizer, cfg, settings, state, train_set, val_set


def main(argv=None):
    args = parse_args(argv)
    device = get_device(args.device)
    checkpoint_path = Path(args.checkpoint) if args.checkpoint else output_path(DEFAULT_CHECKPOINT)
    remove_stale_temp_files(checkpoint_path)
    if args.resume:
        ignored = [flag for flag in RUN_FLAGS if getattr(args, flag) not in (None, False)]
        if ignored:
            print("note: --resume takes the run's settings from the checkpoint; ignoring "
                  + ", ".join("--" + flag.replace("_", "-") for flag in ignored))
        run = resume_run(checkpoint_path, device)
    else:
        run = start_run(args, checkpoint_path, device)
    model, optimizer, tokenizer, cfg, settings, state, train_set, val_set = run

    num_params = sum(p.numel() for p in model.parameters())
    print(f"Model: {num_params / 1e6:.2f}M parameters, vocabulary {cfg['vocab_size']:,} "
          f"({settings['tokenizer']}), context {cfg['context_length']}; device {device}")
    print(f"Data: {len(train_set):,} training and {len(val_set):,} validation windows; "
          f"{settings['total_steps']} steps of batch {settings['batch_size']}")
    if state["global_step"] >= settings["total_steps"]:
        print("This run is already complete.")
        return state
    val_loader = loader(val_set, settings["batch_size"], drop_last=False)
    try:
        state = train_own_model(model, optimizer, train_set, val_loader, tokenizer, cfg, settings, state,
                                device, checkpoint_path, stop_after=args.stop_after)
    except KeyboardInterrupt:
        print(f"\nStopped. The last checkpoint written is intact; continue with: "
              f"python train_own_text.py --resume --checkpoint {checkpoint_path}")
        raise
    print(f"Checkpoint: {checkpoint_path} (step {state['global_step']} of {settings['total_steps']})")
    if state["global_step"] < settings["total_steps"]:
        print(f"Continue with: python train_own_text.py --resume --checkpoint {checkpoint_path}")
    if state["eval_steps"]:
        print("Loss plot:", plot_path(checkpoint_path))
    first_line = next((line.strip() for line in settings["start_context"].splitlines() if line.strip()), "")
    print(f'Generate with: python generate_text.py "{first_line}" --checkpoint {checkpoint_path}')
    return state


if __name__ == "__main__":
    run_main(main)
