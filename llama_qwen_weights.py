"""Beyond the book: load Llama 3.2 or Qwen3 weights from a Hugging Face model folder into our
Llama3Model / Qwen3Model, read the model's tokenizer, and chat with it.

A model folder holds config.json, tokenizer.json and one or several *.safetensors shards. The
model is built on the meta device and takes the file's tensors as its weights, so they are in
memory once; bf16 weights stay bf16 unless --dtype says otherwise.

Run: python llama_qwen_weights.py                         Qwen3-0.6B (downloaded once), chat
     python llama_qwen_weights.py --prompt "Why is the sky blue?" --thinking
     python llama_qwen_weights.py --model-dir data/Llama-3.2-1B-Instruct
Llama 3.2 is gated: accept Meta's license on huggingface.co, download the folder (config.json,
tokenizer.json, model.safetensors) and pass it with --model-dir.
"""

import argparse
import json
import time
from pathlib import Path

import torch

from gpt_to_llama import Llama3Model, generate_tokens
from llama_to_qwen3 import Qwen3Model
from downloads import DownloadError, download_files
from plumbing import DATA_DIR, ScriptError, add_device_arg, get_device, positive_int, run_main
from v_load_gpt2_weights import assign

QWEN3_URL = "https://huggingface.co/Qwen/Qwen3-0.6B/resolve/main/"
QWEN3_FILES = ("config.json", "tokenizer.json", "model.safetensors")
QWEN3_DIR = DATA_DIR / "qwen3" / "Qwen3-0.6B"

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}

# How each model family marks the turns of a conversation (the chat templates of the released
# instruction-tuned models, without tools). {system} and {message} are filled in.
CHAT_FORMATS = {
    "qwen3": {
        "system": "<|im_start|>system\n{system}<|im_end|>\n",
        "user": "<|im_start|>user\n{message}<|im_end|>\n<|im_start|>assistant\n",
        "no_thinking": "<think>\n\n</think>\n\n",  # an empty thought: the model answers at once
        "end_of_turn": "<|im_end|>",
    },
    "llama": {
        "begin": "<|begin_of_text|>",
        "system": "<|start_header_id|>system<|end_header_id|>\n\n{system}<|eot_id|>",
        "user": ("<|start_header_id|>user<|end_header_id|>\n\n{message}<|eot_id|>"
                 "<|start_header_id|>assistant<|end_header_id|>\n\n"),
        "end_of_turn": "<|eot_id|>",
    },
}


# ---- config.json -> our config ----

def config_from_hf(hf):
    """Our config dict from a parsed config.json, in either style: rope_theta and rope_scaling
    (the published Llama 3.2 and Qwen3 folders) or rope_parameters (transformers 5)."""
    model_type = hf.get("model_type")
    if model_type not in ("llama", "qwen3"):
        raise ScriptError(f"config.json describes a {model_type!r} model; this script reads Llama "
                          "('llama') and Qwen3 ('qwen3') folders")
    if hf.get("attention_bias") or hf.get("mlp_bias") or hf.get("use_sliding_window"):
        raise ScriptError("config.json asks for attention/MLP biases or sliding-window attention, "
                          "which Llama3Model and Qwen3Model do not have")
    rope = dict(hf.get("rope_parameters") or {})
    rope.update(hf.get("rope_scaling") or {})
    rope_base = hf.get("rope_theta", rope.get("rope_theta", 10_000.0))
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type not in ("default", "llama3"):
        raise ScriptError(f"config.json uses RoPE scaling {rope_type!r}; only Llama 3's is implemented")
    dtype_name = hf.get("dtype") or hf.get("torch_dtype") or "float32"
    if dtype_name not in DTYPES:
        raise ScriptError(f"config.json's dtype {dtype_name!r} is not one of {', '.join(DTYPES)}")
    cfg = {
        "vocab_size": hf["vocab_size"],
        "context_length": hf["max_position_embeddings"],
        "emb_dim": hf["hidden_size"],
        "n_heads": hf["num_attention_heads"],
        "n_layers": hf["num_hidden_layers"],
        "hidden_dim": hf["intermediate_size"],
        "n_kv_groups": hf.get("num_key_value_heads") or hf["num_attention_heads"],
        "rope_base": float(rope_base),
        "dtype": DTYPES[dtype_name],
        "head_dim": hf.get("head_dim") or hf["hidden_size"] // hf["num_attention_heads"],
        "qk_norm": model_type == "qwen3",
        "rms_norm_eps": hf.get("rms_norm_eps", 1e-6),
        "tie_embeddings": bool(hf.get("tie_word_embeddings", False)),
    }
    if rope_type == "llama3":
        keys = ("factor", "low_freq_factor", "high_freq_factor")
        cfg["rope_freq"] = {key: float(rope[key]) for key in keys}
        cfg["rope_freq"]["original_context_length"] = rope["original_max_position_embeddings"]
    return cfg


# ---- safetensors params -> our model ----

def _take(params, name):
    if name not in params:
        raise ScriptError(f"the weights have no tensor {name!r}: the *.safetensors files do not match "
                          "config.json (an incomplete download?); download the folder again")
    return params[name]


def load_weights_into_llama(model, param_config, params):
    """Put Hugging Face's Llama tensors (the dict safetensors reads, names "model.layers.0....")
    into a Llama3Model built with param_config. Qwen3's q_norm/k_norm load where the model has them.
    Without an "lm_head.weight", or when the config ties them, out_head shares tok_emb's weight."""
    if len(model.trf_blocks) != param_config["n_layers"]:
        raise ValueError(f"the model has {len(model.trf_blocks)} blocks, the config "
                         f"{param_config['n_layers']}")

    def load(parameter, name):
        return assign(parameter, _take(params, name), name)

    model.tok_emb.weight = load(model.tok_emb.weight, "model.embed_tokens.weight")
    for i, block in enumerate(model.trf_blocks):
        prefix, att = f"model.layers.{i}.", block.att
        for ours, theirs in ((att.W_query, "q_proj"), (att.W_key, "k_proj"), (att.W_value, "v_proj"),
                             (att.out_proj, "o_proj")):
            ours.weight = load(ours.weight, f"{prefix}self_attn.{theirs}.weight")
        if att.q_norm is not None:
            att.q_norm.weight = load(att.q_norm.weight, f"{prefix}self_attn.q_norm.weight")
            att.k_norm.weight = load(att.k_norm.weight, f"{prefix}self_attn.k_norm.weight")
        block.norm1.weight = load(block.norm1.weight, f"{prefix}input_layernorm.weight")
        block.norm2.weight = load(block.norm2.weight, f"{prefix}post_attention_layernorm.weight")
        for ours, theirs in ((block.ff.fc1, "gate_proj"), (block.ff.fc2, "up_proj"),
                             (block.ff.fc3, "down_proj")):
            ours.weight = load(ours.weight, f"{prefix}mlp.{theirs}.weight")
    model.final_norm.weight = load(model.final_norm.weight, "model.norm.weight")
    if param_config.get("tie_embeddings") or "lm_head.weight" not in params:
        model.out_head.weight = model.tok_emb.weight
    else:
        model.out_head.weight = load(model.out_head.weight, "lm_head.weight")


def load_weights_into_qwen(model, param_config, params):
    """load_weights_into_llama for a Qwen3Model: the same names plus each layer's q_norm and k_norm."""
    if model.trf_blocks[0].att.q_norm is None:
        raise ValueError('Qwen3 normalises queries and keys: build the model with "qk_norm": True')
    load_weights_into_llama(model, param_config, params)


def read_hf_config(model_dir):
    path = Path(model_dir) / "config.json"
    if not path.is_file():
        raise ScriptError(f"there is no config.json in {model_dir}; a model folder holds config.json, "
                          "tokenizer.json and *.safetensors (see --help)")
    return json.loads(path.read_text(encoding="utf-8"))


def model_from_hf_dir(path, dtype=None):
    """(model, cfg) from a Hugging Face folder: config.json and one or several *.safetensors shards.
    The weights keep the file's dtype unless `dtype` is given. The model is on the CPU, in eval mode."""
    from safetensors.torch import load_file

    cfg = config_from_hf(read_hf_config(path))
    if dtype is not None:
        cfg["dtype"] = dtype
    shards = sorted(Path(path).glob("*.safetensors"))
    if not shards:
        raise ScriptError(f"there are no *.safetensors files in {path}; download the model's weights")
    params = {}
    for shard in shards:
        params.update(load_file(shard))
    with torch.device("meta"):  # shapes only: the weights come from `params`, not a random draw
        model = (Qwen3Model if cfg["qk_norm"] else Llama3Model)(cfg)
    (load_weights_into_qwen if cfg["qk_norm"] else load_weights_into_llama)(model, cfg, params)
    return model.eval(), cfg


def check_safetensors(path):
    """download_files' check of a weights file: its header must parse and cover the whole file."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), "pt") as file:
            file.keys()
    except SafetensorError as error:
        raise ValueError(f"not a complete safetensors file: {error}") from None


def download_qwen3(model_dir=QWEN3_DIR, base_url=QWEN3_URL):
    """Download Qwen3-0.6B's files into model_dir; files already there are checked, not fetched.
    The JSON files must parse and the weights' header must cover the file (no checksums here)."""
    model_dir = Path(model_dir)
    try:
        download_files([{"url": base_url + name, "destination": model_dir / name,
                         "validate": check_safetensors if name.endswith(".safetensors") else None}
                        for name in QWEN3_FILES])
    except DownloadError as error:
        every_file = "\n".join(f"  {base_url}{name} -> {model_dir / name}" for name in QWEN3_FILES)
        raise ScriptError(f"{error}\nQwen3-0.6B is these files:\n{every_file}") from error
    return model_dir


# ---- the tokenizer ----

class ChatTokenizer:
    """A model's tokenizer.json, read with Hugging Face's `tokenizers`, and its chat format
    ("qwen3", "llama", or None for plain text)."""

    def __init__(self, tokenizer_path, chat_format=None):
        from tokenizers import Tokenizer

        if not Path(tokenizer_path).is_file():
            raise ScriptError(f"there is no tokenizer at {tokenizer_path}; download the model's "
                              "tokenizer.json")
        self.tokenizer = Tokenizer.from_file(str(tokenizer_path))
        self.chat_format = chat_format

    def encode(self, text, add_special_tokens=False):
        """Ids of `text`; special tokens written in it (<|im_start|>) become their ids.
        add_special_tokens adds what the tokenizer adds by itself (Llama's <|begin_of_text|>)."""
        return self.tokenizer.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids):
        return self.tokenizer.decode(list(ids), skip_special_tokens=False)

    def token_id(self, token):
        token_id = self.tokenizer.token_to_id(token)
        if token_id is None:
            raise ScriptError(f"the tokenizer has no token {token!r}; is it the model's tokenizer.json?")
        return token_id

    def chat_prompt(self, message, system=None, thinking=False):
        """The text the instruction-tuned model expects for one user message."""
        form = CHAT_FORMATS[self.chat_format]
        prompt = form.get("begin", "")
        if system:
            prompt += form["system"].format(system=system)
        prompt += form["user"].format(message=message)
        if not thinking and "no_thinking" in form:
            prompt += form["no_thinking"]
        return prompt

    def end_of_turn_id(self):
        return self.token_id(CHAT_FORMATS[self.chat_format]["end_of_turn"])


# ---- the walk-through: load, then answer one prompt ----

def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", type=Path, default=None,
                        help="a Llama 3.x or Qwen3 folder (default: Qwen3-0.6B, downloaded into "
                             f"{QWEN3_DIR})")
    parser.add_argument("--prompt", default="Give me a short introduction to large language models.")
    parser.add_argument("--system", default=None, help="a system message for the chat")
    parser.add_argument("--no-chat", action="store_true",
                        help="continue the prompt as plain text (base models) instead of the chat format")
    parser.add_argument("--thinking", action="store_true", help="Qwen3: let the model think first")
    parser.add_argument("--max-new-tokens", type=positive_int, default=200)
    parser.add_argument("--temperature", type=float, default=0.0, help="0.0: greedy (default)")
    parser.add_argument("--top-k", type=positive_int, default=None)
    parser.add_argument("--dtype", choices=list(DTYPES), default=None,
                        help="the weights' dtype in memory (default: the checkpoint's)")
    parser.add_argument("--seed", type=int, default=123)
    add_device_arg(parser)
    return parser.parse_args(argv)


def stream(token_ids, tokenizer, write=print):
    """Write the text of each new token as it comes; a character split across tokens is written
    once it is complete. Returns the new ids."""
    new_ids, written = [], ""
    for next_id in token_ids:
        new_ids.append(next_id.item())
        text = tokenizer.decode(new_ids)
        if not text.endswith("\ufffd"):  # an incomplete UTF-8 character decodes to U+FFFD
            write(text[len(written):], end="", flush=True)
            written = text
    write()
    return new_ids


def main(argv=None):
    args = parse_args(argv)
    device = get_device(args.device)
    model_dir = args.model_dir or download_qwen3()
    start = time.time()
    model, cfg = model_from_hf_dir(model_dir, DTYPES.get(args.dtype))
    model.to(device)
    hf = read_hf_config(model_dir)
    kind = "Qwen3Model" if cfg["qk_norm"] else "Llama3Model"
    params = sum(p.numel() for p in model.parameters())
    print(f"{kind} from {model_dir}: {params:,} parameters in {cfg['dtype']}, "
          f"loaded in {time.time() - start:.1f} s, on {device}")

    tokenizer = ChatTokenizer(Path(model_dir) / "tokenizer.json", None if args.no_chat else hf["model_type"])
    eos = hf.get("eos_token_id")
    stop_ids = set([] if eos is None else [eos] if isinstance(eos, int) else eos)
    if args.no_chat:
        ids = tokenizer.encode(args.prompt, add_special_tokens=True)
    else:
        ids = tokenizer.encode(tokenizer.chat_prompt(args.prompt, args.system, args.thinking))
        stop_ids.add(tokenizer.end_of_turn_id())
    print(f"Prompt ({len(ids)} tokens):\n{tokenizer.decode(ids)}")

    torch.manual_seed(args.seed)
    start = time.time()
    idx = torch.tensor([ids], device=device)
    new_ids = stream(generate_tokens(model, idx, args.max_new_tokens, args.temperature, args.top_k,
                                     eos_id=sorted(stop_ids) or None), tokenizer)
    print(f"\n{len(new_ids)} tokens in {time.time() - start:.1f} s "
          f"({len(new_ids) / (time.time() - start):.1f} tokens/s, KV cache)")


if __name__ == "__main__":
    run_main(main)
