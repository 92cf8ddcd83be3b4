"""The text that train_own_text.py trains on (not a chapter): a .txt file, a folder of .txt files,
tiny-shakespeare or WikiText-2, split into training and validation text, the tokenizer made from
it, and chapter 5's windows of context_length tokens (e_data_preparation.GPTDatasetV1).
"""

import hashlib
import time
from functools import partial
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from d_tokenizer import get_gpt2_tokenizer
from e_data_preparation import GPTDatasetV1
from own_text_tokens import MemmapWindows, token_file
from own_tokenizers import ENDOFTEXT, BPETokenizer, CharTokenizer, WordTokenizer, load_tokenizer
from downloads import NotPublished, download_file, download_files
from plumbing import DATA_DIR, ScriptError, read_text_file

# tiny-shakespeare: 1.1 MB of Shakespeare's plays in one file (karpathy/char-rnn).
SHAKESPEARE_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
SHAKESPEARE_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"

# WikiText-2 as pytorch/examples ships it (pinned commit). Despite that repository's README these are
# the tokenized splits (wiki.*.tokens): rare words are <unk>, numbers read "1 @,@ 000". train.txt
# (about 10.8 MB) has no checksum here; valid.txt's is pinned.
WIKITEXT2_URL = ("https://raw.githubusercontent.com/pytorch/examples/"
                 "77f55b912142e11fcfdf5b530231fb9c52f181e8/word_language_model/data/wikitext-2/{}")
WIKITEXT2_SHA256 = {
    "train.txt": None,
    "valid.txt": "f0737ed31fc1329026e95cb8b98e19c2a182c39c240ab909dc31abf2f8af58e8",
}
# The published token counts (Merity et al., 2016), counted as pytorch/examples' word_language_model
# counts them (wikitext2_token_count). They catch a train.txt cut short, which no checksum here can;
# valid.txt's count was measured on the file of the pinned checksum.
WIKITEXT2_TOKENS = {"train.txt": 2_088_628, "valid.txt": 217_646}


def wikitext2_token_count(path):
    """The whitespace-separated tokens of a file plus one <eos> a line, as WikiText counts them."""
    with open(path, encoding="utf-8") as file:
        return sum(len(line.split()) + 1 for line in file)


def check_wikitext2_tokens(path, name):
    """download_file's validate for WikiText-2's `name`: NotPublished when the count differs."""
    count, expected = wikitext2_token_count(path), WIKITEXT2_TOKENS[name]
    if count != expected:
        raise NotPublished(f"it has {count:,} tokens where the published WikiText-2 {name} has {expected:,}"
                           + ("; it may have been cut short" if count < expected else ""))


def read_text(path):
    """A file's text, or the .txt files of a folder (sorted, recursive) joined by <|endoftext|>.
    A UTF-8 byte-order mark at the start of a file is not text ("utf-8-sig" drops it)."""
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*.txt") if p.is_file())
        if not files:
            raise ScriptError(f"the folder {path} holds no .txt files")
    elif path.is_file():
        files = [path]
    else:
        raise ScriptError(f"no file or folder at {path}; give --data a .txt file, a folder of .txt "
                          "files, 'shakespeare' or 'wikitext2'")
    texts = [read_text_file(file) for file in files]
    return ENDOFTEXT.join(texts)  # the documents' boundaries stay visible to the model


def load_training_text(data, train_ratio, data_dir=None):
    """(train_text, val_text, description) for --data: a path, 'shakespeare' or 'wikitext2' (which
    are downloaded to data_dir, by default DATA_DIR)."""
    data_dir = Path(data_dir) if data_dir else DATA_DIR
    if data == "shakespeare":
        path = download_file(SHAKESPEARE_URL, data_dir / "tinyshakespeare" / "input.txt",
                             expected_sha256=SHAKESPEARE_SHA256)
        text, description = read_text(path), f"tiny-shakespeare ({path})"
    elif data == "wikitext2":
        folder = data_dir / "wikitext-2"
        # One error that names every missing file, not one file per attempt.
        paths = dict(zip(WIKITEXT2_SHA256, download_files(
            [dict(url=WIKITEXT2_URL.format(name), destination=folder / name, expected_sha256=sha256,
                  validate=partial(check_wikitext2_tokens, name=name))
             for name, sha256 in WIKITEXT2_SHA256.items()])))
        # WikiText-2 comes split: train on train.txt, validate on valid.txt.
        return (read_text(paths["train.txt"]), read_text(paths["valid.txt"]),
                f"WikiText-2 ({folder}: train.txt / valid.txt)")
    else:
        text, description = read_text(data), str(data)
    split_idx = int(train_ratio * len(text))
    return text[:split_idx], text[split_idx:], description


def build_tokenizer(kind, train_text, bpe_merges=1000, bpe_path=None, vocab_size=None):
    """The tokenizer that train_own_text.py's --tokenizer names, made from the training text."""
    if vocab_size is not None and (kind in ("gpt2", "char") or bpe_path):
        raise ScriptError(f"--vocab-size sets the vocabulary of --tokenizer word or bpe; "
                          f"{'a loaded --bpe-path' if bpe_path else kind} has its own")
    if kind == "gpt2":
        return get_gpt2_tokenizer()
    if kind == "char":
        return CharTokenizer.from_text(train_text)
    if kind == "word":
        if vocab_size is not None and vocab_size < 3:
            raise ScriptError("--vocab-size for --tokenizer word must be at least 3: one word, "
                              "<|endoftext|> and <|unk|>")
        return WordTokenizer.from_text(train_text, vocab_size)
    if bpe_path:
        return load_tokenizer(bpe_path)
    if vocab_size is not None:
        bpe_merges = vocab_size - 257  # 256 byte tokens and <|endoftext|> are there without merges
        if bpe_merges < 1:
            raise ScriptError("--vocab-size for --tokenizer bpe must be at least 258: 256 bytes, one "
                              "merge and <|endoftext|>")
    print(f"Training a byte-level BPE with {bpe_merges} merges on the training text")
    start = time.perf_counter()
    tokenizer = BPETokenizer.train(train_text, bpe_merges, progress=True)
    print(f"  {len(tokenizer.merges)} merges in {time.perf_counter() - start:.1f} s")
    return tokenizer


def print_unknown_rate(tokenizer, val_text):
    """How much of the validation text the vocabulary cannot represent (chapter 2's <|unk|>)."""
    unk = getattr(tokenizer, "unk_token", None)
    if unk is not None:
        ids = tokenizer.encode(val_text, allowed_special={ENDOFTEXT})
        print(f"Unknown tokens (<|unk|>) in the validation text: {ids.count(unk) / len(ids):.1%} "
              f"({ids.count(unk):,} of {len(ids):,})")


def training_text(settings, data_dir=None, quick_max_chars=100_000):
    """The run's training and validation text; a --quick run takes the start of them only."""
    train_text, val_text, description = load_training_text(settings["data"], settings["train_ratio"],
                                                           data_dir)
    if settings["quick"]:
        train_text, val_text = train_text[:quick_max_chars], val_text[:quick_max_chars // 9]
    return train_text, val_text, description


def text_digest(*texts):
    """The texts' SHA-256, so that --resume can tell whether the text changed since the start."""
    digest = hashlib.sha256()
    for text in texts:
        digest.update(text.encode("utf-8"))
        digest.update(b"\0")
    return digest.hexdigest()


def make_datasets(train_text, val_text, tokenizer, context_length, batch_size, token_folder=None):
    """Windows of context_length tokens (stride = context_length, as chapter 5), with clear errors
    when a split is too short for one training batch or one validation window. With token_folder,
    the same windows over ids kept on disk there (own_text_tokens.py), said in one line."""
    datasets, arrays = [], []
    for name, text in (("training", train_text), ("validation", val_text)):
        try:
            if token_folder is None:
                dataset = GPTDatasetV1(text, tokenizer, max_length=context_length, stride=context_length)
            else:
                path, written = token_file(text, tokenizer, token_folder)
                arrays.append(f"{name} {path.name} ({'written now' if written else 'reused'})")
                dataset = MemmapWindows(path, context_length, context_length)
            datasets.append(dataset)
        except ValueError as error:
            raise ScriptError(f"the {name} text is too short: {error}. Use a longer text, or a smaller "
                              f"--context-length (now {context_length})") from None
    if arrays:
        print(f"Token ids (--memmap) in {token_folder}: {', '.join(arrays)}")
    train_set, val_set = datasets
    if len(train_set) < batch_size:
        raise ScriptError(
            f"the training text gives {len(train_set)} windows of {context_length} tokens, fewer than "
            f"one batch of --batch-size {batch_size} (about {batch_size * context_length + 1} tokens "
            "are needed); use a longer text, a smaller --batch-size or a smaller --context-length")
    return train_set, val_set


def epoch_order(num_windows, seed, epoch):
    """The shuffled order of an epoch, a pure function of (seed, epoch) so a resumed run has it too."""
    return torch.randperm(num_windows, generator=torch.Generator().manual_seed(seed + epoch))


def loader(dataset, batch_size, drop_last):
    # Its own generator: a DataLoader draws a seed from the global RNG whenever it is iterated, which
    # would shift the dropout masks of a resumed run.
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, drop_last=drop_last, num_workers=0,
                      generator=torch.Generator())
