"""Chapter 2, sections 2.1-2.5: loading the story, the regex split, SimpleTokenizerV1/V2, and
tiktoken's GPT-2 ids; plus the book's figures when the real the-verdict.txt is at hand."""

import hashlib
import re
from pathlib import Path

import pytest

import a_tokenizer
import d_tokenizer
from a_tokenizer import load_verdict, split_text
from b_tokenizer import SimpleTokenizerV1, build_vocab
from c_tokenizer import SimpleTokenizerV2, build_vocab_v2
from downloads import DownloadError, file_sha256
from plumbing import DATA_DIR, REPO_DIR, ScriptError

BOOK_BPE_IDS = [15496, 11, 466, 345, 588, 8887, 30, 220, 50256, 554, 262, 4252, 18250, 8812, 2114,
                286, 617, 34680, 27271, 13]

STORY = ('"It\'s the last he painted, you know," Mrs. Gisburn said with pardonable pride. '
         "She stood by the window; the light -- pale and thin -- fell on the canvas.")


# ---- the regex split (2.2) ----

def test_split_text_book_example():
    assert split_text("Hello, world. Is this-- a test?") == [
        "Hello", ",", "world", ".", "Is", "this", "--", "a", "test", "?"]


def test_split_text_keeps_every_non_space_character():
    text = 'A (quoted) "word": yes; no_way! it\'s -- well?\n\tend.'
    tokens = split_text(text)
    assert "".join(tokens) == re.sub(r"\s", "", text)
    assert all(token.strip() == token and token for token in tokens)
    assert tokens[:4] == ["A", "(", "quoted", ")"]
    assert ["it", "'", "s", "--", "well", "?"] == tokens[-8:-2]


# ---- vocabulary and SimpleTokenizerV1 (2.3) ----

def test_build_vocab_sorts_distinct_tokens():
    assert build_vocab(["b", "a", ".", "b", "c"]) == {".": 0, "a": 1, "b": 2, "c": 3}


def test_v1_encode_decode():
    tokenizer = SimpleTokenizerV1(build_vocab(split_text("b a c.")))
    assert tokenizer.encode("a b. c") == [1, 2, 0, 3]
    assert tokenizer.decode([1, 2, 0, 3]) == "a b. c"


def test_v1_round_trip_normalises_spaces_before_punctuation():
    tokenizer = SimpleTokenizerV1(build_vocab(split_text(STORY)))
    ids = tokenizer.encode(STORY)
    assert len(ids) == len(split_text(STORY))
    assert tokenizer.decode(ids) == (
        '" It\' s the last he painted, you know," Mrs. Gisburn said with pardonable pride. '
        "She stood by the window; the light -- pale and thin -- fell on the canvas.")
    assert tokenizer.encode(tokenizer.decode(ids)) == ids


def test_v1_unknown_word_names_it_and_points_to_v2():
    tokenizer = SimpleTokenizerV1(build_vocab(split_text(STORY)))
    with pytest.raises(ValueError, match=r"'Hello'.*SimpleTokenizerV2") as info:
        tokenizer.encode("Hello, do you like the canvas?")
    assert "'do'" in str(info.value) and "'canvas'" not in str(info.value)


# ---- SimpleTokenizerV2 (2.4) ----

def test_build_vocab_v2_appends_special_tokens():
    vocab = build_vocab_v2(["b", "a", "b"])
    assert vocab == {"a": 0, "b": 1, "<|endoftext|>": 2, "<|unk|>": 3}


def test_v2_unknown_words_and_endoftext():
    vocab = build_vocab_v2(split_text(STORY))
    tokenizer = SimpleTokenizerV2(vocab)
    unk, eot = vocab["<|unk|>"], vocab["<|endoftext|>"]
    assert (eot, unk) == (len(vocab) - 2, len(vocab) - 1)
    text = " <|endoftext|> ".join(("Hello, you know.", "The light fell on the palace."))
    ids = tokenizer.encode(text)
    assert ids == [unk, vocab[","], vocab["you"], vocab["know"], vocab["."], eot, unk, vocab["light"],
                   vocab["fell"], vocab["on"], vocab["the"], unk, vocab["."]]
    assert tokenizer.decode(ids) == ("<|unk|>, you know. <|endoftext|> <|unk|> light fell on the <|unk|>.")


def test_v2_matches_v1_on_known_words():
    vocab = build_vocab_v2(split_text(STORY))
    assert SimpleTokenizerV2(vocab).encode(STORY) == SimpleTokenizerV1(vocab).encode(STORY)


def test_v2_needs_unk_token():
    with pytest.raises(ValueError, match="build_vocab_v2"):
        SimpleTokenizerV2(build_vocab(["a"]))


# ---- loading the story (2.1) ----

def test_load_verdict_reads_given_path_as_utf8(tmp_path):
    path = tmp_path / "story.txt"
    path.write_bytes("Caf\u00e9 -- na\u00efve\n".encode("utf-8"))
    assert load_verdict(path) == "Caf\u00e9 -- na\u00efve\n"


def test_load_verdict_downloads_and_checks_once(tmp_path, local_server, monkeypatch):
    body = STORY.encode("utf-8")
    monkeypatch.setattr(a_tokenizer, "VERDICT_URL", local_server.add("/the-verdict.txt", body))
    monkeypatch.setattr(a_tokenizer, "VERDICT_SHA256", hashlib.sha256(body).hexdigest())
    monkeypatch.setattr(a_tokenizer, "VERDICT_SIZE", len(body))
    monkeypatch.setattr(a_tokenizer, "VERDICT_PATH", tmp_path / "data" / "the-verdict.txt")
    assert load_verdict() == STORY
    assert load_verdict() == STORY
    assert local_server.requests == ["/the-verdict.txt"]  # the second call used the file on disk


def test_load_verdict_rejects_wrong_checksum(tmp_path, local_server, monkeypatch):
    wrong = "not the story ".ljust(a_tokenizer.VERDICT_SIZE, "x")  # the right size, the wrong bytes
    monkeypatch.setattr(a_tokenizer, "VERDICT_URL", local_server.add("/the-verdict.txt", wrong))
    monkeypatch.setattr(a_tokenizer, "VERDICT_PATH", tmp_path / "the-verdict.txt")
    with pytest.raises(DownloadError, match="checksum"):
        load_verdict()
    assert list(tmp_path.iterdir()) == []


def test_verdict_source_is_the_books_file():
    assert a_tokenizer.VERDICT_URL.endswith("raw.githubusercontent.com/rasbt/LLMs-from-scratch/main/"
                                            "ch02/01_main-chapter-code/the-verdict.txt")
    assert a_tokenizer.VERDICT_PATH == DATA_DIR / "the-verdict.txt"


# ---- GPT-2 byte pair encoding (2.5) ----

def test_gpt2_tokenizer_book_ids(gpt2_tokenizer):
    tokenizer = d_tokenizer.get_gpt2_tokenizer()
    assert tokenizer.n_vocab == gpt2_tokenizer.n_vocab == 50257
    ids = tokenizer.encode(d_tokenizer.TEXT, allowed_special={"<|endoftext|>"})
    assert ids == gpt2_tokenizer.encode(d_tokenizer.TEXT, allowed_special={"<|endoftext|>"}) == BOOK_BPE_IDS
    assert tokenizer.decode(ids) == d_tokenizer.TEXT


def test_gpt2_tokenizer_splits_unknown_words(gpt2_tokenizer):
    tokenizer = d_tokenizer.get_gpt2_tokenizer()
    assert tokenizer.encode("Akwirw ier") == [33901, 86, 343, 86, 220, 959]
    assert tokenizer.decode(tokenizer.encode(STORY)) == STORY


def test_gpt2_tokenizer_failure_says_what_to_do(monkeypatch):
    tiktoken = pytest.importorskip("tiktoken")

    def offline(name):
        raise ConnectionError("no network")

    monkeypatch.setattr(tiktoken, "get_encoding", offline)
    with pytest.raises(ScriptError, match="TIKTOKEN_CACHE_DIR"):
        d_tokenizer.get_gpt2_tokenizer()


# ---- the book's figures on the real the-verdict.txt (skipped when the file is not at hand) ----

def _real_verdict():
    for path in (DATA_DIR / "the-verdict.txt", REPO_DIR.parent / "shared" / "data" / "the-verdict.txt"):
        if Path(path).is_file() and file_sha256(path) == a_tokenizer.VERDICT_SHA256:
            return load_verdict(path)
    pytest.skip("the real the-verdict.txt is not in data/")


def test_book_figures_on_the_verdict(gpt2_tokenizer):
    raw_text = _real_verdict()
    assert len(raw_text) == 20479
    preprocessed = split_text(raw_text)
    assert len(preprocessed) == 4690
    assert len(build_vocab(preprocessed)) == 1130
    vocab_v2 = build_vocab_v2(preprocessed)
    assert len(vocab_v2) == 1132
    assert len(gpt2_tokenizer.encode(raw_text)) == 5145

    import b_tokenizer
    assert SimpleTokenizerV1(build_vocab(preprocessed)).encode(b_tokenizer.TEXT) == [
        1, 56, 2, 850, 988, 602, 533, 746, 5, 1126, 596, 5, 1, 67, 7, 38, 851, 1108, 754, 793, 7]
    text = "Hello, do you like tea? <|endoftext|> In the sunlit terraces of the palace."
    assert SimpleTokenizerV2(vocab_v2).encode(text) == [
        1131, 5, 355, 1126, 628, 975, 10, 1130, 55, 988, 956, 984, 722, 988, 1131, 7]

    from e_data_preparation import create_dataloader_v1
    inputs, targets = next(iter(create_dataloader_v1(raw_text, batch_size=8, max_length=4, stride=4,
                                                     shuffle=False)))
    assert inputs[:, 0].tolist() == [40, 1807, 10899, 15632, 922, 568, 1049, 284]
    assert targets[-1].tolist() == [3285, 326, 11, 287]
