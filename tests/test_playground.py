"""playground.py, playground_models.py and look_inside.py: the request handlers on tiny models,
the token stream against chapter 5's generate, and the attention weights against a hand computation."""

import json
import os
import re
import subprocess
import sys

import pytest
import torch

import playground
from checkpoints import save_checkpoint
from fast_attention import FastMultiHeadAttention
from look_inside import (TokenText, attention_weights, book_attention, generate_stream,
                         next_token_distributions)
from m_efficient_multi_head_attention import MultiHeadAttention
from own_tokenizers import BPETokenizer, CharTokenizer, WordTokenizer, tokenizer_to_dict
from playground_models import model_sources, open_checkpoint, token_label
from plumbing import ScriptError
from s_gpt_model import GPTModel
from u_pretraining import generate
from w_finetune_classifier import build_classifier, classify_review

TEXT = "Every effort moves you forward. The quick brown fox jumps over the lazy dog!\n"
TOKENIZER = CharTokenizer.from_text(TEXT)
CFG = {"vocab_size": TOKENIZER.n_vocab, "context_length": 16, "emb_dim": 16, "n_heads": 2, "n_layers": 2,
       "drop_rate": 0.0, "qkv_bias": True}


def tiny_model(seed=1, cfg=CFG):
    torch.manual_seed(seed)
    return GPTModel(cfg).eval()


def save_tiny_checkpoints(folder):
    """A language model, an instruction model and a classifier, all with a character tokenizer:
    the kinds of checkpoint the series saves, small enough for a test. Returns their paths."""
    tokenizer = tokenizer_to_dict(TOKENIZER)
    lm = save_checkpoint(folder / "tiny-lm.pth", tiny_model(1), CFG, tokenizer=tokenizer)
    instruct = save_checkpoint(folder / "tiny-instruct.pth", tiny_model(4, {**CFG, "context_length": 160}),
                               {**CFG, "context_length": 160}, tokenizer=tokenizer, prompt_format="alpaca")
    classifier = save_checkpoint(folder / "tiny-classifier.pth", build_classifier(tiny_model(3)), CFG,
                                 tokenizer=tokenizer, num_classes=2)
    return lm, instruct, classifier


@pytest.fixture
def client(tmp_path):
    paths = save_tiny_checkpoints(tmp_path)
    broken = tmp_path / "broken.pth"
    broken.write_bytes(b"not a checkpoint")
    sources = {p.name: (lambda p=p: open_checkpoint(p, "cpu")) for p in [*paths, broken]}
    state = playground.Playground(sources)
    state.open("tiny-lm.pth")
    app = playground.create_app(state)
    test_client = app.test_client()
    test_client.state = state
    return test_client


def events(response):
    return [json.loads(line) for line in response.get_data(as_text=True).splitlines()]


# ---- look_inside.py ----

@pytest.mark.parametrize("temperature, top_k", [(0.0, None), (1.5, 3), (0.7, None)])
@pytest.mark.parametrize("use_cache", [True, False])
def test_generate_stream_gives_generates_ids_past_the_context_and_the_logits_it_drew_from(
        temperature, top_k, use_cache):
    model = tiny_model()
    idx = torch.tensor([TOKENIZER.encode("Every effort")])  # 12 tokens, context 16: the window slides
    torch.manual_seed(7)
    expected = generate(model, idx, 10, CFG["context_length"], temperature=temperature, top_k=top_k)
    torch.manual_seed(7)
    steps = list(generate_stream(model, idx, 10, CFG["context_length"], temperature, top_k,
                                 use_cache=use_cache))
    assert [token for token, _ in steps] == expected[0, 12:].tolist()
    for i, (_, logits) in enumerate(steps):
        with torch.no_grad():
            fresh = model(expected[:, :12 + i][:, -CFG["context_length"]:])[0, -1]
        torch.testing.assert_close(logits, fresh, atol=1e-5, rtol=1e-5)


def test_generate_stream_stops_before_the_end_of_text_token_like_generate():
    model = tiny_model()
    idx = torch.tensor([TOKENIZER.encode("The")])
    greedy = generate(model, idx, 5, CFG["context_length"])[0, 3:].tolist()
    eos_id = greedy[2]
    assert eos_id not in greedy[:2]
    streamed = [token for token, _ in generate_stream(model, idx, 5, CFG["context_length"], eos_id=eos_id)]
    assert streamed == generate(model, idx, 5, CFG["context_length"], eos_id=eos_id)[0, 3:].tolist()
    assert streamed == greedy[:2]


def test_token_texts_join_up_to_the_decoded_ids_for_every_tokenizer_of_the_series(gpt2_tokenizer):
    text = "The quick brown fox, the lazy dog: caf\u00e9 \U0001f917 moves!"
    for tokenizer in (gpt2_tokenizer, CharTokenizer.from_text(text), BPETokenizer.train(text, 20),
                      WordTokenizer.from_text(text)):
        ids = tokenizer.encode(text)
        for context in (ids[:3], []):
            stream = TokenText(tokenizer, context)
            pieces = [stream.add(i) for i in ids[len(context):]] + [stream.finish()]
            whole = tokenizer.decode(ids)
            assert "".join(pieces) == whole[len(tokenizer.decode(context)):], type(tokenizer).__name__
    words = WordTokenizer.from_text(text)
    stream = TokenText(words, words.encode("The quick"))
    assert [stream.add(i) for i in words.encode("brown fox, the")] == [" brown", " fox", ",", " the"]
    # The emoji's four bytes come in three GPT-2 tokens: nothing of it until the character is whole.
    stream = TokenText(gpt2_tokenizer)
    assert [stream.add(i) for i in gpt2_tokenizer.encode(" \U0001f917")] == [" ", "", "\U0001f917"]
    stream = TokenText(gpt2_tokenizer)
    assert (stream.add(gpt2_tokenizer.encode("\U0001f917")[0]), stream.finish()) == ("", "\ufffd")


def test_next_token_distributions_before_and_after_temperature_and_top_k():
    logits = torch.tensor([2.0, 1.0, 0.0, -1.0])
    before, after = next_token_distributions(logits, temperature=2.0, top_k=2)
    torch.testing.assert_close(before, torch.tensor([0.6439, 0.2369, 0.0871, 0.0321]), atol=1e-4, rtol=0)
    torch.testing.assert_close(after, torch.tensor([0.6225, 0.3775, 0.0, 0.0]), atol=1e-4, rtol=0)
    assert next_token_distributions(logits, 0.0, None)[1].tolist() == [1.0, 0.0, 0.0, 0.0]  # greedy
    assert torch.equal(next_token_distributions(logits, 1.0)[1], before)
    # Ties at the k-th logit stay, as generate's `logits < min_val` keeps them.
    tied = next_token_distributions(torch.tensor([1.0, 1.0, 0.0]), 1.0, top_k=1)[1]
    torch.testing.assert_close(tied, torch.tensor([0.5, 0.5, 0.0]))


def test_attention_weights_are_softmax_of_scaled_query_key_products_under_the_causal_mask():
    model = tiny_model()
    idx = torch.tensor([TOKENIZER.encode("moves you")])
    weights = attention_weights(model, idx, layer=1)
    assert weights.shape == (2, 9, 9)

    # By hand, from the layer's input and its W_query / W_key.
    block = model.trf_blocks[1]
    with torch.no_grad():
        x = model.drop_emb(model.tok_emb(idx) + model.pos_emb(torch.arange(9)))
        x = model.trf_blocks[0](x)
        normed = block.norm1(x)
        queries = block.att.W_query(normed).view(1, 9, 2, 8).transpose(1, 2)
        keys = block.att.W_key(normed).view(1, 9, 2, 8).transpose(1, 2)
    scores = (queries @ keys.transpose(2, 3)) / 8 ** 0.5
    scores = scores.masked_fill(torch.triu(torch.ones(9, 9, dtype=torch.bool), 1), -torch.inf)
    torch.testing.assert_close(weights, torch.softmax(scores, dim=-1)[0])
    assert torch.all(weights.triu(1) == 0)
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 9))
    with pytest.raises(ValueError, match="layer must be 0 to 1"):
        attention_weights(model, idx, layer=2)


def test_a_model_with_fast_attention_shows_the_books_weights():
    book = tiny_model()
    fast = GPTModel({**CFG, "attention": "fast"}).eval()
    fast.load_state_dict(book.state_dict())
    assert isinstance(fast.trf_blocks[0].att, FastMultiHeadAttention)
    idx = torch.tensor([TOKENIZER.encode("quick fox")])
    torch.testing.assert_close(attention_weights(fast, idx, 0), attention_weights(book, idx, 0))

    torch.manual_seed(3)
    mha = MultiHeadAttention(6, 4, 5, 0.0, num_heads=2, qkv_bias=True).eval()
    x = torch.rand(1, 5, 6)
    torch.testing.assert_close(book_attention(FastMultiHeadAttention.from_book(mha))(x), mha(x))


# ---- opening models ----

def test_each_kind_of_checkpoint_opens_with_its_tokenizer_and_prompt_style(tmp_path):
    lm, instruct, classifier = save_tiny_checkpoints(tmp_path)
    kinds = {path.name: open_checkpoint(path, "cpu") for path in (lm, instruct, classifier)}
    assert {name: loaded.kind for name, loaded in kinds.items()} == {
        "tiny-lm.pth": "lm", "tiny-instruct.pth": "instruct", "tiny-classifier.pth": "classifier"}
    assert kinds["tiny-lm.pth"].tokenizer.encode("fox") == TOKENIZER.encode("fox")
    assert kinds["tiny-classifier.pth"].model.out_head.out_features == 2


def test_a_chapter_5_checkpoint_without_a_tokenizer_reads_gpt2s_and_sft_names_are_instruction_models(
        tmp_path, gpt2_tokenizer):
    cfg = {**CFG, "vocab_size": 50257, "emb_dim": 8}
    torch.manual_seed(0)
    model = GPTModel(cfg).eval()
    chapter_5 = save_checkpoint(tmp_path / "model_and_optimizer.pth", model, cfg)  # as u_pretraining saves
    loaded = open_checkpoint(chapter_5, "cpu")
    assert (loaded.kind, playground.tokenizer_kind(loaded.tokenizer)) == ("lm", "GPT-2 BPE")
    assert loaded.tokenizer.encode("Every effort moves") == gpt2_tokenizer.encode("Every effort moves")
    # Chapter 7 saves <model>-sft.pth with nothing else to say it is an instruction model.
    sft = save_checkpoint(tmp_path / "gpt2-small124M-sft.pth", model, cfg)
    assert open_checkpoint(sft, "cpu").kind == "instruct"
    no_vocab = save_checkpoint(tmp_path / "odd.pth", tiny_model(), CFG)  # no tokenizer, not GPT-2's size
    with pytest.raises(ScriptError, match="stores no tokenizer and its vocabulary .* is not GPT-2's"):
        open_checkpoint(no_vocab, "cpu")


def test_quick_offers_a_tiny_random_model_of_each_kind(gpt2_tokenizer):
    sources = model_sources(playground.parse_args(["--quick"]), "cpu")
    assert list(sources) == ["quick: tiny random GPT", "quick: tiny random instruction model",
                             "quick: tiny random spam classifier"]
    kinds = [sources[name]() for name in sources]
    assert [loaded.kind for loaded in kinds] == ["lm", "instruct", "classifier"]
    assert kinds[2].model.out_head.out_features == 2
    assert kinds[0].tokenizer.encode("Every effort") == gpt2_tokenizer.encode("Every effort")


QUICK_OFFLINE = """
import json, playground
from playground_models import model_sources
state = playground.Playground(model_sources(playground.parse_args(["--quick"]), "cpu"))
client = playground.create_app(state).test_client()
opened = [client.post("/api/model", json={"name": name}).get_json() for name in reversed(state.sources)]
stream = client.post("/api/generate", json={"prompt": "Hi", "max_new_tokens": 3, "temperature": 0})
tokens = client.post("/api/tokens", json={"prompt": "Hi"}).get_json()
print(json.dumps({"opened": opened, "stream": stream.get_data(as_text=True), "tokens": tokens["ids"]}))
"""


def test_quick_runs_without_tiktokens_files_and_without_a_network(tmp_path):
    # An empty tiktoken cache, and every web request sent to a closed port of this computer.
    (tmp_path / "cache").mkdir()
    closed = "http://127.0.0.1:9"
    env = {**os.environ, "TIKTOKEN_CACHE_DIR": str(tmp_path / "cache"), "HTTPS_PROXY": closed,
           "HTTP_PROXY": closed, "https_proxy": closed, "http_proxy": closed, "NO_PROXY": "", "no_proxy": ""}
    result = subprocess.run([sys.executable, "-c", QUICK_OFFLINE], cwd=playground.STATIC_DIR.parent, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    notes, data = result.stdout.splitlines()[:-1], json.loads(result.stdout.splitlines()[-1])
    fallback = [line for line in notes if "could not load the GPT-2 encoding" in line]
    assert len(fallback) == 1  # said once, though three models opened
    assert fallback[0].endswith("The quick models use a character tokenizer (printable ASCII) instead")
    assert [info["kind"] for info in data["opened"]] == ["classifier", "instruct", "lm"]
    assert {info["tokenizer"] for info in data["opened"]} == {"character"}
    assert {info["vocab_size"] for info in data["opened"]} == {102}  # 100 printable characters + 2 special
    assert data["tokens"] == [ord("H") - ord(" ") + 5, ord("i") - ord(" ") + 5]  # after \t\n\x0b\x0c\r
    stream = [json.loads(line) for line in data["stream"].splitlines()]
    assert [event["type"] for event in stream] == ["start", "token", "token", "token", "end"]
    assert os.listdir(tmp_path / "cache") == []


def test_gpt2_placed_by_hand_opens_with_transformers_logits(tmp_path, gpt2_tokenizer, monkeypatch):
    transformers = pytest.importorskip("transformers")
    monkeypatch.setenv("LLM_UNVERIFIED_DATA", "1")  # a tiny stand-in where the pinned 124M files go
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_embd=8, n_layer=1, n_head=2, n_positions=16)
    reference = transformers.GPT2LMHeadModel(config).eval()
    reference.save_pretrained(tmp_path / "124M")  # config.json + model.safetensors, as on the Hub
    args = playground.parse_args(["--gpt2", "--weights", "safetensors", "--models-dir", str(tmp_path)])
    loaded = model_sources(args, "cpu")["gpt2-small (124M)"]()
    assert loaded.kind == "lm" and playground.tokenizer_kind(loaded.tokenizer) == "GPT-2 BPE"
    idx = torch.tensor([gpt2_tokenizer.encode("Every effort moves you")])
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(idx), reference(idx).logits, atol=1e-4, rtol=1e-4)


def test_gpt2_without_its_files_suggests_the_playgrounds_own_flags(tmp_path, monkeypatch):
    import v_load_gpt2_weights

    def offline(*args, **kwargs):
        raise ScriptError("cannot download model.ckpt.index: no network")
    monkeypatch.setattr(v_load_gpt2_weights, "download_and_load_gpt2", offline)
    args = playground.parse_args(["--gpt2", "--models-dir", str(tmp_path)])
    with pytest.raises(ScriptError) as error:
        model_sources(args, "cpu")["gpt2-small (124M)"]()
    assert str(error.value).endswith("\n  - open your own model instead: --checkpoint "
                                     "outputs/model_and_optimizer.pth (written by u_pretraining.py), or "
                                     "--quick for tiny random models")
    assert "--init-from" not in str(error.value) and "--weights safetensors" in str(error.value)


# ---- the handlers ----

def test_models_lists_the_checkpoints_and_describes_the_open_one(client):
    data = client.get("/api/models").get_json()
    assert data["models"] == ["tiny-lm.pth", "tiny-instruct.pth", "tiny-classifier.pth", "broken.pth"]
    current = data["current"]
    assert current["kind"] == "lm" and current["tokenizer"] == "character"
    assert current["vocab_size"] == TOKENIZER.n_vocab and current["context_length"] == 16
    assert current["parameters"] == sum(p.numel() for p in tiny_model().parameters())
    page = client.get("/")
    assert page.status_code == 200 and b"LLM playground" in page.data
    assert client.get("/static/app.js").status_code == 200


def test_generate_streams_generates_tokens_with_their_candidates(client):
    SEED = 2  # six tokens before any <|endoftext|>
    response = client.post("/api/generate", json={"prompt": "Every", "temperature": 1.2, "top_k": 4,
                                                  "max_new_tokens": 6, "seed": SEED})
    assert response.mimetype == "application/x-ndjson"
    stream = events(response)
    assert stream[0] == {"type": "start", "prompt": "Every", "prompt_tokens": 5}
    tokens = [event for event in stream if event["type"] == "token"]
    model = tiny_model()
    torch.manual_seed(SEED)
    expected = generate(model, torch.tensor([TOKENIZER.encode("Every")]), 6, 16, temperature=1.2, top_k=4,
                        eos_id=TOKENIZER.eot_token)
    assert [event["id"] for event in tokens] == expected[0, 5:].tolist()
    assert "".join(event["text"] for event in tokens) == TOKENIZER.decode(expected[0, 5:].tolist())
    for event in tokens:
        chosen = next(c for c in event["candidates"] if c["id"] == event["id"])
        assert chosen["after"] > 0 and chosen["rank"] <= 4  # drawn from the top 4
        assert sum(c["after"] for c in event["candidates"]) == pytest.approx(1.0, abs=1e-5)
        assert [c["rank"] for c in event["candidates"]][:3] == [1, 2, 3]
    assert stream[-1]["type"] == "end" and stream[-1]["tokens"] == 6
    assert stream[-1]["reason"] == "max_new_tokens"
    assert not client.state.lock.locked()


def test_a_word_tokenizer_model_streams_its_words_with_their_spaces(tmp_path):
    words = WordTokenizer.from_text(TEXT)
    cfg = {**CFG, "vocab_size": words.n_vocab}
    path = save_checkpoint(tmp_path / "words.pth", tiny_model(5, cfg), cfg,
                           tokenizer=tokenizer_to_dict(words))
    state = playground.Playground({"words.pth": lambda: open_checkpoint(path, "cpu")})
    state.open("words.pth")
    client = playground.create_app(state).test_client()
    stream = events(client.post("/api/generate", json={"prompt": "The quick", "temperature": 0,
                                                        "max_new_tokens": 8}))
    new_ids = [event["id"] for event in stream if event["type"] == "token"]
    assert len(new_ids) == 8
    prompt_ids = words.encode("The quick")
    written = "".join(event["text"] for event in stream if event["type"] == "token") + stream[-1]["tail"]
    assert written == words.decode(prompt_ids + new_ids)[len("The quick"):]
    assert written.count(" ") >= 4 and written.startswith((" ", ",", ".", "!"))
    assert client.get("/api/models").get_json()["current"]["tokenizer"] == "word"


@pytest.mark.parametrize("settings, message", [
    ({"temperature": -1}, "temperature must be 0 (greedy"),
    ({"temperature": 11}, "temperature must be 0 (greedy"),
    ({"temperature": 1e-40}, "or from 1e-30 to 10, got 1e-40"),  # logits / 1e-40 would overflow
    ({"temperature": "warm"}, "temperature must be a number, got 'warm'"),
    ({"top_k": -3}, "top-k must be 0"),
    ({"top_k": 2.5}, "top k must be a whole number"),
    ({"max_new_tokens": 0}, "max new tokens must be from 1 to 1000"),
    ({"prompt": "x" * 17}, "the prompt has 17 tokens but this model reads at most 16"),
    ({"mode": "chat"}, "chat needs an instruction-tuned model"),
])
def test_bad_generation_requests_get_a_message(client, settings, message):
    response = client.post("/api/generate", json={"prompt": "Every", **settings})
    assert response.status_code == 400
    assert message in response.get_json()["error"]
    assert not client.state.lock.locked()


def test_a_classifier_asked_to_generate_says_so_and_classifies(client):
    info = client.post("/api/model", json={"name": "tiny-classifier.pth"}).get_json()
    assert info["kind"] == "classifier"
    response = client.post("/api/generate", json={"prompt": "Every"})
    assert response.status_code == 400 and "cannot generate text" in response.get_json()["error"]

    data = client.post("/api/classify", json={"text": "quick brown fox"}).get_json()
    model = client.state.current.model
    with torch.no_grad():
        logits = model(torch.tensor([TOKENIZER.encode("quick brown fox")]))[0, -1]
    probabilities = torch.softmax(logits, dim=-1).tolist()
    assert data["probabilities"]["not spam"] == pytest.approx(probabilities[0])
    assert data["probabilities"]["spam"] == pytest.approx(probabilities[1])
    assert data["label"] == classify_review("quick brown fox", model, TOKENIZER, "cpu")
    empty = client.post("/api/classify", json={"text": "  "})
    assert empty.get_json()["error"] == "type a message to classify"


def test_classify_says_how_many_tokens_the_classifier_read(client, tmp_path):
    cut = save_checkpoint(tmp_path / "cut-classifier.pth", build_classifier(tiny_model(3)), CFG,
                          tokenizer=tokenizer_to_dict(TOKENIZER), num_classes=2, max_length=5)
    client.state.sources["cut-classifier.pth"] = lambda: open_checkpoint(cut, "cpu")
    client.post("/api/model", json={"name": "cut-classifier.pth"})
    text = "quick brown fox jumps over"  # 26 tokens: more than max_length 5 and the context of 16
    data = client.post("/api/classify", json={"text": text}).get_json()
    assert {key: data[key] for key in ("tokens", "read_tokens", "limit", "max_length", "context_length")} == {
        "tokens": 26, "read_tokens": 5, "limit": "max_length", "max_length": 5, "context_length": 16}
    with torch.no_grad():  # what it read: the first 5 tokens, which classify_review cuts to
        logits = client.state.current.model(torch.tensor([TOKENIZER.encode(text)[:5]]))[0, -1]
    assert data["probabilities"]["spam"] == pytest.approx(torch.softmax(logits, -1)[1].item())

    client.post("/api/model", json={"name": "tiny-classifier.pth"})  # no max_length: the context
    data = client.post("/api/classify", json={"text": text}).get_json()
    assert (data["read_tokens"], data["limit"], data["max_length"]) == (16, "context_length", None)
    assert client.post("/api/classify", json={"text": "fox"}).get_json()["read_tokens"] == 3


@pytest.mark.parametrize("path", ["/api/generate", "/api/tokens", "/api/attention", "/api/classify",
                                  "/api/model"])
def test_a_request_that_is_not_a_json_object_gets_a_message(client, path):
    for body in ("[1, 2]", "not json", '"Every effort"', ""):
        response = client.post(path, data=body, content_type="application/json")
        assert response.status_code == 400
        assert response.get_json()["error"].startswith("the request must be a JSON object such as")
    assert not client.state.lock.locked()


def test_a_null_prompt_is_empty_and_other_non_text_is_refused(client):
    tokens = client.post("/api/tokens", json={"prompt": None}).get_json()
    assert (tokens["text"], tokens["ids"]) == ("", [])
    stream = events(client.post("/api/generate", json={"prompt": None, "max_new_tokens": 2}))
    assert stream[0] == {"type": "start", "prompt": "", "prompt_tokens": 1}  # starts at <|endoftext|>
    for body in ({"prompt": 5}, {"prompt": ["Every"]}):
        response = client.post("/api/generate", json=body)
        assert response.status_code == 400
        assert response.get_json()["error"].startswith("prompt must be a string, got ")
    assert client.post("/api/classify", json={"text": 7}).get_json()["error"] == \
        "text must be a string, got 7"


def test_an_empty_chat_message_is_refused(client):
    client.post("/api/model", json={"name": "tiny-instruct.pth"})
    for prompt in ("", "  \n", None):
        response = client.post("/api/generate", json={"prompt": prompt, "mode": "chat"})
        assert response.status_code == 400
        assert response.get_json()["error"] == "type a message to send: chat answers an instruction"
    assert not client.state.lock.locked()


def test_a_damaged_checkpoint_gets_a_message_and_the_server_goes_on(client):
    response = client.post("/api/model", json={"name": "broken.pth"})
    assert response.status_code == 400
    assert "cannot open broken.pth" in response.get_json()["error"]
    assert "damaged" in response.get_json()["error"]
    assert client.get("/api/models").get_json()["error"].startswith("cannot open broken.pth")
    assert "cannot open broken.pth" in client.post("/api/tokens", json={"prompt": "a"}).get_json()["error"]
    assert client.post("/api/model", json={"name": "tiny-lm.pth"}).status_code == 200


def test_an_unknown_model_name_gets_the_list_of_models(client):
    response = client.post("/api/model", json={"name": "gpt5.pth"})
    assert response.status_code == 400
    assert response.get_json()["error"] == ("no model named 'gpt5.pth' here; choose one of: tiny-lm.pth, "
                                            "tiny-instruct.pth, tiny-classifier.pth, broken.pth")
    assert client.get("/api/models").get_json()["current"]["name"] == "tiny-lm.pth"  # still open


def test_each_kind_of_damaged_file_gets_its_message(tmp_path):
    lm, _, _ = save_tiny_checkpoints(tmp_path)
    data = lm.read_bytes()
    files = {"empty.pth": b"", "truncated.pth": data[:len(data) // 2]}
    for name, content in files.items():
        (tmp_path / name).write_bytes(content)
    torch.save({"model_state_dict": tiny_model().state_dict()}, tmp_path / "no-config.pth")
    torch.save(tiny_model().state_dict(), tmp_path / "weights-only.pth")
    broken_cfg = save_checkpoint(tmp_path / "bad-config.pth", tiny_model(), {**CFG, "n_heads": 3},
                                 tokenizer=tokenizer_to_dict(TOKENIZER))
    names = [*files, "no-config.pth", "weights-only.pth", broken_cfg.name]
    state = playground.Playground({name: (lambda p=tmp_path / name: open_checkpoint(p, "cpu"))
                                   for name in names})
    client = playground.create_app(state).test_client()
    errors = {}
    for name in names:
        response = client.post("/api/model", json={"name": name})
        assert response.status_code == 400
        errors[name] = response.get_json()["error"]
        assert errors[name].startswith(f"cannot open {name}: ")
    assert "empty.pth: it is damaged, incomplete or not a PyTorch checkpoint (EOFError)" in \
        errors["empty.pth"]
    assert "truncated.pth: it is damaged" in errors["truncated.pth"]
    assert errors["no-config.pth"].endswith("no-config.pth holds no model config; it was not written by "
                                            "this project's save_checkpoint")
    assert "is not a checkpoint of this series: it has no 'model_state_dict'" in errors["weights-only.pth"]
    assert "does not describe a GPTModel" in errors["bad-config.pth"]  # 16 dimensions over 3 heads
    assert "weights_only" not in "".join(errors.values())
    assert client.get("/api/models").get_json()["current"] is None


def test_the_page_fetches_nothing_from_outside_this_server():
    for path in playground.STATIC_DIR.iterdir():
        text = path.read_text(encoding="utf-8")
        for pattern in (r"https?:", r"(?<![:\w])//[\w.-]+\.\w", r"@import", r"@font-face", r"url\(",
                        r"\bsrc=[\"'](?!/static/)", r"\bhref=[\"'](?!/static/)"):
            assert not re.search(pattern, text, re.IGNORECASE), f"{path.name} matches {pattern}"
    page = (playground.STATIC_DIR / "index.html").read_text(encoding="utf-8")
    assert re.findall(r'(?:src|href)="([^"]+)"', page) == ["/static/style.css", "/static/app.js"]


def test_chat_puts_the_message_into_the_alpaca_template(client):
    client.post("/api/model", json={"name": "tiny-instruct.pth"})
    stream = events(client.post("/api/generate", json={"prompt": "Be quick.", "mode": "chat",
                                                        "temperature": 0, "max_new_tokens": 3}))
    assert stream[0]["prompt"].startswith("Below is an instruction that describes a task.")
    assert stream[0]["prompt"].endswith("### Instruction:\nBe quick.\n\n### Response:\n")
    assert [event["type"] for event in stream] == ["start", "token", "token", "token", "end"]
    ids = TOKENIZER.encode(stream[0]["prompt"])
    expected = generate(client.state.current.model, torch.tensor([ids]), 3, 160, eos_id=TOKENIZER.eot_token)
    assert [event["id"] for event in stream[1:4]] == expected[0, len(ids):].tolist()
    tokens = client.post("/api/tokens", json={"prompt": "Be quick."}).get_json()
    assert tokens["text"] == stream[0]["prompt"] and tokens["ids"] == TOKENIZER.encode(tokens["text"])


def test_tokens_shows_each_token_with_its_id(client):
    data = client.post("/api/tokens", json={"prompt": "fox!?"}).get_json()
    assert data["ids"] == TOKENIZER.encode("fox!?") and data["ids"][-1] == TOKENIZER.unk_token
    assert data["labels"] == ["f", "o", "x", "!", "<|unk|>"]
    assert data["tokenizer"] == "character"


def test_a_token_that_holds_part_of_a_character_shows_its_bytes(gpt2_tokenizer):
    ids = gpt2_tokenizer.encode("h\u00e9llo \U0001f917")  # the emoji's four bytes span three tokens
    labels = [token_label(gpt2_tokenizer, i) for i in ids]
    assert labels == ["h", "\u00e9", "llo", " \\xf0\\x9f", "\\xa4", "\\x97"]


def test_attention_handler_returns_the_chosen_layer_and_head(client):
    data = client.post("/api/attention", json={"prompt": "fox", "layer": 1, "head": 0}).get_json()
    expected = attention_weights(client.state.current.model, torch.tensor([TOKENIZER.encode("fox")]), 1)[0]
    torch.testing.assert_close(torch.tensor(data["weights"]), expected, atol=1e-5, rtol=0)
    assert data["labels"] == ["f", "o", "x"]
    response = client.post("/api/attention", json={"prompt": "fox", "layer": 2, "head": 0})
    assert response.status_code == 400 and "layers 0 to 1 and heads 0 to 1" in response.get_json()["error"]


def test_a_second_request_while_one_runs_is_refused_and_the_stream_frees_the_model(client):
    response = client.post("/api/generate", json={"prompt": "Every", "max_new_tokens": 50})
    assert client.state.lock.locked()  # the stream has not been read yet
    busy = client.post("/api/attention", json={"prompt": "fox"})
    assert busy.status_code == 429 and "busy" in busy.get_json()["error"]
    response.close()  # the page went away mid-stream
    assert not client.state.lock.locked()
    assert client.post("/api/attention", json={"prompt": "fox"}).status_code == 200


def test_an_unexpected_error_is_a_message_not_a_dead_server(client, monkeypatch):
    def fail(*args):
        raise RuntimeError("out of memory")
    monkeypatch.setattr(playground, "attention_weights", fail)
    response = client.post("/api/attention", json={"prompt": "fox"})
    assert response.status_code == 500 and "out of memory" in response.get_json()["error"]
    assert not client.state.lock.locked()
    assert client.get("/api/models").status_code == 200


def test_a_missing_checkpoint_is_named_before_the_server_starts(tmp_path):
    with pytest.raises(ScriptError, match="no checkpoint at .*missing.pth; check the path"):
        playground.main(["--checkpoint", str(tmp_path / "missing.pth")])
