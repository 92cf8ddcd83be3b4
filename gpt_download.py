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

from downloads import DownloadError, download_files
from plumbing import DATA_DIR, ScriptError, run_main

GPT2_MODEL_SIZES = ("124M", "355M", "774M", "1558M")

# OpenAI's release: seven files per size. Module constants, so tests can point them elsewhere.
GPT2_FILES = ("checkpoint", "encoder.json", "hparams.json", "model.ckpt.data-00000-of-00001",
              "model.ckpt.index", "model.ckpt.meta", "vocab.bpe")
GPT2_URL = "https://openaipublic.blob.core.windows.net/gpt-2/models"
GPT2_BACKUP_URL = "https://f001.backblazeb2.com/file/LLMs-from-scratch/gpt2"  # the book's mirror
# (bytes, sha256) of the files whose published bytes are known, by name (any size) or size/name: the
# tokenizer files, the same for every size, whose hashes tiktoken pins too, and the Hub's gpt2 at
# HF_REVISIONS["124M"] (the SHA-256 of model.safetensors is that of its LFS pointer). The others are
# checked by their structure.
GPT2_PINNED = {
    "encoder.json": (1_042_301, "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783"),
    "vocab.bpe": (456_318, "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5"),
    "124M/config.json": (665, "0daed7749b4f02b8f76240d5444551d7b08712dab4d0adb8239c56ba823bb7b4"),
    "124M/model.safetensors": (548_105_171,
                               "248dfc3911869ec493c76e65bf2fcf7f615828b0254c12b473182f0f81d3a707"),
}
TF_DATA_FILE, TF_INDEX_FILE = "model.ckpt.data-00000-of-00001", "model.ckpt.index"

# The same weights as safetensors files on the Hugging Face Hub: no TensorFlow needed to read them.
HF_FILES = ("config.json", "model.safetensors")
HF_URL = "https://huggingface.co/openai-community"
HF_REPOS = {"124M": "gpt2", "355M": "gpt2-medium", "774M": "gpt2-large", "1558M": "gpt2-xl"}
HF_REVISIONS = {"124M": "607a30d783dfa663caf39e06633721c8d4cfcd7e"}  # fixed bytes; the others: main


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
        revision = HF_REVISIONS.get(model_size, "main")
        files, url, backup = HF_FILES, f"{HF_URL}/{HF_REPOS[model_size]}/resolve/{revision}", None
    downloads = []
    # The index before the data file, so that the data file is checked against the index it needs.
    for name in sorted(files, key=lambda name: name == TF_DATA_FILE):
        size, sha256 = GPT2_PINNED.get(f"{model_size}/{name}", GPT2_PINNED.get(name, (None, None)))
        check = {TF_INDEX_FILE: tf_index_data_size, "model.safetensors": check_safetensors_size,
                 "checkpoint": check_tf_checkpoint_state,
                 TF_DATA_FILE: lambda path: check_tf_data_file(path, model_dir / TF_INDEX_FILE)}.get(name)
        downloads.append(dict(url=f"{url}/{name}", destination=model_dir / name, expected_size=size,
                              expected_sha256=sha256, validate=check,
                              backup_url=f"{backup}/{name}" if backup else None))
    try:
        download_files(downloads)
    except DownloadError as error:
        raise DownloadError(f"{error}\nGPT-2 {model_size} ({source}) needs all of these files in "
                            f"{model_dir}: {', '.join(files)}, from {url}/<file>") from error
    if source == "safetensors":
        return load_gpt2_params_from_safetensors(model_dir)

    settings = _read_json(model_dir / "hparams.json")
    _check_keys(settings, ("n_vocab", "n_ctx", "n_embd", "n_head", "n_layer"), model_dir / "hparams.json")
    tf = _import_tensorflow()
    ckpt_path = tf.train.latest_checkpoint(str(model_dir))  # "checkpoint" names the model.ckpt files
    if ckpt_path is None:  # it names files that are not there
        raise ScriptError(f"{model_dir / 'checkpoint'} does not name a readable checkpoint; delete it (or "
                          f"all of {model_dir}) and download it again")
    return settings, load_gpt2_params_from_tf_ckpt(ckpt_path, settings)


def check_safetensors_size(path):
    """A safetensors file is an 8-byte header length, a JSON header, then the tensors' bytes, whose
    offsets the header lists: the last offset must end the file."""
    size = Path(path).stat().st_size
    with open(path, "rb") as file:
        header_size = int.from_bytes(file.read(8), "little")
        if size < 8 or header_size > size - 8:
            raise ValueError(f"its header says {header_size} bytes, but the file has only {size}")
        try:
            header = json.loads(file.read(header_size))
            end = max((entry["data_offsets"][1] for key, entry in header.items() if key != "__metadata__"),
                      default=0)
        except (ValueError, KeyError, TypeError, IndexError) as error:
            raise ValueError(f"its header is not a safetensors header ({error})") from None
    if 8 + header_size + end != size:
        raise ValueError(f"its header describes {8 + header_size + end} bytes, but the file has {size}")


def check_tf_checkpoint_state(path):
    """OpenAI's "checkpoint" file is TensorFlow's checkpoint state in text form: it must name the
    model.ckpt files (model_checkpoint_path: "model.ckpt"), or TensorFlow cannot find them."""
    text = Path(path).read_text(encoding="utf-8", errors="replace")
    if not any(line.startswith('model_checkpoint_path: "') and line.rstrip().endswith('"')
               for line in text.splitlines()):
        raise ValueError('it names no model_checkpoint_path ("model.ckpt"), as TensorFlow\'s checkpoint '
                         "state must")


# ---- the structure of a TensorFlow checkpoint index, to catch a truncated data file ----

TABLE_MAGIC = (0xDB4775248B80FB57).to_bytes(8, "little")  # the last 8 bytes of a LevelDB-style table


def _varint(data, pos):
    """A protobuf / LevelDB base-128 varint at data[pos:] -> (value, position after it)."""
    value = shift = 0
    while True:
        if pos >= len(data):
            raise ValueError("a number runs past the end of the index")
        byte = data[pos]
        value |= (byte & 0x7F) << shift
        pos, shift = pos + 1, shift + 7
        if byte < 0x80:
            return value, pos


def _table_block(data, handle):
    """The entries (key, value) of the block of table `data` that `handle` (offset, size) points at."""
    offset, pos = _varint(handle, 0)
    size, _ = _varint(handle, pos)
    if offset + size + 5 > len(data) or data[offset + size] != 0:  # 5: compression type and crc32c
        raise ValueError("a block lies outside the index or is compressed")
    block = data[offset:offset + size]
    end = size - 4 * (int.from_bytes(block[-4:], "little") + 1)  # the restart points close the block
    entries, key, pos = [], b"", 0
    while pos < end:
        shared, pos = _varint(block, pos)
        unshared, pos = _varint(block, pos)
        value_size, pos = _varint(block, pos)
        key = key[:shared] + block[pos:pos + unshared]
        pos += unshared
        entries.append((key, block[pos:pos + value_size]))
        pos += value_size
    return entries


def _bundle_entry_end(entry):
    """Where a tensor of a BundleEntryProto ends in the data file: offset (field 4) + size (field 5)."""
    fields, pos = {}, 0
    while pos < len(entry):
        tag, pos = _varint(entry, pos)
        wire_type = tag & 7
        if wire_type == 0:
            fields[tag >> 3], pos = _varint(entry, pos)
        elif wire_type == 2:
            length, pos = _varint(entry, pos)
            pos += length
        else:  # fixed32 (the crc32c) or fixed64
            pos += 4 if wire_type == 5 else 8
    return fields.get(4, 0) + fields.get(5, 0)


def tf_index_data_size(index_path):
    """The size in bytes of the data file that a TensorFlow checkpoint index (model.ckpt.index)
    describes: the end of its last tensor. Raises ValueError for a damaged or incomplete index."""
    data = Path(index_path).read_bytes()
    if len(data) < 48 or data[-8:] != TABLE_MAGIC:
        raise ValueError("it does not end like a TensorFlow checkpoint index")
    footer = data[-48:]  # the handles of the metaindex block and of the index block, then the magic
    _, pos = _varint(footer, 0)
    _, pos = _varint(footer, pos)
    ends = [_bundle_entry_end(value)
            for _, handle in _table_block(data, footer[pos:])
            for key, value in _table_block(data, handle) if key]  # the empty key is the bundle's header
    return max(ends, default=0)


def check_tf_data_file(data_path, index_path):
    """Raise ValueError unless model.ckpt.data-00000-of-00001 has the size its index gives."""
    if not Path(index_path).is_file():
        return  # the index is missing too; it is checked, and this file again, once it is there
    expected = tf_index_data_size(index_path)
    size = Path(data_path).stat().st_size
    if size != expected:
        raise ValueError(f"it has {size} bytes, but {Path(index_path).name} describes {expected}")


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
    except (tf.errors.OpError, IndexError) as error:  # IndexError: "Read less bytes than requested"
        raise ScriptError(f"could not read the TensorFlow checkpoint {ckpt_path} "
                          f"({getattr(error, 'message', error)}): {TF_DATA_FILE} or {TF_INDEX_FILE} is "
                          "damaged or incomplete; delete its folder and download it again") from error
    return params


def load_gpt2_params_from_safetensors(model_dir):
    """Read Hugging Face's model.safetensors and config.json for GPT-2 into the same
    (settings, params) that the TensorFlow reader returns."""
    from safetensors import SafetensorError, safe_open

    model_dir = Path(model_dir)
    config = _read_json(model_dir / "config.json")
    _check_keys(config, ("vocab_size", "n_embd", "n_head", "n_layer",
                         "n_positions" if "n_ctx" not in config else "n_ctx"), model_dir / "config.json")
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


def _check_keys(settings, keys, path):
    """GPT-2's settings file must hold the model's sizes; a damaged or foreign one fails here, by name."""
    missing = [key for key in keys if not isinstance(settings, dict) or key not in settings]
    if missing:
        raise ScriptError(f"{path} lacks {', '.join(missing)}: it is damaged or not GPT-2's; delete it "
                          "and download it again")


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
