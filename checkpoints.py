"""Beyond the book: the one checkpoint format of the series (section 5.4's torch.save, made safe).

A checkpoint is a dict {"model_state_dict", "config", ["optimizer_state_dict"], ...}: the config
beside the weights lets every loader rebuild the model without being told its size. Files are
written atomically and read with torch.load(weights_only=True), which never runs pickled code.

Not a chapter: u_pretraining.py is the first script to import it, so it imports only earlier
letters (s).
"""

from pathlib import Path

import torch

from plumbing import ScriptError, write_atomically
from s_gpt_model import GPTModel

MISSING_HINT = "python u_pretraining.py writes outputs/model_and_optimizer.pth"
GPT2_VOCAB_SIZE = 50257  # the token ids of tiktoken's "gpt2" encoding, which chapters 5-7 feed

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

    An interrupted or failed save never leaves a half-written checkpoint behind. Returns the path."""
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

    # Written to a temporary file that is renamed into place: a failed save (full disk) keeps the
    # previous checkpoint and says so in one line.
    return write_atomically(path, lambda temp_path: torch.save(checkpoint, temp_path))


def load_checkpoint(path, device="cpu", hint=MISSING_HINT):
    """Read a checkpoint written by save_checkpoint, with its tensors on `device`. `hint` says
    in the error for a missing file which command writes one."""
    path = Path(path)
    if not path.is_file():
        raise ScriptError(f"there is no checkpoint at {path}; {hint} (or check the path)")
    try:
        checkpoint = torch.load(path, map_location=device, weights_only=True)
    except Exception as error:  # truncated zip, random bytes, pickled objects ...
        reason = _load_error_reason(error)
        raise ScriptError(f"cannot read the checkpoint {path}: it is damaged, incomplete or not a "
                          f"PyTorch checkpoint ({reason}); delete it and create it again") from error
    if not isinstance(checkpoint, dict) or "model_state_dict" not in checkpoint:
        raise ScriptError(f"{path} is not a checkpoint of this series: it has no 'model_state_dict'")
    return checkpoint


def _load_error_reason(error):
    """torch.load's error in a line. Its weights_only errors begin with advice to load the file with
    weights_only=False, which would run any code pickled in it: only their cause is kept."""
    text = str(error).strip()
    if text.startswith("Weights only load failed"):
        cause = text.partition("WeightsUnpickler error:")[2].strip()
        return "the safe loader, which reads only tensors and plain values, refused it" + (
            f": {cause.splitlines()[0].split('. ')[0]}" if cause else "")
    return text.splitlines()[0] if text else type(error).__name__


def load_weights(model, checkpoint, path):
    """model.load_state_dict(checkpoint["model_state_dict"]), or a ScriptError that says which keys
    or shapes of the file at `path` do not fit the model built from its config."""
    try:
        model.load_state_dict(checkpoint["model_state_dict"])
    except RuntimeError as error:
        detail = describe_mismatch(model.state_dict(), checkpoint["model_state_dict"])
        raise ScriptError(f"the weights in {path} do not fit a {type(model).__name__} built from its "
                          f"config: {detail}") from error


def describe_mismatch(expected, given):
    """What differs between the state dict a model expects and the one a file holds: missing and
    unexpected keys, and shapes, a few of each with their counts."""
    def some(names):
        return ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")

    missing = [key for key in expected if key not in given]
    unexpected = [key for key in given if key not in expected]
    shapes = [f"{key} is {tuple(given[key].shape)} in the file, {tuple(value.shape)} in the model"
              for key, value in expected.items() if key in given and given[key].shape != value.shape]
    problems = ([f"missing {len(missing)} key(s): {some(missing)}"] if missing else []) + \
               ([f"unexpected {len(unexpected)} key(s): {some(unexpected)}"] if unexpected else []) + \
               ([f"{len(shapes)} shape(s) differ: {some(shapes)}"] if shapes else [])
    return "; ".join(problems) or "the keys and shapes agree"


def check_gpt2_tokenizer(checkpoint, path):
    """Refuse a checkpoint whose model reads other token ids than GPT-2's (a train_own_text.py model
    with its char or BPE tokenizer): chapters 6 and 7 and appendix E feed it GPT-2's."""
    tokenizer = checkpoint.get("tokenizer")  # what train_own_text.py records; u's files have none
    kind = "gpt2" if tokenizer is None else \
        tokenizer.get("kind") if isinstance(tokenizer, dict) else "unknown"
    vocab_size = checkpoint["config"].get("vocab_size")
    if kind != "gpt2" or not isinstance(vocab_size, int) or vocab_size < GPT2_VOCAB_SIZE:
        raise ScriptError(
            f"{path} holds a model with a {kind} tokenizer and {vocab_size} token ids, but this script "
            f"feeds it GPT-2's {GPT2_VOCAB_SIZE:,} token ids; start from a checkpoint trained with GPT-2's "
            "tokenizer (outputs/model_and_optimizer.pth from u_pretraining.py, or train_own_text.py "
            "--tokenizer gpt2), or from OpenAI's GPT-2 (leave out --init-from)")


def model_from_checkpoint(path, device="cpu", gpt2_tokenizer=False):
    """Rebuild the GPTModel saved in `path` from the config stored beside its weights.
    Returns (model, cfg) with the model on `device` in eval mode. With gpt2_tokenizer=True the
    checkpoint must be one that reads GPT-2's token ids."""
    checkpoint = load_checkpoint(path, device)
    cfg = checkpoint.get("config")
    if not isinstance(cfg, dict):
        raise ScriptError(f"{path} holds no model config; it was not written by save_checkpoint")
    if gpt2_tokenizer:
        check_gpt2_tokenizer(checkpoint, path)
    try:
        model = GPTModel(cfg)
    except (KeyError, TypeError, ValueError, AssertionError) as error:
        raise ScriptError(f"the config in {path} does not describe a GPTModel ({type(error).__name__}: "
                          f"{error}); it was not written by save_checkpoint") from error
    load_weights(model, checkpoint, path)
    model.to(device)
    model.eval()
    return model, cfg
