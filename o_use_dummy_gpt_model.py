"""Run the DummyGPTModel skeleton on two tokenized sentences: one vector of 50,257 logits per token.

Each position's logits score every vocabulary entry as the token that comes next; the last
position's scores are the ones text generation will use. The weights are random, so the scores
mean nothing yet: training (chapter 5) gives them meaning.

Book section 4.1. Run: python o_use_dummy_gpt_model.py
"""

import torch

from d_tokenizer import get_gpt2_tokenizer
from n_dummy_gpt_model import GPT_CONFIG_124M, DummyGPTModel
from plumbing import run_main

TEXTS = ["Every effort moves you", "Every day holds a"]


def tokenize_batch(tokenizer, texts=TEXTS):
    """Encode equally long texts and stack them into one (batch, tokens) tensor of token IDs."""
    batch = [torch.tensor(tokenizer.encode(txt)) for txt in texts]
    if len({len(ids) for ids in batch}) > 1:
        raise ValueError("the texts must encode to the same number of tokens to stack without padding")
    return torch.stack(batch, dim=0)


def main():
    tokenizer = get_gpt2_tokenizer()
    batch = tokenize_batch(tokenizer)  # both texts are 4 tokens long
    print("Input batch:\n", batch)

    torch.manual_seed(123)
    model = DummyGPTModel(GPT_CONFIG_124M)
    logits = model(batch)
    print("\nOutput shape:", logits.shape)  # (batch, tokens, vocab_size)
    print(logits)


if __name__ == "__main__":
    run_main(main)
