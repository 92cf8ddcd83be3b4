"""Beyond the book: load Llama 3.2 or Qwen3 weights from a Hugging Face model folder into our
Llama3Model / Qwen3Model, read the model's tokenizer, and chat with it.

A model folder holds config.json, tokenizer.json, tokenizer_config.json (with the chat template of
instruction-tuned models) and one or several *.safetensors shards. The model is built on the meta
device and takes the file's tensors as its weights, so they are in memory once; bf16 weights stay
bf16 unless --dtype says otherwise.

Run: python llama_qwen_weights.py                         Qwen3-0.6B (downloaded once), chat
     python llama_qwen_weights.py --prompt "Why is the sky blue?" --thinking
     python llama_qwen_weights.py --model-dir data/Llama-3.2-1B-Instruct
Llama 3.2 is gated: accept Meta's license on huggingface.co, download the folder (config.json,
tokenizer.json, tokenizer_config.json, model.safetensors) and pass it with --model-dir.
"""

import argparse
import json
import time
from datetime import datetime
from pathlib import Path

import torch

from gpt_to_llama import Llama3Model, generate_tokens
from llama_to_qwen3 import Qwen3Model
from downloads import DownloadError, download_files
from fast_attention import lay_out_weights_for_decoding
from plumbing import (
    DATA_DIR,
    ScriptError,
    add_device_arg,
    check_temperature,
    get_device,
    positive_int,
    run_main,
)
from v_load_gpt2_weights import assign

QWEN3_URL = "https://huggingface.co/Qwen/Qwen3-0.6B/resolve/main/"
QWEN3_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "model.safetensors")
QWEN3_DIR = DATA_DIR / "qwen3" / "Qwen3-0.6B"

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def qwen3_chat_prompt(message, system=None, thinking=False):
    """Qwen3's chat format, as its chat template writes one turn without tools: an optional system
    turn, the user's turn, the assistant's header and, unless thinking, an empty thought (the
    template's enable_thinking=False), so that the model answers at once."""
    prompt = f"<|im_start|>system\n{system}<|im_end|>\n" if system else ""
    prompt += f"<|im_start|>user\n{message}<|im_end|>\n<|im_start|>assistant\n"
    return prompt if thinking else prompt + "<think>\n\n</think>\n\n"


def llama_chat_prompt(message, system=None, thinking=False):
    """Llama 3.1 and 3.2 Instruct's chat format, as their chat template writes one turn without
    tools: a system block always comes first, even without a system message, with the knowledge
    cut-off and today's date (strftime_now("%d %b %Y"), as transformers renders it); then the
    user's turn and the assistant's header. Both messages are stripped. There is no thinking."""
    today = datetime.now().strftime("%d %b %Y")
    return ("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
            f"Cutting Knowledge Date: December 2023\nToday Date: {today}\n\n{(system or '').strip()}"
            f"<|eot_id|><|start_header_id|>user<|end_header_id|>\n\n{message.strip()}<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\n")


# Each family's hand-written chat format (for a folder without a chat template) and the token that
# ends the model's turn.
CHAT_FORMATS = {"qwen3": (qwen3_chat_prompt, "<|im_end|>"), "llama": (llama_chat_prompt, "<|eot_id|>")}
# The named special tokens that transformers hands a chat template (bos_token is Llama's first).
TEMPLATE_TOKENS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")


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
    When the config ties them (tie_embeddings), out_head shares tok_emb's weight; otherwise the
    params must hold "lm_head.weight", as they must hold every other tensor."""
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
    if param_config.get("tie_embeddings"):
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


# ---- the tokenizer and the chat template ----

def read_chat_template(model_dir):
    """(template, special tokens) of a model folder: its Jinja chat template, from chat_template.jinja
    (where transformers 5 saves it) or tokenizer_config.json's "chat_template" (the published Llama
    3.2 and Qwen3 folders), and the special tokens the template may write; (None, {}) without one."""
    model_dir = Path(model_dir)
    config_path, jinja_path = model_dir / "tokenizer_config.json", model_dir / "chat_template.jinja"
    config = json.loads(config_path.read_text(encoding="utf-8")) if config_path.is_file() else {}
    template = jinja_path.read_text(encoding="utf-8") if jinja_path.is_file() else config.get("chat_template")
    if isinstance(template, list):  # several named templates (e.g. "default" and "tool_use")
        template = next((entry["template"] for entry in template if entry.get("name") == "default"), None)
    tokens = {name: value["content"] if isinstance(value, dict) else value
              for name, value in config.items() if name in TEMPLATE_TOKENS and value}
    return template, tokens


def render_chat_template(template, messages, special_tokens, thinking=False):
    """A model's own chat template (Jinja) rendered for `messages` plus the assistant's header, as
    transformers' apply_chat_template(add_generation_prompt=True) renders it: in a sandbox (the
    template comes with downloaded files), with trim_blocks and lstrip_blocks, loop controls, and
    its tojson, raise_exception and strftime_now. enable_thinking is Qwen3's switch."""
    import jinja2
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise jinja2.TemplateError(message)

    environment = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                                extensions=[loopcontrols])
    environment.filters["tojson"] = lambda value, indent=None: json.dumps(value, ensure_ascii=False,
                                                                        indent=indent)
    environment.globals.update(raise_exception=raise_exception,
                               strftime_now=lambda format: datetime.now().strftime(format))
    try:
        return environment.from_string(template).render(
            messages=messages, tools=None, documents=None, add_generation_prompt=True,
            enable_thinking=thinking, **special_tokens)
    except jinja2.TemplateError as error:
        raise ScriptError(f"the model folder's chat template failed ({error}); pass --no-chat to "
                          "continue the prompt as plain text") from error


class ChatTokenizer:
    """A model's tokenizer.json, read with Hugging Face's `tokenizers`, and its chat format
    ("qwen3", "llama", or None for plain text): the chat template of the folder that holds
    tokenizer.json where it has one, else the family's hand-written CHAT_FORMATS."""

    def __init__(self, tokenizer_path, chat_format=None):
        from tokenizers import Tokenizer

        if not Path(tokenizer_path).is_file():
            raise ScriptError(f"there is no tokenizer at {tokenizer_path}; download the model's "
                              "tokenizer.json")
        self.tokenizer = Tokenizer.from_file(str(tokenizer_path))
        self.chat_format = chat_format
        self.chat_template, self.special_tokens = (read_chat_template(Path(tokenizer_path).parent)
                                                   if chat_format else (None, {}))

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
        if self.chat_template is None:
            return CHAT_FORMATS[self.chat_format][0](message, system, thinking)
        messages = [{"role": "system", "content": system}] if system else []
        return render_chat_template(self.chat_template, messages + [{"role": "user", "content": message}],
                                    self.special_tokens, thinking)

    def end_of_turn_id(self):
        return self.token_id(CHAT_FORMATS[self.chat_format][1])


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
    parser.add_argument("--temperature", type=check_temperature, default=0.0, help="0.0: greedy (default)")
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
    lay_out_weights_for_decoding(model)  # float32 on CPU: 1.6x the tokens/s here (Qwen3-0.6B's size)
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
    if not args.no_chat:
        print("Chat format: " + ("the folder's chat template" if tokenizer.chat_template else
                                 f"{hf['model_type']}'s, written here (the folder has no chat template)"))
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
