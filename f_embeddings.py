"""An embedding layer is a lookup table: token ID i selects row i of its weight matrix.

Networks work on vectors, so every token ID gets one: row i of a trainable matrix with one row per
vocabulary entry. The lookup gives the same result as multiplying a one-hot vector by that matrix,
without the multiplications; the rows start random and training moves them.

Book section 2.7. Run: python f_embeddings.py
"""

import torch

from plumbing import run_main

VOCAB_SIZE = 6  # a tiny vocabulary and embedding size, so the whole weight matrix fits on screen
OUTPUT_DIM = 3
SEED = 123


def main():
    input_ids = torch.tensor([2, 3, 5, 1])

    torch.manual_seed(SEED)
    embedding_layer = torch.nn.Embedding(VOCAB_SIZE, OUTPUT_DIM)
    print("Embedding weight matrix (vocab 6 x dim 3, seed 123):")
    print(embedding_layer.weight)

    print("\nEmbedding of token ID 3 (row 3 of the matrix):")
    print(embedding_layer(torch.tensor([3])))

    print("\nEmbeddings of token IDs", input_ids.tolist(), "(rows 2, 3, 5, 1):")
    print(embedding_layer(input_ids))


if __name__ == "__main__":
    run_main(main)
