"""llama_qwen_weights.py: Hugging Face folders written by transformers' LlamaForCausalLM and
Qwen3ForCausalLM (tiny random configs) read back into our models with the same logits, the
tokenizer and chat formats, the offline download message, and the script end to end."""

import json
import re
from datetime import datetime

import pytest
import torch

from conftest import run_script
from fast_attention import DecodingLinear, decoding_splits, lay_out_weights_for_decoding
from gpt_to_llama import generate_tokens
from llama_qwen_weights import (
    QWEN3_FILES,
    ChatTokenizer,
    config_from_hf,
    download_qwen3,
    load_weights_into_qwen,
    model_from_hf_dir,
)
from llama_to_qwen3 import Qwen3Model
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


def tiny_qwen3(vocab_size=97, **overrides):
    # head_dim 16 != 40 / 4, 2 key/value heads, untied output layer.
    settings = dict(vocab_size=vocab_size, hidden_size=40, intermediate_size=72, num_hidden_layers=3,
                    num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=64,
                    tie_word_embeddings=False)
    settings.update(overrides)
    return randomise(transformers.Qwen3ForCausalLM(transformers.Qwen3Config(**settings)))


def reference_logits(hf_model, idx):
    with torch.no_grad():
        return hf_model(idx).logits


@pytest.mark.parametrize("make,kind,tied", [
    (tiny_llama, "Llama3Model", True), (tiny_llama, "Llama3Model", False),
    (tiny_qwen3, "Qwen3Model", False), (tiny_qwen3, "Qwen3Model", True),
], ids=["llama-tied", "llama-untied", "qwen3-untied", "qwen3-tied"])
def test_model_from_hf_dir_gives_the_reference_logits(tmp_path, make, kind, tied, two_threads):
    hf_model = make(tie_word_embeddings=tied)
    hf_model.save_pretrained(tmp_path)
    model, cfg = model_from_hf_dir(tmp_path)
    assert type(model).__name__ == kind
    assert cfg["head_dim"] != cfg["emb_dim"] // cfg["n_heads"] and cfg["n_kv_groups"] == 2
    assert cfg["n_layers"] == 3 and cfg["dtype"] == torch.float32 and cfg["tie_embeddings"] == tied
    assert (model.out_head.weight is model.tok_emb.weight) == tied
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
    # Laid out for decoding, as the script does: its products split, the same logits and ids.
    lay_out_weights_for_decoding(model)
    assert type(model.out_head) is DecodingLinear
    assert decoding_splits(torch.zeros(1, cfg["emb_dim"]), model.out_head.weight) == two_threads
    with torch.no_grad():
        torch.testing.assert_close(model(idx), expected, rtol=0, atol=1e-4)
    assert torch.equal(torch.cat(list(generate_tokens(model, idx[:1, :8], 12)), dim=1), theirs)


@pytest.mark.parametrize("family", ["llama", "qwen3"])
def test_published_config_style_and_shards(tmp_path, family):
    """The published folders carry rope_theta, rope_scaling (Llama 3's scaling; null in Qwen3's) and
    torch_dtype; big ones come in shards."""
    if family == "llama":
        hf_model = tiny_llama()
    else:  # as Qwen3-0.6B's config.json: theta 1,000,000, tied, sliding window off
        hf_model = tiny_qwen3(rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0},
                              tie_word_embeddings=True, use_sliding_window=False, rms_norm_eps=1e-6)
    hf_model.save_pretrained(tmp_path, max_shard_size="100KB")
    assert len(list(tmp_path.glob("*.safetensors"))) > 1
    path = tmp_path / "config.json"
    config = json.loads(path.read_text())
    new_style = config_from_hf(config)
    rope = config.pop("rope_parameters")
    config.update(rope_theta=rope.pop("rope_theta"), torch_dtype=config.pop("dtype", "float32"),
                  rope_scaling=None if rope["rope_type"] == "default" else rope)
    path.write_text(json.dumps(config))
    model, cfg = model_from_hf_dir(tmp_path)
    assert cfg == new_style
    if family == "llama":
        assert cfg["rope_freq"] == {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                    "original_context_length": 16}
    else:
        assert config["rope_scaling"] is None and "rope_freq" not in cfg
        assert cfg["rope_base"] == 1_000_000.0 and cfg["tie_embeddings"] and cfg["rms_norm_eps"] == 1e-6
    idx = torch.arange(30)[None] % 97
    with torch.no_grad():
        torch.testing.assert_close(model(idx), reference_logits(hf_model, idx), rtol=0, atol=1e-4)


def test_bfloat16_stays_bfloat16_unless_asked_and_weights_are_not_copied(tmp_path, monkeypatch):
    import safetensors.torch

    hf_model = tiny_qwen3().to(torch.bfloat16)
    hf_model.save_pretrained(tmp_path, max_shard_size="40KB")
    loaded, load_file = [], safetensors.torch.load_file

    def recording_load_file(*args, **kwargs):  # the tensors model_from_hf_dir reads
        tensors = load_file(*args, **kwargs)
        loaded.extend(tensors.values())
        return tensors

    monkeypatch.setattr(safetensors.torch, "load_file", recording_load_file)
    model, cfg = model_from_hf_dir(tmp_path)
    # The model's weights are the file's tensors themselves, every one used: memory is used once.
    assert len(list(tmp_path.glob("*.safetensors"))) > 1
    assert sorted(p.data_ptr() for p in model.parameters()) == sorted(t.data_ptr() for t in loaded)
    assert cfg["dtype"] == torch.bfloat16
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    as_float, _ = model_from_hf_dir(tmp_path, dtype=torch.float32)
    assert {p.dtype for p in as_float.parameters()} == {torch.float32}
    reference = transformers.Qwen3ForCausalLM.from_pretrained(tmp_path, dtype=torch.float32)
    idx = torch.arange(20)[None]
    with torch.no_grad():
        torch.testing.assert_close(as_float(idx), reference_logits(reference, idx), rtol=0, atol=1e-4)


def test_untied_checkpoint_without_its_output_layer_is_an_error(tmp_path):
    """Only a config that ties the embeddings lets lm_head.weight be missing."""
    from safetensors.torch import load_file, save_file

    tiny_qwen3().save_pretrained(tmp_path)  # tie_word_embeddings false
    (shard,) = tmp_path.glob("*.safetensors")
    params = load_file(shard)
    del params["lm_head.weight"]
    save_file(params, shard, metadata={"format": "pt"})
    with pytest.raises(ScriptError, match="no tensor 'lm_head.weight'.*incomplete download"):
        model_from_hf_dir(tmp_path)
    config = config_from_hf(json.loads((tmp_path / "config.json").read_text()))
    with torch.device("meta"):
        model = Qwen3Model(config)
    with pytest.raises(ScriptError, match="no tensor 'lm_head.weight'"):
        load_weights_into_qwen(model, config, params)
    tied = {**config, "tie_embeddings": True}
    with torch.device("meta"):
        model = Qwen3Model(tied)
    load_weights_into_qwen(model, tied, params)
    assert model.out_head.weight is model.tok_emb.weight
    assert model.tok_emb.weight.data_ptr() == params["model.embed_tokens.weight"].data_ptr()


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
    assert llama.decode(chat_ids) == llama.chat_prompt("Hi")
    with pytest.raises(ScriptError, match="no token"):
        llama.token_id("<|not a token|>")


# Chat templates that behave as the released ones do for one turn without tools (written here, not
# copies): Llama 3.1/3.2 Instruct's always opens with a system block that dates the conversation
# and strips the messages; Qwen3's closes an empty thought when enable_thinking is False.
LLAMA32_STYLE_TEMPLATE = (
    '{{ bos_token }}{% set today = strftime_now("%d %b %Y") if strftime_now is defined else "26 Jul 2024" %}'
    "{% if messages[0].role == 'system' %}{% set system, turns = messages[0].content | trim, messages[1:] %}"
    "{% else %}{% set system, turns = '', messages %}{% endif %}"
    "<|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: December 2023\n"
    "Today Date: {{ today }}\n\n{{ system }}<|eot_id|>"
    "{% for turn in turns %}<|start_header_id|>{{ turn.role }}<|end_header_id|>\n\n"
    "{{ turn.content | trim }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)
QWEN3_STYLE_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message.role }}\n{{ message.content }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if enable_thinking is defined and enable_thinking is false %}<think>\n\n</think>\n\n{% endif %}"
    "{% endif %}"
)
CHAT_FOLDERS = {
    "llama": (LLAMA32_STYLE_TEMPLATE, {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"}),
    "qwen3": (QWEN3_STYLE_TEMPLATE, {"bos_token": None, "eos_token": "<|im_end|>"}),
}


def write_chat_folder(folder, family, template=True):
    """tokenizer.json and tokenizer_config.json as the published folders have them."""
    folder.mkdir()
    write_tokenizer(folder / "tokenizer.json", llama_bos=family == "llama")
    chat_template, tokens = CHAT_FOLDERS[family]
    config = {"tokenizer_class": "PreTrainedTokenizerFast", **tokens}
    if template:
        config["chat_template"] = chat_template
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return folder


@pytest.mark.parametrize("family,thinking", [("llama", False), ("qwen3", False), ("qwen3", True)],
                         ids=["llama", "qwen3", "qwen3-thinking"])
def test_chat_prompts_are_transformers_apply_chat_template(tmp_path, family, thinking):
    """The folder's template rendered here, and the hand-written format of a folder without one,
    give what transformers' apply_chat_template(add_generation_prompt=True) gives."""
    folder = write_chat_folder(tmp_path / "with-template", family)
    reference = transformers.AutoTokenizer.from_pretrained(folder)
    ours = ChatTokenizer(folder / "tokenizer.json", family)
    hand_written = ChatTokenizer(write_chat_folder(tmp_path / "without", family, template=False)
                                 / "tokenizer.json", family)
    assert ours.chat_template == CHAT_FOLDERS[family][0] and hand_written.chat_template is None
    prompts = []
    for system in (None, " Be brief. "):
        messages = [{"role": "system", "content": system}] if system else []
        messages.append({"role": "user", "content": "Hi there "})
        expected = reference.apply_chat_template(messages, tokenize=False, add_generation_prompt=True,
                                                 enable_thinking=thinking)
        assert ours.chat_prompt("Hi there ", system, thinking) == expected
        assert hand_written.chat_prompt("Hi there ", system, thinking) == expected
        assert ours.encode(expected) == reference.encode(expected, add_special_tokens=False)
        prompts.append(expected)
    if family == "llama":  # a system block even without a system message, dated today
        today = datetime.now().strftime("%d %b %Y")
        assert prompts[0] == ("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
                              f"Cutting Knowledge Date: December 2023\nToday Date: {today}\n\n<|eot_id|>"
                              "<|start_header_id|>user<|end_header_id|>\n\nHi there<|eot_id|>"
                              "<|start_header_id|>assistant<|end_header_id|>\n\n")
        assert f"{today}\n\nBe brief.<|eot_id|>" in prompts[1]
    else:
        assert prompts[0] == "<|im_start|>user\nHi there <|im_end|>\n<|im_start|>assistant\n" + (
            "" if thinking else "<think>\n\n</think>\n\n")
        assert prompts[1].startswith("<|im_start|>system\n Be brief. <|im_end|>\n<|im_start|>user\n")


def test_a_chat_template_that_fails_is_a_script_error(tmp_path):
    folder = write_chat_folder(tmp_path / "folder", "qwen3")
    (folder / "chat_template.jinja").write_text("{{ raise_exception('Only user turns here') }}")
    tokenizer = ChatTokenizer(folder / "tokenizer.json", "qwen3")  # chat_template.jinja comes first
    with pytest.raises(ScriptError, match="chat template failed \\(Only user turns here\\); pass --no-chat"):
        tokenizer.chat_prompt("Hi")


def test_offline_download_names_every_file(tmp_path, local_server):
    local_server.add("/config.json", "{}")  # only one of the four files can be fetched
    with pytest.raises(ScriptError) as error:
        download_qwen3(tmp_path / "qwen3", base_url=local_server.base_url + "/")
    message = str(error.value)
    assert message.startswith("could not download tokenizer.json, tokenizer_config.json, model.safetensors:")
    for name in QWEN3_FILES:
        assert f"{local_server.base_url}/{name} -> {tmp_path / 'qwen3' / name}" in message
    assert sorted(p.name for p in (tmp_path / "qwen3").iterdir()) == ["config.json"]  # nothing half-written
    # A weights file that stopped early is not taken for a download.
    local_server.add("/tokenizer.json", "{}")
    local_server.add("/tokenizer_config.json", "{}")
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


def test_script_chats_with_a_llama_folder(tmp_path, capsys, monkeypatch):
    """Llama's turn: the folder's chat template, <|begin_of_text|> once, a stop at <|eot_id|>; its
    float32 weights laid out for decoding."""
    import llama_qwen_weights
    from llama_qwen_weights import main

    laid_out = []
    monkeypatch.setattr(llama_qwen_weights, "lay_out_weights_for_decoding",
                        lambda model: laid_out.append(lay_out_weights_for_decoding(model)))

    model_dir = write_chat_folder(tmp_path / "tiny-llama", "llama")
    tokenizer = tokenizers.Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    tiny_llama(vocab_size=tokenizer.get_vocab_size(), max_position_embeddings=256,
               eos_token_id=tokenizer.token_to_id("<|eot_id|>")).save_pretrained(model_dir)
    main(["--model-dir", str(model_dir), "--prompt", "Every effort", "--system", "Be brief.",
          "--max-new-tokens", "5", "--device", "cpu"])
    out = capsys.readouterr().out
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Every effort"}]
    expected = transformers.AutoTokenizer.from_pretrained(model_dir).apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True)
    ids = tokenizer.encode(expected, add_special_tokens=False).ids
    assert f"Llama3Model from {model_dir}: " in out and "parameters in torch.float32" in out
    assert "Chat format: the folder's chat template\n" in out
    assert f"Prompt ({len(ids)} tokens):\n{expected}\n" in out
    assert ids.count(tokenizer.token_to_id("<|begin_of_text|>")) == 1
    assert re.search(r"^[1-5] tokens in \d+\.\d s \(\d+\.\d tokens/s, KV cache\)$", out, re.M)
    assert [type(model.out_head) for model in laid_out] == [DecodingLinear]


@pytest.mark.parametrize("temperature", ["nan", "inf", "-1", "abc"])
def test_a_temperature_that_cannot_sample_is_refused_in_one_line(temperature, capsys):
    """--temperature follows the series' one rule (plumbing.temperature_problem), before any file
    is read."""
    from llama_qwen_weights import parse_args

    with pytest.raises(SystemExit) as stop:
        parse_args(["--temperature", temperature])
    assert stop.value.code == 2
    last_line = capsys.readouterr().err.splitlines()[-1]
    assert ": error: argument --temperature: " in last_line and temperature in last_line
