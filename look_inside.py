"""Beyond the book: watch a GPTModel work, one token and one attention layer at a time.

- generate_stream: chapter 5's generate, yielding each new token with the logits it was drawn
  from. Every step is a call of u_pretraining.generate itself, so temperature, top-k and
  end-of-text behave exactly as there, and fast_attention's KV cache carries over between steps.
- TokenText: the text each new token adds, in the context of the ids before it, so that the
  pieces of a stream join up to what the tokenizer decodes from all the ids.
- next_token_distributions: section 5.3's probabilities of the next token, before and after
  temperature and top-k.
- attention_weights: a layer's attention weights as MultiHeadAttention.forward computes them.

playground.py shows them on a web page. Not a chapter: no letter imports it, so it may import any.
"""

import codecs

import torch

from fast_attention import CachedNextTokenLogits
from m_efficient_multi_head_attention import MultiHeadAttention
from u_pretraining import generate, softmax_with_temperature


class _RecordingLogits:
    """Stands in for the model inside generate(): gives the next token's logits (through the KV
    cache with use_cache) and keeps the last ones, so the caller can show them."""

    def __init__(self, model, context_size, use_cache):
        self.model = model
        self.cached_logits = CachedNextTokenLogits(model, context_size) if use_cache else None
        self.last = None

    def __call__(self, idx_cond):
        # generate() passes idx cropped to context_size; the cache restarts when the window slides.
        if self.cached_logits is None:
            self.last = self.model(idx_cond)[:, -1, :]
        else:
            self.last = self.cached_logits(idx_cond)
        return self.last.unsqueeze(1)  # generate() reads logits[:, -1, :]


def generate_stream(model, idx, max_new_tokens, context_size, temperature=0.0, top_k=None, eos_id=None,
                    use_cache=True):
    """generate() for one sequence idx (1, n), a token at a time: yields (token_id, logits) for each
    new token, logits being the (vocab_size,) scores it was drawn from. With the same seed the ids
    are generate(model, idx, max_new_tokens, ...)'s. Like generate, it stops before an eos_id."""
    if idx.shape[0] != 1:
        raise ValueError(f"generate_stream follows one sequence; idx has {idx.shape[0]} rows")
    step_model = _RecordingLogits(model, context_size, use_cache)
    for _ in range(max_new_tokens):
        longer = generate(step_model, idx, 1, context_size, temperature=temperature, top_k=top_k,
                          eos_id=eos_id)
        if longer.shape[1] == idx.shape[1]:
            return  # generate() stops at eos_id without appending it
        idx = longer
        yield idx[0, -1].item(), step_model.last[0]


class TokenText:
    """The text that each new token adds to `context_ids`: the pieces join up to exactly what
    tokenizer.decode gives for all the ids, less the context's text. A token's text can depend on
    the ids just before it (the word tokenizer puts a space between words, none before punctuation),
    so each step decodes the last CONTEXT ids with and without the new one and gives the difference:
    the same for every tokenizer of the series as decoding all the ids, at a cost that does not grow
    with the stream. The bytes of a character split across tokens wait until it is complete (an
    incremental UTF-8 decoder, errors replaced as in tiktoken's decode)."""

    CONTEXT = 8  # ids before a token that its text may depend on (the word tokenizer needs one)

    def __init__(self, tokenizer, context_ids=()):
        self.tokenizer = tokenizer
        self.ids = list(context_ids)[-self.CONTEXT:]
        self.utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def add(self, token_id):
        """The text token_id adds: "" while it holds only part of a character."""
        before = len(self.tokenizer.decode_bytes(self.ids))
        self.ids.append(token_id)
        data = self.tokenizer.decode_bytes(self.ids)
        self.ids = self.ids[-self.CONTEXT:]
        return self.utf8.decode(data[before:])

    def finish(self):
        """The rest of an unfinished character (as U+FFFD) once the stream has ended."""
        return self.utf8.decode(b"", final=True)


def next_token_distributions(logits, temperature=0.0, top_k=None):
    """Section 5.3 for one step: `before` is the softmax of the model's logits (vocab_size,);
    `after` is what generate() draws the token from once top-k (ties at the k-th logit stay, as in
    generate) and temperature are applied. Temperature 0 is greedy: all of `after` on the argmax."""
    before = torch.softmax(logits, dim=-1)
    if top_k is not None:
        kth_largest = torch.topk(logits, min(top_k, logits.shape[-1])).values[-1]
        logits = logits.masked_fill(logits < kth_largest, -torch.inf)
    if temperature > 0.0:
        return before, softmax_with_temperature(logits, temperature)
    after = torch.zeros_like(before)
    after[torch.argmax(logits)] = 1.0
    return before, after


def book_attention(fast):
    """A MultiHeadAttention holding FastMultiHeadAttention `fast`'s weights (its fused W_qkv split
    back into W_query, W_key and W_value): the book's module, to read weights that
    scaled_dot_product_attention never forms."""
    d_out, d_in = fast.out_proj.weight.shape[0], fast.W_qkv.in_features
    has_bias = fast.W_qkv.bias is not None
    with torch.device("meta"):  # no weights drawn: the random number stream stays untouched
        mha = MultiHeadAttention(d_in, d_out, fast.context_length, fast.dropout.p, fast.num_heads,
                                 qkv_bias=has_bias)
    weight = fast.out_proj.weight
    mha = mha.to_empty(device=weight.device).to(weight.dtype)
    size = fast.context_length
    state = {"out_proj.weight": fast.out_proj.weight, "out_proj.bias": fast.out_proj.bias,
             "mask": torch.triu(torch.ones(size, size, device=weight.device), diagonal=1)}
    for name, part in zip(("W_query", "W_key", "W_value"), fast.W_qkv.weight.chunk(3)):
        state[f"{name}.weight"] = part
    if has_bias:
        for name, part in zip(("W_query", "W_key", "W_value"), fast.W_qkv.bias.chunk(3)):
            state[f"{name}.bias"] = part
    mha.load_state_dict(state)
    return mha.train(fast.training)


def attention_weights(model, idx, layer):
    """The attention weights of transformer block `layer` (0 = first) for token ids idx (1, n), as
    (num_heads, n, n): row i says how much token i attends to each token 0..i.

    They are the weights MultiHeadAttention.forward computes (section 3.6.2), read by a forward
    hook on its dropout module, which is where they pass as a module's input (before dropout,
    which is off in eval mode anyway). A block with FastMultiHeadAttention is read through
    book_attention, the same weights in the book's module."""
    if not 0 <= layer < len(model.trf_blocks):
        raise ValueError(f"layer must be 0 to {len(model.trf_blocks) - 1}, got {layer}")
    att = model.trf_blocks[layer].att
    captured = {}
    hook = att.register_forward_pre_hook(lambda module, args: captured.update(x=args[0]))
    try:
        with torch.no_grad():
            model(idx)
    finally:
        hook.remove()
    mha = att if isinstance(att, MultiHeadAttention) else book_attention(att)
    hook = mha.dropout.register_forward_hook(lambda module, args, output: captured.update(weights=args[0]))
    try:
        with torch.no_grad():
            mha(captured["x"])
    finally:
        hook.remove()
    return captured["weights"][0]
