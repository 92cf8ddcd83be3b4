"""gpt_to_llama.py and llama_to_qwen3.py: every component against Hugging Face transformers' Llama
and Qwen3 modules with copied weights, the walk-throughs' claims, and the KV cache."""

import json
import re

import pytest
import torch

from conftest import run_script
from fast_attention import KVCache
from gpt_to_llama import (
    WALK_CONFIG,
    FeedForward,
    GroupedQueryAttention,
    Llama3Model,
    RMSNorm,
    RoPE,
    apply_rope,
    compute_rope_params,
    generate_tokens,
)
from llama_to_qwen3 import QWEN3_WALK_CONFIG, Qwen3Model
from s_gpt_model import count_parameters
from u_pretraining import generate

transformers = pytest.importorskip("transformers")
from transformers.models.llama import modeling_llama  # noqa: E402
from transformers.models.qwen3 import modeling_qwen3  # noqa: E402

LLAMA3_ROPE = {"rope_type": "llama3", "rope_theta": 500_000.0, "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 32}
OUR_LLAMA3_FREQ = {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                   "original_context_length": 32}


def llama_config(**overrides):
    settings = dict(vocab_size=97, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                    rope_parameters={"rope_type": "default", "rope_theta": 10_000.0}, rms_norm_eps=1e-5)
    settings.update(overrides)
    config = transformers.LlamaConfig(**settings)
    config._attn_implementation = "eager"  # the reference's plain matrix products
    return config


def causal_mask(num_tokens):
    """The additive mask eager attention takes: -inf above the diagonal."""
    return torch.full((num_tokens, num_tokens), float("-inf")).triu(1)[None, None]


def test_rmsnorm_matches_llama_rmsnorm_in_float32_and_bfloat16():
    torch.manual_seed(123)
    x = torch.randn(2, 5, 16) * 3 + 1
    ours, theirs = RMSNorm(16, eps=1e-5), modeling_llama.LlamaRMSNorm(16, eps=1e-5)
    with torch.no_grad():
        ours.weight.copy_(torch.randn(16))
        theirs.weight.copy_(ours.weight)
    torch.testing.assert_close(ours(x), theirs(x), rtol=0, atol=1e-6)
    ours.bfloat16()
    theirs.bfloat16()
    assert torch.equal(ours(x.bfloat16()), theirs(x.bfloat16()))
    # What it computes: unit root mean square before the weight, no mean removed.
    plain = RMSNorm(16)(x)
    torch.testing.assert_close(plain.pow(2).mean(-1), torch.ones(2, 5), rtol=0, atol=1e-4)
    assert plain.mean(-1).abs().max() > 0.1


@pytest.mark.parametrize("rope_parameters,freq_config", [
    ({"rope_type": "default", "rope_theta": 10_000.0}, None),
    (LLAMA3_ROPE, OUR_LLAMA3_FREQ),
], ids=["plain", "llama3-scaling"])
def test_rope_matches_llama_rotary_embedding(rope_parameters, freq_config):
    config = llama_config(hidden_size=64, num_attention_heads=4, rope_parameters=rope_parameters)
    head_dim, theta = 16, rope_parameters["rope_theta"]
    positions = torch.arange(128)[None]
    cos_ref, sin_ref = modeling_llama.LlamaRotaryEmbedding(config)(torch.zeros(1), positions)
    cos, sin = compute_rope_params(head_dim, theta, 128, freq_config)
    torch.testing.assert_close(cos, cos_ref[0], rtol=0, atol=1e-6)
    torch.testing.assert_close(sin, sin_ref[0], rtol=0, atol=1e-6)
    if freq_config:  # the scaling changes the low frequencies, not the highest one
        plain_cos, _ = compute_rope_params(head_dim, theta, 128)
        assert torch.equal(cos[:, 0], plain_cos[:, 0]) and not torch.allclose(cos, plain_cos)

    torch.manual_seed(123)
    q, k = torch.randn(2, 4, 10, head_dim), torch.randn(2, 2, 10, head_dim)
    q_ref, k_ref = modeling_llama.apply_rotary_pos_emb(q, k, cos_ref[:, :10], sin_ref[:, :10])
    torch.testing.assert_close(apply_rope(q, cos[:10], sin[:10]), q_ref, rtol=0, atol=1e-6)
    torch.testing.assert_close(apply_rope(k, cos[:10], sin[:10]), k_ref, rtol=0, atol=1e-6)
    # RoPE(start=s) is the rotation of positions s, s + 1, ...
    rope = RoPE(head_dim, 128, theta, freq_config)
    torch.testing.assert_close(rope(q[:, :, 3:], start=3), q_ref[:, :, 3:], rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="context_length is 128"):
        rope(q, start=125)


def test_swiglu_feed_forward_matches_llama_mlp():
    torch.manual_seed(123)
    config = llama_config()
    theirs = modeling_llama.LlamaMLP(config)
    ours = FeedForward({"emb_dim": 32, "hidden_dim": 48, "dtype": torch.float32})
    ours.load_state_dict({"fc1.weight": theirs.gate_proj.weight, "fc2.weight": theirs.up_proj.weight,
                          "fc3.weight": theirs.down_proj.weight})
    x = torch.randn(2, 7, 32)
    torch.testing.assert_close(ours(x), theirs(x), rtol=0, atol=1e-6)
    assert sum(p.numel() for p in ours.parameters()) == 3 * 32 * 48  # three bias-free layers


def copy_attention(ours, theirs):
    names = {"W_query": "q_proj", "W_key": "k_proj", "W_value": "v_proj", "out_proj": "o_proj",
             "q_norm": "q_norm", "k_norm": "k_norm"}
    ours.load_state_dict({f"{ours_name}.weight": getattr(theirs, name).weight
                          for ours_name, name in names.items() if hasattr(theirs, name)})


@pytest.mark.parametrize("family", ["llama", "qwen3"])
def test_grouped_query_attention_matches_reference(family):
    torch.manual_seed(123)
    if family == "llama":  # 4 query heads share 2 key/value heads, RoPE with Llama 3 scaling
        config, freq, qk_norm = llama_config(rope_parameters=LLAMA3_ROPE), OUR_LLAMA3_FREQ, False
        theirs = modeling_llama.LlamaAttention(config, layer_idx=0)
    else:  # head_dim 16 != 32 / 4, RMSNorm on queries and keys
        config = transformers.Qwen3Config(hidden_size=32, num_attention_heads=4, num_key_value_heads=2,
                                          head_dim=16, max_position_embeddings=128, rms_norm_eps=1e-6)
        config._attn_implementation = "eager"
        freq, qk_norm = None, True
        theirs = modeling_qwen3.Qwen3Attention(config, layer_idx=0)
        with torch.no_grad():  # norms start at ones: make them matter
            theirs.q_norm.weight.uniform_(0.5, 1.5)
            theirs.k_norm.weight.uniform_(0.5, 1.5)
    head_dim = theirs.head_dim
    rope = RoPE(head_dim, 128, config.rope_parameters["rope_theta"], freq)
    ours = GroupedQueryAttention(32, 4, 2, rope, head_dim=head_dim, qk_norm=qk_norm)
    copy_attention(ours, theirs)
    x = torch.randn(2, 9, 32)
    position_embeddings = (rope.cos[:9][None], rope.sin[:9][None])
    expected, _ = theirs(x, position_embeddings=position_embeddings, attention_mask=causal_mask(9))
    torch.testing.assert_close(ours(x), expected, rtol=0, atol=1e-5)
    # In pieces through a KV cache: the last 4 tokens attend to the 5 cached ones at positions 5..8.
    cache = KVCache(2, 2, 9, head_dim)
    first, rest = ours(x[:, :5], cache), ours(x[:, 5:], cache)
    assert cache.keys.shape == (2, 2, 9, head_dim)  # 2 key/value heads cached, not 4
    torch.testing.assert_close(torch.cat([first, rest], dim=1), expected, rtol=0, atol=1e-5)


def test_walk_through_swapped_gpt_model_is_llama3_model(capsys, gpt2_tokenizer):
    import gpt_to_llama

    gpt_to_llama.main()
    out = capsys.readouterr().out
    assert "Llama3Model(cfg) with the swapped model's weights gives the same logits: True" in out
    # Parameter counts: LayerNorm loses its shift, SwiGLU's 3 x 768 x 2048 equals GPT-2's 8 x 768^2
    # minus biases, RoPE drops 256 x 768 position weights (and the new attention has no out_proj
    # bias), 4 key/value heads of 12 drop 2 x 768 x 512 per layer, tying drops 50257 x 768.
    counts = [162_419_712, 162_400_512, 162_354_432, 162_148_608, 162_148_608, 152_711_424, 114_114_048]
    rows = [line for line in out.splitlines() if re.match(r"[0-5][ab]?\. ", line)]
    assert [row.split(".")[0] for row in rows] == ["0", "1", "2", "3a", "3b", "4", "5"]
    for line, expected in zip(rows, counts):
        assert f"{expected:,}" in line
    assert "Llama 3.2 1B (LLAMA32_CONFIG_1B): 1,235,814,400 parameters" in out
    scores = out.split("at positions 0, 100, 1000: ")[1].splitlines()[0]
    first, *others = json.loads(scores)  # RoPE: the score depends on the distance only
    assert all(abs(other - first) < 1e-3 for other in others)


def test_walk_through_uses_llama_32_rope_scaling(capsys, gpt2_tokenizer):
    """Step 3b puts Llama 3.2's rope_freq into the walk model; the frequencies it prints as divided
    are transformers' (LlamaRotaryEmbedding with rope_type llama3), and the logits move."""
    import gpt_to_llama

    assert gpt_to_llama.WALK_CONFIG["rope_freq"] == gpt_to_llama.LLAMA32_CONFIG_1B["rope_freq"]
    gpt_to_llama.main()
    out = capsys.readouterr().out
    freq = gpt_to_llama.WALK_CONFIG["rope_freq"]
    rope_parameters = {"rope_type": "llama3", "rope_theta": 500_000.0,
                       "original_max_position_embeddings": freq["original_context_length"],
                       **{key: freq[key] for key in ("factor", "low_freq_factor", "high_freq_factor")}}
    plain, scaled = (modeling_llama.LlamaRotaryEmbedding(llama_config(
        hidden_size=48, num_attention_heads=4, max_position_embeddings=256, rope_parameters=parameters
    )).inv_freq for parameters in ({"rope_type": "default", "rope_theta": 500_000.0}, rope_parameters))
    printed = json.loads(re.search(r"frequencies of a 12-wide head by (\[[^]]*\])", out)[1])
    assert printed == pytest.approx((plain / scaled).tolist(), abs=1e-3)
    assert printed[:3] == [1.0, 1.0, 1.0] and printed[4:] == [32.0, 32.0] and 1 < printed[3] < 32
    changes = re.search(r"differ by at most ([\d.e+-]+) on the 4 input tokens and ([\d.]+) on 256", out)
    assert 0 < float(changes[1]) < 0.01 < float(changes[2])


def test_qwen3_walk_through(capsys, gpt2_tokenizer):
    import llama_to_qwen3

    llama_to_qwen3.main()
    out = capsys.readouterr().out
    assert "Qwen3Model(cfg) with these weights gives the same logits: True" in out
    assert "Qwen3-0.6B (QWEN3_CONFIG_06B): 596,049,920 parameters with tied embeddings" in out
    lines = [line for line in out.splitlines() if "use_cache=" in line]
    assert len(lines) == 2 and lines[0].split(":")[1] == lines[1].split(":")[1]


@pytest.mark.parametrize("model_class,cfg", [(Llama3Model, {**WALK_CONFIG, "vocab_size": 101}),
                                             (Qwen3Model, {**QWEN3_WALK_CONFIG, "vocab_size": 101})],
                         ids=["llama", "qwen3"])
def test_cached_and_uncached_greedy_ids_are_identical(model_class, cfg):
    torch.manual_seed(123)
    model = model_class({**cfg, "tie_embeddings": False, "context_length": 40}).eval()
    idx = torch.randint(0, 101, (2, 6))
    cached = torch.cat(list(generate_tokens(model, idx, 30)), dim=1)
    uncached = torch.cat(list(generate_tokens(model, idx, 30, use_cache=False)), dim=1)
    book = generate(model, idx, max_new_tokens=30, context_size=40)[:, 6:]  # chapter 5's loop
    assert torch.equal(cached, uncached) and torch.equal(cached, book)
    assert len(set(cached[0].tolist())) > 3  # not one repeated token
    with pytest.raises(ValueError, match="context_length is 40"):
        list(generate_tokens(model, idx, 36))  # the 36th needs position 40
    # eos: a row that produced it is finished; generation stops once all rows are.
    eos = cached[0, 2].item()
    ids = list(generate_tokens(model, idx[:1], 30, eos_id=[999, eos]))
    assert len(ids) == 3 and ids[-1].item() == eos


def test_configs_name_what_is_missing():
    with pytest.raises(ValueError, match="missing the key 'n_kv_groups'"):
        Llama3Model({key: value for key, value in WALK_CONFIG.items() if key != "n_kv_groups"})
    with pytest.raises(ValueError, match="missing the key 'head_dim'.*Qwen3"):
        Qwen3Model(WALK_CONFIG)
    with pytest.raises(ValueError, match="divisible by num_kv_groups"):
        GroupedQueryAttention(32, 4, 3, rope=None)


def test_pretraining_comparison_models_have_about_equal_size():
    from pretrain_gpt_llama_qwen import model_configs

    for quick in (False, True):
        counts = {}
        for name, (model_class, cfg) in model_configs(quick).items():
            with torch.device("meta"):
                counts[name] = count_parameters(model_class(cfg))[0]
        assert max(counts.values()) / min(counts.values()) < 1.0001, counts
    configs = model_configs()
    assert configs["Qwen3"][1]["head_dim"] == 32 and configs["Llama 3.2"][1]["n_kv_groups"] == 2


def test_pretraining_comparison_quick(tmp_path, gpt2_tokenizer):
    data_dir, outputs_dir = tmp_path / "data", tmp_path / "outputs"
    (data_dir / "tinyshakespeare").mkdir(parents=True)
    story = " ".join(f"Day {i}: the painter put down his brush and looked at the wall." for i in range(60))
    (data_dir / "the-verdict.txt").write_text(story, encoding="utf-8")
    (data_dir / "tinyshakespeare" / "input.txt").write_text(story.upper(), encoding="utf-8")
    out = run_script("pretrain_gpt_llama_qwen.py", "--quick", "--device", "cpu", data_dir=data_dir,
                     outputs_dir=outputs_dir, env={"LLM_UNVERIFIED_DATA": "1"}).stdout  # stand-in texts
    rows = re.findall(r"^  (GPT-2|Llama 3\.2|Qwen3) +([\d,]+) parameters: train loss ([\d.]+) -> ([\d.]+), "
                      r"val loss [\d.]+ -> [\d.]+ \(lowest [\d.]+\), [\d,]+ training tokens/s$", out, re.M)
    assert [row[0] for row in rows] == ["GPT-2", "Llama 3.2", "Qwen3"] * 2
    assert all(float(last) < float(first) for _, _, first, last in rows)  # 4 steps lower the loss
    assert (outputs_dir / "quick" / "pretrain-gpt-llama-qwen.png").read_bytes()[:4] == b"\x89PNG"


def test_pretraining_comparison_checks_its_outputs_folder_before_training(tmp_path):
    (tmp_path / "file").write_text("not a folder")
    outputs_dir = tmp_path / "file" / "outputs"
    result = run_script("pretrain_gpt_llama_qwen.py", "--quick", "--device", "cpu",
                        data_dir=tmp_path / "data", outputs_dir=outputs_dir, check=False)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.splitlines()[0] == (
        f"error: cannot create the folder {outputs_dir / 'quick'} (Not a directory); choose another place, "
        "e.g. with LLM_OUTPUTS_DIR=/path/to/folder")
    assert "Device:" not in result.stdout
