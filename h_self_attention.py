"""Self-attention by hand: attention scores, weights and context vectors, with loops and matrices.

Self-attention rebuilds each token's vector as a weighted mix of all the tokens' vectors, the
weights saying how much each token matters to it. Here the weights are dot products of the
embeddings (their similarity) put through softmax, so each row sums to 1; the end says why.
Not here: trainable weights (i_compact_self_attention.py) or hiding later tokens (j).

Book section 3.3. Run: python h_self_attention.py
"""

import torch

from plumbing import run_main

# "Your journey starts with one step" as six 3-dimensional embeddings (made up, as in the book).
inputs = torch.tensor(
    [[0.43, 0.15, 0.89],  # Your     (x^1)
     [0.55, 0.87, 0.66],  # journey  (x^2)
     [0.57, 0.85, 0.64],  # starts   (x^3)
     [0.22, 0.58, 0.33],  # with     (x^4)
     [0.77, 0.25, 0.10],  # one      (x^5)
     [0.05, 0.80, 0.55]]  # step     (x^6)
)


def softmax_naive(x):
    """Softmax as written on paper; exp() overflows for large inputs, which torch.softmax avoids."""
    return torch.exp(x) / torch.exp(x).sum(dim=0)


def main():
    # 3.3.1: one query, x^2 ("journey"), against every input.
    query = inputs[1]
    attn_scores_2 = torch.empty(inputs.shape[0])
    for i, x_i in enumerate(inputs):
        attn_scores_2[i] = torch.dot(x_i, query)
    print("Attention scores for x^2:", attn_scores_2)

    # A dot product is just the sum of the element-wise products.
    res = 0.0
    for idx, element in enumerate(inputs[0]):  # noqa: B007  (the book's loop)
        res += inputs[0][idx] * query[idx]
    print("\nx^1 . x^2 with a loop:", res)
    print("x^1 . x^2 with torch.dot:", torch.dot(inputs[0], query))

    # Normalise the scores so the weights sum to 1: three ways.
    attn_weights_2_tmp = attn_scores_2 / attn_scores_2.sum()
    print("\nAttention weights (divide by the sum):", attn_weights_2_tmp)
    print("Sum:", attn_weights_2_tmp.sum())

    attn_weights_2_naive = softmax_naive(attn_scores_2)
    print("\nAttention weights (naive softmax):", attn_weights_2_naive)
    print("Sum:", attn_weights_2_naive.sum())

    attn_weights_2 = torch.softmax(attn_scores_2, dim=0)
    print("\nAttention weights (torch.softmax):", attn_weights_2)
    print("Sum:", attn_weights_2.sum())

    # The context vector z^2 is the attention-weighted sum of all inputs.
    context_vec_2 = torch.zeros(query.shape)
    for i, x_i in enumerate(inputs):
        context_vec_2 += attn_weights_2[i] * x_i
    print("\nContext vector z^2:", context_vec_2)

    # 3.3.2: every query at once, first with two loops ...
    attn_scores = torch.empty(6, 6)
    for i, x_i in enumerate(inputs):
        for j, x_j in enumerate(inputs):
            attn_scores[i, j] = torch.dot(x_i, x_j)
    print("\nAll attention scores (loops):\n", attn_scores)

    # ... then as one matrix product, which gives the same numbers.
    attn_scores = inputs @ inputs.T
    print("\nAll attention scores (inputs @ inputs.T):\n", attn_scores)

    attn_weights = torch.softmax(attn_scores, dim=-1)  # normalise each row (each query)
    print("\nAll attention weights:\n", attn_weights)

    row_2_sum = sum([0.1385, 0.2379, 0.2333, 0.1240, 0.1082, 0.1581])
    print("\nRow 2 sum (by hand):", row_2_sum)
    print("All row sums:", attn_weights.sum(dim=-1))

    all_context_vecs = attn_weights @ inputs
    print("\nAll context vectors:\n", all_context_vecs)
    print("Previous 2nd context vector:", context_vec_2)

    show_why_attention()


def similarity_to(query_index):
    """Dot products of every input with one query, split into lengths and the cosine of the angle
    between them: x^i . x^q = |x^i| |x^q| cos(angle)."""
    query = inputs[query_index]
    dots = inputs @ query
    lengths = inputs.norm(dim=1)
    cosines = torch.nn.functional.cosine_similarity(inputs, query.unsqueeze(0), dim=1)
    return dots, lengths, cosines


def show_why_attention():
    print("\n== Why attention ==")
    print("An encoder-decoder RNN reads the whole input into one hidden state of a fixed size, and the")
    print("decoder sees only that state: the longer the input, the more has to squeeze into it.")
    print("Attention keeps every input and lets each position take a weighted mix of all of them,")
    print("as z^2 above mixes all six; the weights come from dot products, a measure of similarity.")
    print("Attention was first added to an RNN (2014); the transformer (2017) kept it and dropped the RNN.")

    words = ["Your", "journey", "starts", "with", "one", "step"]  # the six rows of `inputs`
    dots, lengths, cosines = similarity_to(1)
    print('\nSimilarity to x^2 ("journey"): dot product = |x^i| * |x^2| * cosine')
    print(f"  {'word':<8} {'dot':>6}  {'|x^i|':>6}  {'cosine':>6}")
    for word, dot, length, cosine in zip(words, dots, lengths, cosines):
        print(f"  {word:<8} {dot:6.4f}  {length:6.4f}  {cosine:6.4f}")
    print("The cosine says how alike two directions are (1 = the same); the lengths scale it, so a")
    print("short vector scores low even when it points the same way.")


if __name__ == "__main__":
    run_main(main)
