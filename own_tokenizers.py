"""Tokenizers you train on your own text: character-level, word-level and byte-level BPE.

CharTokenizer gives every character of the training text an id; WordTokenizer is chapter 2's
word-level tokenizer with a vocabulary of the most frequent words. BPETokenizer learns GPT-2-style
byte pair merges (the same regex pre-split, byte-level, special tokens), and it can also load
OpenAI's encoder.json + vocab.bpe, after which it encodes exactly as tiktoken's "gpt2" does; it
lives in own_bpe.py. train_own_text.py picks one of them (or tiktoken) with --tokenizer.

Run: python own_tokenizers.py [TEXT_FILE] [--merges 1000]   (trains a BPE and times it)
"""

import argparse
import json
import time
from collections import Counter
from pathlib import Path

from a_tokenizer import split_text
from c_tokenizer import SPECIAL_TOKENS, SimpleTokenizerV2
from own_bpe import (ENDOFTEXT, GPT2_SPLIT_PATTERN, BPETokenizer, bytes_to_unicode, encode_with_specials,
                     ordinary_parts)
from plumbing import DATA_DIR, ScriptError, positive_int, run_main, write_atomically

__all__ = ["ENDOFTEXT", "GPT2_SPLIT_PATTERN", "UNK", "BPETokenizer", "CharTokenizer", "WordTokenizer",
           "bytes_to_unicode", "load_tokenizer", "save_tokenizer", "tokenizer_from_dict", "tokenizer_to_dict"]

UNK = "<|unk|>"


class CharTokenizer:
    """One id per character of the training text, then the special tokens (<|endoftext|>, <|unk|>).
    Characters the training text did not contain encode as <|unk|>."""

    def __init__(self, chars, special_tokens=(ENDOFTEXT, UNK)):
        if UNK not in special_tokens:
            raise ValueError(f"a CharTokenizer needs {UNK!r} among its special tokens")
        if len(set(chars)) != len(chars) or any(len(c) != 1 for c in chars):
            raise ValueError("chars must be distinct single characters")
        self.chars = list(chars)
        self.str_to_int = {char: i for i, char in enumerate(self.chars)}
        self.special_tokens = {tok: len(self.chars) + i for i, tok in enumerate(special_tokens)}
        self.int_to_str = dict(enumerate(self.chars))
        self.int_to_str.update({i: tok for tok, i in self.special_tokens.items()})
        self.n_vocab = len(self.int_to_str)
        self.eot_token = self.special_tokens.get(ENDOFTEXT)
        self.unk_token = self.special_tokens[UNK]

    @classmethod
    def from_text(cls, text, special_tokens=(ENDOFTEXT, UNK)):
        # Special-token strings in the text are tokens, not characters to learn.
        return cls(sorted(set().union(*ordinary_parts(text, special_tokens))), special_tokens)

    def encode_ordinary(self, text):
        return [self.str_to_int.get(char, self.unk_token) for char in text]

    def encode(self, text, allowed_special=frozenset(), disallowed_special=()):
        return encode_with_specials(self, text, allowed_special, disallowed_special)

    def decode(self, ids):
        try:
            return "".join(self.int_to_str[i] for i in ids)
        except KeyError as error:
            raise ValueError(f"token id {error.args[0]} is outside this tokenizer's "
                             f"vocabulary of {self.n_vocab}") from None

    def decode_bytes(self, ids):
        return self.decode(ids).encode("utf-8")

    def to_dict(self):
        return {"kind": "char", "chars": self.chars,
                "special_tokens": sorted(self.special_tokens, key=self.special_tokens.get)}

    @classmethod
    def from_dict(cls, data):
        return cls(data["chars"], tuple(data["special_tokens"]))


class WordTokenizer(SimpleTokenizerV2):
    """Chapter 2's tokenizer as a tool: a_tokenizer.split_text's words and punctuation, the most
    frequent first (--vocab-size keeps the N - 2 most frequent), then <|endoftext|> and <|unk|>.
    Words the vocabulary lacks encode as <|unk|>: the rate of those is why chapter 2 moves on to BPE.
    decode is SimpleTokenizerV1's, which joins words with single spaces."""

    def __init__(self, words):
        vocab = {word: i for i, word in enumerate(words)}
        vocab.update({tok: len(words) + i for i, tok in enumerate(SPECIAL_TOKENS)})
        if len(vocab) != len(words) + len(SPECIAL_TOKENS):
            raise ValueError("words must be distinct and must not be special tokens")
        super().__init__(vocab)
        self.words = list(words)
        self.special_tokens = {tok: vocab[tok] for tok in SPECIAL_TOKENS}
        self.n_vocab = len(vocab)
        self.eot_token, self.unk_token = self.special_tokens[ENDOFTEXT], self.special_tokens[UNK]

    @classmethod
    def from_text(cls, text, vocab_size=None):
        counts = Counter(word for part in ordinary_parts(text, SPECIAL_TOKENS) for word in split_text(part))
        words = sorted(counts, key=lambda word: (-counts[word], word))  # ties: in sorted order
        if vocab_size is not None:
            if vocab_size <= len(SPECIAL_TOKENS):
                raise ValueError(f"a word vocabulary needs more than its {len(SPECIAL_TOKENS)} special "
                                 "tokens")
            words = words[:vocab_size - len(SPECIAL_TOKENS)]
        return cls(words)

    def encode_ordinary(self, text):
        return [self.str_to_int.get(word, self.unk_token) for word in split_text(text)]

    def encode(self, text, allowed_special=frozenset(), disallowed_special=()):
        return encode_with_specials(self, text, allowed_special, disallowed_special)

    def decode_bytes(self, ids):
        return self.decode(ids).encode("utf-8")

    def to_dict(self):
        return {"kind": "word", "words": self.words}

    @classmethod
    def from_dict(cls, data):
        return cls(data["words"])


# ---- one format for every tokenizer train_own_text.py can use ----

def tokenizer_to_dict(tokenizer):
    """JSON-able description of a tokenizer (it goes into checkpoints, so plain data only)."""
    if isinstance(tokenizer, (CharTokenizer, WordTokenizer, BPETokenizer)):
        return tokenizer.to_dict()
    if getattr(tokenizer, "name", None) == "gpt2":  # tiktoken's Encoding: its name says it all
        return {"kind": "gpt2"}
    raise ValueError(f"cannot describe a tokenizer of type {type(tokenizer).__name__}")


def tokenizer_from_dict(data):
    kind = data.get("kind") if isinstance(data, dict) else None
    if kind == "char":
        return CharTokenizer.from_dict(data)
    if kind == "word":
        return WordTokenizer.from_dict(data)
    if kind == "bpe":
        return BPETokenizer.from_dict(data)
    if kind == "gpt2":
        from d_tokenizer import get_gpt2_tokenizer
        return get_gpt2_tokenizer()
    raise ValueError(f"unknown tokenizer description (kind {kind!r}); expected char, word, bpe or gpt2")


def save_tokenizer(tokenizer, path):
    """Write the tokenizer's description as JSON, atomically (plumbing.write_atomically)."""
    text = json.dumps(tokenizer_to_dict(tokenizer), ensure_ascii=False)
    return write_atomically(Path(path), lambda temp_path: temp_path.write_text(text, encoding="utf-8"))


def load_tokenizer(path):
    path = Path(path)
    if not path.exists():
        raise ScriptError(f"no tokenizer file at {path}")
    try:
        with open(path, encoding="utf-8") as file:
            data = json.load(file)
        return tokenizer_from_dict(data)
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError) as error:
        raise ScriptError(f"{path} is not a tokenizer file this project wrote ({error})") from None


def main(argv=None):
    # The reader of train_own_text.py's --data, imported here: own_text_data imports this module.
    from own_text_data import read_text

    parser = argparse.ArgumentParser(description="Train a byte-level BPE on a text file and time it.")
    parser.add_argument("text", nargs="?", default=str(DATA_DIR / "tinyshakespeare" / "input.txt"),
                        help="UTF-8 text file, or a folder of .txt files (default: "
                             "data/tinyshakespeare/input.txt)")
    parser.add_argument("--merges", type=positive_int, default=1000, help="number of merges to learn")
    parser.add_argument("--save", help="write the trained tokenizer to this JSON file")
    args = parser.parse_args(argv)

    path = Path(args.text)
    if not path.exists():
        raise ScriptError(f"no text file at {path}; give the path of a UTF-8 text file "
                          "(python train_own_text.py --data shakespeare downloads tiny-shakespeare "
                          "to data/tinyshakespeare/input.txt)")
    text = read_text(path)  # a folder's .txt files are joined by <|endoftext|>, as for training
    print(f"Training {args.merges} merges on {path} ({len(text.encode('utf-8')):,} bytes)")
    start = time.perf_counter()
    tokenizer = BPETokenizer.train(text, args.merges, progress=True)
    seconds = time.perf_counter() - start
    print(f"Learned {len(tokenizer.merges)} merges in {seconds:.2f} s; "
          f"vocabulary {tokenizer.n_vocab} (256 bytes, merges, {ENDOFTEXT})")
    print("First merges:", [tokenizer.decode([256 + i]) for i in range(min(10, len(tokenizer.merges)))])
    start = time.perf_counter()
    ids = tokenizer.encode(text, allowed_special={ENDOFTEXT})
    print(f"Encoded the text into {len(ids):,} tokens ({len(text) / max(len(ids), 1):.2f} characters "
          f"per token) in {time.perf_counter() - start:.2f} s; round trip exact: "
          f"{tokenizer.decode(ids) == text}")
    if args.save:
        print("Saved to", save_tokenizer(tokenizer, args.save))


if __name__ == "__main__":
    run_main(main)
