"""Beyond the book: the one checkpoint format of the series (section 5.4's torch.save, made safe).

A checkpoint is a dict {"model_state_dict", "config", ["optimizer_state_dict"], ...}: the config
beside the weights lets every loader rebuild the model without being told its size. Files are
written atomically and read with torch.load(weights_only=True), which never runs pickled code.

Not a chapter: u_pretraining.py is the first script to import it, so it imports only earlier
letters (s).
"""

import os
from pathlib import Path

import torch

from plumbing import ScriptError
from s_gpt_model import GPTModel

MISSING_HINT = "python u_pretraining.py writes outputs/model_and_optimizer.pth"

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


def load_checkpoint(path, device="cpu", hint=MISSING_HINT):
    """Read a checkpoint written by save_checkpoint, with its tensors on `device`. `hint` says
    in the error for a missing file which command writes one."""
    path = Path(path)
    if not path.is_file():
        raise ScriptError(f"there is no checkpoint at {path}; {hint} (or check the path)")
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
