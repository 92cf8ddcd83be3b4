"""Token embeddings plus absolute position embeddings: the input embeddings an LLM consumes.

Self-attention by itself sees its inputs as a set: shuffle the tokens and it returns the same
outputs, shuffled. GPT therefore adds a learned vector for each position to every token's vector,
so one word at two places enters the model as two different vectors; the last lines show it.
Not here: the original transformer's fixed sine-wave positions, or relative positions.

Book section 2.8. Run: python g_embeddings.py
"""

import torch

from a_tokenizer import load_verdict
from e_data_preparation import create_dataloader_v1
from plumbing import run_main

VOCAB_SIZE = 50257  # the GPT-2 tokenizer's vocabulary
OUTPUT_DIM = 256    # GPT-2 small uses 768; 256 keeps the demo light
BATCH_SIZE = 8
MAX_LENGTH = 4      # the book's small context for display; real LLMs use 256 or more
SEED = 123


def main():
    raw_text = load_verdict()

    torch.manual_seed(SEED)
    token_embedding_layer = torch.nn.Embedding(VOCAB_SIZE, OUTPUT_DIM)

    dataloader = create_dataloader_v1(raw_text, batch_size=BATCH_SIZE, max_length=MAX_LENGTH,
                                      stride=MAX_LENGTH, shuffle=False)
    inputs, targets = next(iter(dataloader))
    print("Token IDs:\n", inputs)
    print("\nInputs shape:", inputs.shape)

    token_embeddings = token_embedding_layer(inputs)
    print("Token embeddings shape:", token_embeddings.shape)

    # The same embedding is added to every token at a given position, whatever the token is.
    context_length = MAX_LENGTH
    pos_embedding_layer = torch.nn.Embedding(context_length, OUTPUT_DIM)
    pos_embeddings = pos_embedding_layer(torch.arange(MAX_LENGTH))
    print("Position embeddings shape:", pos_embeddings.shape)

    input_embeddings = token_embeddings + pos_embeddings  # broadcast over the batch
    print("Input embeddings shape:", input_embeddings.shape)

    print("\nFirst 3 values for the first token of the first row:")
    print("  token embedding:   ", token_embeddings[0, 0, :3].detach())
    print("  position embedding:", pos_embeddings[0, :3].detach())
    print("  input embedding:   ", input_embeddings[0, 0, :3].detach())

    show_word_order(token_embeddings.detach(), pos_embeddings.detach())


def attention_order_gap(attention, embeddings, order, pos_embeddings=None):
    """Run self-attention on the tokens as they are and in another `order` (a permutation of the
    positions); return the largest gap between the outputs for the reordered tokens and the
    original outputs put in that order. Zero means attention saw a set of tokens, not a sequence."""
    reordered = embeddings[:, order]
    if pos_embeddings is not None:  # each position keeps its own embedding, whatever token sits there
        embeddings, reordered = embeddings + pos_embeddings, reordered + pos_embeddings
    with torch.no_grad():
        outputs, _ = attention(embeddings, embeddings, embeddings)
        outputs_reordered, _ = attention(reordered, reordered, reordered)
    return (outputs_reordered - outputs[:, order]).abs().max().item()


def show_word_order(token_embeddings, pos_embeddings):
    """Why position embeddings: attention without them cannot tell the order of the tokens."""
    # PyTorch's own attention layer, one head and no mask, stands in for the one chapter 3 builds.
    # (Chapter 3's causal mask does reveal some order; the point here is attention itself.)
    torch.manual_seed(SEED)
    attention = torch.nn.MultiheadAttention(OUTPUT_DIM, num_heads=1, batch_first=True).eval()
    reverse = torch.arange(MAX_LENGTH - 1, -1, -1)
    print("\nWord order: self-attention on the batch, then on each row's tokens reversed.")
    print("Are the outputs for the reversed tokens just the first outputs, reversed?")
    for label, pos in (("token embeddings only:   ", None), ("plus position embeddings:", pos_embeddings)):
        gap = attention_order_gap(attention, token_embeddings, reverse, pos)
        print(f"  {label} {gap < 1e-5} (largest difference {gap:.2g})")


if __name__ == "__main__":
    run_main(main)
