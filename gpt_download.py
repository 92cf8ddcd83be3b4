"""Download OpenAI's GPT-2 checkpoints and read them into the book's params dict (section 5.5).

Run: python gpt_download.py --model-size 124M               OpenAI's TensorFlow files
     python gpt_download.py --source safetensors            Hugging Face's copy, no TensorFlow
"""

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

from plumbing import DATA_DIR, DownloadError, ScriptError, download_file, run_main

GPT2_MODEL_SIZES = ("124M", "355M", "774M", "1558M")

# OpenAI's release: seven files per size. Module constants, so tests can point them elsewhere.
GPT2_FILES = ("checkpoint", "encoder.json", "hparams.json", "model.ckpt.data-00000-of-00001",
              "model.ckpt.index", "model.ckpt.meta", "vocab.bpe")
GPT2_URL = "https://openaipublic.blob.core.windows.net/gpt-2/models"
GPT2_BACKUP_URL = "https://f001.backblazeb2.com/file/LLMs-from-scratch/gpt2"  # the book's mirror

# The same weights as safetensors files on the Hugging Face Hub: no TensorFlow needed to read them.
HF_FILES = ("config.json", "model.safetensors")
HF_URL = "https://huggingface.co/openai-community"
HF_REPOS = {"124M": "gpt2", "355M": "gpt2-medium", "774M": "gpt2-large", "1558M": "gpt2-xl"}


def download_and_load_gpt2(model_size, models_dir=None, source="tf"):
    """Download GPT-2 `model_size` ("124M", "355M", "774M" or "1558M") into models_dir/model_size
    (default data/gpt2/124M etc.) unless the files are there, and read it.

    source="tf" reads OpenAI's original TensorFlow checkpoint (needs TensorFlow);
    source="safetensors" reads the Hugging Face copy of the same weights (no TensorFlow).
    Returns (settings, params): settings as in OpenAI's hparams.json, params the book's dict
    {"blocks": [...], "b", "g", "wpe", "wte"} of NumPy arrays."""
    if model_size not in GPT2_MODEL_SIZES:
        raise ValueError(f"model_size must be one of {', '.join(GPT2_MODEL_SIZES)}, not {model_size!r}")
    if source not in ("tf", "safetensors"):
        raise ValueError(f'source must be "tf" or "safetensors", not {source!r}')
    model_dir = Path(models_dir if models_dir is not None else DATA_DIR / "gpt2") / model_size

    if source == "tf":
        _import_tensorflow()  # fail before a download of up to 6 GB that could not be read
        files, url, backup = GPT2_FILES, f"{GPT2_URL}/{model_size}", f"{GPT2_BACKUP_URL}/{model_size}"
    else:
        files, url, backup = HF_FILES, f"{HF_URL}/{HF_REPOS[model_size]}/resolve/main", None
    for name in files:
        try:
            download_file(f"{url}/{name}", model_dir / name, backup_url=f"{backup}/{name}" if backup else None)
        except DownloadError as error:
            raise DownloadError(f"{error}\nGPT-2 {model_size} ({source}) needs all of these files in "
                                f"{model_dir}: {', '.join(files)}, from {url}/<file>") from error
    if source == "safetensors":
        return load_gpt2_params_from_safetensors(model_dir)

    settings = _read_json(model_dir / "hparams.json")
    tf = _import_tensorflow()
    ckpt_path = tf.train.latest_checkpoint(str(model_dir))  # "checkpoint" names the model.ckpt files
    if ckpt_path is None:
        raise ScriptError(f"{model_dir / 'checkpoint'} does not name a readable checkpoint; "
                          f"delete {model_dir} and download it again")
    return settings, load_gpt2_params_from_tf_ckpt(ckpt_path, settings)


def _import_tensorflow():
    """TensorFlow, imported only to read OpenAI's checkpoints, or a ScriptError saying what to do."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # hide TensorFlow's start-up log lines
    try:
        import tensorflow as tf
    except ImportError as error:
        raise ScriptError(
            f"reading OpenAI's original GPT-2 checkpoint needs TensorFlow, which is not installed "
            f"here ({error}). Install it (pip install tensorflow-cpu) if a wheel exists for Python "
            f"{sys.version_info.major}.{sys.version_info.minor} on this platform, or read the same "
            f"weights from Hugging Face's safetensors files, which need no TensorFlow: "
            f"--weights safetensors in the chapter scripts, --source safetensors for gpt_download.py, "
            f'source="safetensors" in download_and_load_gpt2') from error
    return tf


def load_gpt2_params_from_tf_ckpt(ckpt_path, settings):
    """Read every variable of OpenAI's checkpoint ("model/h0/attn/c_attn/w", ...) into the
    book's params dict."""
    tf = _import_tensorflow()
    params = {"blocks": [{} for _ in range(settings["n_layer"])]}
    try:
        reader = tf.train.load_checkpoint(str(ckpt_path))
        names = sorted(reader.get_variable_to_shape_map())
        _check_variable_names(names, settings, ckpt_path)
        for name in names:
            _add_param(params, name, reader.get_tensor(name))
    except tf.errors.OpError as error:
        raise ScriptError(f"could not read the TensorFlow checkpoint {ckpt_path} ({error.message}); "
                          f"delete its folder and download it again") from error
    return params


def load_gpt2_params_from_safetensors(model_dir):
    """Read Hugging Face's model.safetensors and config.json for GPT-2 into the same
    (settings, params) that the TensorFlow reader returns."""
    from safetensors import SafetensorError, safe_open

    model_dir = Path(model_dir)
    config = _read_json(model_dir / "config.json")
    settings = {"n_vocab": config["vocab_size"], "n_ctx": config.get("n_positions", config.get("n_ctx")),
                "n_embd": config["n_embd"], "n_head": config["n_head"], "n_layer": config["n_layer"]}
    params = {"blocks": [{} for _ in range(settings["n_layer"])]}
    path = model_dir / "model.safetensors"
    try:
        # safe_open maps the file and reads one tensor at a time instead of loading it whole.
        with safe_open(str(path), framework="np") as file:
            names = {}  # OpenAI's name -> Hugging Face's key, for the tensors that are weights
            for key in file.keys():
                if _tf_name_of_hf_key(key) is not None:
                    names[_tf_name_of_hf_key(key)] = key
            _check_variable_names(names, settings, path)
            for name in sorted(names):
                _add_param(params, name, file.get_tensor(names[name]))
    except (SafetensorError, OSError) as error:
        raise ScriptError(f"could not read {path} ({error}); delete it and download it again") from error
    return settings, params


def _tf_name_of_hf_key(key):
    """Hugging Face's name of a GPT-2 tensor as OpenAI's variable name: "h.0.ln_1.weight" ->
    "model/h0/ln_1/g". None for what is not a weight (the attention masks, the tied lm_head)."""
    parts = key.removeprefix("transformer.").split(".")
    if parts[0] == "lm_head" or parts[-2:] in (["attn", "bias"], ["attn", "masked_bias"]):
        return None
    if parts[0] == "h":
        parts = [f"h{parts[1]}"] + parts[2:]
    if parts[-1] == "bias":
        parts[-1] = "b"
    elif parts[0] in ("wte", "wpe"):
        parts = parts[:1]
    else:  # LayerNorms have a gain g, the conv1d layers a weight w
        parts[-1] = "g" if parts[-2].startswith("ln_") else "w"
    return "model/" + "/".join(parts)


def _check_variable_names(names, settings, source):
    """Refuse files that are not the GPT-2 their settings describe (mixed sizes, another model)."""
    expected = {"model/wte", "model/wpe", "model/ln_f/g", "model/ln_f/b"}
    for i in range(settings["n_layer"]):
        expected.update(f"model/h{i}/{layer}/{p}" for layer in ("attn/c_attn", "attn/c_proj", "mlp/c_fc",
                                                                 "mlp/c_proj") for p in "wb")
        expected.update(f"model/h{i}/{norm}/{p}" for norm in ("ln_1", "ln_2") for p in "gb")
    missing, unexpected = sorted(expected - set(names)), sorted(set(names) - expected)
    if missing or unexpected:
        problems = ([f"lacks {', '.join(missing[:3])}"] if missing else []) + \
                   ([f"has no place for {', '.join(unexpected[:3])}"] if unexpected else [])
        raise ScriptError(f"{source} is not the GPT-2 that its settings describe (n_layer "
                          f"{settings['n_layer']}): it {' and '.join(problems)}. Are the files from "
                          f"different model sizes? Delete the folder and download it again")


def _add_param(params, name, array):
    """Put OpenAI's variable `name` where the book's params dict keeps it:
    "model/h0/attn/c_attn/w" -> params["blocks"][0]["attn"]["c_attn"]["w"],
    "model/ln_f/g" -> params["g"], "model/wte" -> params["wte"]."""
    parts = name.split("/")[1:]  # drop the "model" scope
    if parts[0].startswith("h"):
        target, parts = params["blocks"][int(parts[0][1:])], parts[1:]
    else:
        target, parts = params, parts[-1:]
    for key in parts[:-1]:
        target = target.setdefault(key, {})
    if parts[-1] == "w":
        # A conv1d weight [1, nx, nf] becomes [nx, nf], stored column by column: then the
        # transposes in load_weights_into_gpt are contiguous and the model can use this very
        # memory instead of a second copy (what lets gpt2-xl load on a 16 GB laptop).
        array = np.array(array.reshape(array.shape[-2:]), order="F")
    else:
        array = np.require(array, requirements="CW")  # writable, so the model can train it in place
    target[parts[-1]] = array


def _read_json(path):
    try:
        with open(path, encoding="utf-8") as file:
            return json.load(file)
    except json.JSONDecodeError as error:
        raise ScriptError(f"{path} is not valid JSON ({error}); delete it and download it again") from error


def main():
    parser = argparse.ArgumentParser(description="Download and check OpenAI's GPT-2 weights (section 5.5).")
    parser.add_argument("--model-size", choices=GPT2_MODEL_SIZES, default="124M")
    parser.add_argument("--source", choices=("tf", "safetensors"), default="tf",
                        help="tf: OpenAI's TensorFlow checkpoint (the book's); safetensors: the "
                             "Hugging Face copy, no TensorFlow needed")
    parser.add_argument("--models-dir", type=Path, default=DATA_DIR / "gpt2",
                        help="the files go to MODELS_DIR/MODEL_SIZE (default: %(default)s)")
    args = parser.parse_args()

    settings, params = download_and_load_gpt2(args.model_size, args.models_dir, args.source)
    model_dir = args.models_dir / args.model_size
    for name in (GPT2_FILES if args.source == "tf" else HF_FILES):
        print(f"{model_dir / name}: {(model_dir / name).stat().st_size:,} bytes")
    print("Settings:", settings)
    print("Parameter dictionary keys:", params.keys())
    count = sum(array.size for array in _arrays(params))
    print(f"Parameters read: {count:,} (the output layer reuses wte's {params['wte'].size:,})")


def _arrays(tree):
    """Every array in a (nested) params dict."""
    if isinstance(tree, dict):
        tree = list(tree.values())
    if isinstance(tree, list):
        return [array for item in tree for array in _arrays(item)]
    return [tree]


if __name__ == "__main__":
    run_main(main)
