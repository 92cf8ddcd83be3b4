"""Beyond the book: from our GPT-2 (chapter 4's GPTModel) to Llama 3.2, one component at a time.

Each step swaps one part of a GPTModel and prints what changed: the parameter count (of a small
model that runs here, and of the GPT-2 124M-sized model on the meta device, which takes no memory)
and the logits of the last position on a seeded input. The end result loads into Llama3Model(cfg)
and gives identical logits. tests/test_llama_qwen.py compares every piece with Hugging Face's
transformers implementation of Llama.

Run: python gpt_to_llama.py
Next: llama_to_qwen3.py (Qwen3's two additions), llama_qwen_weights.py (real weights, chat).
"""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from d_tokenizer import get_gpt2_tokenizer
from fast_attention import KVCache, cached_causal_mask
from plumbing import run_main
from s_gpt_model import GPTModel
from t_pretraining_basics import GPT_CONFIG_124M, START_CONTEXT, text_to_token_ids

# Llama 3.2 1B in the config keys of the book's bonus notebooks.
LLAMA32_CONFIG_1B = {
    "vocab_size": 128_256,     # Llama 3's tiktoken-style BPE vocabulary
    "context_length": 131_072,
    "emb_dim": 2048,
    "n_heads": 32,
    "n_layers": 16,
    "hidden_dim": 8192,        # size of the SwiGLU feed forward's inner layer
    "n_kv_groups": 8,          # key/value heads, each shared by n_heads / n_kv_groups query heads
    "rope_base": 500_000.0,    # RoPE's theta
    "dtype": torch.bfloat16,   # the released weights' dtype
    "rope_freq": {             # Llama 3's scaling of the RoPE frequencies for long contexts
        "factor": 32.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_context_length": 8192,
    },
    "tie_embeddings": True,    # out_head shares tok_emb's weight (as in the released 1B and 3B)
}

REQUIRED_KEYS = ("vocab_size", "context_length", "emb_dim", "n_heads", "n_layers", "hidden_dim",
                 "n_kv_groups", "rope_base", "dtype")


class RMSNorm(nn.Module):
    """Scale each vector to unit root mean square: no mean subtracted, no shift (LayerNorm's
    bias), one weight per feature. Computed in float32 whatever the input's dtype, as Llama does."""

    def __init__(self, emb_dim, eps=1e-5, dtype=None):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(emb_dim, dtype=dtype))

    def forward(self, x):
        x_float = x.float()
        normed = x_float * torch.rsqrt(x_float.pow(2).mean(dim=-1, keepdim=True) + self.eps)
        return self.weight * normed.to(x.dtype)


class FeedForward(nn.Module):
    """SwiGLU: a SiLU-activated gate (fc1) multiplies a second projection (fc2) before fc3 projects
    back. Three bias-free layers of hidden_dim where GPT-2 has two with biases of 4 * emb_dim."""

    def __init__(self, cfg):
        super().__init__()
        emb_dim, hidden_dim, dtype = cfg["emb_dim"], cfg["hidden_dim"], cfg["dtype"]
        self.fc1 = nn.Linear(emb_dim, hidden_dim, dtype=dtype, bias=False)
        self.fc2 = nn.Linear(emb_dim, hidden_dim, dtype=dtype, bias=False)
        self.fc3 = nn.Linear(hidden_dim, emb_dim, dtype=dtype, bias=False)

    def forward(self, x):
        return self.fc3(F.silu(self.fc1(x)) * self.fc2(x))


def rope_frequencies(head_dim, theta_base=10_000, freq_config=None, device=None):
    """The angle (radians) by which each of a head's head_dim / 2 feature pairs turns per position,
    fastest first: pair i turns by theta_base ** (-2i / head_dim). freq_config (Llama 3.1 onwards)
    divides the low frequencies (wavelength over original_context_length / low_freq_factor tokens)
    by `factor`, keeps the high ones (under original_context_length / high_freq_factor), and blends
    in between, so that a model trained on original_context_length tokens works on longer inputs."""
    if head_dim % 2:
        raise ValueError(f"RoPE rotates pairs of features: head_dim must be even, got {head_dim}")
    inv_freq = 1.0 / (theta_base ** (torch.arange(0, head_dim, 2, device=device).float() / head_dim))
    if freq_config is not None:
        factor, low, high = (freq_config[key] for key in ("factor", "low_freq_factor", "high_freq_factor"))
        original = freq_config["original_context_length"]
        wavelen = 2 * math.pi / inv_freq
        scaled = torch.where(wavelen > original / low, inv_freq / factor, inv_freq)
        smooth = (original / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        is_medium = (wavelen <= original / low) & (wavelen >= original / high)
        inv_freq = torch.where(is_medium, smoothed, scaled)
    return inv_freq


def compute_rope_params(head_dim, theta_base=10_000, context_length=4096, freq_config=None,
                        device=None):
    """cos and sin of every position's rotation angles, each (context_length, head_dim), float32:
    position p turns pair i by p * rope_frequencies(...)[i]."""
    inv_freq = rope_frequencies(head_dim, theta_base, freq_config, device)
    positions = torch.arange(context_length, device=device).float()
    angles = positions[:, None] * inv_freq[None, :]
    angles = torch.cat([angles, angles], dim=-1)  # the two halves of a head form the pairs
    return torch.cos(angles), torch.sin(angles)


def apply_rope(x, cos, sin):
    """Rotate x (batch, heads, tokens, head_dim) by the angles in cos and sin (tokens, head_dim):
    feature j pairs with feature j + head_dim / 2."""
    x1, x2 = x.chunk(2, dim=-1)
    rotated = torch.cat([-x2, x1], dim=-1)
    return x * cos.to(x.dtype) + rotated * sin.to(x.dtype)


class RoPE(nn.Module):
    """Rotary position embedding: no weights, only each position's cos and sin, computed once and
    shared by every attention layer of a model."""

    def __init__(self, head_dim, context_length, theta_base=10_000, freq_config=None):
        super().__init__()
        # Always on the CPU, also inside `with torch.device("meta")`: a model built on the meta
        # device gets its weights from a file, but these are computed, not loaded.
        cos, sin = compute_rope_params(head_dim, theta_base, context_length, freq_config,
                                       device=torch.device("cpu"))
        self.register_buffer("cos", cos, persistent=False)  # not in state_dict: nothing to load
        self.register_buffer("sin", sin, persistent=False)

    def forward(self, x, start=0):
        """x (batch, heads, tokens, head_dim) holds positions start, start + 1, ..."""
        end = start + x.shape[-2]
        if end > self.cos.shape[0]:
            raise ValueError(f"the input reaches position {end}, but the model's context_length is "
                             f"{self.cos.shape[0]}; use a shorter input")
        return apply_rope(x, self.cos[start:end], self.sin[start:end])


class GroupedQueryAttention(nn.Module):
    """Causal attention in which groups of query heads share a key/value head (num_kv_groups of
    them; num_kv_groups == num_heads is multi-head attention). RoPE rotates queries and keys.
    qk_norm (Qwen3) RMS-normalises each head's queries and keys before the rotation; head_dim may
    differ from d_in / num_heads. A kv_cache (fast_attention.KVCache) holds rotated keys."""

    def __init__(self, d_in, num_heads, num_kv_groups, rope, head_dim=None, qk_norm=False,
                 dtype=None, norm_eps=1e-6):
        super().__init__()
        if num_heads % num_kv_groups:
            raise ValueError(f"num_heads ({num_heads}) must be divisible by num_kv_groups ({num_kv_groups})")
        if head_dim is None:
            if d_in % num_heads:
                raise ValueError(f"d_in ({d_in}) must be divisible by num_heads ({num_heads}), "
                                 "or give head_dim")
            head_dim = d_in // num_heads
        self.num_heads, self.num_kv_groups, self.head_dim = num_heads, num_kv_groups, head_dim
        self.group_size = num_heads // num_kv_groups
        self.W_query = nn.Linear(d_in, num_heads * head_dim, bias=False, dtype=dtype)
        self.W_key = nn.Linear(d_in, num_kv_groups * head_dim, bias=False, dtype=dtype)
        self.W_value = nn.Linear(d_in, num_kv_groups * head_dim, bias=False, dtype=dtype)
        self.out_proj = nn.Linear(num_heads * head_dim, d_in, bias=False, dtype=dtype)
        self.q_norm = RMSNorm(head_dim, eps=norm_eps, dtype=dtype) if qk_norm else None
        self.k_norm = RMSNorm(head_dim, eps=norm_eps, dtype=dtype) if qk_norm else None
        self.rope = rope

    def forward(self, x, kv_cache=None):
        b, num_tokens, _ = x.shape
        queries = self.W_query(x).view(b, num_tokens, self.num_heads, self.head_dim).transpose(1, 2)
        keys = self.W_key(x).view(b, num_tokens, self.num_kv_groups, self.head_dim).transpose(1, 2)
        values = self.W_value(x).view(b, num_tokens, self.num_kv_groups, self.head_dim).transpose(1, 2)
        if self.q_norm is not None:
            queries, keys = self.q_norm(queries), self.k_norm(keys)
        start = 0 if kv_cache is None else kv_cache.length  # new tokens continue after the cache
        queries, keys = self.rope(queries, start), self.rope(keys, start)
        if kv_cache is not None:
            keys, values = kv_cache.append(keys, values)  # the cache holds num_kv_groups heads only
        keys = keys.repeat_interleave(self.group_size, dim=1)  # query head h reads kv head h // group_size
        values = values.repeat_interleave(self.group_size, dim=1)
        mask = None if start == 0 else ~cached_causal_mask(start, num_tokens, x.device)
        context = F.scaled_dot_product_attention(queries, keys, values, attn_mask=mask,
                                                 is_causal=mask is None)
        return self.out_proj(context.transpose(1, 2).reshape(b, num_tokens, -1))


class LlamaTransformerBlock(nn.Module):
    """Pre-norm attention and feed forward with shortcuts, as GPT-2's block, without dropout."""

    def __init__(self, cfg, rope):
        super().__init__()
        eps = cfg.get("rms_norm_eps", 1e-5)
        self.att = GroupedQueryAttention(cfg["emb_dim"], cfg["n_heads"], cfg["n_kv_groups"], rope,
                                         head_dim=cfg.get("head_dim"), qk_norm=cfg.get("qk_norm", False),
                                         dtype=cfg["dtype"], norm_eps=eps)
        self.ff = FeedForward(cfg)
        self.norm1 = RMSNorm(cfg["emb_dim"], eps=eps, dtype=cfg["dtype"])
        self.norm2 = RMSNorm(cfg["emb_dim"], eps=eps, dtype=cfg["dtype"])

    def forward(self, x, kv_cache=None):
        x = x + self.att(self.norm1(x), kv_cache)
        return x + self.ff(self.norm2(x))


def check_config(cfg, required=REQUIRED_KEYS, kind="Llama 3"):
    missing = [key for key in required if key not in cfg]
    if missing:
        raise ValueError(f"the model config is missing the key {missing[0]!r} (a {kind} config needs "
                         f"{', '.join(required)})")


class Llama3Model(nn.Module):
    """Llama 3 from a config dict (LLAMA32_CONFIG_1B's keys). Optional keys: rope_freq (Llama 3's
    frequency scaling), head_dim and qk_norm (Qwen3), rms_norm_eps (default 1e-5) and
    tie_embeddings (out_head shares tok_emb's weight)."""

    def __init__(self, cfg):
        super().__init__()
        check_config(cfg)
        self.tok_emb = nn.Embedding(cfg["vocab_size"], cfg["emb_dim"], dtype=cfg["dtype"])
        head_dim = cfg.get("head_dim") or cfg["emb_dim"] // cfg["n_heads"]
        self.rope = RoPE(head_dim, cfg["context_length"], cfg["rope_base"], cfg.get("rope_freq"))
        self.trf_blocks = nn.ModuleList(LlamaTransformerBlock(cfg, self.rope) for _ in range(cfg["n_layers"]))
        self.final_norm = RMSNorm(cfg["emb_dim"], eps=cfg.get("rms_norm_eps", 1e-5), dtype=cfg["dtype"])
        self.out_head = nn.Linear(cfg["emb_dim"], cfg["vocab_size"], bias=False, dtype=cfg["dtype"])
        if cfg.get("tie_embeddings"):
            self.out_head.weight = self.tok_emb.weight

    def forward(self, in_idx, kv_cache=None):
        """kv_cache (from new_kv_cache): in_idx continues the tokens already in the cache."""
        x = self.tok_emb(in_idx)
        for i, block in enumerate(self.trf_blocks):
            x = block(x, None if kv_cache is None else kv_cache[i])
        return self.out_head(self.final_norm(x))


def new_kv_cache(model, batch_size, max_len=None):
    """One KVCache per block of a Llama3Model or Qwen3Model, for up to max_len positions (default:
    the context length). GQA stores num_kv_groups heads, not n_heads: the cache is that much smaller."""
    max_len = max_len or model.rope.cos.shape[0]
    weight = model.tok_emb.weight
    return [KVCache(batch_size, block.att.num_kv_groups, max_len, block.att.head_dim,
                    device=weight.device, dtype=weight.dtype) for block in model.trf_blocks]


def generate_tokens(model, idx, max_new_tokens, temperature=0.0, top_k=None, eos_id=None, use_cache=True):
    """Yield one new token id per step, (batch, 1), for up to max_new_tokens steps; stop once every
    row has produced eos_id (one id or several, e.g. Llama 3's end of text and end of turn).
    Greedy at temperature 0.0, else top-k/temperature sampling as in chapter 5's generate. With
    use_cache each step runs only the new token; without it, the whole sequence again (the same
    ids, as tests/test_llama_qwen.py checks)."""
    if temperature < 0.0:
        raise ValueError(f"temperature must be 0.0 (greedy) or positive, got {temperature}")
    kv_cache = new_kv_cache(model, idx.shape[0], idx.shape[1] + max_new_tokens) if use_cache else None
    new_tokens = idx
    finished = torch.zeros(idx.shape[0], dtype=torch.bool, device=idx.device)
    eos_ids = None if eos_id is None else torch.tensor(
        [eos_id] if isinstance(eos_id, int) else list(eos_id), device=idx.device)
    for _ in range(max_new_tokens):
        with torch.no_grad():
            logits = model(new_tokens if use_cache else idx, kv_cache)[:, -1, :].float()
        if top_k is not None:
            kth_largest = torch.topk(logits, min(top_k, logits.shape[-1])).values[:, -1:]
            logits = logits.masked_fill(logits < kth_largest, float("-inf"))
        if temperature > 0.0:
            next_id = torch.multinomial(torch.softmax(logits / temperature, dim=-1), num_samples=1)
        else:
            next_id = logits.argmax(dim=-1, keepdim=True)
        yield next_id
        new_tokens, idx = next_id, torch.cat([idx, next_id], dim=1)
        if eos_ids is not None:
            finished |= torch.isin(next_id.squeeze(1), eos_ids)
            if finished.all():
                return


# ---- the walk-through: swap GPTModel's parts one at a time ----

class NoPositionEmbedding(nn.Module):
    """Takes the place of GPTModel's pos_emb once RoPE carries the positions: it adds nothing."""

    def __init__(self, context_length):
        super().__init__()
        self.num_embeddings = context_length  # GPTModel reads it to check the input's length

    def forward(self, positions):
        return torch.zeros((), device=positions.device)


def model_device(model):
    return next(model.parameters()).device


def swap_norms(model, cfg):
    """Step 1: every LayerNorm becomes an RMSNorm."""
    with torch.device(model_device(model)):
        for block in model.trf_blocks:
            block.norm1, block.norm2 = RMSNorm(cfg["emb_dim"]), RMSNorm(cfg["emb_dim"])
        model.final_norm = RMSNorm(cfg["emb_dim"])


def swap_feed_forward(model, cfg):
    """Step 2: GELU feed forward -> SwiGLU."""
    with torch.device(model_device(model)):
        for block in model.trf_blocks:
            block.ff = FeedForward(cfg)


def swap_to_rope(model, cfg):
    """Step 3a: no position embedding; attention rotates queries and keys instead, with plain RoPE
    of base rope_base (step 3b adds Llama 3's scaling). One key/value head per query head
    (num_kv_groups = n_heads) is still multi-head attention."""
    model.pos_emb = NoPositionEmbedding(cfg["context_length"])
    with torch.device(model_device(model)):
        rope = RoPE(cfg["emb_dim"] // cfg["n_heads"], cfg["context_length"], cfg["rope_base"])
        for block in model.trf_blocks:
            block.att = GroupedQueryAttention(cfg["emb_dim"], cfg["n_heads"], cfg["n_heads"], rope)


def scale_rope_frequencies(model, cfg):
    """Step 3b: Llama 3's rope_freq slows RoPE's low frequencies; no weights change. One RoPE,
    shared by every layer, as in Llama3Model."""
    rope = RoPE(cfg["emb_dim"] // cfg["n_heads"], cfg["context_length"], cfg["rope_base"],
                cfg.get("rope_freq"))
    for block in model.trf_blocks:
        block.att.rope = rope


def swap_to_gqa(model, cfg):
    """Step 4: n_kv_groups key/value heads, each shared by n_heads / n_kv_groups query heads."""
    with torch.device(model_device(model)):
        for block in model.trf_blocks:
            block.att = GroupedQueryAttention(cfg["emb_dim"], cfg["n_heads"], cfg["n_kv_groups"],
                                              block.att.rope)


def remove_biases_dropout_tie(model, cfg):
    """Step 5: no biases left anywhere, no dropout, and out_head shares tok_emb's weight."""
    for module in model.modules():
        if isinstance(module, nn.Linear):
            module.bias = None
    model.drop_emb = nn.Identity()
    for block in model.trf_blocks:
        block.drop_shortcut = nn.Identity()
    if cfg.get("tie_embeddings"):
        model.out_head.weight = model.tok_emb.weight


STEPS = [
    ("1. LayerNorm -> RMSNorm", swap_norms),
    ("2. GELU feed forward -> SwiGLU", swap_feed_forward),
    ("3a. absolute position embeddings -> RoPE", swap_to_rope),
    ("3b. Llama 3's RoPE frequency scaling", scale_rope_frequencies),
    ("4. multi-head -> grouped-query attention", swap_to_gqa),
    ("5. no biases, no dropout, tied embeddings", remove_biases_dropout_tie),
]

# The small model each step runs: GPT-2's tokenizer and chapter 5's context, a few narrow layers,
# plus the keys Llama adds. hidden_dim 128 = 8/3 * 48 gives SwiGLU GPT-2's feed forward size.
# RoPE as in Llama 3.2: theta 500,000 and its rope_freq.
WALK_CONFIG = {**GPT_CONFIG_124M, "emb_dim": 48, "n_heads": 4, "n_layers": 2, "hidden_dim": 128,
               "n_kv_groups": 2, "rope_base": 500_000.0, "rope_freq": LLAMA32_CONFIG_1B["rope_freq"],
               "dtype": torch.float32, "tie_embeddings": True}
# The same swaps at GPT-2 124M's size (2048 = 8/3 * 768), counted on the meta device.
WALK_CONFIG_124M = {**WALK_CONFIG, "emb_dim": 768, "n_heads": 12, "n_layers": 12, "hidden_dim": 2048,
                    "n_kv_groups": 4}


def count(model):
    """Parameters, counting a tied weight once (model.parameters() yields each tensor once)."""
    return sum(p.numel() for p in model.parameters())


def print_rope_scaling(model, cfg, idx):
    """What step 3b changes: which frequencies rope_freq divides, by how much, and how much the
    logits of `model` (a swapped GPTModel) move with and without it, on idx and on a long input."""
    head_dim, freq = cfg["emb_dim"] // cfg["n_heads"], cfg["rope_freq"]
    plain = rope_frequencies(head_dim, cfg["rope_base"])
    slower = plain / rope_frequencies(head_dim, cfg["rope_base"], freq)
    wavelengths = (2 * math.pi / plain).round().int().tolist()
    kept_below = freq["original_context_length"] / freq["high_freq_factor"]
    print(f"\nStep 3b: rope_freq (Llama 3.2's: trained on {freq['original_context_length']:,} tokens, "
          f"low frequencies {freq['factor']:g}x slower) divides the {head_dim // 2} frequencies of a "
          f"{head_dim}-wide head by {[round(value, 3) for value in slower.tolist()]}; their wavelengths "
          f"are {wavelengths} tokens, and those under {kept_below:,.0f} stay.")
    changes = []
    for tokens in (idx, idx.repeat(1, cfg["context_length"] // idx.shape[1])):
        with torch.no_grad():
            scale_rope_frequencies(model, {**cfg, "rope_freq": None})
            without = model(tokens)
            scale_rope_frequencies(model, cfg)
            changes.append((model(tokens) - without).abs().max().item())
    print(f"With and without it, the final model's logits differ by at most {changes[0]:.1e} on the "
          f"{idx.shape[1]} input tokens and {changes[1]:.3f} on {cfg['context_length']} (the input "
          "repeated): within a few tokens the slowed pairs have hardly turned.")


def main():
    tokenizer = get_gpt2_tokenizer()
    idx = text_to_token_ids(START_CONTEXT, tokenizer)
    torch.manual_seed(123)
    model = GPTModel(WALK_CONFIG).eval()
    with torch.device("meta"):
        model_124m = GPTModel(WALK_CONFIG_124M)
    print(f"Input {START_CONTEXT!r}: ids {idx.tolist()}")
    print(f"{'step':45s} {'small model':>12s} {'124M-sized':>13s}   last position's first logits")

    def report(title):
        with torch.no_grad():
            logits = model(idx)[0, -1, :4]
        print(f"{title:45s} {count(model):12,} {count(model_124m):13,}   {logits.numpy().round(4)}")

    report("0. the book's GPTModel")
    for title, swap in STEPS:
        torch.manual_seed(123)  # each step's new weights are drawn from the same seed
        swap(model, WALK_CONFIG)
        swap(model_124m, WALK_CONFIG_124M)
        report(title)

    # The swapped GPTModel and Llama3Model are the same network: same weights, same logits.
    llama = Llama3Model(WALK_CONFIG).eval()
    llama.load_state_dict(model.state_dict())
    with torch.no_grad():
        same = torch.equal(llama(idx), model(idx))
    print("\nLlama3Model(cfg) with the swapped model's weights gives the same logits:", same)

    print_rope_scaling(model, WALK_CONFIG, idx)
    block = model.trf_blocks[0]
    print(f"Per layer and token, the KV cache holds {2 * block.att.num_kv_groups * block.att.head_dim} "
          f"numbers with {block.att.num_kv_groups} key/value heads instead of "
          f"{2 * block.att.num_heads * block.att.head_dim} with {block.att.num_heads}.")

    # RoPE makes the score of a query and a key depend on their distance only, not on where they are.
    torch.manual_seed(123)
    q, k = torch.randn(1, 1, 1, 64), torch.randn(1, 1, 1, 64)
    rope = RoPE(64, 4096, theta_base=500_000.0)
    scores = [(rope(q, start + 3) * rope(k, start)).sum().item() for start in (0, 100, 1000)]
    print("RoPE: score of a query 3 tokens after its key, at positions 0, 100, 1000:",
          [round(s, 4) for s in scores])

    with torch.device("meta"):
        llama_1b = Llama3Model(LLAMA32_CONFIG_1B)
    print(f"\nLlama 3.2 1B (LLAMA32_CONFIG_1B): {count(llama_1b):,} parameters with tied embeddings, "
          f"{count(llama_1b) * 2 / 1e9:.2f} GB in bfloat16")


if __name__ == "__main__":
    run_main(main)
