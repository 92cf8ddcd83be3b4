"""Train your own small LLM: the char and BPE tokenizers (BPE against tiktoken), resumable training,
damaged checkpoints, and the generation CLI, on tiny configs and texts the tests write."""

import argparse
import hashlib
import io
import json
import os
import random
import re
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from filelock import FileLock

import generate_text
import own_bpe
import own_text_data
import own_text_tokens
import fast_pretraining
import own_tokenizers
import plumbing
import train_own_text
from conftest import hf_state_dict, openai_variables, run_script, write_openai_checkpoint
from a_tokenizer import split_text
from c_tokenizer import SimpleTokenizerV2, build_vocab_v2
from checkpoints import model_from_checkpoint
from own_tokenizers import (GPT2_SPLIT_PATTERN, BPETokenizer, CharTokenizer, WordTokenizer, bytes_to_unicode,
                            load_tokenizer, save_tokenizer, tokenizer_from_dict, tokenizer_to_dict)
from plumbing import DATA_DIR, REPO_DIR, ScriptError, check_temperature, run_main
from p_layernorm_gelu_feedforward import FeedForward
from s_gpt_model import GPTModel
from u_pretraining import generate
from checkpoints import save_checkpoint

ODD_TEXT = (
    "Héllo wörld! Ça va? naïve café — “quotes” ‘single’ … 😀😃🤖👩‍👩‍👧‍👦 🇩🇪 ñ\n\n\n  \t\t x  \r\n"
    "\u00a0nbsp\u2009thin\u3000ideo\u200bzero-width \x1c\x1f\x85 \u2028line\u2029para\ufeffbom"
    "<|endoftext|>日本語のテキスト 中文 한국어 Ελληνικά русский العربية हिन्दी 123,456.789 ¹²³ ½ x²"
    "  trailing   \n\n<|endoftext|><|endoftext|>  I'm you're it's we'll they'd I've 'S 'T  'll\n   \n")

STORY = (
    "The lighthouse keeper counted the ships at dusk. Seven came home; one did not.\n"
    "She wrote their names in the ledger, 1893 to 1901, in a small, careful hand.\n"
    "When the storm came the keeper's daughter lit the lamp again, and again, and again.\n"
    "Nobody thanked her. The ledger kept the names, the sea kept the rest.\n")


def shared_data_file(*parts):
    """A real data file, from data/ or from the shared folder beside the checkout; skip if absent."""
    for base in (DATA_DIR, REPO_DIR.parent / "shared" / "data"):
        if (base.joinpath(*parts)).is_file():
            return base.joinpath(*parts).read_text(encoding="utf-8")
    pytest.skip(f"{'/'.join(parts)} is not in data/")


# ---- character-level tokenizer ----

def test_char_tokenizer_round_trip_unknowns_and_specials():
    tokenizer = CharTokenizer.from_text("hello world\nHé!<|endoftext|>")
    assert tokenizer.chars == ["\n", " ", "!", "H", "d", "e", "h", "l", "o", "r", "w", "é"]  # no '<', '|'
    assert tokenizer.special_tokens == {"<|endoftext|>": 12, "<|unk|>": 13}
    assert tokenizer.n_vocab == 14
    text = "hello Hé!\nworld"
    assert tokenizer.decode(tokenizer.encode(text)) == text
    assert tokenizer.encode("hé") == [6, 11]
    assert tokenizer.encode("hz?") == [6, 13, 13]  # characters it never saw
    assert tokenizer.decode(tokenizer.encode("hz")) == "h<|unk|>"
    assert tokenizer.encode("he<|endoftext|>", allowed_special={"<|endoftext|>"}) == [6, 5, 12]
    ids = tokenizer.encode("he<|endoftext|>")  # not allowed: 13 plain characters, 9 of them unknown
    assert len(ids) == 15 and 12 not in ids and ids.count(13) == 9
    with pytest.raises(ValueError, match="outside"):
        tokenizer.decode([14])


def test_char_tokenizer_save_and_load(tmp_path):
    tokenizer = CharTokenizer.from_text(STORY + "ü😀")
    path = save_tokenizer(tokenizer, tmp_path / "char.json")
    loaded = load_tokenizer(path)
    assert isinstance(loaded, CharTokenizer)
    assert loaded.to_dict() == tokenizer.to_dict()
    assert loaded.encode("Seven ships! ü😀 ~") == tokenizer.encode("Seven ships! ü😀 ~")
    assert loaded.encode("~")[0] == loaded.unk_token
    (tmp_path / "broken.json").write_text('{"kind": "char", "chars": ', encoding="utf-8")
    with pytest.raises(ScriptError, match="not a tokenizer file"):
        load_tokenizer(tmp_path / "broken.json")


# ---- byte-level BPE ----

def test_gpt2_byte_to_unicode_map():
    mapping = bytes_to_unicode()
    assert len(set(mapping.values())) == 256
    assert mapping[ord("A")] == "A" and mapping[ord(" ")] == "Ġ" and mapping[ord("\n")] == "Ċ"
    assert mapping[0] == "Ā" and mapping[0x7F] == "ġ"
    assert mapping[0xAD] == "Ń"  # 256 + 67: the last byte moved past U+0100


def test_bpe_training_by_hand():
    # The classic example: aaabdaaabac -> aa=Z, ab=Y (ties go to the smaller ids), ZY=X, then ac.
    tokenizer = BPETokenizer.train("aaabdaaabac", 4, special_tokens=())
    learned = [tokenizer.vocab[256 + i] for i in range(4)]
    assert learned == [b"aa", b"ab", b"aaab", b"ac"]
    assert tokenizer.merges == [(97, 97), (97, 98), (256, 257), (97, 99)]
    assert tokenizer.encode("aaabdaaabac") == [258, 100, 258, 259]
    # Merges stay inside GPT-2's pre-split pieces: "b" and " " never join.
    tokenizer = BPETokenizer.train("ab ab ab abc", 10)
    assert [tokenizer.vocab[256 + i] for i in range(len(tokenizer.merges))] == [b"ab", b" ab", b" abc"]
    assert tokenizer.special_tokens == {"<|endoftext|>": 259}
    assert tokenizer.encode("ab abc<|endoftext|>", allowed_special="all") == [256, 258, 259]


def naive_bpe_merges(text, num_merges):
    """The textbook O(text x merges) loop: recount every pair of every piece for each merge."""
    pieces = [list(piece.encode("utf-8")) for piece in own_bpe.regex.findall(GPT2_SPLIT_PATTERN, text)]
    vocab = {i: bytes([i]) for i in range(256)}
    merges = []
    for _ in range(num_merges):
        counts = Counter(pair for piece in pieces for pair in zip(piece, piece[1:]))
        if not counts:
            break
        pair = min(counts, key=lambda p: (-counts[p], p))
        new_id = len(vocab)
        vocab[new_id] = vocab[pair[0]] + vocab[pair[1]]
        merges.append(pair)
        pieces = [own_bpe._merge_pair(piece, pair, new_id) for piece in pieces]
    return merges


def test_incremental_bpe_training_equals_the_naive_loop():
    text = (STORY * 3) + ODD_TEXT.replace("<|endoftext|>", "")
    assert BPETokenizer.train(text, 120).merges == naive_bpe_merges(text, 120)


def test_bpe_round_trips_and_save_load(tmp_path):
    tokenizer = BPETokenizer.train(STORY * 5, 60)
    for text in (STORY, ODD_TEXT, "never seen: ẞ 🦜 \x00\x7f"):
        ids = tokenizer.encode(text, allowed_special={"<|endoftext|>"})
        assert tokenizer.decode(ids) == text
    assert tokenizer.decode(tokenizer.encode("😀")[:1]) == "\ufffd"  # half a character
    with pytest.raises(ValueError, match="special token"):
        tokenizer.encode("a<|endoftext|>")  # like tiktoken: special tokens must be allowed
    path = save_tokenizer(tokenizer, tmp_path / "bpe.json")
    data = json.loads(path.read_text(encoding="utf-8"))
    assert data["vocab"]["Ġ"] == 32 and data["vocab"]["Ċ"] == 10  # GPT-2's way of writing bytes
    assert all(line.count(" ") == 1 for line in data["merges"])  # "left right", as in vocab.bpe
    loaded = load_tokenizer(path)
    assert loaded.merges == tokenizer.merges and loaded.vocab == tokenizer.vocab
    assert loaded.encode(ODD_TEXT, allowed_special="all") == tokenizer.encode(ODD_TEXT, allowed_special="all")


def test_trained_bpe_encodes_like_tiktoken_with_the_same_vocabulary():
    tiktoken = pytest.importorskip("tiktoken")
    tokenizer = BPETokenizer.train(STORY * 4 + ODD_TEXT.replace("<|endoftext|>", ""), 150)
    reference = tiktoken.Encoding(name="own", pat_str=GPT2_SPLIT_PATTERN,
                                  mergeable_ranks={token: i for i, token in tokenizer.vocab.items()},
                                  special_tokens=tokenizer.special_tokens)
    for text in (STORY, ODD_TEXT, "The keepers' ledgers, 1894-1900: 7 ships."):
        assert (tokenizer.encode(text, allowed_special="all")
                == reference.encode(text, allowed_special="all"))


def gpt2_files():
    """encoder.json and vocab.bpe from tiktoken's cache, where they are saved under hashed names:
    recognised by their first bytes (a JSON object; the "#version" header of the merges)."""
    cache = Path(os.environ.get("TIKTOKEN_CACHE_DIR") or os.environ.get("DATA_GYM_CACHE_DIR") or
                 os.path.join(tempfile.gettempdir(), "data-gym-cache"))
    found = {}
    for path in (cache.iterdir() if cache.is_dir() else []):
        with open(path, "rb") as file:
            head = file.read(16)
        if head.startswith(b'{"') and b"!" in head:  # encoder.json starts {"!": 0, ...
            found["encoder.json"] = path
        elif head.startswith(b"#version"):
            found["vocab.bpe"] = path
    return [found["encoder.json"], found["vocab.bpe"]] if len(found) == 2 else None


@pytest.fixture(scope="module")
def own_gpt2(gpt2_tokenizer):
    files = gpt2_files()
    if files is None:
        pytest.skip("tiktoken loads gpt2, but its cache holds no encoder.json/vocab.bpe")
    return BPETokenizer.from_gpt2_files(*files)


@pytest.mark.parametrize("name", ["odd", "the-verdict.txt", "tinyshakespeare"])
def test_bpe_with_gpt2_files_equals_tiktoken(name, own_gpt2, gpt2_tokenizer):
    text = {"odd": lambda: ODD_TEXT,
            "the-verdict.txt": lambda: shared_data_file("the-verdict.txt"),
            "tinyshakespeare": lambda: shared_data_file("tinyshakespeare", "input.txt")}[name]()
    ids = own_gpt2.encode(text, allowed_special={"<|endoftext|>"})
    assert ids == gpt2_tokenizer.encode(text, allowed_special={"<|endoftext|>"})
    assert own_gpt2.decode(ids) == text
    assert own_gpt2.n_vocab == 50257 and own_gpt2.eot_token == 50256


def test_bpe_with_gpt2_files_on_random_strings(own_gpt2, gpt2_tokenizer):
    rng = random.Random(0)
    pool = list(" \t\n\r\x0b\x0c\x1c\x85\xa0\u2000\u2028\u3000\u200b'sStTlvdrem0123456789azAZ.,!?-\""
                "éßæ日本😀👍🏽\u200d")
    for _ in range(500):
        text = "".join(rng.choice(pool) for _ in range(rng.randint(1, 25)))
        assert own_gpt2.encode(text) == gpt2_tokenizer.encode(text), repr(text)


def test_tokenizer_descriptions():
    assert tokenizer_from_dict(tokenizer_to_dict(CharTokenizer.from_text("ab"))).chars == ["a", "b"]
    with pytest.raises(ValueError, match="unknown tokenizer"):
        tokenizer_from_dict({"kind": "sentencepiece"})


def test_word_tokenizer_is_chapter_2s_with_a_frequency_cut():
    text = "the cat sat. the cat ran! the dog sat, and the end.<|endoftext|>A new text"
    tokenizer = WordTokenizer.from_text(text)
    assert tokenizer.words[:4] == ["the", ".", "cat", "sat"]  # most frequent first, ties sorted
    assert tokenizer.words[4:] == ["!", ",", "A", "and", "dog", "end", "new", "ran", "text"]
    assert tokenizer.special_tokens == {"<|endoftext|>": 13, "<|unk|>": 14} and tokenizer.n_vocab == 15
    book = SimpleTokenizerV2(build_vocab_v2(split_text(text.replace("<|endoftext|>", " "))))
    sentence = "the dog ran, and the cat sat."
    assert tokenizer.decode(tokenizer.encode(sentence)) == book.decode(book.encode(sentence)) == sentence
    small = WordTokenizer.from_text(text, vocab_size=5)
    assert small.words == ["the", ".", "cat"] and small.n_vocab == 5
    assert small.encode("the dog sat<|endoftext|>", allowed_special={"<|endoftext|>"}) == [0, 4, 4, 3]
    assert small.decode(small.encode("the dog")) == "the <|unk|>"
    assert tokenizer_from_dict(tokenizer_to_dict(small)).words == small.words


def test_vocab_size_sets_the_bpe_merges_and_the_word_list(tmp_path):
    text = STORY * 3
    bpe = own_text_data.build_tokenizer("bpe", text, vocab_size=300)
    assert len(bpe.merges) == 43 and bpe.n_vocab == 300  # 256 bytes + 43 merges + <|endoftext|>
    assert bpe.merges == BPETokenizer.train(text, 43).merges
    assert own_text_data.build_tokenizer("word", text, vocab_size=12).n_vocab == 12
    for kind, size, message in (("bpe", 257, "at least 258"), ("char", 50, "has its own"),
                                ("gpt2", 50257, "has its own"), ("word", 2, "at least 3")):
        with pytest.raises(ScriptError, match=message):
            own_text_data.build_tokenizer(kind, text, vocab_size=size)
    run = ["--checkpoint", str(tmp_path / "refused.pth")]
    with pytest.raises(ScriptError, match="--vocab-size or --bpe-merges, not both"):
        train_own_text.main(["--tokenizer", "bpe", "--vocab-size", "300", "--bpe-merges", "40", *run])
    save_tokenizer(BPETokenizer.train(text, 5), tmp_path / "bpe.json")
    for tokenizer, other in ((["--tokenizer", "word"], "--tokenizer word learns none"),
                             ([], "--tokenizer char learns none"),
                             (["--tokenizer", "gpt2"], "--tokenizer gpt2 learns none"),
                             (["--bpe-path", str(tmp_path / "bpe.json")], "a loaded --bpe-path has its own")):
        with pytest.raises(ScriptError) as refused:
            train_own_text.main([*tokenizer, "--bpe-merges", "20", *run])
        assert str(refused.value) == f"--bpe-merges sets the merges that --tokenizer bpe learns; {other}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bpe.json"]  # refused before the lock file


def test_batch_size_help_says_what_a_batch_is(capsys):
    with pytest.raises(SystemExit):
        train_own_text.main(["--help"])
    assert "--batch-size BATCH_SIZE windows per batch (per process under torchrun; a step takes " \
           "--grad-accum batches) (default 16; --quick 4)" in " ".join(capsys.readouterr().out.split())


def test_d_ff_is_carried_in_the_config(story_file, tmp_path):
    ff = FeedForward({"emb_dim": 8, "d_ff": 12})
    assert ff.layers[0].weight.shape == (12, 8) and ff.layers[2].weight.shape == (8, 12)
    assert FeedForward({"emb_dim": 8}).layers[0].weight.shape == (32, 8)  # the book's 4 x emb_dim
    path = tmp_path / "narrow.pth"
    train_own_text.main(tiny_run_args(story_file, path, "--epochs", "1", "--d-ff", "24"))
    model, cfg = model_from_checkpoint(path)  # rebuilt from the config alone
    assert cfg["d_ff"] == 24 and model.trf_blocks[0].ff.layers[0].weight.shape == (24, 16)
    default_cfg, _ = train_own_text.settings_from_args(train_own_text.parse_args(tiny_run_args(story_file,
                                                                                                path)))
    assert default_cfg["d_ff"] == 64  # 4 x --emb-dim 16, written into the config too


def test_training_with_the_word_tokenizer_reports_unknown_words(story_file, tmp_path, capsys):
    path = tmp_path / "words.pth"
    train_own_text.main(tiny_run_args(story_file, path, "--tokenizer", "word", "--vocab-size", "30",
                                      "--context-length", "8", "--batch-size", "4", "--epochs", "1"))
    out = capsys.readouterr().out
    train_text, val_text, _ = own_text_data.load_training_text(str(story_file), 0.9)
    tokenizer = WordTokenizer.from_text(train_text, 30)
    ids = tokenizer.encode(val_text, allowed_special={"<|endoftext|>"})
    unknown = ids.count(tokenizer.unk_token)
    assert 0 < unknown < len(ids)
    assert (f"Unknown tokens (<|unk|>) in the validation text: {unknown / len(ids):.1%} ({unknown} of "
            f"{len(ids)})") in out
    saved = torch.load(path, weights_only=True)
    assert saved["tokenizer"] == tokenizer.to_dict() and saved["config"]["vocab_size"] == 30


# ---- the text ----

def test_read_text_joins_a_folder_and_rejects_non_utf8(tmp_path):
    (tmp_path / "b.txt").write_text("second", encoding="utf-8")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "c.txt").write_text("third", encoding="utf-8")
    (tmp_path / "a.txt").write_text("first", encoding="utf-8")
    (tmp_path / "notes.md").write_text("ignored", encoding="utf-8")
    assert own_text_data.read_text(tmp_path) == "first<|endoftext|>second<|endoftext|>third"
    (tmp_path / "d.txt").write_bytes("caf\u00e9".encode("latin-1"))
    with pytest.raises(ScriptError, match="not UTF-8"):
        own_text_data.read_text(tmp_path)
    with pytest.raises(ScriptError, match="no file or folder"):
        own_text_data.read_text(tmp_path / "missing")


def test_a_byte_order_mark_is_not_a_training_character(tmp_path):
    (tmp_path / "bom.txt").write_bytes("\ufeffHello".encode("utf-8"))  # Windows' Notepad writes these
    (tmp_path / "plain.txt").write_text("World \ufeff inside", encoding="utf-8")  # not at the start: text
    assert own_text_data.read_text(tmp_path / "bom.txt") == "Hello"
    assert own_text_data.read_text(tmp_path) == "Hello<|endoftext|>World \ufeff inside"
    assert "\ufeff" not in CharTokenizer.from_text(own_text_data.read_text(tmp_path / "bom.txt")).chars


def test_own_tokenizers_cli_reads_folders_and_names_bad_files(tmp_path, capsys):
    (tmp_path / "texts").mkdir()
    (tmp_path / "texts" / "a.txt").write_text(STORY, encoding="utf-8")
    (tmp_path / "texts" / "b.txt").write_text(STORY[::-1], encoding="utf-8")
    save = tmp_path / "bpe.json"
    own_tokenizers.main([str(tmp_path / "texts"), "--merges", "20", "--save", str(save)])
    out = capsys.readouterr().out
    assert "Learned 20 merges" in out and "round trip exact: True" in out  # across <|endoftext|> too
    assert len(load_tokenizer(save).merges) == 20
    (tmp_path / "empty").mkdir()
    with pytest.raises(ScriptError, match=r"the folder .*empty holds no \.txt files"):
        own_tokenizers.main([str(tmp_path / "empty")])
    (tmp_path / "latin1.txt").write_bytes("caf\u00e9".encode("latin-1"))
    with pytest.raises(ScriptError, match=r"latin1\.txt is not UTF-8 text \(unexpected end of data at "
                                          r"byte 3\); convert it to UTF-8"):
        own_tokenizers.main([str(tmp_path / "latin1.txt"), "--save", str(tmp_path / "not-written.json")])
    assert not (tmp_path / "not-written.json").exists()


def test_named_datasets_download_through_the_helper(tmp_path, local_server, monkeypatch):
    monkeypatch.setattr(own_text_data, "DATA_DIR", tmp_path)
    sha = lambda text: hashlib.sha256(text.encode("utf-8")).hexdigest()  # noqa: E731
    monkeypatch.setattr(own_text_data, "SHAKESPEARE_URL", local_server.add("/input.txt", "0123456789"))
    monkeypatch.setattr(own_text_data, "SHAKESPEARE_SHA256", sha("0123456789"))
    assert own_text_data.load_training_text("shakespeare", 0.9)[:2] == ("012345678", "9")
    assert (tmp_path / "tinyshakespeare" / "input.txt").is_file()
    local_server.add("/wt/train.txt", " = Title = \n train text \n")
    local_server.add("/wt/valid.txt", " valid @-@ text \n")
    monkeypatch.setattr(own_text_data, "WIKITEXT2_URL", local_server.base_url + "/wt/{}")
    monkeypatch.setattr(own_text_data, "WIKITEXT2_SHA256",
                        {"train.txt": None, "valid.txt": sha(" valid @-@ text \n")})
    monkeypatch.setattr(own_text_data, "WIKITEXT2_TOKENS", {"train.txt": 7, "valid.txt": 4})  # the stand-ins'
    train, val, _ = own_text_data.load_training_text("wikitext2", 0.9)
    assert (train, val) == (" = Title = \n train text \n", " valid @-@ text \n")


WIKITEXT2_TRAIN = " = Valkyria = \n\n Senjō no Valkyria 3 @:@ <unk> Chronicles \n" * 3  # 13 tokens a copy


def test_wikitext2_tokens_are_counted_as_published():
    path = Path(tempfile.mkdtemp()) / "train.txt"
    path.write_text(WIKITEXT2_TRAIN + "no newline at the end", encoding="utf-8")
    # 3 x (" = Valkyria = " 3 + 1, the empty line 0 + 1, the third line 7 + 1), then 5 + 1
    assert own_text_data.wikitext2_token_count(path) == 3 * 13 + 6


def wikitext2_stand_in(tmp_path, monkeypatch, train_text):
    """A WikiText-2 folder put there by hand: valid.txt whole, train.txt as given; the published
    counts are the whole stand-ins' (13 tokens a copy of WIKITEXT2_TRAIN, 4 in valid.txt)."""
    folder = tmp_path / "wikitext-2"
    folder.mkdir()
    (folder / "train.txt").write_text(train_text, encoding="utf-8")
    (folder / "valid.txt").write_text(" valid @-@ text \n", encoding="utf-8")
    monkeypatch.setattr(own_text_data, "WIKITEXT2_SHA256", {"train.txt": None, "valid.txt": None})
    monkeypatch.setattr(own_text_data, "WIKITEXT2_TOKENS", {"train.txt": 39, "valid.txt": 4})
    monkeypatch.setattr(own_text_data, "WIKITEXT2_URL", "http://127.0.0.1:9/wt/{}")  # never asked
    return folder


def test_a_wikitext2_train_txt_cut_short_is_refused_unless_unverified(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("LLM_UNVERIFIED_DATA", raising=False)
    folder = wikitext2_stand_in(tmp_path, monkeypatch, WIKITEXT2_TRAIN)
    assert own_text_data.load_training_text("wikitext2", 0.9, tmp_path)[0] == WIKITEXT2_TRAIN  # whole
    cut = WIKITEXT2_TRAIN[:100]  # a copy (13), " = Valkyria = " (4), "" (1), "Senjō no Valkyria 3 @:@" (6)
    (folder / "train.txt").write_text(cut, encoding="utf-8")
    with pytest.raises(ScriptError) as refused:
        own_text_data.load_training_text("wikitext2", 0.9, tmp_path)
    assert str(refused.value) == (
        f"{folder / 'train.txt'} is not the expected file: it has 24 tokens where the published WikiText-2 "
        "train.txt has 39; it may have been cut short. Delete it and run again to download it afresh, or "
        "put the right file there (http://127.0.0.1:9/wt/train.txt)")
    monkeypatch.setenv("LLM_UNVERIFIED_DATA", "1")  # the reader's own, shorter train.txt, taken with a note
    capsys.readouterr()
    assert own_text_data.load_training_text("wikitext2", 0.9, tmp_path)[:2] == (cut, " valid @-@ text \n")
    assert capsys.readouterr().err == (
        f"note: {folder / 'train.txt'} is not the published file (it has 24 tokens where the published "
        "WikiText-2 train.txt has 39; it may have been cut short); using it as it is because "
        "LLM_UNVERIFIED_DATA is set\n")


def test_a_wikitext2_download_cut_short_is_refused(tmp_path, local_server, monkeypatch):
    monkeypatch.setenv("LLM_UNVERIFIED_DATA", "1")  # accepts a file put there by hand, not a download
    folder = wikitext2_stand_in(tmp_path, monkeypatch, WIKITEXT2_TRAIN)
    (folder / "train.txt").unlink()
    url = local_server.add("/wt/train.txt", WIKITEXT2_TRAIN[:-70])  # a whole answer, of a file cut short:
    # two copies but for the last line's "hronicles" (13 + 13)
    monkeypatch.setattr(own_text_data, "WIKITEXT2_URL", url.replace("train.txt", "{}"))
    with pytest.raises(ScriptError) as refused:
        own_text_data.load_training_text("wikitext2", 0.9, tmp_path)
    assert str(refused.value).splitlines()[1] == (
        f"  {url}: it has 26 tokens where the published WikiText-2 train.txt has 39; it may have been cut "
        "short")
    assert sorted(p.name for p in folder.iterdir()) == ["valid.txt"]  # nothing of train.txt stays


def shared_wikitext2_file(name):
    """The real WikiText-2 file: downloaded to data/, or in the workplace's read-only copy."""
    for folder in (DATA_DIR / "wikitext-2", Path("/work/shared/data/wikitext-2")):
        if (folder / name).is_file():
            return folder / name
    pytest.skip(f"no real WikiText-2 {name} here")


@pytest.mark.parametrize("name", ["train.txt", "valid.txt"])
def test_the_real_wikitext2_files_have_the_published_token_counts(name):
    path = shared_wikitext2_file(name)
    assert own_text_data.wikitext2_token_count(path) == own_text_data.WIKITEXT2_TOKENS[name]
    own_text_data.check_wikitext2_tokens(path, name)  # passes: raises nothing


# ---- training, checkpoints, resuming ----

@pytest.fixture
def story_file(tmp_path):
    path = tmp_path / "story.txt"
    path.write_text(STORY * 4, encoding="utf-8")  # 1,240 characters: 4 steps per epoch below
    return path


def tiny_run_args(text_path, checkpoint, *extra):
    return ["--data", str(text_path), "--checkpoint", str(checkpoint), "--tokenizer", "char",
            "--context-length", "16", "--emb-dim", "16", "--n-layers", "2", "--n-heads", "2",
            "--batch-size", "16", "--epochs", "3", "--eval-freq", "3", "--eval-iter", "2",
            "--checkpoint-every", "2", "--seed", "7", "--device", "cpu", *extra]


def final_run(checkpoint):
    checkpoint = torch.load(checkpoint, weights_only=True)
    return checkpoint["train_state"], checkpoint["model_state_dict"]


@pytest.fixture
def uninterrupted(story_file, tmp_path):
    path = tmp_path / "full.pth"
    state = train_own_text.main(tiny_run_args(story_file, path))
    assert state["global_step"] == 12 and state["epoch"] == 2  # three epochs of four steps
    return final_run(path)


def assert_same_run(run, reference):
    (state, weights), (ref_state, ref_weights) = run, reference
    for key in ("step_losses", "train_losses", "val_losses", "eval_steps", "track_tokens_seen"):
        assert state[key] == ref_state[key], key  # exactly equal, not just close
    assert all(torch.equal(weights[name], ref_weights[name]) for name in ref_weights)


def test_stopped_and_resumed_run_equals_uninterrupted(story_file, tmp_path, uninterrupted):
    path = tmp_path / "split.pth"
    state = train_own_text.main(tiny_run_args(story_file, path, "--stop-after", "5"))  # mid-epoch 2
    assert state["global_step"] == 5
    assert final_run(path)[0]["step_losses"] == uninterrupted[0]["step_losses"][:5]
    train_own_text.main(["--resume", "--checkpoint", str(path), "--device", "cpu"])
    assert_same_run(final_run(path), uninterrupted)
    assert (tmp_path / "split-losses.png").stat().st_size > 0
    best, reference = (torch.load(tmp_path / name, weights_only=True)
                       for name in ("split-best.pth", "full-best.pth"))
    assert best["best"] == reference["best"]  # the resumed run kept the same best model
    assert all(torch.equal(best["model_state_dict"][k], v) for k, v in reference["model_state_dict"].items())


def test_the_best_validation_checkpoint_is_kept_and_generates(tmp_path, uninterrupted, capsys):
    state, _ = uninterrupted
    best = torch.load(tmp_path / "full-best.pth", weights_only=True)
    lowest = min(range(len(state["val_losses"])), key=state["val_losses"].__getitem__)
    assert best["best"] == {"step": state["eval_steps"][lowest], "val_loss": state["val_losses"][lowest]}
    assert (state["best_step"], state["best_val_loss"]) == (best["best"]["step"], best["best"]["val_loss"])
    assert "optimizer_state_dict" not in best and best["tokenizer"]["kind"] == "char"
    generate_text.main(["The keeper", "--checkpoint", str(tmp_path / "full-best.pth"),
                        "--max-new-tokens", "5"])
    assert capsys.readouterr().out.startswith("The keeper")


def test_run_killed_mid_step_resumes_from_last_checkpoint(story_file, tmp_path, uninterrupted, monkeypatch):
    path = tmp_path / "killed.pth"
    calls = []
    real_calc_loss_batch = fast_pretraining.calc_loss_batch

    def dies_in_step_8(*args):
        calls.append(1)
        if len(calls) == 8:
            raise KeyboardInterrupt  # as if the process were killed here, after the step-6 checkpoint
        return real_calc_loss_batch(*args)

    monkeypatch.setattr(fast_pretraining, "calc_loss_batch", dies_in_step_8)
    with pytest.raises(KeyboardInterrupt):
        train_own_text.main(tiny_run_args(story_file, path))
    assert final_run(path)[0]["global_step"] == 6
    monkeypatch.setattr(fast_pretraining, "calc_loss_batch", real_calc_loss_batch)
    train_own_text.main(["--resume", "--checkpoint", str(path), "--device", "cpu"])
    assert_same_run(final_run(path), uninterrupted)


def test_kill_while_writing_keeps_previous_checkpoint(story_file, tmp_path, uninterrupted, monkeypatch):
    path = tmp_path / "midwrite.pth"
    real_save = torch.save
    saves = []

    def dies_while_writing(obj, file, *args, **kwargs):
        if "-best.pth" in str(file):  # the best-validation checkpoint is written at evaluations
            return real_save(obj, file, *args, **kwargs)
        saves.append(file)
        if len(saves) < 2:
            return real_save(obj, file, *args, **kwargs)
        real_save(obj, file, *args, **kwargs)
        with open(file, "r+b") as handle:  # half of the file is on disk when the process dies
            handle.truncate(os.path.getsize(file) // 2)
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", dies_while_writing)
    with pytest.raises(KeyboardInterrupt):
        train_own_text.main(tiny_run_args(story_file, path))
    monkeypatch.setattr(torch, "save", real_save)
    assert final_run(path)[0]["global_step"] == 2  # the step-4 save died; step 2's file is intact
    Path(str(path) + ".stale.part").write_bytes(b"left by a killed run")
    train_own_text.main(["--resume", "--checkpoint", str(path), "--device", "cpu"])
    assert_same_run(final_run(path), uninterrupted)
    assert not list(tmp_path.glob("midwrite.pth.*.part"))


def test_damaged_checkpoints_give_clear_errors(story_file, tmp_path):
    path = tmp_path / "good.pth"
    train_own_text.main(tiny_run_args(story_file, path, "--epochs", "1"))
    data = path.read_bytes()
    (tmp_path / "truncated.pth").write_bytes(data[:len(data) // 2])
    (tmp_path / "garbage.pth").write_bytes(b"\x00not a checkpoint" * 100)
    for name in ("truncated.pth", "garbage.pth"):
        with pytest.raises(ScriptError, match="damaged, incomplete or not a PyTorch checkpoint"):
            train_own_text.main(["--resume", "--checkpoint", str(tmp_path / name)])
        with pytest.raises(ScriptError, match="damaged"):
            generate_text.main(["hi", "--checkpoint", str(tmp_path / name)])
    torch.manual_seed(0)
    cfg = {"vocab_size": 50, "context_length": 8, "emb_dim": 8, "n_heads": 2, "n_layers": 1,
           "drop_rate": 0.0, "qkv_bias": False}
    save_checkpoint(tmp_path / "plain.pth", GPTModel(cfg), cfg)
    with pytest.raises(ScriptError, match="holds no training state"):
        train_own_text.main(["--resume", "--checkpoint", str(tmp_path / "plain.pth")])
    with pytest.raises(ScriptError, match="already exists"):
        train_own_text.main(tiny_run_args(story_file, path))


def test_a_second_run_on_the_same_checkpoint_stops_at_once(story_file, tmp_path, monkeypatch):
    path = tmp_path / "shared.pth"
    other_runs_temp = tmp_path / "shared.pth.4242.part"  # what a first run is writing right now
    other_runs_temp.write_bytes(b"half of a checkpoint")
    first_run = FileLock(str(path) + ".lock")
    with first_run:
        # flock() excludes another open file of this process as it excludes another process
        with pytest.raises(SystemExit) as refused:
            run_main(lambda: train_own_text.main(tiny_run_args(story_file, path)))
        assert str(refused.value).splitlines()[0] == (
            f"error: another train_own_text.py run is using {path} (it holds {path}.lock); wait for it to "
            "finish, or give this run another --checkpoint")
        with pytest.raises(ScriptError, match="another train_own_text.py run is using"):
            train_own_text.main(tiny_run_args(story_file, path, "--overwrite"))
        # The refused runs touched nothing: the first run's temporary file is still there.
        assert other_runs_temp.read_bytes() == b"half of a checkpoint"
        assert sorted(p.name for p in tmp_path.iterdir()) == ["shared.pth.4242.part", "shared.pth.lock",
                                                              "story.txt"]
    # With the lock free, a run owns the path, and the file of the run that died is stale: removed.
    real_process_alive = plumbing._process_alive  # pid 4242 is the first run's, which has died
    monkeypatch.setattr(plumbing, "_process_alive", lambda pid: pid != 4242 and real_process_alive(pid))
    train_own_text.main(tiny_run_args(story_file, path, "--epochs", "1"))
    assert not other_runs_temp.exists() and final_run(path)[0]["global_step"] == 4


@pytest.mark.skipif(os.name != "posix", reason="elsewhere no process can be asked whether it runs")
def test_a_run_keeps_the_temporary_file_of_a_process_that_still_runs(story_file, tmp_path):
    # Not a run of this script (the lock would stop that) but another writer of the same path, or a
    # process that took a dead run's pid: its file is not this run's to delete.
    path = tmp_path / "kept.pth"
    running = tmp_path / f"kept.pth.{os.getppid()}.part"  # the process that started the tests runs
    dead = tmp_path / "kept.pth.killed.part"
    running.write_bytes(b"being written")
    dead.write_bytes(b"left by a killed run")
    train_own_text.main(tiny_run_args(story_file, path, "--epochs", "1"))
    assert running.read_bytes() == b"being written" and not dead.exists()
    assert final_run(path)[0]["global_step"] == 4


def test_an_unwritable_checkpoint_folder_stops_before_training(story_file, tmp_path, monkeypatch):
    trained = []
    monkeypatch.setattr(fast_pretraining, "calc_loss_batch", lambda *args: trained.append(1))
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder", encoding="utf-8")
    with pytest.raises(ScriptError, match=r"cannot create the folder .*a-file.*"):
        train_own_text.main(tiny_run_args(story_file, blocker / "run.pth"))
    assert blocker.read_text(encoding="utf-8") == "not a folder"
    if os.name == "posix" and os.geteuid() != 0:  # root writes into read-only folders anyway
        locked = tmp_path / "read-only"
        locked.mkdir(mode=0o555)
        with pytest.raises(ScriptError, match=r"cannot write to .*read-only"):
            train_own_text.main(tiny_run_args(story_file, locked / "run.pth"))
        assert list(locked.iterdir()) == []
    assert trained == []  # found before the first step, not after the run
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"] + (
        ["read-only"] if (tmp_path / "read-only").exists() else []) + ["story.txt"]


@pytest.mark.parametrize("error, failing_save", [
    (OSError(28, "No space left on device"), 2),
    (RuntimeError("[enforce fail at inline_container.cc:626] . unexpected pos 3904 vs 3792"), 1)])
def test_a_failed_save_is_one_line_and_keeps_the_previous_checkpoint(story_file, tmp_path, monkeypatch,
                                                                     uninterrupted, error, failing_save):
    path = tmp_path / "full-disk.pth"
    real_save, saves = torch.save, []

    def full_disk(obj, file, *args, **kwargs):
        saves.extend([] if "-best.pth" in str(file) else [file])  # count the checkpoint's saves
        if len(saves) == failing_save and "-best.pth" not in str(file):
            Path(file).write_bytes(b"the first bytes")  # what a full disk leaves of the write
            raise error
        return real_save(obj, file, *args, **kwargs)

    monkeypatch.setattr(torch, "save", full_disk)
    reason = "No space left on device" if isinstance(error, OSError) else "unexpected pos 3904 vs 3792"
    with pytest.raises(ScriptError) as refused:
        train_own_text.main(tiny_run_args(story_file, path))
    message = str(refused.value)
    assert "\n" not in message and f"could not write {path}" in message and reason in message
    assert not list(tmp_path.glob("full-disk.pth.*.part"))
    monkeypatch.setattr(torch, "save", real_save)
    if failing_save == 1:
        assert not path.exists() and "unchanged" not in message
        return
    assert "the earlier file there is unchanged" in message
    assert f"(it holds step 2: continue with python train_own_text.py --resume --checkpoint {path})" \
        in message
    assert final_run(path)[0]["global_step"] == 2  # the checkpoint of step 2, whole
    train_own_text.main(["--resume", "--checkpoint", str(path), "--device", "cpu"])
    assert_same_run(final_run(path), uninterrupted)


def test_resume_without_a_checkpoint_says_how_to_start_one(tmp_path):
    path = tmp_path / "runs" / "missing.pth"
    with pytest.raises(ScriptError) as missing:
        train_own_text.main(["--resume", "--checkpoint", str(path)])
    assert str(missing.value) == (f"there is no checkpoint at {path}; python train_own_text.py without "
                                  "--resume starts a run that writes it (or check the path)")
    assert not (tmp_path / "runs").exists()  # no folder, no lock file made for nothing


@pytest.mark.parametrize("stop", [["--stop-after", "2"], ["--max-steps", "2"], ["--quick"]])
def test_every_run_ends_with_a_sample(story_file, tmp_path, monkeypatch, capsys, stop):
    monkeypatch.setattr(plumbing, "OUTPUTS_DIR", tmp_path / "outputs")
    monkeypatch.chdir(story_file.parent)
    if stop == ["--quick"]:  # its 20 steps end inside the first epoch of this longer text
        story_file.write_text(STORY * 20, encoding="utf-8")
        argv = ["--data", str(story_file), "--quick", "--checkpoint", "sampled.pth", "--seed", "7"]
        path = tmp_path / "outputs" / "quick" / "sampled.pth"  # a bare name: in --quick's folder
    else:
        argv, path = tiny_run_args(story_file, tmp_path / "sampled.pth", *stop), tmp_path / "sampled.pth"
    state = train_own_text.main([*argv, "--prompt", "The keeper", "--sample-tokens", "7", "--device", "cpu"])
    out = capsys.readouterr().out
    assert state["global_step"] == (20 if stop == ["--quick"] else 2) and state["epoch"] == 0
    assert "Sample after epoch" not in out  # the sample below is the end of the run's, mid-epoch
    assert f"Best checkpoint: {path.with_name('sampled-best.pth')} (step {state['best_step']}, " \
           f"validation loss {state['best_val_loss']:.3f})" in out
    model, cfg = model_from_checkpoint(path)  # the model as it was when the run stopped
    tokenizer = tokenizer_from_dict(torch.load(path, weights_only=True)["tokenizer"])
    torch.manual_seed(7)  # the run's --seed
    expected = generate(model, torch.tensor([tokenizer.encode("The keeper")]), 7, cfg["context_length"],
                        temperature=0.8, top_k=50)
    assert f"Sample (7 tokens, temperature 0.8, top-k 50):\n{tokenizer.decode(expected[0].tolist())}\n" in out
    assert len(tokenizer.decode(expected[0].tolist())) == len("The keeper") + 7


def test_a_bare_checkpoint_name_goes_into_the_checkpoint_folder(story_file, tmp_path, monkeypatch, capsys):
    outputs, here, runs = tmp_path / "outputs", tmp_path / "here", tmp_path / "runs"
    here.mkdir()
    monkeypatch.setattr(plumbing, "OUTPUTS_DIR", outputs)
    monkeypatch.chdir(here)
    places = {("bare.pth",): outputs / "bare.pth", ("./dot.pth",): here / "dot.pth",
              ("sub/in_sub.pth",): here / "sub" / "in_sub.pth",
              (str(tmp_path / "abs.pth"),): tmp_path / "abs.pth",
              ("bare.pth", "--checkpoint-dir", str(runs)): runs / "bare.pth",
              ("./dot2.pth", "--checkpoint-dir", str(runs)): here / "dot2.pth"}
    for (name, *extra), place in places.items():
        train_own_text.main(tiny_run_args(story_file, name, "--max-steps", "1", *extra))
        assert final_run(place)[0]["global_step"] == 1, name
    assert sorted(p.name for p in here.iterdir()) == ["dot-best.pth", "dot-losses.png", "dot-tokenizer.json",
                                                      "dot.pth", "dot.pth.lock", "dot2-best.pth",
                                                      "dot2-losses.png", "dot2-tokenizer.json", "dot2.pth",
                                                      "dot2.pth.lock", "sub"]
    with pytest.raises(ScriptError, match=re.escape(f"{outputs / 'bare.pth'} already exists")):
        train_own_text.main(tiny_run_args(story_file, "bare.pth"))
    state = train_own_text.main(["--resume", "--checkpoint", "bare.pth"])  # found where it was written
    assert state["global_step"] == 1
    train_own_text.main(tiny_run_args(story_file, "bare.pth", "--quick", "--max-steps", "1"))
    capsys.readouterr()
    state = train_own_text.main(["--resume", "--quick", "--checkpoint", "bare.pth", "--max-steps", "3"])
    out = capsys.readouterr().out
    assert f"Resuming {outputs / 'quick' / 'bare.pth'} at step 1 of 1" in out and state["global_step"] == 1
    assert "note: --resume takes the run's settings from the checkpoint; ignoring --max-steps\n" in out


def test_data_dir_and_checkpoint_dir(tmp_path, monkeypatch, capsys):
    data_dir, runs = tmp_path / "corpora", tmp_path / "runs"
    (data_dir / "tinyshakespeare").mkdir(parents=True)
    (data_dir / "tinyshakespeare" / "input.txt").write_text(STORY * 4, encoding="utf-8")
    monkeypatch.setattr(own_text_data, "SHAKESPEARE_SHA256", hashlib.sha256((STORY * 4).encode()).hexdigest())
    args = tiny_run_args("shakespeare", "ignored.pth", "--epochs", "1")[4:]  # without --data, --checkpoint
    train_own_text.main(["--data", "shakespeare", "--data-dir", str(data_dir), "--checkpoint-dir", str(runs),
                         *args])
    assert f"Text: tiny-shakespeare ({data_dir / 'tinyshakespeare' / 'input.txt'})" in capsys.readouterr().out
    assert sorted(p.name for p in runs.iterdir()) == ["own_text-best.pth", "own_text-losses.png",
                                                      "own_text-tokenizer.json", "own_text.pth",
                                                      "own_text.pth.lock"]
    train_own_text.main(["--resume", "--data-dir", str(data_dir), "--checkpoint-dir", str(runs)])
    assert "This run is already complete." in capsys.readouterr().out
    train_own_text.main(["--data", "shakespeare", "--data-dir", str(data_dir), "--checkpoint-dir", str(runs),
                         "--checkpoint", "second.pth", *args])
    assert final_run(runs / "second.pth")[0]["step_losses"] == \
        final_run(runs / "own_text.pth")[0]["step_losses"]  # the same text, found in --data-dir again


TINY_GPT2 = {"vocab_size": 50257, "context_length": 32, "emb_dim": 8, "n_heads": 2, "n_layers": 1,
             "drop_rate": 0.0, "qkv_bias": True}


def init_run_args(story_file, checkpoint, *extra):
    return ["--data", str(story_file), "--checkpoint", str(checkpoint), "--context-length", "16",
            "--batch-size", "4", "--epochs", "1", "--eval-freq", "2", "--eval-iter", "1", "--seed", "7",
            "--device", "cpu", "--sample-tokens", "3", *extra]


def starting_weights(monkeypatch, argv):
    """The model a run starts from, caught before its first step."""
    caught = {}

    def catch(run, stop_after=None):
        caught.update(state=dict(run.model.state_dict()), cfg=run.cfg, settings=run.settings)
        return run.state

    monkeypatch.setattr(train_own_text, "train_own_model", catch)
    train_own_text.main(argv)
    monkeypatch.undo()
    return caught


def test_init_from_a_checkpoint_crops_the_context_and_resumes(story_file, tmp_path, monkeypatch,
                                                                       gpt2_tokenizer):
    torch.manual_seed(0)
    start = save_checkpoint(tmp_path / "model_and_optimizer.pth", GPTModel(TINY_GPT2), TINY_GPT2)  # as u's
    weights = torch.load(start, weights_only=True)["model_state_dict"]
    caught = starting_weights(monkeypatch, init_run_args(story_file, tmp_path / "a.pth", "--init-from",
                                                         str(start)))
    assert caught["cfg"] == {**TINY_GPT2, "context_length": 16} and caught["settings"]["tokenizer"] == "gpt2"
    for name, value in weights.items():  # crop_block_size: the first 16 positions
        want = value[:16] if name == "pos_emb.weight" else \
            value[:16, :16] if name.endswith("att.mask") else value
        assert torch.equal(caught["state"][name], want), name
    # Stopped and resumed, it continues as any run does (the checkpoint holds the cropped model).
    train_own_text.main(init_run_args(story_file, tmp_path / "split.pth", "--init-from", str(start),
                                      "--stop-after", "3"))
    state = train_own_text.main(["--resume", "--checkpoint", str(tmp_path / "split.pth"), "--device", "cpu"])
    assert state["global_step"] == 4 and len(state["step_losses"]) == 4
    assert torch.load(tmp_path / "split.pth", weights_only=True)["run_settings"]["init_from"] == str(start)
    for extra, message in ((["--emb-dim", "16"], "brings its own sizes and tokenizer; leave out --emb-dim"),
                           (["--context-length", "64"], "can shrink, not grow")):
        with pytest.raises(ScriptError, match=message):
            train_own_text.main(init_run_args(story_file, tmp_path / "b.pth", "--init-from", str(start),
                                              *extra))
    with pytest.raises(ScriptError, match="'gpt3' is no checkpoint file and unknown GPT-2 model"):
        train_own_text.main(init_run_args(story_file, tmp_path / "c.pth", "--init-from", "gpt3"))


def test_init_from_a_model_that_is_no_language_model_is_one_line(story_file, tmp_path):
    from w_finetune_classifier import build_classifier

    torch.manual_seed(0)
    classifier = build_classifier(GPTModel(TINY_GPT2), num_classes=2)
    starts = {"classifier": save_checkpoint(tmp_path / "review_classifier.pth", classifier, TINY_GPT2,
                                            num_classes=2, max_length=12),  # as chapter 6 saves it
              "headless": save_checkpoint(tmp_path / "old_classifier.pth", classifier, TINY_GPT2),
              "no config": tmp_path / "weights_only.pth"}
    torch.save({"model_state_dict": GPTModel(TINY_GPT2).state_dict()}, starts["no config"])
    expected = {
        "classifier": f"{starts['classifier']} is chapter 6's classifier: its output layer scores 2 "
                      "classes, not the next token, so it cannot be trained on text; give --init-from a "
                      "language model",
        "headless": f"the weights in {starts['headless']} do not fit a GPTModel built from its config: "
                    "unexpected 1 key(s): out_head.bias; 1 shape(s) differ: out_head.weight is (2, 8) in the "
                    "file, (50257, 8) in the model",
        "no config": f"{starts['no config']} holds no model config; it was not written by save_checkpoint"}
    runs = tmp_path / "runs" / "ft"
    for kind, start in starts.items():
        argv = init_run_args(story_file, runs / "ft.pth", "--init-from", str(start))
        with pytest.raises(SystemExit) as refused:
            run_main(lambda argv=argv: train_own_text.main(argv))
        first_line, traceback_hint = str(refused.value).splitlines()
        assert first_line.startswith(f"error: {expected[kind]}"), kind
        assert traceback_hint == "(set LLM_TRACEBACK=1 to see the full traceback)"
        assert not (tmp_path / "runs").exists(), kind  # no lock file, no folder made for nothing


@pytest.mark.parametrize("weights", ["safetensors", "tf"])
def test_init_from_gpt2_files_placed_by_hand(story_file, tmp_path, monkeypatch, gpt2_tokenizer, weights):
    hparams = {"n_vocab": 50257, "n_ctx": 32, "n_embd": 8, "n_head": 2, "n_layer": 1}
    variables = openai_variables(hparams)
    folder = tmp_path / "data" / "gpt2" / "124M"  # under --data-dir, where --models-dir is by default
    if weights == "tf":
        write_openai_checkpoint(folder, hparams, variables)  # TensorFlow's format, as OpenAI published it
    else:
        safetensors_numpy = pytest.importorskip("safetensors.numpy")
        folder.mkdir(parents=True)
        safetensors_numpy.save_file(hf_state_dict(variables), str(folder / "model.safetensors"))
        (folder / "config.json").write_text(json.dumps(
            {"model_type": "gpt2", "vocab_size": 50257, "n_ctx": 32, "n_positions": 32, "n_embd": 8,
             "n_head": 2, "n_layer": 1}), encoding="utf-8")
    argv = init_run_args(story_file, tmp_path / "ft.pth", "--init-from", "gpt2-small (124M)", "--weights",
                         weights, "--data-dir", str(tmp_path / "data"))
    first_checked = folder / ("encoder.json" if weights == "tf" else "config.json")
    with pytest.raises(ScriptError, match=f"{first_checked} is not the expected file"):
        train_own_text.main(argv)  # random stand-ins are not OpenAI's published files ...
    places = [[]] if weights == "tf" else [[], ["--models-dir", str(folder.parent), "--data-dir", "other"]]
    for place in places:
        with pytest.MonkeyPatch.context() as env:
            env.setenv("LLM_UNVERIFIED_DATA", "1")  # ... unless the reader says to use them as they are
            caught = starting_weights(monkeypatch, [*argv, *place])
        assert torch.equal(caught["state"]["tok_emb.weight"], torch.from_numpy(variables["model/wte"]))
        assert torch.equal(caught["state"]["pos_emb.weight"], torch.from_numpy(variables["model/wpe"][:16]))
        assert torch.equal(caught["state"]["trf_blocks.0.ff.layers.2.bias"],
                           torch.from_numpy(variables["model/h0/mlp/c_proj/b"]))
        assert caught["cfg"]["context_length"] == 16 and caught["cfg"]["emb_dim"] == 8


def test_chapters_6_and_7_start_from_a_best_checkpoint_with_gpt2s_tokenizer(story_file, tmp_path,
                                                                           gpt2_tokenizer):
    from starting_point import load_starting_point

    train_own_text.main(tiny_run_args(story_file, tmp_path / "g2.pth", "--tokenizer", "gpt2", "--batch-size",
                                      "4", "--epochs", "1"))
    best = torch.load(tmp_path / "g2-best.pth", weights_only=True)
    model, cfg = load_starting_point(argparse.Namespace(init_from=tmp_path / "g2-best.pth"), "cpu")  # w, x, z
    assert cfg == best["config"] and cfg["vocab_size"] == 50257 and best["tokenizer"] == {"kind": "gpt2"}
    weights = model.state_dict()
    assert weights.keys() == best["model_state_dict"].keys()
    assert all(torch.equal(weights[name], value) for name, value in best["model_state_dict"].items())


def test_fast_path_follows_the_book_path(story_file, tmp_path, capsys):
    def run(name, *extra):
        checkpoint = tmp_path / f"{name}.pth"
        return train_own_text.main(tiny_run_args(story_file, checkpoint, "--epochs", "1", *extra))

    book, fast = run("book"), run("fast", "--fast", "--dtype", "float32")
    assert "Using: fast path" in capsys.readouterr().out
    # FastDropout draws other masks than the book's nn.Dropout: the losses differ by dropout's noise.
    assert fast["step_losses"] != pytest.approx(book["step_losses"], abs=1e-4)
    assert fast["step_losses"] == pytest.approx(book["step_losses"], abs=0.05)
    # Without dropout the same seed gives the same steps: only the rounding differs.
    book_no_dropout = run("book0", "--drop-rate", "0")
    fast_no_dropout = run("fast0", "--drop-rate", "0", "--fast", "--dtype", "float32")
    assert fast_no_dropout["step_losses"] == pytest.approx(book_no_dropout["step_losses"], abs=1e-4)
    book_cfg = torch.load(tmp_path / "book.pth", weights_only=True)["config"]
    assert torch.load(tmp_path / "fast.pth", weights_only=True)["config"] == {
        **book_cfg, "attention": "fast", "fast_layers": True}  # what every loader rebuilds


def test_fast_path_with_bfloat16_and_accumulation_resumes_exactly(story_file, tmp_path):
    args = ["--fast", "--dtype", "bfloat16", "--batch-size", "8", "--grad-accum", "2", "--epochs", "1"]
    full = train_own_text.main(tiny_run_args(story_file, tmp_path / "full.pth", *args))
    train_own_text.main(tiny_run_args(story_file, tmp_path / "split.pth", *args, "--stop-after", "3"))
    train_own_text.main(["--resume", "--checkpoint", str(tmp_path / "split.pth"), "--device", "cpu"])
    assert full["global_step"] == 4 and full["step_losses"][-1] < full["step_losses"][0]
    assert_same_run(final_run(tmp_path / "split.pth"), final_run(tmp_path / "full.pth"))


def test_gradient_accumulation_is_the_larger_batch(story_file, tmp_path):
    runs = {}
    for name, extra in (("big", ["--batch-size", "16"]),
                        ("accum", ["--batch-size", "8", "--grad-accum", "2"])):
        runs[name] = train_own_text.main(tiny_run_args(story_file, tmp_path / f"{name}.pth", "--epochs", "1",
                                                       "--drop-rate", "0", *extra))
    assert runs["accum"]["global_step"] == runs["big"]["global_step"] == 4
    assert runs["accum"]["step_losses"] == pytest.approx(runs["big"]["step_losses"], abs=1e-5)
    big, accum = final_run(tmp_path / "big.pth")[1], final_run(tmp_path / "accum.pth")[1]
    assert all(torch.allclose(accum[name], big[name], atol=1e-5) for name in big)
    with pytest.raises(ScriptError, match="--grad-accum 5 asks for more batches than the 4 of an epoch"):
        train_own_text.main(tiny_run_args(story_file, tmp_path / "c.pth", "--grad-accum", "5"))


def test_compile_trains_the_compiled_wrapper(story_file, tmp_path, monkeypatch, capsys):
    compiled = []
    monkeypatch.setattr(torch, "compile", lambda model: compiled.append(model) or model)  # takes long
    train_own_text.main(tiny_run_args(story_file, tmp_path / "c.pth", "--epochs", "1", "--compile"))
    assert [type(model).__name__ for model in compiled] == ["GPTModel"]
    assert "Using: torch.compile" in capsys.readouterr().out
    assert torch.load(tmp_path / "c.pth", weights_only=True)["run_settings"]["compile"] is True


def test_token_chunks_encode_as_the_whole_text(own_gpt2, gpt2_tokenizer):
    text = (STORY + "\n  indented\n\n\tx\n" + ODD_TEXT) * 3
    pieces = list(own_text_tokens.chunks(text, size=40))
    assert "".join(pieces) == text and len(pieces) > 10
    assert all(piece.endswith("\n") and not following[0].isspace()
               for piece, following in zip(pieces, pieces[1:]))
    for tokenizer in (gpt2_tokenizer, own_gpt2, BPETokenizer.train(text, 50), WordTokenizer.from_text(text),
                      CharTokenizer.from_text(text)):
        whole = tokenizer.encode(text, allowed_special={"<|endoftext|>"})
        pieces_ids = [tokenizer.encode(piece, allowed_special={"<|endoftext|>"}) for piece in pieces]
        assert [i for ids in pieces_ids for i in ids] == whole
    assert own_text_tokens.token_dtype(50257) == np.uint16 and own_text_tokens.token_dtype(65537) == np.uint32


def test_memmap_run_equals_the_in_memory_run_and_reuses_its_arrays(story_file, tmp_path, uninterrupted,
                                                                   monkeypatch, capsys):
    path, data_dir = tmp_path / "mapped.pth", tmp_path / "data"
    capsys.readouterr()
    train_own_text.main(tiny_run_args(story_file, path, "--memmap", "--data-dir", str(data_dir)))
    assert_same_run(final_run(path), uninterrupted)  # the same windows, so the same run
    arrays = sorted((data_dir / "tokens").iterdir())
    assert [p.suffix for p in arrays] == [".uint16", ".uint16"]  # training and validation ids
    train_text, val_text, _ = own_text_data.load_training_text(str(story_file), 0.9)
    tokenizer = tokenizer_from_dict(torch.load(path, weights_only=True)["tokenizer"])
    assert sorted(np.fromfile(p, dtype=np.uint16).tolist() for p in arrays) == sorted(
        [tokenizer.encode(train_text), tokenizer.encode(val_text)])
    names = [own_text_tokens.token_file(text, tokenizer, data_dir / "tokens")
             for text in (train_text, val_text)]
    assert [written for _, written in names] == [False, False]  # there already: named, not written again
    said = f"Token ids (--memmap) in {data_dir / 'tokens'}: training {names[0][0].name} (DONE), validation " \
           f"{names[1][0].name} (DONE)\n"
    assert said.replace("DONE", "written now") in capsys.readouterr().out
    stamps = [p.stat().st_mtime_ns for p in arrays]
    monkeypatch.setattr(own_text_tokens, "chunks", lambda *args: pytest.fail("tokenised again"))
    train_own_text.main(tiny_run_args(story_file, tmp_path / "again.pth", "--memmap", "--data-dir",
                                      str(data_dir), "--stop-after", "5"))
    assert said.replace("DONE", "reused") in capsys.readouterr().out
    assert [p.stat().st_mtime_ns for p in sorted((data_dir / "tokens").iterdir())] == stamps
    train_own_text.main(["--resume", "--checkpoint", str(tmp_path / "again.pth"), "--data-dir",
                         str(data_dir)])
    assert_same_run(final_run(tmp_path / "again.pth"), uninterrupted)


def test_torchrun_two_processes_stopped_and_resumed_train_as_one_with_the_global_batch(story_file, tmp_path):
    """`torchrun --nproc_per_node=2 train_own_text.py` on two CPU processes (gloo); rank 0 writes.
    Stopped after 2 of the 4 steps and resumed, the two processes (batch 8 each) train what one
    process does with batch 16."""
    def torchrun(*argv):
        return run_script("train_own_text.py", *argv, data_dir=tmp_path, outputs_dir=tmp_path,
                          nproc_per_node=2, timeout=180).stdout

    args = ["--epochs", "1", "--drop-rate", "0"]
    train_own_text.main(tiny_run_args(story_file, tmp_path / "one.pth", *args))  # batch 16
    out = torchrun(*tiny_run_args(story_file, tmp_path / "two.pth", *args, "--batch-size", "8",
                                  "--stop-after", "2"))
    assert out.count("Ep 1 (Step 000001)") == 1 and "Using: 2 processes (gloo)" in out  # rank 0 alone prints
    assert final_run(tmp_path / "two.pth")[0]["global_step"] == 2
    torchrun("--resume", "--checkpoint", str(tmp_path / "two.pth"), "--device", "cpu")
    two_state, two_weights = final_run(tmp_path / "two.pth")
    one_state, one_weights = final_run(tmp_path / "one.pth")
    assert two_state["global_step"] == 4
    for key in ("step_losses", "train_losses", "val_losses"):  # rank 0 evaluates on batches of 16
        assert two_state[key] == pytest.approx(one_state[key], abs=1e-5), key
    for key in ("eval_steps", "track_tokens_seen"):
        assert two_state[key] == one_state[key], key
    assert all(torch.allclose(two_weights[name], one_weights[name], atol=1e-5) for name in one_weights)
    with pytest.raises(ScriptError, match="trained by 2 process"):
        train_own_text.main(["--resume", "--checkpoint", str(tmp_path / "two.pth"), "--overwrite"])


def test_too_short_text_is_a_clear_error(tmp_path):
    short = tmp_path / "short.txt"
    short.write_text("Only a few words here.", encoding="utf-8")
    with pytest.raises(ScriptError, match="too short.*--context-length"):
        train_own_text.main(tiny_run_args(short, tmp_path / "a.pth"))
    short.write_text(STORY[:200], encoding="utf-8")  # enough for a window, not for a batch of 16
    with pytest.raises(ScriptError, match="fewer than one batch of --batch-size 16"):
        train_own_text.main(tiny_run_args(short, tmp_path / "b.pth"))
    assert [p.name for p in tmp_path.iterdir()] == ["short.txt"]  # no lock file, no tokenizer file


# ---- generation ----

class ScriptedModel(torch.nn.Module):
    """Stands in for a GPT: its next-token logits spell out `script`, one id per call."""

    def __init__(self, script, vocab_size, prompt_length):
        super().__init__()
        self.script, self.vocab_size, self.prompt_length = script, vocab_size, prompt_length

    def forward(self, idx):
        logits = torch.zeros(idx.shape[0], idx.shape[1], self.vocab_size)
        logits[:, -1, self.script[idx.shape[1] - self.prompt_length]] = 1.0
        return logits


def test_streaming_prints_whole_characters():
    tokenizer = BPETokenizer.train("plain ascii text", 5)
    script = list("é😀!".encode("utf-8")) + [tokenizer.eot_token]  # byte tokens split the characters
    chunks = []
    new_ids = generate_text.stream_generate(ScriptedModel(script, tokenizer.n_vocab, 1), torch.tensor([[1]]),
                                            tokenizer, 20, 64, 0.0, None, tokenizer.eot_token, chunks.append,
                                            use_cache=False)  # a stand-in model has no keys and values
    assert new_ids == script[:-1]  # stopped at <|endoftext|>
    assert "".join(chunks) == "é😀!"
    assert [c for c in chunks if c] == ["é", "😀", "!"]  # never half a character


def test_streaming_writes_what_the_tokenizer_decodes_from_all_the_ids():
    text = "The quick brown fox, the lazy dog moves!"
    for tokenizer in (WordTokenizer.from_text(text), BPETokenizer.train(text, 12),
                      CharTokenizer.from_text(text)):
        prompt = tokenizer.encode("The quick")
        script = tokenizer.encode(" brown fox, the lazy dog") + [tokenizer.eot_token]
        chunks = []
        new_ids = generate_text.stream_generate(
            ScriptedModel(script, tokenizer.n_vocab, len(prompt)), torch.tensor([prompt]), tokenizer, 40, 64,
            0.0, None, tokenizer.eot_token, chunks.append, use_cache=False)
        assert new_ids == script[:-1]
        written = "".join(chunks)
        assert written == tokenizer.decode(prompt + new_ids)[len("The quick"):] == " brown fox, the lazy dog"


def test_streaming_with_the_kv_cache_gives_the_uncached_ids():
    torch.manual_seed(0)
    cfg = {"vocab_size": 40, "context_length": 12, "emb_dim": 16, "n_heads": 2, "n_layers": 2,
           "drop_rate": 0.0, "qkv_bias": True}
    model = GPTModel(cfg).eval()
    tokenizer = CharTokenizer([chr(ord("a") + i) for i in range(38)])  # 38 letters + 2 special tokens
    prompt = torch.tensor([[1, 5, 9, 2]])
    # 20 new tokens: past the context of 12, where the window slides and the cache starts over
    book = generate(model, prompt, 20, cfg["context_length"])[0, 4:].tolist()
    for use_cache in (True, False):
        ids = generate_text.stream_generate(model, prompt, tokenizer, 20, cfg["context_length"], 0.0, None,
                                            None, lambda text: None, use_cache=use_cache)
        assert ids == book


def test_generate_cli_end_to_end(story_file, tmp_path):
    outputs = tmp_path / "outputs"
    result = run_script("train_own_text.py", "--quick", "--data", str(story_file), "--tokenizer", "bpe",
                        "--bpe-merges", "30", "--context-length", "8", "--max-steps", "6",
                        data_dir=tmp_path / "data", outputs_dir=outputs, timeout=120)
    assert "Training a byte-level BPE with 30 merges" in result.stdout
    assert "Checkpoint:" in result.stdout and "(step 6 of 6)" in result.stdout
    quick = outputs / "quick"  # where a --quick run writes, so it never replaces a real run's files
    assert sorted(p.name for p in outputs.iterdir()) == ["quick"]
    assert (quick / "own_text-losses.png").is_file() and (quick / "own_text-tokenizer.json").is_file()
    result = run_script("generate_text.py", "The keeper", "--max-new-tokens", "12", "--seed", "1",
                        "--checkpoint", str(quick / "own_text.pth"),
                        data_dir=tmp_path / "data", outputs_dir=outputs, timeout=120)
    assert result.stdout.startswith("The keeper") and len(result.stdout) > len("The keeper\n")
    assert "own BPE tokenizer (287 tokens)" in result.stderr  # 256 bytes + 30 merges + <|endoftext|>
    assert re.search(r"\[12 tokens in [0-9.]+ s: [0-9,.]+ tokens/s\]", result.stderr)


def test_generate_is_seeded_and_reads_gpt2_checkpoints(tmp_path, capsys, gpt2_tokenizer):
    torch.manual_seed(0)
    cfg = {"vocab_size": 50257, "context_length": 16, "emb_dim": 8, "n_heads": 2, "n_layers": 1,
           "drop_rate": 0.0, "qkv_bias": False}
    path = save_checkpoint(tmp_path / "model_and_optimizer.pth", GPTModel(cfg), cfg)  # as u_pretraining
    args = ["Every effort moves you", "--checkpoint", str(path), "--max-new-tokens", "5", "--seed", "3"]
    generate_text.main(args)
    first = capsys.readouterr()
    generate_text.main(args)
    assert capsys.readouterr().out == first.out
    assert first.out.startswith("Every effort moves you") and len(first.out) > 24
    assert "GPT-2 tokenizer (50,257 tokens)" in first.err

    sft = save_checkpoint(tmp_path / "gpt2-tiny-sft.pth", GPTModel(cfg), cfg)  # chapter 7's naming
    generate_text.main(["Name a colour.", "--checkpoint", str(sft), "--max-new-tokens", "2"])
    out = capsys.readouterr().out
    assert out.startswith("Below is an instruction that describes a task.")
    assert "### Instruction:\nName a colour.\n\n### Response:\n" in out


def test_temperature_must_be_zero_or_finite_and_positive(tmp_path, capsys, gpt2_tokenizer):
    assert [check_temperature(text) for text in ("0", "0.8", "1e-30", "2")] == [0.0, 0.8, 1e-30, 2.0]
    torch.manual_seed(0)
    cfg = {"vocab_size": 50257, "context_length": 16, "emb_dim": 8, "n_heads": 2, "n_layers": 1,
           "drop_rate": 0.0, "qkv_bias": False}
    path = save_checkpoint(tmp_path / "model.pth", GPTModel(cfg), cfg)
    for text in ("inf", "-inf", "nan", "1e-40", "-0.5", "warm"):
        with pytest.raises(SystemExit):
            generate_text.main(["Hi", "--checkpoint", str(path), f"--temperature={text}"])
        captured = capsys.readouterr()
        assert captured.out == ""  # refused before anything is generated
        assert captured.err.splitlines()[-1].endswith(
            f": error: argument --temperature: {text} is not a temperature that can be "
            "computed with: give 0 (always the most likely token) or a finite number of at least "
            f"{plumbing.MIN_TEMPERATURE:g}, such as 0.8")
    outs = []
    for seed in ("1", "2"):  # 0 is greedy: the seed changes nothing
        generate_text.main(["Hi", "--checkpoint", str(path), "--temperature", "0", "--max-new-tokens", "4",
                            "--seed", seed])
        outs.append(capsys.readouterr().out)
    assert outs[0] == outs[1] and len(outs[0]) > len("Hi\n")


def test_chat_answers_each_line_until_an_empty_one_or_the_end(tmp_path, capsys, monkeypatch, gpt2_tokenizer):
    torch.manual_seed(0)
    cfg = {"vocab_size": 50257, "context_length": 32, "emb_dim": 8, "n_heads": 2, "n_layers": 1,
           "drop_rate": 0.0, "qkv_bias": False}
    model = GPTModel(cfg).eval()
    for name, lines, template in (("tiny-sft.pth", "Name a colour.\nName a fruit.\n\nnot read\n", True),
                                  ("plain.pth", "Once upon a time", False)):  # ends without a newline: EOF
        path = save_checkpoint(tmp_path / name, model, cfg)
        monkeypatch.setattr("sys.stdin", io.StringIO(lines))
        generate_text.main(["--chat", "--checkpoint", str(path), "--temperature", "0",
                            "--max-new-tokens", "4"])
        expected = "> "
        for line in [line for line in lines.split("\n\n")[0].split("\n") if line]:
            prompt = generate_text.alpaca_prompt(line) if template else line
            ids = gpt2_tokenizer.encode(prompt)
            out = generate(model, torch.tensor([ids]), 4, 32, eos_id=50256)[0, len(ids):].tolist()
            expected += gpt2_tokenizer.decode(out) + "\n> "
        assert capsys.readouterr().out == expected + ("" if template else "\n")


def test_classifier_checkpoint_cannot_generate(tmp_path):
    torch.manual_seed(0)
    cfg = {"vocab_size": 50257, "context_length": 16, "emb_dim": 8, "n_heads": 2, "n_layers": 1,
           "drop_rate": 0.0, "qkv_bias": False}
    model = GPTModel(cfg)
    model.out_head = torch.nn.Linear(8, 2)  # what chapter 6 does
    path = save_checkpoint(tmp_path / "review_classifier.pth", model, cfg, num_classes=2)
    with pytest.raises(ScriptError, match="classifier: its output layer scores 2 classes"):
        generate_text.main(["hello", "--checkpoint", str(path)])
    with pytest.raises(ScriptError, match="no checkpoint at"):
        generate_text.main(["hello", "--checkpoint", str(tmp_path / "missing.pth")])
