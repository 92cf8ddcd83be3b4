"""Beyond the book: the models playground.py offers, opened with the series' own loaders, and their tokens.

Any checkpoint the series saves (chapter 5's, own-text ones with their tokenizers, chapter 7's
instruction model, chapter 6's classifier), OpenAI's GPT-2, and --quick's tiny random models.
Not a chapter: no letter imports it, so it may import any.
"""

import functools
import string
from dataclasses import dataclass
from pathlib import Path

import torch

from d_tokenizer import get_gpt2_tokenizer
from generate_text import alpaca_prompt, check_can_generate, checkpoint_tokenizer, uses_alpaca_prompt
from own_tokenizers import ENDOFTEXT, CharTokenizer
from plumbing import OUTPUTS_DIR, ScriptError
from checkpoints import load_checkpoint, model_from_checkpoint
from fast_attention import lay_out_weights_for_decoding
from v_load_gpt2_weights import QUICK_CONFIG, load_gpt2, quick_model
from w_finetune_classifier import build_classifier, load_classifier

OWN_MODEL_HINT = ("open your own model instead: --checkpoint outputs/model_and_optimizer.pth (written by "
                  "u_pretraining.py), or --quick for tiny random models")
KIND_TEXT = {
    "lm": "language model",
    "instruct": "instruction model (chapter 7): prompts go into the Alpaca template",
    "classifier": "classifier (chapter 6): spam or not spam",
}


@dataclass
class PlaygroundModel:
    name: str
    kind: str  # "lm", "instruct" or "classifier" (keys of KIND_TEXT)
    model: torch.nn.Module
    cfg: dict
    tokenizer: object
    max_length: int = None  # chapter 6 pads each text to its training texts' length

    @property
    def device(self):
        return self.model.out_head.weight.device


# ---- opening the models ----

def open_checkpoint(path, device, name=None):
    """Any checkpoint the series saves: chapter 5's, own-text ones (their tokenizer is inside),
    chapter 7's instruction model, chapter 6's classifier. `name` (default: the file's) labels it."""
    name = name or Path(path).name
    checkpoint = load_checkpoint(path)
    if not isinstance(checkpoint.get("config"), dict):
        raise ScriptError(f"{path} holds no model config; it was not written by this project's "
                          "save_checkpoint")
    tokenizer = checkpoint_tokenizer(checkpoint, path)
    if "num_classes" in checkpoint:
        max_length = checkpoint.get("max_length")
        del checkpoint  # the loaders read the file again: do not hold two copies of the weights
        model, cfg = load_classifier(path, device)
        return PlaygroundModel(name, "classifier", model, cfg, tokenizer, max_length)
    check_can_generate(checkpoint, path)
    kind = "instruct" if uses_alpaca_prompt(checkpoint, path, "auto") else "lm"
    del checkpoint
    model, cfg = model_from_checkpoint(path, device)
    return PlaygroundModel(name, kind, lay_out_weights_for_decoding(model), cfg, tokenizer)


def model_sources(args, device):
    """{name: function that opens the model} for the models chosen on the command line."""
    paths = args.checkpoint or []
    if not (paths or args.gpt2 or args.quick):
        paths = sorted(OUTPUTS_DIR.glob("*.pth")) if OUTPUTS_DIR.is_dir() else []
        if not paths:
            raise ScriptError(f"no checkpoint in {OUTPUTS_DIR} to open; pass --checkpoint PATH, --gpt2 "
                              "(OpenAI's GPT-2 in data/gpt2/), or --quick for tiny random models")
    sources = {}
    for path in map(Path, paths):
        if not path.is_file():
            raise ScriptError(f"no checkpoint at {path}; check the path given to --checkpoint")
        name = path.name if path.name not in sources else str(path)
        sources[name] = lambda path=path, name=name: open_checkpoint(path, device, name)
    if args.gpt2:
        def open_gpt2():
            model, cfg = load_gpt2(args.model, args.weights, args.models_dir, OWN_MODEL_HINT)
            return PlaygroundModel(args.model, "lm", model.to(device), cfg, get_gpt2_tokenizer())
        sources[args.model] = open_gpt2
    if args.quick:
        sources.update(quick_sources(device))
    return sources


def quick_sources(device):
    """--quick: v's tiny random GPT-2-shaped model as each kind of model, no weights downloaded; the
    tokenizer is quick_tokenizer's, read once when the first of them opens."""
    tokenizer = functools.cache(quick_tokenizer)

    def make(kind, name):
        def open_quick():
            model, cfg = quick_model(device, {**QUICK_CONFIG, "vocab_size": tokenizer().n_vocab})
            if kind == "classifier":
                model = build_classifier(model).eval()
            return PlaygroundModel(name, kind, model, cfg, tokenizer())
        return open_quick

    names = {"lm": "quick: tiny random GPT", "instruct": "quick: tiny random instruction model",
             "classifier": "quick: tiny random spam classifier"}
    return {name: make(kind, name) for kind, name in names.items()}


def quick_tokenizer():
    """GPT-2's tokenizer where tiktoken can load it (from its cache; online it fetches its two files
    once), else the series' character tokenizer over printable ASCII: --quick needs no download."""
    try:
        return get_gpt2_tokenizer()
    except ScriptError as error:
        print(f"note: {error}. The quick models use a character tokenizer (printable ASCII) instead")
        return CharTokenizer(sorted(string.printable))


def model_info(loaded):
    cfg = loaded.cfg
    return {"name": loaded.name, "kind": loaded.kind, "kind_text": KIND_TEXT[loaded.kind],
            "tokenizer": tokenizer_kind(loaded.tokenizer), "vocab_size": loaded.tokenizer.n_vocab,
            "context_length": cfg["context_length"], "n_layers": cfg["n_layers"], "n_heads": cfg["n_heads"],
            "emb_dim": cfg["emb_dim"], "parameters": sum(p.numel() for p in loaded.model.parameters()),
            "device": str(loaded.device), "attention": cfg.get("attention", "book")}


# ---- tokens ----

def tokenizer_kind(tokenizer):
    if getattr(tokenizer, "name", None) == "gpt2":  # tiktoken's Encoding
        return "GPT-2 BPE"
    return {"CharTokenizer": "character", "WordTokenizer": "word", "BPETokenizer": "own BPE"}.get(
        type(tokenizer).__name__, type(tokenizer).__name__)


def token_label(tokenizer, token_id):
    """A token as text; the bytes of a character split across tokens show as \\xf0, \\x9f, ..."""
    return tokenizer.decode_bytes([token_id]).decode("utf-8", errors="backslashreplace")


def model_prompt(loaded, text):
    """The text the model reads: an instruction model's goes into chapter 7's Alpaca template."""
    return alpaca_prompt(text) if loaded.kind == "instruct" else text


def prompt_ids(loaded, text):
    """Token ids of the prompt, checked against the context; an empty one starts at <|endoftext|>."""
    ids = loaded.tokenizer.encode(text, allowed_special={ENDOFTEXT}) if text else []
    if not ids:
        if loaded.tokenizer.eot_token is None:
            raise ScriptError("type a prompt: this tokenizer has no <|endoftext|> token to start from")
        ids = [loaded.tokenizer.eot_token]
    context_length = loaded.cfg["context_length"]
    if len(ids) > context_length:
        raise ScriptError(f"the prompt has {len(ids)} tokens but this model reads at most {context_length} "
                          "(its context length); shorten the prompt")
    return ids
