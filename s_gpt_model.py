"""GPTModel: the whole GPT-2 architecture, its size, and greedy text generation (4.6-4.7).

Chapter 4's parts put together: with GPT_CONFIG_124M, 163 million parameters, or 124 million when
the output head reuses the token embedding matrix, as OpenAI's GPT-2 does. A GPT writes one token
at a time, feeding each new token back in (autoregressive); generate_text_simple takes the most
likely token each step. Not here: sampling with temperature and top-k (u_pretraining.py).

Run: python s_gpt_model.py
"""

import torch
import torch.nn as nn

from d_tokenizer import get_gpt2_tokenizer
from fast_attention import layer_classes
from n_dummy_gpt_model import GPT_CONFIG_124M
from o_use_dummy_gpt_model import tokenize_batch
from plumbing import run_main
from r_transformer_block import TransformerBlock

REQUIRED_CONFIG_KEYS = tuple(GPT_CONFIG_124M)

# Exercise 4.2: the larger GPT-2 models differ from the 124M one only in these three settings.
model_configs = {
    "gpt2-small (124M)": {"emb_dim": 768, "n_layers": 12, "n_heads": 12},
    "gpt2-medium (355M)": {"emb_dim": 1024, "n_layers": 24, "n_heads": 16},
    "gpt2-large (774M)": {"emb_dim": 1280, "n_layers": 36, "n_heads": 20},
    "gpt2-xl (1558M)": {"emb_dim": 1600, "n_layers": 48, "n_heads": 25},
}


def check_config(cfg):
    """Name the first missing key instead of failing with a bare KeyError deep inside a layer."""
    missing = [key for key in REQUIRED_CONFIG_KEYS if key not in cfg]
    if missing:
        raise ValueError(f"the model config is missing the key {missing[0]!r} "
                         f"(a GPT config needs {', '.join(REQUIRED_CONFIG_KEYS)})")


class GPTModel(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        check_config(cfg)
        self.tok_emb = nn.Embedding(cfg["vocab_size"], cfg["emb_dim"])
        self.pos_emb = nn.Embedding(cfg["context_length"], cfg["emb_dim"])
        self.drop_emb = nn.Dropout(cfg["drop_rate"])
        self.trf_blocks = nn.Sequential(*[TransformerBlock(cfg) for _ in range(cfg["n_layers"])])
        self.final_norm = layer_classes(cfg)[0](cfg["emb_dim"])  # LayerNorm, as in every block
        self.out_head = nn.Linear(cfg["emb_dim"], cfg["vocab_size"], bias=False)

    def forward(self, in_idx):
        batch_size, seq_len = in_idx.shape
        context_length = self.pos_emb.num_embeddings
        if seq_len > context_length:  # else an IndexError deep inside the position embedding
            raise ValueError(f"the input has {seq_len} tokens but the model's context_length is "
                             f"{context_length}; crop it, e.g. idx[:, -{context_length}:]")
        tok_embeds = self.tok_emb(in_idx)
        pos_embeds = self.pos_emb(torch.arange(seq_len, device=in_idx.device))
        x = tok_embeds + pos_embeds  # (batch_size, seq_len, emb_dim)
        x = self.drop_emb(x)
        x = self.trf_blocks(x)
        x = self.final_norm(x)
        return self.out_head(x)  # logits: (batch_size, seq_len, vocab_size)


def generate_text_simple(model, idx, max_new_tokens, context_size):
    """Greedy decoding: append the most likely next token, max_new_tokens times."""
    for _ in range(max_new_tokens):
        idx_cond = idx[:, -context_size:]  # crop to the context the model supports
        with torch.no_grad():
            logits = model(idx_cond)
        logits = logits[:, -1, :]  # only the last position predicts the next token
        probas = torch.softmax(logits, dim=-1)
        idx_next = torch.argmax(probas, dim=-1, keepdim=True)
        idx = torch.cat((idx, idx_next), dim=1)
    return idx


def count_parameters(model):
    """Return (total parameters, parameters when out_head shares tok_emb's weights, float32 size in MB)."""
    total_params = sum(p.numel() for p in model.parameters())
    total_params_tied = total_params - sum(p.numel() for p in model.out_head.parameters())
    total_size_mb = total_params * 4 / (1024 * 1024)  # 4 bytes per float32 parameter
    return total_params, total_params_tied, total_size_mb


def main():
    tokenizer = get_gpt2_tokenizer()
    batch = tokenize_batch(tokenizer)

    # 4.6: the full model on the same batch as the dummy one.
    torch.manual_seed(123)
    model = GPTModel(GPT_CONFIG_124M)
    out = model(batch)
    print("Input batch:\n", batch)
    print("\nOutput shape:", out.shape)
    print(out)

    total_params, total_params_gpt2, total_size_mb = count_parameters(model)
    print(f"\nTotal number of parameters: {total_params:,}")
    print("Token embedding layer shape:", model.tok_emb.weight.shape)
    print("Output layer shape:", model.out_head.weight.shape)
    # GPT-2 reuses the token embedding matrix as the output layer ("weight tying").
    print(f"Number of trainable parameters considering weight tying: {total_params_gpt2:,}")
    print(f"Total size of the model: {total_size_mb:.2f} MB")

    # 4.7: greedy generation with the untrained model, so the continuation is gibberish.
    start_context = "Hello, I am"
    encoded = tokenizer.encode(start_context)
    print("\nencoded:", encoded)
    encoded_tensor = torch.tensor(encoded).unsqueeze(0)  # add the batch dimension
    print("encoded_tensor.shape:", encoded_tensor.shape)

    model.eval()  # turn off dropout
    out = generate_text_simple(model=model, idx=encoded_tensor, max_new_tokens=6,
                               context_size=GPT_CONFIG_124M["context_length"])
    print("Output:", out)
    print("Output length:", len(out[0]))
    decoded_text = tokenizer.decode(out.squeeze(0).tolist())
    print(decoded_text)

    # Exercise 4.2: parameter counts of the larger GPT-2 models. The meta device records shapes
    # without allocating or initialising any weights, so this takes no memory and no time.
    print("\nExercise 4.2:")
    for name, sizes in model_configs.items():
        with torch.device("meta"):
            sized_model = GPTModel({**GPT_CONFIG_124M, **sizes})
        total, tied, size_mb = count_parameters(sized_model)
        print(f"{name}: {total:,} parameters, {tied:,} with weight tying, {size_mb:.2f} MB")


if __name__ == "__main__":
    run_main(main)
