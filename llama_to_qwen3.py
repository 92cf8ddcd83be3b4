"""Beyond the book: from Llama 3 (gpt_to_llama.py) to Qwen3, and a KV cache for generation.

Qwen3's dense models are Llama 3 with two changes: an RMSNorm on each head's queries and keys
(qk_norm), and a head_dim that need not be emb_dim / n_heads (Qwen3-0.6B: 16 heads of 128 in a
1024-wide model). Each change is made to a small Llama3Model and prints the parameter count and the
logits of a seeded input; the result loads into Qwen3Model(cfg) and gives the same logits. Then
generation with and without the KV cache, whose RoPE positions continue after the cached tokens.

Run: python llama_to_qwen3.py
"""

import torch

from d_tokenizer import get_gpt2_tokenizer
from gpt_to_llama import (
    REQUIRED_KEYS,
    WALK_CONFIG,
    GroupedQueryAttention,
    Llama3Model,
    RoPE,
    check_config,
    count,
    generate_tokens,
)
from plumbing import run_main
from t_pretraining_basics import START_CONTEXT, text_to_token_ids, token_ids_to_text

QWEN3_CONFIG_06B = {
    "vocab_size": 151_936,
    "context_length": 40_960,
    "emb_dim": 1024,
    "n_heads": 16,
    "n_layers": 28,
    "hidden_dim": 3072,
    "head_dim": 128,           # 16 heads of 128 = 2048 wide queries in a 1024-wide model
    "qk_norm": True,           # RMSNorm on every head's queries and keys
    "n_kv_groups": 8,
    "rope_base": 1_000_000.0,
    "dtype": torch.bfloat16,
    "rms_norm_eps": 1e-6,
    "tie_embeddings": True,
}

QWEN3_REQUIRED_KEYS = REQUIRED_KEYS + ("head_dim", "qk_norm")


class Qwen3Model(Llama3Model):
    """Qwen3 (dense) from a config dict with QWEN3_CONFIG_06B's keys: Llama3Model's layers with
    qk_norm and head_dim, RMSNorm eps 1e-6 unless the config says otherwise."""

    def __init__(self, cfg):
        check_config(cfg, QWEN3_REQUIRED_KEYS, kind="Qwen3")
        super().__init__({"rms_norm_eps": 1e-6, **cfg})


def swap_attention(model, cfg):
    """New attention layers for `cfg` (qk_norm, head_dim), keeping every weight whose shape stays."""
    rope = RoPE(cfg["head_dim"], cfg["context_length"], cfg["rope_base"])
    model.rope = rope
    for block in model.trf_blocks:
        old = block.att
        block.att = GroupedQueryAttention(cfg["emb_dim"], cfg["n_heads"], cfg["n_kv_groups"], rope,
                                          head_dim=cfg["head_dim"], qk_norm=cfg["qk_norm"],
                                          norm_eps=cfg["rms_norm_eps"])
        kept = {name: value for name, value in old.state_dict().items()
                if block.att.state_dict()[name].shape == value.shape}
        block.att.load_state_dict(kept, strict=False)


# The small Llama of gpt_to_llama.py's walk-through with plain RoPE (Qwen3 does not scale its
# frequencies as Llama 3 does), then with Qwen3's two changes.
LLAMA_START_CONFIG = {**WALK_CONFIG, "rope_freq": None}
QK_NORM_CONFIG = {**LLAMA_START_CONFIG, "head_dim": WALK_CONFIG["emb_dim"] // WALK_CONFIG["n_heads"],
                  "qk_norm": True, "rms_norm_eps": 1e-5}
QWEN3_WALK_CONFIG = {**QK_NORM_CONFIG, "head_dim": 32}  # 4 heads of 32 in a 48-wide model


def main():
    tokenizer = get_gpt2_tokenizer()
    idx = text_to_token_ids(START_CONTEXT, tokenizer)
    torch.manual_seed(123)
    model = Llama3Model(LLAMA_START_CONFIG).eval()

    def report(title):
        with torch.no_grad():
            logits = model(idx)[0, -1, :4]
        print(f"{title:52s} {count(model):10,}   {logits.numpy().round(4)}")

    print(f"{'step':52s} {'parameters':>10s}   last position's first logits")
    report("Llama3Model (gpt_to_llama.py's, plain RoPE)")
    swap_attention(model, QK_NORM_CONFIG)
    report("6a. RMSNorm on queries and keys (qk_norm)")
    torch.manual_seed(123)
    swap_attention(model, QWEN3_WALK_CONFIG)
    report(f"6b. head_dim {QWEN3_WALK_CONFIG['head_dim']} (emb_dim / n_heads = "
           f"{WALK_CONFIG['emb_dim'] // WALK_CONFIG['n_heads']})")

    qwen = Qwen3Model(QWEN3_WALK_CONFIG).eval()
    qwen.load_state_dict(model.state_dict())
    with torch.no_grad():
        same = torch.equal(qwen(idx), model(idx))
    print("\nQwen3Model(cfg) with these weights gives the same logits:", same)

    with torch.device("meta"):
        qwen_06b = Qwen3Model(QWEN3_CONFIG_06B)
    non_embedding = count(qwen_06b) - qwen_06b.tok_emb.weight.numel()
    print(f"Qwen3-0.6B (QWEN3_CONFIG_06B): {count(qwen_06b):,} parameters with tied embeddings, "
          f"{non_embedding:,} without the embedding, {count(qwen_06b) * 2 / 1e9:.2f} GB in bfloat16")

    # The KV cache: each step runs only the new token, at the position after the cached ones. (An
    # untrained model with tied embeddings mostly repeats its input token, so this one is untied.)
    torch.manual_seed(123)
    untied = Qwen3Model({**QWEN3_WALK_CONFIG, "tie_embeddings": False}).eval()
    print("\nGreedy generation, 20 tokens, an untrained untied Qwen3Model:")
    for use_cache in (False, True):
        new_ids = torch.cat(list(generate_tokens(untied, idx, 20, use_cache=use_cache)), dim=1)
        print(f"  use_cache={use_cache!s:5s}: {new_ids[0].tolist()}")
    print("  text:", repr(token_ids_to_text(torch.cat([idx, new_ids], dim=1), tokenizer)))


if __name__ == "__main__":
    run_main(main)
