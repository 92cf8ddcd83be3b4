"""Token embeddings plus absolute position embeddings: the input embeddings an LLM consumes.
Book section 2.8. Run: python g_embeddings.py"""

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


if __name__ == "__main__":
    run_main(main)
