"""Section 5.5: OpenAI's GPT-2 checkpoints (TensorFlow and safetensors) read into the book's params
dict, loaded into GPTModel, and checked against Hugging Face transformers' GPT-2 holding the same
weights. Every checkpoint here is one the test writes itself, in the published formats."""

import argparse
import json
import sys

import numpy as np
import pytest
import torch
from conftest import hf_state_dict, openai_variables, write_openai_checkpoint

import gpt_download
from gpt_download import download_and_load_gpt2, load_gpt2_params_from_tf_ckpt
from checkpoints import save_checkpoint
from downloads import DownloadError
from plumbing import ScriptError
from s_gpt_model import GPTModel
from starting_point import add_starting_point_args, load_starting_point
from v_load_gpt2_weights import (BASE_CONFIG, assign, gpt2_config, gpt2_model_name, gpt_model_from_params,
                                 load_weights_into_gpt)

TINY_HPARAMS = {"n_vocab": 64, "n_ctx": 16, "n_embd": 32, "n_head": 2, "n_layer": 2}
TOLERANCE = 1e-4  # max abs difference of the logits from transformers'


def hf_gpt2(variables, hparams):
    transformers = pytest.importorskip("transformers")
    config = transformers.GPT2Config(
        vocab_size=hparams["n_vocab"], n_positions=hparams["n_ctx"], n_embd=hparams["n_embd"],
        n_head=hparams["n_head"], n_layer=hparams["n_layer"], resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
        bos_token_id=None, eos_token_id=None)
    model = transformers.GPT2LMHeadModel(config)
    state = {key: torch.from_numpy(value.copy()) for key, value in hf_state_dict(variables).items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert unexpected == [] and set(missing) <= {"lm_head.weight"}
    assert torch.equal(model.lm_head.weight, state["transformer.wte.weight"])  # tied to wte
    return model.eval()


def max_logit_difference(gpt, hf_model, hparams):
    idx = torch.randint(0, hparams["n_vocab"], (2, hparams["n_ctx"]),
                        generator=torch.Generator().manual_seed(123))
    with torch.no_grad():
        return (gpt.eval()(idx) - hf_model(idx).logits).abs().max().item()


def leaves(tree, path="params"):
    """{path: array} for every array in the book's params dict."""
    if isinstance(tree, dict):
        return {k: v for key, item in tree.items() for k, v in leaves(item, f"{path}[{key!r}]").items()}
    if isinstance(tree, list):
        return {k: v for i, item in enumerate(tree) for k, v in leaves(item, f"{path}[{i}]").items()}
    return {path: tree}


def expected_params(variables):
    """The book's params dict for `variables`, written out by hand."""
    def layer(prefix, weight="w"):
        value = variables[f"{prefix}/{weight}"]
        return {weight: value[0] if value.ndim == 3 else value, "b": variables[f"{prefix}/b"]}

    blocks = [{"attn": {"c_attn": layer(f"model/h{i}/attn/c_attn"),
                        "c_proj": layer(f"model/h{i}/attn/c_proj")},
               "ln_1": layer(f"model/h{i}/ln_1", "g"), "ln_2": layer(f"model/h{i}/ln_2", "g"),
               "mlp": {"c_fc": layer(f"model/h{i}/mlp/c_fc"), "c_proj": layer(f"model/h{i}/mlp/c_proj")}}
              for i in range(TINY_HPARAMS["n_layer"])]
    return {"blocks": blocks, "b": variables["model/ln_f/b"], "g": variables["model/ln_f/g"],
            "wpe": variables["model/wpe"], "wte": variables["model/wte"]}


def assert_same_params(params, variables):
    got, want = leaves(params), leaves(expected_params(variables))
    assert list(params) == ["blocks", "b", "g", "wpe", "wte"]  # the book's key order
    assert got.keys() == want.keys()
    for path, array in want.items():
        assert got[path].shape == array.shape, path
        assert np.array_equal(got[path], array), path


@pytest.fixture(autouse=True)
def stand_in_tokenizer_files(monkeypatch):
    """The test checkpoints' encoder.json and vocab.bpe are stand-ins, not OpenAI's pinned bytes."""
    monkeypatch.setattr(gpt_download, "GPT2_PINNED", {})


def starting_point_args(*argv):
    parser = argparse.ArgumentParser()
    add_starting_point_args(parser, default_model="124M")
    return parser.parse_args(list(argv))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny GPT-2 in OpenAI's TensorFlow format at <models_dir>/124M, its weights, and
    transformers' GPT-2 holding the same weights."""
    variables = openai_variables(TINY_HPARAMS)
    models_dir = tmp_path_factory.mktemp("gpt2")
    write_openai_checkpoint(models_dir / "124M", TINY_HPARAMS, variables)
    return argparse.Namespace(models_dir=models_dir, model_dir=models_dir / "124M", variables=variables,
                              hf_model=hf_gpt2(variables, TINY_HPARAMS))


# ---- OpenAI's TensorFlow checkpoint ----

def test_the_test_checkpoint_has_openais_layout(tiny):
    tf = pytest.importorskip("tensorflow")
    assert sorted(p.name for p in tiny.model_dir.iterdir()) == sorted(gpt_download.GPT2_FILES)
    assert (tiny.model_dir / "checkpoint").read_text(encoding="utf-8").splitlines()[0] == \
        'model_checkpoint_path: "model.ckpt"'
    shapes = dict(tf.train.list_variables(str(tiny.model_dir / "model.ckpt")))
    assert shapes["model/h1/attn/c_attn/w"] == [1, 32, 96]
    assert shapes["model/h0/mlp/c_proj/w"] == [1, 128, 32]
    assert shapes["model/wte"] == [64, 32] and shapes["model/ln_f/g"] == [32]


def test_tf_reader_builds_the_books_params_dict(tiny):
    tf = pytest.importorskip("tensorflow")
    ckpt_path = tf.train.latest_checkpoint(str(tiny.model_dir))
    params = load_gpt2_params_from_tf_ckpt(ckpt_path, TINY_HPARAMS)
    assert_same_params(params, tiny.variables)
    assert params["blocks"][0]["attn"]["c_attn"]["w"].shape == (32, 96)

    # Settings from another model size: refused, naming what does not fit.
    with pytest.raises(ScriptError, match="lacks model/h2/attn/c_attn/b"):
        load_gpt2_params_from_tf_ckpt(ckpt_path, {**TINY_HPARAMS, "n_layer": 3})
    with pytest.raises(ScriptError, match="has no place for model/h1/attn/c_attn/b"):
        load_gpt2_params_from_tf_ckpt(ckpt_path, {**TINY_HPARAMS, "n_layer": 1})


def test_tf_weights_in_gptmodel_equal_transformers_gpt2(tiny, capsys):
    settings, params = download_and_load_gpt2("124M", tiny.models_dir)  # files present: no download
    assert settings == TINY_HPARAMS
    cfg = gpt2_config("124M", settings)
    assert "not the published gpt2-small (124M)" in capsys.readouterr().out  # says it, not silently
    assert cfg == {**BASE_CONFIG, "vocab_size": 64, "context_length": 16, "emb_dim": 32, "n_heads": 2,
                   "n_layers": 2}

    gpt = gpt_model_from_params(cfg, params)
    assert max_logit_difference(gpt, tiny.hf_model, TINY_HPARAMS) <= TOLERANCE

    # The book's way (a regular model, then load_weights_into_gpt) gives the very same model.
    torch.manual_seed(123)
    book_gpt = GPTModel(cfg)
    load_weights_into_gpt(book_gpt, params)
    idx = torch.tensor([[1, 5, 9, 63]])
    with torch.no_grad():
        assert torch.equal(book_gpt.eval()(idx), gpt(idx))


def test_loaded_model_uses_the_params_memory_instead_of_a_copy(tiny):
    _, params = download_and_load_gpt2("124M", tiny.models_dir)
    gpt = gpt_model_from_params(gpt2_config("124M", TINY_HPARAMS), params)
    block, block_params = gpt.trf_blocks[1], params["blocks"][1]

    def shares(tensor, array):
        return np.shares_memory(tensor.detach().numpy(), array)

    assert shares(block.att.W_value.weight, block_params["attn"]["c_attn"]["w"])
    assert shares(block.ff.layers[2].weight, block_params["mlp"]["c_proj"]["w"])
    assert shares(gpt.tok_emb.weight, params["wte"])
    assert not shares(gpt.out_head.weight, params["wte"])  # a copy, so fine-tuning can untie them
    assert all(p.is_contiguous() for p in gpt.parameters())
    assert not any(t.is_meta for t in [*gpt.parameters(), *gpt.buffers()])
    assert torch.equal(block.att.mask, torch.triu(torch.ones(16, 16), diagonal=1))


# ---- Hugging Face safetensors ----

def test_safetensors_from_save_pretrained_equal_transformers_gpt2(tiny, tmp_path):
    tiny.hf_model.save_pretrained(tmp_path / "124M")  # transformers writes config.json + model.safetensors
    settings, params = download_and_load_gpt2("124M", tmp_path, source="safetensors")
    assert settings == TINY_HPARAMS
    assert_same_params(params, tiny.variables)
    gpt = gpt_model_from_params(gpt2_config("124M", settings), params)
    assert max_logit_difference(gpt, tiny.hf_model, TINY_HPARAMS) <= TOLERANCE


def test_safetensors_with_the_hubs_key_names(tiny, tmp_path):
    safetensors_numpy = pytest.importorskip("safetensors.numpy")
    # The Hub's files have no "transformer." prefix and still carry the attention masks.
    state = hf_state_dict(tiny.variables, prefix="")
    mask = np.tril(np.ones((1, 1, 16, 16), dtype=np.float32))
    state.update({f"h.{i}.attn.bias": mask for i in range(TINY_HPARAMS["n_layer"])})
    model_dir = tmp_path / "124M"
    model_dir.mkdir()
    safetensors_numpy.save_file(state, str(model_dir / "model.safetensors"))
    config = {"model_type": "gpt2", "vocab_size": 64, "n_ctx": 16, "n_positions": 16, "n_embd": 32,
              "n_head": 2, "n_layer": 2}
    (model_dir / "config.json").write_text(json.dumps(config), encoding="utf-8")

    settings, params = download_and_load_gpt2("124M", tmp_path, source="safetensors")
    assert settings == TINY_HPARAMS
    assert_same_params(params, tiny.variables)

    (model_dir / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{")  # damaged
    with pytest.raises(ScriptError, match="model.safetensors"):
        download_and_load_gpt2("124M", tmp_path, source="safetensors")


# ---- downloading ----

def serve_openai_release(local_server, model_dir, prefix, missing=(), truncated=()):
    """Serve the seven files under prefix/124M/, except `missing` (404); `truncated` stop halfway."""
    for name in gpt_download.GPT2_FILES:
        if name not in missing:
            body = (model_dir / name).read_bytes()
            local_server.add(f"{prefix}/124M/{name}", body,
                             truncate_at=len(body) // 2 if name in truncated else None)


def test_download_tf_files_with_the_backup_taking_over(tiny, local_server, monkeypatch, tmp_path):
    broken = ("model.ckpt.index", "model.ckpt.data-00000-of-00001")
    serve_openai_release(local_server, tiny.model_dir, "/primary", missing=broken[:1], truncated=broken[1:])
    serve_openai_release(local_server, tiny.model_dir, "/backup")
    monkeypatch.setattr(gpt_download, "GPT2_URL", local_server.base_url + "/primary")
    monkeypatch.setattr(gpt_download, "GPT2_BACKUP_URL", local_server.base_url + "/backup")

    settings, params = download_and_load_gpt2("124M", tmp_path / "gpt2")
    assert settings == TINY_HPARAMS
    assert_same_params(params, tiny.variables)
    model_dir = tmp_path / "gpt2" / "124M"
    assert sorted(p.name for p in model_dir.iterdir()) == sorted(gpt_download.GPT2_FILES)  # no .part
    for name in gpt_download.GPT2_FILES:
        assert (model_dir / name).read_bytes() == (tiny.model_dir / name).read_bytes(), name
    assert sorted(r for r in local_server.requests if r.startswith("/backup")) == \
        sorted(f"/backup/124M/{name}" for name in broken)

    local_server.requests.clear()
    download_and_load_gpt2("124M", tmp_path / "gpt2")  # everything is there now
    assert local_server.requests == []


def test_download_safetensors_from_the_hub_url(tiny, local_server, monkeypatch, tmp_path):
    tiny.hf_model.save_pretrained(tmp_path / "hub")
    for name in gpt_download.HF_FILES:
        local_server.add(f"/openai-community/gpt2-medium/resolve/main/{name}",
                         (tmp_path / "hub" / name).read_bytes())
    monkeypatch.setattr(gpt_download, "HF_URL", local_server.base_url + "/openai-community")
    settings, params = download_and_load_gpt2("355M", tmp_path / "gpt2", source="safetensors")
    assert settings == TINY_HPARAMS
    assert_same_params(params, tiny.variables)
    assert sorted(local_server.requests) == ["/openai-community/gpt2-medium/resolve/main/config.json",
                                             "/openai-community/gpt2-medium/resolve/main/model.safetensors"]


def test_download_failure_says_where_to_put_the_files(local_server, monkeypatch, tmp_path):
    monkeypatch.setattr(gpt_download, "GPT2_URL", local_server.base_url + "/primary")  # serves nothing
    monkeypatch.setattr(gpt_download, "GPT2_BACKUP_URL", local_server.base_url + "/backup")
    with pytest.raises(DownloadError) as error:
        download_and_load_gpt2("124M", tmp_path)
    assert "/primary/124M/checkpoint" in str(error.value) and "/backup/124M/checkpoint" in str(error.value)
    assert str(tmp_path / "124M" / "checkpoint") in str(error.value)
    assert list(tmp_path.iterdir()) == []  # nothing half-written, not even the 124M/ folder it made

    args = starting_point_args("--models-dir", str(tmp_path))
    with pytest.raises(ScriptError) as error:
        load_starting_point(args, "cpu")
    message = str(error.value)
    assert f"into {tmp_path / '124M'} by hand" in message and "model.ckpt.index" in message
    assert "--weights safetensors" in message
    assert "--init-from outputs/model_and_optimizer.pth" in message and "below the book's" in message


def test_missing_tensorflow_suggests_safetensors_before_downloading(local_server, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "tensorflow", None)  # import tensorflow now fails
    monkeypatch.setattr(gpt_download, "GPT2_URL", local_server.base_url)
    with pytest.raises(ScriptError, match="--weights safetensors"):
        download_and_load_gpt2("124M", tmp_path)
    assert local_server.requests == []


def test_bad_model_size_and_source():
    with pytest.raises(ValueError, match="124M, 355M, 774M, 1558M"):
        download_and_load_gpt2("125M")
    with pytest.raises(ValueError, match="safetensors"):
        download_and_load_gpt2("124M", source="pt")


# ---- assign, load_weights_into_gpt and the starting point of chapters 6, 7 and appendix E ----

def test_assign_names_the_tensor_whose_shape_differs():
    left = torch.nn.Parameter(torch.zeros(4, 8))
    with pytest.raises(ValueError, match=r"trf_blocks\[3\]\.att\.W_query\.weight.*\(4, 8\).*\(8, 4\)"):
        assign(left, np.zeros((8, 4), dtype=np.float32), "trf_blocks[3].att.W_query.weight")
    new = assign(left, np.ones((4, 8), dtype=np.float32), "x")
    assert isinstance(new, torch.nn.Parameter) and new.dtype == torch.float32
    assert torch.equal(new, torch.ones(4, 8))


def test_load_weights_into_a_model_of_another_size_fails_clearly(tiny):
    _, params = download_and_load_gpt2("124M", tiny.models_dir)
    cfg = gpt2_config("124M", TINY_HPARAMS)
    with pytest.raises(ValueError, match=r"pos_emb\.weight.*\(32, 32\).*\(16, 32\)"):
        load_weights_into_gpt(GPTModel({**cfg, "context_length": 32}), params)
    with pytest.raises(ValueError, match="qkv_bias"):
        load_weights_into_gpt(GPTModel({**cfg, "qkv_bias": False}), params)
    with pytest.raises(ValueError, match="2 transformer blocks, the model 3"):
        load_weights_into_gpt(GPTModel({**cfg, "n_layers": 3}), params)


def test_model_names():
    assert gpt2_model_name("355M") == "gpt2-medium (355M)"
    assert gpt2_model_name("gpt2-xl") == "gpt2-xl (1558M)"
    assert gpt2_model_name("gpt2") == "gpt2-small (124M)"
    assert starting_point_args("--model", "774m").model == "gpt2-large (774M)"
    assert starting_point_args().model == "gpt2-small (124M)"
    with pytest.raises(SystemExit):
        starting_point_args("--model", "7B")


def test_starting_point_gpt2_from_the_models_dir(tiny):
    model, cfg = load_starting_point(starting_point_args("--models-dir", str(tiny.models_dir)), "cpu")
    assert cfg["emb_dim"] == 32 and not model.training
    assert max_logit_difference(model, tiny.hf_model, TINY_HPARAMS) <= TOLERANCE


def test_starting_point_init_from_a_checkpoint_of_u(tmp_path, capsys):
    # GPT-2's vocabulary: --init-from takes only models that read GPT-2's token ids
    cfg = {**BASE_CONFIG, "vocab_size": 50257, "context_length": 8, "emb_dim": 16, "n_heads": 2,
           "n_layers": 1}
    torch.manual_seed(123)
    trained = GPTModel(cfg).eval()
    path = save_checkpoint(tmp_path / "model_and_optimizer.pth", trained, cfg)

    model, loaded_cfg = load_starting_point(starting_point_args("--init-from", str(path)), "cpu",
                                            quick_cfg={**cfg, "emb_dim": 8})  # --init-from wins
    assert loaded_cfg == cfg and not model.training
    idx = torch.tensor([[3, 1, 4, 1, 5]])
    with torch.no_grad():
        assert torch.equal(model(idx), trained(idx))
    assert "lower than the book's" in capsys.readouterr().out

    with pytest.raises(ScriptError, match="no checkpoint"):
        load_starting_point(starting_point_args("--init-from", str(tmp_path / "missing.pth")), "cpu")


def test_starting_point_quick_is_a_tiny_random_model_and_says_so(capsys):
    cfg = {**BASE_CONFIG, "vocab_size": 64, "context_length": 8, "emb_dim": 16, "n_heads": 2, "n_layers": 1}
    model, quick_cfg = load_starting_point(starting_point_args(), "cpu", quick_cfg=cfg)
    assert quick_cfg == cfg and model.tok_emb.weight.shape == (64, 16) and not model.training
    assert "tiny randomly initialised model instead of GPT-2" in capsys.readouterr().out
    again, _ = load_starting_point(starting_point_args(), "cpu", quick_cfg=cfg)
    assert torch.equal(again.out_head.weight, model.out_head.weight)  # seeded
