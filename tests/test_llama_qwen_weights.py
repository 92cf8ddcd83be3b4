"""llama_qwen_weights.py: Hugging Face folders written by transformers' LlamaForCausalLM and
Qwen3ForCausalLM (tiny random configs) read back into our models with the same logits, the
tokenizer and chat formats, the offline download message, and the script end to end."""

import json
import re

import pytest
import torch

from conftest import run_script
from gpt_to_llama import generate_tokens
from llama_qwen_weights import (
    QWEN3_FILES,
    ChatTokenizer,
    config_from_hf,
    download_qwen3,
    load_weights_into_llama,
    model_from_hf_dir,
)
from plumbing import ScriptError

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|begin_of_text|>",
                  "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
TEXTS = ["Every effort moves you.", "  odd   whitespace\tand\nnew lines  ", "café, naïve, 日本語, 🙂!",
         "<|im_start|>user\nHi<|im_end|>", "numbers 1234567 and CAPS"]


def randomise(model):
    """Weights of a size that makes differences show (transformers initialises them near zero)."""
    torch.manual_seed(123)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "norm" in name:
                parameter.uniform_(0.5, 1.5)
            else:
                parameter.normal_(0, 0.2)
    return model.eval()


def tiny_llama(**overrides):
    # head_dim 24 != 64 / 4, 2 key/value heads for 4 query heads, Llama 3 RoPE scaling, tied.
    settings = dict(vocab_size=97, hidden_size=64, intermediate_size=80, num_hidden_layers=3,
                    num_attention_heads=4, num_key_value_heads=2, head_dim=24, max_position_embeddings=64,
                    rms_norm_eps=1e-5, tie_word_embeddings=True,
                    rope_parameters={"rope_type": "llama3", "rope_theta": 500_000.0, "factor": 8.0,
                                     "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                     "original_max_position_embeddings": 16})
    settings.update(overrides)
    return randomise(transformers.LlamaForCausalLM(transformers.LlamaConfig(**settings)))


def tiny_qwen3(vocab_size=97):
    # head_dim 16 != 40 / 4, 2 key/value heads, untied output layer.
    config = transformers.Qwen3Config(vocab_size=vocab_size, hidden_size=40, intermediate_size=72,
                                      num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
                                      head_dim=16, max_position_embeddings=64, tie_word_embeddings=False)
    return randomise(transformers.Qwen3ForCausalLM(config))


def reference_logits(hf_model, idx):
    with torch.no_grad():
        return hf_model(idx).logits


@pytest.mark.parametrize("make,kind", [(tiny_llama, "Llama3Model"), (tiny_qwen3, "Qwen3Model")],
                         ids=["llama", "qwen3"])
def test_model_from_hf_dir_gives_the_reference_logits(tmp_path, make, kind):
    hf_model = make()
    hf_model.save_pretrained(tmp_path)
    model, cfg = model_from_hf_dir(tmp_path)
    assert type(model).__name__ == kind
    assert cfg["head_dim"] != cfg["emb_dim"] // cfg["n_heads"] and cfg["n_kv_groups"] == 2
    assert cfg["n_layers"] == 3 and cfg["dtype"] == torch.float32
    assert (model.out_head.weight is model.tok_emb.weight) == (kind == "Llama3Model")
    idx = torch.randint(0, 97, (2, 40), generator=torch.Generator().manual_seed(123))
    expected = reference_logits(hf_model, idx)
    with torch.no_grad():
        logits = model(idx)
    torch.testing.assert_close(logits, expected, rtol=0, atol=1e-4)
    assert expected.abs().max() > 1  # logits large enough for the comparison to mean something
    # Greedy generation with our KV cache gives transformers' ids (its own cache and positions).
    ours = torch.cat(list(generate_tokens(model, idx[:1, :8], 12)), dim=1)
    theirs = hf_model.generate(idx[:1, :8], max_new_tokens=12, do_sample=False, attention_mask=None,
                               pad_token_id=0)[:, 8:]
    assert torch.equal(ours, theirs)


def test_published_config_style_and_shards(tmp_path):
    """The published folders carry rope_theta, rope_scaling and torch_dtype; big ones come in shards."""
    hf_model = tiny_llama()
    hf_model.save_pretrained(tmp_path, max_shard_size="100KB")
    assert len(list(tmp_path.glob("*.safetensors"))) > 1
    path = tmp_path / "config.json"
    config = json.loads(path.read_text())
    new_style = config_from_hf(config)
    rope = config.pop("rope_parameters")
    config.update(rope_theta=rope.pop("rope_theta"), rope_scaling=rope,
                  torch_dtype=config.pop("dtype", "float32"))
    path.write_text(json.dumps(config))
    model, cfg = model_from_hf_dir(tmp_path)
    assert cfg == new_style
    assert cfg["rope_freq"] == {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                "original_context_length": 16}
    idx = torch.arange(30)[None] % 97
    with torch.no_grad():
        torch.testing.assert_close(model(idx), reference_logits(hf_model, idx), rtol=0, atol=1e-4)


def test_bfloat16_stays_bfloat16_unless_asked_and_weights_are_not_copied(tmp_path):
    from safetensors.torch import load_file

    hf_model = tiny_qwen3().to(torch.bfloat16)
    hf_model.save_pretrained(tmp_path)
    model, cfg = model_from_hf_dir(tmp_path)
    assert cfg["dtype"] == torch.bfloat16
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    as_float, _ = model_from_hf_dir(tmp_path, dtype=torch.float32)
    assert {p.dtype for p in as_float.parameters()} == {torch.float32}
    reference = transformers.Qwen3ForCausalLM.from_pretrained(tmp_path, dtype=torch.float32)
    idx = torch.arange(20)[None]
    with torch.no_grad():
        torch.testing.assert_close(as_float(idx), reference_logits(reference, idx), rtol=0, atol=1e-4)
    # The model's weights are the file's tensors themselves: memory is used once.
    (shard,) = tmp_path.glob("*.safetensors")
    params = load_file(shard)
    load_weights_into_llama(model, cfg, params)
    assert model.tok_emb.weight.data_ptr() == params["model.embed_tokens.weight"].data_ptr()
    fc3 = model.trf_blocks[2].ff.fc3.weight
    assert fc3.data_ptr() == params["model.layers.2.mlp.down_proj.weight"].data_ptr()


def test_folders_it_cannot_read_give_clear_errors(tmp_path):
    with pytest.raises(ScriptError, match="no config.json"):
        model_from_hf_dir(tmp_path)
    tiny_qwen3().save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    with pytest.raises(ScriptError, match="'gpt2' model"):
        config_from_hf({**config, "model_type": "gpt2"})
    with pytest.raises(ScriptError, match="RoPE scaling 'yarn'"):
        config_from_hf({**config, "rope_parameters": {"rope_type": "yarn", "rope_theta": 1e6}})
    (tmp_path / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 4}))
    with pytest.raises(ScriptError, match="no tensor 'model.layers.3.self_attn.q_proj.weight'"):
        model_from_hf_dir(tmp_path)
    for shard in tmp_path.glob("*.safetensors"):
        shard.unlink()
    with pytest.raises(ScriptError, match="no \\*.safetensors files"):
        model_from_hf_dir(tmp_path)


def write_tokenizer(path, llama_bos=False):
    """A small byte-level BPE tokenizer.json of the kind Qwen3 and Llama 3 ship."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(TEXTS * 5 + ["the painter put down his brush"] * 20, trainer)
    if llama_bos:  # Llama 3's tokenizer puts <|begin_of_text|> before every text by itself
        bos = tokenizer.token_to_id("<|begin_of_text|>")
        tokenizer.post_processor = processors.TemplateProcessing(
            single="<|begin_of_text|> $A", special_tokens=[("<|begin_of_text|>", bos)])
    tokenizer.save(str(path))
    return path


def test_tokenizer_gives_the_reference_ids_and_chat_prompts(tmp_path):
    path = write_tokenizer(tmp_path / "tokenizer.json")
    ours = ChatTokenizer(path, "qwen3")
    reference = transformers.PreTrainedTokenizerFast(tokenizer_file=str(path))
    for text in TEXTS:
        ids = ours.encode(text)
        assert ids == reference.encode(text, add_special_tokens=False)
        assert ours.decode(ids) == text
    assert ours.encode("<|im_start|>") == [ours.token_id("<|im_start|>")]  # one id, not its characters
    prompt = ours.chat_prompt("Hi", system="Be brief.")
    assert prompt == ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
                      "<|im_start|>assistant\n<think>\n\n</think>\n\n")
    assert ours.chat_prompt("Hi", thinking=True).endswith("<|im_start|>assistant\n")
    assert ours.end_of_turn_id() == ours.token_id("<|im_end|>")

    llama_path = write_tokenizer(tmp_path / "llama-tokenizer.json", llama_bos=True)
    llama = ChatTokenizer(llama_path, "llama")
    bos = llama.token_id("<|begin_of_text|>")
    assert llama.encode("Hi", add_special_tokens=True) == [bos] + llama.encode("Hi")
    chat_ids = llama.encode(llama.chat_prompt("Hi"))
    assert chat_ids.count(bos) == 1 and chat_ids[0] == bos
    assert llama.decode(chat_ids) == ("<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi"
                                      "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n")
    with pytest.raises(ScriptError, match="no token"):
        llama.token_id("<|not a token|>")


def test_offline_download_names_every_file(tmp_path, local_server):
    local_server.add("/config.json", "{}")  # only one of the three files can be fetched
    with pytest.raises(ScriptError) as error:
        download_qwen3(tmp_path / "qwen3", base_url=local_server.base_url + "/")
    message = str(error.value)
    assert message.startswith("could not download tokenizer.json, model.safetensors:")
    for name in QWEN3_FILES:
        assert f"{local_server.base_url}/{name} -> {tmp_path / 'qwen3' / name}" in message
    assert sorted(p.name for p in (tmp_path / "qwen3").iterdir()) == ["config.json"]  # nothing half-written
    # A weights file that stopped early is not taken for a download.
    local_server.add("/tokenizer.json", "{}")
    local_server.add("/model.safetensors", b"\x08\x00\x00\x00\x00\x00\x00\x00{}")
    with pytest.raises(ScriptError, match="model.safetensors.*not a complete safetensors file"):
        download_qwen3(tmp_path / "qwen3", base_url=local_server.base_url + "/")
    assert not (tmp_path / "qwen3" / "model.safetensors").exists()


def test_script_chats_with_a_model_folder(tmp_path):
    model_dir = tmp_path / "tiny-qwen3"
    write_tokenizer(tmp_path / "tokenizer.json")
    vocab_size = tokenizers.Tokenizer.from_file(str(tmp_path / "tokenizer.json")).get_vocab_size()
    tiny_qwen3(vocab_size).to(torch.bfloat16).save_pretrained(model_dir)
    (tmp_path / "tokenizer.json").rename(model_dir / "tokenizer.json")
    out = run_script("llama_qwen_weights.py", "--model-dir", str(model_dir), "--prompt", "Every effort",
                     "--max-new-tokens", "5", "--device", "cpu", data_dir=tmp_path / "data",
                     outputs_dir=tmp_path / "outputs", env={"PYTHONIOENCODING": "utf-8"}).stdout
    assert f"Qwen3Model from {model_dir}: " in out and "parameters in torch.bfloat16" in out
    assert "<|im_start|>user\nEvery effort<|im_end|>\n<|im_start|>assistant\n<think>" in out
    assert re.search(r"^[1-5] tokens in \d+\.\d s \(\d+\.\d tokens/s, KV cache\)$", out, re.M)
