"""Load OpenAI's pretrained GPT-2 weights into our GPTModel and generate text with them.

Pretraining on a corpus large enough for good text is far beyond one computer, but OpenAI published
GPT-2's trained weights. load_weights_into_gpt copies them into GPTModel layer by layer (OpenAI's
one query-key-value matrix splits into our three); GPT-2 also has query, key and value biases, a
1024-token context and an output head that shares the token embedding matrix.
Book section 5.5.

Run: python v_load_gpt2_weights.py                          GPT-2 124M, OpenAI's TensorFlow files
     python v_load_gpt2_weights.py --model 1558M            gpt2-xl (6 GB download, about 7 GB of memory)
     python v_load_gpt2_weights.py --weights safetensors    the same weights without TensorFlow
The weights download once into data/gpt2/<size>/ (see gpt_download.py).
"""

import argparse
from pathlib import Path

import numpy as np
import torch

from d_tokenizer import get_gpt2_tokenizer
from gpt_download import GPT2_FILES, HF_FILES, HF_REPOS, download_and_load_gpt2
from plumbing import DATA_DIR, ScriptError, add_device_arg, get_device, run_main
from s_gpt_model import GPTModel, model_configs  # the four GPT-2 sizes (section 4.6)
from t_pretraining_basics import START_CONTEXT, text_to_token_ids, token_ids_to_text
from u_pretraining import generate

# What all GPT-2 sizes share (chapter 5 trained with a 256-token context; GPT-2 reads 1,024).
BASE_CONFIG = {
    "vocab_size": 50257,     # GPT-2's BPE vocabulary
    "context_length": 1024,  # the context OpenAI trained with
    "drop_rate": 0.0,        # no dropout: the pretraining is done
    "qkv_bias": True,        # OpenAI's attention layers have query, key and value biases
}

# --quick in v, w, x and z: a tiny random GPT-2-shaped model and no download, to check in seconds
# that a script runs. Its context fits chapter 6's longest training text (120 tokens).
QUICK_CONFIG = {**BASE_CONFIG, "context_length": 128, "emb_dim": 32, "n_layers": 2, "n_heads": 2}

# What the book prints with the 124M weights (sampling may differ on other hardware or versions).
BOOK_OUTPUT_124M = ("Every effort moves you toward finding an ideal new way to practice something!\n\n"
                    "What makes us want to be on top of that?\n\n")


def gpt2_model_name(model):
    """The book's name of a GPT-2 size: "355M", "gpt2-medium" or "gpt2-medium (355M)" all give
    "gpt2-medium (355M)"."""
    for name in model_configs:
        short_name, size = name.rstrip(")").split(" (")
        if str(model).lower() in (name.lower(), short_name, size.lower(), HF_REPOS[size]):
            return name
    raise ValueError(f"unknown GPT-2 model {model!r}; use one of 124M, 355M, 774M, 1558M "
                     f"(or a name such as gpt2-medium, or {', '.join(repr(n) for n in model_configs)})")


def model_size(model):
    """ "gpt2-medium (355M)" (or "355M", "gpt2-medium") -> "355M", the name of OpenAI's folder."""
    return gpt2_model_name(model).rstrip(")").split(" (")[1]


def assign(left, right, name=None):
    """The book's assign: a new Parameter holding `right`, after checking that its shape is the
    shape of `left`, the parameter it replaces. `name` says which tensor failed.

    NumPy arrays are used in place when they are contiguous (no copy): the model then shares
    memory with `params`, which is what keeps large models from needing twice their size."""
    right = torch.as_tensor(right)
    if left.shape != right.shape:
        where = f" in {name}" if name else ""
        raise ValueError(f"Shape mismatch{where}: the model has {tuple(left.shape)}, the checkpoint "
                         f"{tuple(right.shape)}. Build the model with the checkpoint's config "
                         f"(emb_dim, n_layers, n_heads, vocab_size, context_length)")
    device = torch.device("cpu") if left.is_meta else left.device  # meta: a model built without memory
    return torch.nn.Parameter(right.to(device=device, dtype=left.dtype).contiguous())


def load_weights_into_gpt(gpt, params):
    """Copy the book's params dict (from download_and_load_gpt2) into a GPTModel built with the
    matching config: GPT-2's combined c_attn weight splits into our query, key and value
    matrices, and OpenAI's conv1d weights [in, out] are transposed into Linear's [out, in]."""
    if gpt.trf_blocks[0].att.W_query.bias is None:
        raise ValueError('GPT-2 has query, key and value biases: build the model with "qkv_bias": True')
    if len(params["blocks"]) != len(gpt.trf_blocks):
        raise ValueError(f"the checkpoint has {len(params['blocks'])} transformer blocks, the model "
                         f"{len(gpt.trf_blocks)}: build the model with the checkpoint's n_layers")
    gpt.pos_emb.weight = assign(gpt.pos_emb.weight, params["wpe"], "pos_emb.weight")
    gpt.tok_emb.weight = assign(gpt.tok_emb.weight, params["wte"], "tok_emb.weight")

    for b, (block, block_params) in enumerate(zip(gpt.trf_blocks, params["blocks"])):
        att, attn = block.att, block_params["attn"]
        prefix = f"trf_blocks[{b}]."
        q_w, k_w, v_w = np.split(attn["c_attn"]["w"], 3, axis=-1)
        att.W_query.weight = assign(att.W_query.weight, q_w.T, prefix + "att.W_query.weight")
        att.W_key.weight = assign(att.W_key.weight, k_w.T, prefix + "att.W_key.weight")
        att.W_value.weight = assign(att.W_value.weight, v_w.T, prefix + "att.W_value.weight")
        q_b, k_b, v_b = np.split(attn["c_attn"]["b"], 3, axis=-1)
        att.W_query.bias = assign(att.W_query.bias, q_b, prefix + "att.W_query.bias")
        att.W_key.bias = assign(att.W_key.bias, k_b, prefix + "att.W_key.bias")
        att.W_value.bias = assign(att.W_value.bias, v_b, prefix + "att.W_value.bias")
        att.out_proj.weight = assign(att.out_proj.weight, attn["c_proj"]["w"].T,
                                     prefix + "att.out_proj.weight")
        att.out_proj.bias = assign(att.out_proj.bias, attn["c_proj"]["b"], prefix + "att.out_proj.bias")

        ff, mlp = block.ff.layers, block_params["mlp"]
        ff[0].weight = assign(ff[0].weight, mlp["c_fc"]["w"].T, prefix + "ff.layers[0].weight")
        ff[0].bias = assign(ff[0].bias, mlp["c_fc"]["b"], prefix + "ff.layers[0].bias")
        ff[2].weight = assign(ff[2].weight, mlp["c_proj"]["w"].T, prefix + "ff.layers[2].weight")
        ff[2].bias = assign(ff[2].bias, mlp["c_proj"]["b"], prefix + "ff.layers[2].bias")

        block.norm1.scale = assign(block.norm1.scale, block_params["ln_1"]["g"], prefix + "norm1.scale")
        block.norm1.shift = assign(block.norm1.shift, block_params["ln_1"]["b"], prefix + "norm1.shift")
        block.norm2.scale = assign(block.norm2.scale, block_params["ln_2"]["g"], prefix + "norm2.scale")
        block.norm2.shift = assign(block.norm2.shift, block_params["ln_2"]["b"], prefix + "norm2.shift")

    gpt.final_norm.scale = assign(gpt.final_norm.scale, params["g"], "final_norm.scale")
    gpt.final_norm.shift = assign(gpt.final_norm.shift, params["b"], "final_norm.shift")
    # GPT-2 reuses the token embeddings as output layer (weight tying). Like the book, we start
    # out_head from a copy of them, so that fine-tuning can change the two separately.
    gpt.out_head.weight = assign(gpt.out_head.weight, np.array(params["wte"]), "out_head.weight")


def gpt_model_from_params(cfg, params):
    """A GPTModel holding `params`. It is built on the meta device, where tensors take no memory,
    so GPT-2's random initial weights never exist: load_weights_into_gpt replaces every one."""
    with torch.device("meta"):
        gpt = GPTModel(cfg)
    load_weights_into_gpt(gpt, params)
    # The causal masks are buffers, not weights: build them for real.
    for block in gpt.trf_blocks:
        block.att.mask = torch.triu(torch.ones(cfg["context_length"], cfg["context_length"]), diagonal=1)
    missing = [name for name, tensor in [*gpt.named_parameters(), *gpt.named_buffers()] if tensor.is_meta]
    if missing:
        raise ValueError(f"load_weights_into_gpt left {', '.join(missing)} without values")
    return gpt


def gpt2_config(model, settings):
    """The book's config for `model` (BASE_CONFIG + model_configs), checked against the sizes in
    the checkpoint's own settings (hparams.json); where they differ the checkpoint wins, with a note."""
    model = gpt2_model_name(model)
    cfg = {**BASE_CONFIG, **model_configs[model]}
    in_checkpoint = {"vocab_size": settings["n_vocab"], "context_length": settings["n_ctx"],
                     "emb_dim": settings["n_embd"], "n_heads": settings["n_head"],
                     "n_layers": settings["n_layer"]}
    differences = {key: value for key, value in in_checkpoint.items() if cfg[key] != value}
    if differences:
        print(f"note: the checkpoint is not the published {model}; using its sizes {differences}")
        cfg.update(differences)
    return cfg


OWN_MODEL_HINT = ("start from your own model: --init-from outputs/model_and_optimizer.pth (written by "
                  "u_pretraining.py; trained on one short story, so results will be far below the book's)")


def fetch_gpt2_params(model, weights="tf", models_dir=None, own_model_hint=OWN_MODEL_HINT):
    """download_and_load_gpt2 for `model`, with a ScriptError that lists the ways forward; the last
    one, `own_model_hint`, says how the calling script takes the reader's own model instead."""
    size = model_size(model)
    models_dir = Path(models_dir) if models_dir is not None else DATA_DIR / "gpt2"
    print(f"Loading {gpt2_model_name(model)} ({weights} files in {models_dir / size})")
    try:
        return download_and_load_gpt2(size, models_dir, source=weights)
    except ScriptError as error:
        files = GPT2_FILES if weights == "tf" else HF_FILES
        raise ScriptError(
            f"{error}\n\nThe GPT-2 {size} weights are not available. To go on, either\n"
            f"  - put {', '.join(files)} into {models_dir / size} by hand "
            f"(the URLs are in gpt_download.py), or\n" +
            ("  - use --weights safetensors: the same weights from Hugging Face, no TensorFlow needed, or\n"
             if weights == "tf" else "") +
            f"  - {own_model_hint}"
        ) from error


def load_gpt2(model, weights="tf", models_dir=None, own_model_hint=OWN_MODEL_HINT):
    """OpenAI's GPT-2 `model` as (GPTModel in eval mode, cfg): fetch_gpt2_params, gpt2_config and
    gpt_model_from_params, the three steps of main() below without its printouts."""
    settings, params = fetch_gpt2_params(model, weights, models_dir, own_model_hint)
    cfg = gpt2_config(model, settings)
    return gpt_model_from_params(cfg, params).eval(), cfg


def add_gpt2_args(parser, default_model="124M"):
    """The flags that pick OpenAI's GPT-2 files: size, format and folder."""
    def model_argument(text):
        try:
            return gpt2_model_name(text)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from error

    group = parser.add_argument_group("GPT-2 weights")
    group.add_argument("--model", type=model_argument, default=default_model,
                       help=f"GPT-2 size: 124M, 355M, 774M or 1558M (default {default_model})")
    group.add_argument("--weights", choices=("tf", "safetensors"), default="tf",
                       help="tf: OpenAI's TensorFlow checkpoint, as in the book (needs TensorFlow); "
                            "safetensors: Hugging Face's copy of the same weights (default tf)")
    group.add_argument("--models-dir", type=Path, metavar="DIR",
                       help=f"where the GPT-2 folders are (default {DATA_DIR / 'gpt2'})")
    return group


def quick_model(device, cfg=QUICK_CONFIG):
    """--quick: a tiny randomly initialised GPTModel instead of GPT-2, nothing downloaded."""
    print("note: --quick uses a tiny randomly initialised model instead of GPT-2 (nothing is "
          "downloaded); its outputs are meaningless")
    torch.manual_seed(123)
    return GPTModel(cfg).to(device).eval(), dict(cfg)


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_gpt2_args(parser, default_model="124M")
    add_device_arg(parser)
    parser.add_argument("--quick", action="store_true",
                        help="a tiny random model instead of GPT-2 (no download), to check that the "
                             "script runs")
    args = parser.parse_args()
    device = get_device(args.device)
    tokenizer = get_gpt2_tokenizer()

    if args.quick:
        gpt, cfg = quick_model(device)
    else:
        settings, params = fetch_gpt2_params(args.model, args.weights, args.models_dir)
        print("Settings:", settings)
        print("Parameter dictionary keys:", params.keys())
        print(params["wte"])
        print("Token embedding weight tensor dimensions:", params["wte"].shape)

        cfg = gpt2_config(args.model, settings)
        gpt = gpt_model_from_params(cfg, params)  # GPTModel(cfg) + load_weights_into_gpt(gpt, params)
        gpt.to(device)
        gpt.eval()

    torch.manual_seed(123)
    token_ids = generate(
        model=gpt,
        idx=text_to_token_ids(START_CONTEXT, tokenizer).to(device),
        max_new_tokens=25,
        context_size=cfg["context_length"],
        top_k=50,
        temperature=1.5,
    )
    print("Output text:\n", token_ids_to_text(token_ids, tokenizer))
    if cfg == {**BASE_CONFIG, **model_configs["gpt2-small (124M)"]}:
        print("The book prints, with the 124M weights:\n", BOOK_OUTPUT_124M)


if __name__ == "__main__":
    run_main(main)
