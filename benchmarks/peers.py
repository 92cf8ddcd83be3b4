"""The peers the benchmarks measure the fast path against, built with the same GPT config: Hugging
Face transformers' GPT2LMHeadModel (SDPA attention) and nanoGPT's model.py, read from a path the
reader gives (it is not part of this repository). Each builder returns (model, None), or
(None, a message saying why the peer is skipped)."""

import contextlib
import importlib.util
import io
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F


def hf_gpt2(cfg, drop_rate=None):
    """GPT2LMHeadModel with cfg's sizes and dropout, SDPA attention and, like GPTModel, an output
    head of its own (not tied to the token embedding), so both train the same 163M weights at 124M."""
    try:
        import transformers
    except ImportError:
        return None, "transformers is not installed (pip install -r requirements-test.txt)"
    drop = cfg["drop_rate"] if drop_rate is None else drop_rate
    config = transformers.GPT2Config(
        vocab_size=cfg["vocab_size"], n_positions=cfg["context_length"], n_embd=cfg["emb_dim"],
        n_layer=cfg["n_layers"], n_head=cfg["n_heads"], resid_pdrop=drop, embd_pdrop=drop, attn_pdrop=drop,
        activation_function="gelu_new", layer_norm_epsilon=1e-5, tie_word_embeddings=False,
        bos_token_id=None, eos_token_id=None, attn_implementation="sdpa")
    return transformers.GPT2LMHeadModel(config), None


def hf_gpt2_with_weights(book_state, cfg):
    """hf_gpt2(cfg) without dropout, holding the weights of a book GPTModel's state dict (the book's
    names: W_query/W_key/W_value). transformers' Conv1D layers store weights transposed."""
    model, message = hf_gpt2(cfg, drop_rate=0.0)
    if model is None:
        return None, message
    state = {"transformer.wte.weight": book_state["tok_emb.weight"],
             "transformer.wpe.weight": book_state["pos_emb.weight"],
             "transformer.ln_f.weight": book_state["final_norm.scale"],
             "transformer.ln_f.bias": book_state["final_norm.shift"],
             "lm_head.weight": book_state["out_head.weight"]}
    for i in range(cfg["n_layers"]):
        book, hf = f"trf_blocks.{i}.", f"transformer.h.{i}."
        qkv = [book_state[f"{book}att.W_{part}.weight"] for part in ("query", "key", "value")]
        qkv_bias = [book_state.get(f"{book}att.W_{part}.bias", torch.zeros(cfg["emb_dim"]))
                    for part in ("query", "key", "value")]
        state |= {hf + "attn.c_attn.weight": torch.cat(qkv).T, hf + "attn.c_attn.bias": torch.cat(qkv_bias),
                  hf + "attn.c_proj.weight": book_state[book + "att.out_proj.weight"].T,
                  hf + "attn.c_proj.bias": book_state[book + "att.out_proj.bias"],
                  hf + "mlp.c_fc.weight": book_state[book + "ff.layers.0.weight"].T,
                  hf + "mlp.c_fc.bias": book_state[book + "ff.layers.0.bias"],
                  hf + "mlp.c_proj.weight": book_state[book + "ff.layers.2.weight"].T,
                  hf + "mlp.c_proj.bias": book_state[book + "ff.layers.2.bias"]}
        for norm, ln in (("norm1", "ln_1"), ("norm2", "ln_2")):
            state |= {hf + ln + ".weight": book_state[f"{book}{norm}.scale"],
                      hf + ln + ".bias": book_state[f"{book}{norm}.shift"]}
    missing, unexpected = model.load_state_dict({k: v.contiguous() for k, v in state.items()}, strict=False)
    if unexpected or [name for name in missing if not name.endswith(".attn.bias")]:
        raise RuntimeError(f"weights did not fit GPT2LMHeadModel: missing {missing}, unexpected {unexpected}")
    return model.eval(), None


def hf_loss(model, inputs, targets):
    logits = model(input_ids=inputs).logits
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten())  # calc_loss_batch's loss


def nanogpt(cfg, path):
    """nanoGPT's GPT with cfg's sizes and dropout and GPT-2's biases, its lm_head untied from the
    token embedding (as GPTModel's out_head), so both train the same weights."""
    if path is None:
        return None, "no --nanogpt PATH given (nanoGPT's model.py, saved outside this repository)"
    if not Path(path).is_file():
        return None, f"{path} does not exist; give --nanogpt the path of nanoGPT's model.py"
    spec = importlib.util.spec_from_file_location("nanogpt_model", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.GPTConfig(block_size=cfg["context_length"], vocab_size=cfg["vocab_size"],
                              n_layer=cfg["n_layers"], n_head=cfg["n_heads"], n_embd=cfg["emb_dim"],
                              dropout=cfg["drop_rate"], bias=True)
    with contextlib.redirect_stdout(io.StringIO()):  # it prints its parameter count
        model = module.GPT(config)
    model.lm_head.weight = nn.Parameter(model.lm_head.weight.detach().clone())
    return model, None


def nanogpt_loss(model, inputs, targets):
    return model(inputs, targets)[1]
