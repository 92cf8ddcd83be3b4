"""Chapter 3: self-attention by hand, SelfAttention_v1/v2, CausalAttention, the multi-head wrapper
and MultiHeadAttention. Seeded values are the book's."""

import pytest
import torch
import torch.nn as nn

from h_self_attention import inputs, softmax_naive
from i_compact_self_attention import SelfAttention_v1
from j_linear_self_attention import SelfAttention_v2
from k_causal_attention import CausalAttention
from l_multi_head_attention import MultiHeadAttentionWrapper
from m_efficient_multi_head_attention import MultiHeadAttention

BATCH = torch.stack((inputs, inputs), dim=0)


def close(actual, expected, atol=1e-4):
    return torch.allclose(actual, torch.tensor(expected), atol=atol)


def test_attention_by_hand_matches_the_book():
    attn_scores = inputs @ inputs.T
    assert close(attn_scores[1], [0.9544, 1.4950, 1.4754, 0.8434, 0.7070, 1.0865])
    attn_weights = torch.softmax(attn_scores, dim=-1)
    assert close(attn_weights[1], [0.1385, 0.2379, 0.2333, 0.1240, 0.1082, 0.1581])
    assert torch.allclose(softmax_naive(attn_scores[1]), attn_weights[1])
    assert torch.allclose(attn_weights.sum(dim=-1), torch.ones(6))
    context_vecs = attn_weights @ inputs
    assert close(context_vecs[1], [0.4419, 0.6515, 0.5683])
    assert close(context_vecs[0], [0.4421, 0.5931, 0.5790])


def test_self_attention_v1_matches_the_book():
    torch.manual_seed(123)
    sa_v1 = SelfAttention_v1(3, 2)
    out = sa_v1(inputs)
    assert out.shape == (6, 2)
    assert close(out, [[0.2996, 0.8053], [0.3061, 0.8210], [0.3058, 0.8203],
                       [0.2948, 0.7939], [0.2927, 0.7891], [0.2990, 0.8040]])


def test_self_attention_v2_matches_the_book_and_v1_with_its_weights():
    torch.manual_seed(789)
    sa_v2 = SelfAttention_v2(3, 2)
    out = sa_v2(inputs)
    assert close(out, [[-0.0739, 0.0713], [-0.0748, 0.0703], [-0.0749, 0.0702],
                       [-0.0760, 0.0685], [-0.0763, 0.0679], [-0.0754, 0.0693]])
    # Exercise 3.1: nn.Linear stores W transposed; v1 given those weights computes the same.
    sa_v1 = SelfAttention_v1(3, 2)
    with torch.no_grad():
        sa_v1.W_query.copy_(sa_v2.W_query.weight.T)
        sa_v1.W_key.copy_(sa_v2.W_key.weight.T)
        sa_v1.W_value.copy_(sa_v2.W_value.weight.T)
    assert torch.allclose(sa_v1(inputs), out, atol=1e-6)


def test_tril_renormalised_mask_equals_the_minus_inf_mask():
    torch.manual_seed(789)
    sa_v2 = SelfAttention_v2(3, 2)
    with torch.no_grad():
        scores = sa_v2.W_query(inputs) @ sa_v2.W_key(inputs).T
        scale = 2 ** 0.5
        weights = torch.softmax(scores / scale, dim=-1) * torch.tril(torch.ones(6, 6))
        renormalised = weights / weights.sum(dim=-1, keepdim=True)
        masked = scores.masked_fill(torch.triu(torch.ones(6, 6), diagonal=1).bool(), -torch.inf)
        causal = torch.softmax(masked / scale, dim=-1)
    assert torch.allclose(renormalised, causal, atol=1e-6)
    assert close(causal[1, :2], [0.5517, 0.4483])
    assert close(causal[2, :3], [0.3800, 0.3097, 0.3103])
    assert torch.all(causal.triu(diagonal=1) == 0)


def test_causal_attention_matches_the_book():
    torch.manual_seed(123)
    ca = CausalAttention(3, 2, BATCH.shape[1], 0.0)
    out = ca(BATCH)
    assert out.shape == (2, 6, 2)
    expected = [[-0.4519, 0.2216], [-0.5874, 0.0058], [-0.6300, -0.0632],
                [-0.5675, -0.0843], [-0.5526, -0.0981], [-0.5299, -0.1081]]
    assert close(out[0], expected) and close(out[1], expected)


def test_causal_attention_without_dropout_equals_hand_computed_weights():
    torch.manual_seed(0)
    d_in, d_out, n = 5, 4, 7
    x = torch.randn(3, n, d_in)
    ca = CausalAttention(d_in, d_out, context_length=10, dropout=0.0, qkv_bias=True)
    with torch.no_grad():
        q, k, v = ca.W_query(x), ca.W_key(x), ca.W_value(x)
        expected = torch.zeros(3, n, d_out)
        for b in range(3):
            for i in range(n):
                # query i attends to keys 0..i only
                scores = torch.stack([q[b, i] @ k[b, j] for j in range(i + 1)]) / d_out ** 0.5
                weights = torch.exp(scores) / torch.exp(scores).sum()
                expected[b, i] = sum(weights[j] * v[b, j] for j in range(i + 1))
        assert torch.allclose(ca(x), expected, atol=1e-5)


def test_dropout_acts_in_training_only():
    torch.manual_seed(123)
    ca = CausalAttention(3, 2, 6, dropout=0.5)
    torch.manual_seed(1)
    train_out = ca(BATCH)
    ca.eval()
    eval_out = ca(BATCH)
    reference = CausalAttention(3, 2, 6, dropout=0.0)
    reference.load_state_dict(ca.state_dict())
    assert torch.equal(eval_out, reference(BATCH))
    assert not torch.allclose(train_out, eval_out)


def test_multi_head_wrapper_matches_the_book():
    torch.manual_seed(123)
    mha = MultiHeadAttentionWrapper(3, 2, 6, 0.0, num_heads=2)
    out = mha(BATCH)
    assert out.shape == (2, 6, 4)
    assert close(out[0, 0], [-0.4519, 0.2216, 0.4772, 0.1063])
    assert close(out[1, 5], [-0.5299, -0.1081, 0.5077, 0.3493])


def test_multi_head_attention_matches_the_book():
    torch.manual_seed(123)
    mha = MultiHeadAttention(3, 2, 6, 0.0, num_heads=2)
    out = mha(BATCH)
    assert out.shape == (2, 6, 2)
    expected = [[0.3190, 0.4858], [0.2943, 0.3897], [0.2856, 0.3593],
                [0.2693, 0.3873], [0.2639, 0.3928], [0.2575, 0.4028]]
    assert close(out[0], expected) and close(out[1], expected)


def test_wrapper_and_multi_head_attention_agree_given_the_same_weights():
    torch.manual_seed(0)
    d_in, head_dim, num_heads, n = 6, 3, 4, 5
    wrapper = MultiHeadAttentionWrapper(d_in, head_dim, n, 0.0, num_heads, qkv_bias=True)
    mha = MultiHeadAttention(d_in, head_dim * num_heads, n, 0.0, num_heads, qkv_bias=True)
    with torch.no_grad():
        for name in ("W_query", "W_key", "W_value"):
            # head h owns rows h*head_dim:(h+1)*head_dim of the combined projection
            getattr(mha, name).weight.copy_(torch.cat([getattr(h, name).weight for h in wrapper.heads]))
            getattr(mha, name).bias.copy_(torch.cat([getattr(h, name).bias for h in wrapper.heads]))
        mha.out_proj.weight.copy_(torch.eye(head_dim * num_heads))  # the wrapper has no out_proj
        mha.out_proj.bias.zero_()
        x = torch.randn(2, n, d_in)
        assert torch.allclose(mha(x), wrapper(x), atol=1e-6)


@pytest.mark.parametrize("make", [
    lambda: CausalAttention(4, 4, 8, 0.0),
    lambda: MultiHeadAttentionWrapper(4, 2, 8, 0.0, num_heads=2),
    lambda: MultiHeadAttention(4, 4, 8, 0.0, num_heads=2),
], ids=["CausalAttention", "MultiHeadAttentionWrapper", "MultiHeadAttention"])
def test_changing_a_later_token_never_changes_earlier_outputs(make):
    torch.manual_seed(0)
    module = make()
    x = torch.randn(2, 8, 4)
    with torch.no_grad():
        out = module(x)
        for t in range(8):
            changed = x.clone()
            changed[:, t] += torch.randn(2, 4)
            new_out = module(changed)
            assert torch.allclose(new_out[:, :t], out[:, :t], atol=1e-6)
            assert not torch.allclose(new_out[:, t], out[:, t])
        # fewer tokens than context_length: the mask is cut to size and earlier outputs stay
        assert torch.allclose(module(x[:, :5]), out[:, :5], atol=1e-6)


def test_d_out_not_divisible_by_num_heads_is_a_clear_error():
    with pytest.raises(ValueError, match=r"d_out \(10\) must be divisible by num_heads \(3\)"):
        MultiHeadAttention(4, 10, 8, 0.0, num_heads=3)


def test_gpt2_sized_multi_head_attention_parameter_count():
    mha = MultiHeadAttention(768, 768, 1024, 0.0, num_heads=12)  # exercise 3.3
    assert sum(p.numel() for p in mha.parameters()) == 2_360_064
    assert mha.mask.shape == (1024, 1024)
    assert not any(name == "mask" for name, _ in mha.named_parameters())  # a buffer, not trained
    assert isinstance(mha.out_proj, nn.Linear) and mha.out_proj.bias is not None


def test_dot_product_is_both_lengths_times_the_cosine():
    from h_self_attention import similarity_to

    dots, lengths, cosines = similarity_to(1)
    assert close(dots, [0.9544, 1.4950, 1.4754, 0.8434, 0.7070, 1.0865])  # the scores for x^2 above
    query = inputs[1].tolist()
    for row, dot, length, cosine in zip(inputs.tolist(), dots, lengths, cosines):
        by_hand = sum(a * b for a, b in zip(row, query))
        row_length = sum(a * a for a in row) ** 0.5
        assert dot.item() == pytest.approx(by_hand, rel=1e-6)
        assert length.item() == pytest.approx(row_length, rel=1e-6)
        assert cosine.item() == pytest.approx(by_hand / (row_length * sum(b * b for b in query) ** 0.5),
                                              rel=1e-5)
    assert cosines[1].item() == pytest.approx(1.0)
    # "with" points almost the way "journey" does, yet its short vector scores below "step"
    assert cosines[3] > cosines[5] and dots[3] < dots[5]
