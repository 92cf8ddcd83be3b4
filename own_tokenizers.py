"""Tokenizers you train on your own text: character-level, and byte-level BPE from scratch.

CharTokenizer gives every character of the training text an id. BPETokenizer learns GPT-2-style
byte pair merges (the same regex pre-split, byte-level, special tokens), and it can also load
OpenAI's encoder.json + vocab.bpe, after which it encodes exactly as tiktoken's "gpt2" does.
train_own_text.py picks one of them (or tiktoken) with --tokenizer.

Run: python own_tokenizers.py [TEXT_FILE] [--merges 1000]   (trains a BPE and times it)
"""

import argparse
import heapq
import json
import re
import time
from collections import Counter, defaultdict
from pathlib import Path

import regex  # the `regex` package knows \p{L} and \p{N}; the standard `re` does not
from tqdm import tqdm

from plumbing import DATA_DIR, ScriptError, positive_int, run_main, write_atomically

# GPT-2's pre-split (tiktoken's "r50k" pattern): contractions, letters, digits, other symbols
# each with an optional leading space, and whitespace runs. BPE never merges across these pieces.
GPT2_SPLIT_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
ENDOFTEXT = "<|endoftext|>"
UNK = "<|unk|>"


def bytes_to_unicode():
    """GPT-2's map from the 256 byte values to printable characters, so that every token of a
    byte-level vocabulary can be written as a string (encoder.json and vocab.bpe use it)."""
    printable = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
                 + list(range(ord("®"), ord("ÿ") + 1)))
    mapping = {b: chr(b) for b in printable}
    shifted = 0
    for b in range(256):
        if b not in mapping:  # spaces, control bytes and a few others move past U+0100
            mapping[b] = chr(256 + shifted)
            shifted += 1
    return mapping


BYTE_ENCODER = bytes_to_unicode()
BYTE_DECODER = {char: b for b, char in BYTE_ENCODER.items()}


def token_to_str(token_bytes):
    return "".join(BYTE_ENCODER[b] for b in token_bytes)


def str_to_token(text):
    try:
        return bytes(BYTE_DECODER[char] for char in text)
    except KeyError as error:
        raise ValueError(f"{text!r} is not a token written with GPT-2's byte-to-unicode map") from error


def _split_on_specials(text, special_tokens):
    """The one special-token splitting loop: yield (piece, is_special) for the ordinary chunks of
    text and the special tokens between them, in order."""
    if not special_tokens:
        if text:
            yield text, False
        return
    # Longest first, so a special token that contains another is matched whole.
    pattern = "(" + "|".join(re.escape(s) for s in sorted(special_tokens, key=len, reverse=True)) + ")"
    for i, part in enumerate(re.split(pattern, text)):
        if part:
            yield part, i % 2 == 1  # re.split with one group puts the matches at the odd indices


def ordinary_parts(text, special_tokens):
    """The chunks of text between its special tokens: what a tokenizer learns from (special tokens
    are added to a vocabulary whole, never learned from)."""
    return [part for part, special in _split_on_specials(text, special_tokens) if not special]


def _encode_with_specials(tokenizer, text, allowed_special, disallowed_special):
    """encode() of every tokenizer here: allowed special tokens become their id, the rest goes
    through tokenizer.encode_ordinary."""
    allowed = _resolve_specials(text, tokenizer.special_tokens, allowed_special, disallowed_special)
    ids = []
    for part, special in _split_on_specials(text, allowed):
        if special:
            ids.append(tokenizer.special_tokens[part])
        else:
            ids.extend(tokenizer.encode_ordinary(part))
    return ids


def _resolve_specials(text, known, allowed_special, disallowed_special):
    """tiktoken's rules: allowed special tokens become one id each; a disallowed one found in the
    text is an error (it usually means untrusted text would inject control tokens)."""
    # Like tiktoken, allowing a special token this tokenizer does not have changes nothing.
    allowed = set(known) if allowed_special == "all" else set(allowed_special) & set(known)
    disallowed = set(known) - allowed if disallowed_special == "all" else set(disallowed_special)
    for token in sorted(disallowed):
        if token in text:
            raise ValueError(f"the text contains the special token {token!r}; pass "
                             f"allowed_special={{{token!r}}} to encode it as that token, or "
                             f"disallowed_special=() to encode it as ordinary text")
    return allowed


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
        return _encode_with_specials(self, text, allowed_special, disallowed_special)

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


class BPETokenizer:
    """Byte-level byte pair encoding as in GPT-2.

    vocab maps id -> bytes for the ordinary tokens; the id is also the merge priority (lower
    merges first), as in tiktoken. merges lists the learned (left id, right id) pairs in order.
    special_tokens maps a string such as "<|endoftext|>" to its id."""

    def __init__(self, vocab, merges, special_tokens=None, pattern=GPT2_SPLIT_PATTERN):
        self.vocab = dict(vocab)
        self.merges = [tuple(pair) for pair in merges]
        self.special_tokens = dict(special_tokens or {})
        self.pattern = pattern
        self.ranks = {token: i for i, token in self.vocab.items()}
        if len(self.ranks) != len(self.vocab):
            raise ValueError("two ids of the vocabulary have the same bytes")
        missing = [b for b in range(256) if bytes([b]) not in self.ranks]
        if missing:
            raise ValueError(f"a byte-level vocabulary needs all 256 single bytes; "
                             f"{len(missing)} are missing (e.g. byte {missing[0]})")
        clash = set(self.special_tokens.values()) & set(self.vocab)
        if clash:
            raise ValueError(f"special token ids {sorted(clash)} are also ordinary token ids")
        self.id_to_bytes = dict(self.vocab)
        self.id_to_bytes.update({i: tok.encode("utf-8") for tok, i in self.special_tokens.items()})
        self.n_vocab = max(self.id_to_bytes) + 1
        self.eot_token = self.special_tokens.get(ENDOFTEXT)
        self._split = regex.compile(pattern)
        self._cache = {}  # pre-token -> ids: real text repeats the same words over and over

    # ---- training ----

    @classmethod
    def train(cls, text, num_merges, special_tokens=(ENDOFTEXT,), pattern=GPT2_SPLIT_PATTERN,
              progress=False):
        """Learn up to num_merges merges from text. Each step merges the most frequent adjacent
        pair (ties: the pair with the smaller ids) inside the regex pieces.

        Not the naive loop over the whole text per merge: the distinct pieces ("words") are
        counted once, and _PairCounts keeps the pair counts and a pair -> words index, so that a
        merge only revisits the words that contain the pair; a heap finds the next pair."""
        split = regex.compile(pattern)
        word_counts = Counter(word for part in ordinary_parts(text, special_tokens)
                              for word in split.findall(part))
        pairs = _PairCounts([list(word.encode("utf-8")) for word in word_counts], list(word_counts.values()))
        vocab = {b: bytes([b]) for b in range(256)}
        ranks = {token: i for i, token in vocab.items()}
        merges = []
        with tqdm(total=num_merges, desc="BPE merges", unit="merge", disable=not progress) as bar:
            while len(merges) < num_merges:
                pair = pairs.most_frequent()
                if pair is None:  # every piece is a single token: nothing left to merge
                    break
                merged = vocab[pair[0]] + vocab[pair[1]]
                # Rarely the same bytes were already made from another pair: then reuse that token.
                new_id = ranks.setdefault(merged, len(vocab))
                vocab[new_id] = merged
                merges.append(pair)
                pairs.merge(pair, new_id)
                bar.update(1)
        specials = {tok: len(vocab) + i for i, tok in enumerate(special_tokens)}
        return cls(vocab, merges, specials, pattern)

    # ---- encoding and decoding ----

    def _encode_word(self, word):
        ids = self._cache.get(word)
        if ids is not None:
            return ids
        data = word.encode("utf-8")
        if data in self.ranks:  # a whole piece that is a token is that token (tiktoken does this)
            ids = [self.ranks[data]]
        else:
            parts = [bytes([b]) for b in data]
            while len(parts) > 1:
                # Merge the adjacent pair whose concatenation has the lowest rank, leftmost first.
                best_rank, best_i = None, None
                for i in range(len(parts) - 1):
                    rank = self.ranks.get(parts[i] + parts[i + 1])
                    if rank is not None and (best_rank is None or rank < best_rank):
                        best_rank, best_i = rank, i
                if best_i is None:
                    break
                parts[best_i:best_i + 2] = [parts[best_i] + parts[best_i + 1]]
            ids = [self.ranks[part] for part in parts]
        if len(self._cache) >= 200_000:  # keep memory bounded on huge, varied texts
            self._cache.clear()
        self._cache[word] = ids
        return ids

    def encode_ordinary(self, text):
        ids = []
        for word in self._split.findall(text):
            ids.extend(self._encode_word(word))
        return ids

    def encode(self, text, allowed_special=frozenset(), disallowed_special="all"):
        """Same arguments and results as tiktoken's Encoding.encode."""
        return _encode_with_specials(self, text, allowed_special, disallowed_special)

    def decode_bytes(self, ids):
        try:
            return b"".join(self.id_to_bytes[i] for i in ids)
        except KeyError as error:
            raise ValueError(f"token id {error.args[0]} is not in this tokenizer's vocabulary "
                             f"(size {self.n_vocab})") from None

    def decode(self, ids):
        # A slice of ids can end inside a multi-byte character; show that as U+FFFD, like tiktoken.
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    # ---- saving and loading ----

    def to_dict(self):
        """Plain JSON-able data: vocab and merges written like GPT-2's encoder.json and vocab.bpe."""
        return {"kind": "bpe", "pattern": self.pattern,
                "vocab": {token_to_str(token): i for i, token in sorted(self.vocab.items())},
                "merges": [f"{token_to_str(self.vocab[a])} {token_to_str(self.vocab[b])}"
                           for a, b in self.merges],
                "special_tokens": dict(self.special_tokens)}

    @classmethod
    def from_dict(cls, data):
        vocab = {i: str_to_token(token) for token, i in data["vocab"].items()}
        return cls(vocab, _merge_ids(data["merges"], data["vocab"]), data["special_tokens"],
                   data["pattern"])

    @classmethod
    def from_gpt2_files(cls, encoder_json_path, vocab_bpe_path, special_tokens=(ENDOFTEXT,)):
        """Load OpenAI's GPT-2 vocabulary: encoder.json (token -> id) and vocab.bpe (merges)."""
        with open(encoder_json_path, encoding="utf-8") as file:
            encoder = json.load(file)
        with open(vocab_bpe_path, encoding="utf-8") as file:
            lines = file.read().split("\n")
        if not lines[0].startswith("#version"):
            raise ValueError(f"{vocab_bpe_path} does not start with '#version': not a vocab.bpe file")
        specials = {tok: encoder.pop(tok) for tok in special_tokens if tok in encoder}
        vocab = {i: str_to_token(token) for token, i in encoder.items()}
        merges = _merge_ids([line for line in lines[1:] if line], encoder)
        return cls(vocab, merges, specials, GPT2_SPLIT_PATTERN)


def _merge_pair(ids, pair, new_id):
    """Replace each non-overlapping occurrence of pair (left to right) with new_id."""
    out = []
    i = 0
    while i < len(ids):
        if i < len(ids) - 1 and ids[i] == pair[0] and ids[i + 1] == pair[1]:
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


class _PairCounts:
    """BPE training's bookkeeping: how often each adjacent pair occurs in the words (weighted by
    the words' frequencies), which words contain it, and a heap of (-count, pair) to find the
    most frequent. Entries of the heap made stale by merges are skipped when popped."""

    def __init__(self, words, freqs):
        self.words, self.freqs = words, freqs
        self.counts = defaultdict(int)
        self.words_with = defaultdict(set)
        for w, (word, freq) in enumerate(zip(words, freqs)):
            for pair in zip(word, word[1:]):
                self.counts[pair] += freq
                self.words_with[pair].add(w)
        self.heap = [(-count, pair) for pair, count in self.counts.items()]
        heapq.heapify(self.heap)

    def most_frequent(self):
        while self.heap:
            neg_count, pair = heapq.heappop(self.heap)
            if self.counts.get(pair) == -neg_count:
                return pair
        return None

    def merge(self, pair, new_id):
        """Replace pair by new_id in the words that contain it, updating the counts by difference."""
        changed = set()
        for w in self.words_with.pop(pair):
            word, freq = self.words[w], self.freqs[w]
            new_word = _merge_pair(word, pair, new_id)
            if len(new_word) == len(word):
                continue  # the index may name words that lost this pair to an earlier merge
            for old in zip(word, word[1:]):
                self.counts[old] -= freq
                changed.add(old)
            for new in zip(new_word, new_word[1:]):
                self.counts[new] += freq
                self.words_with[new].add(w)
                changed.add(new)
            self.words[w] = new_word
        for p in changed:
            if self.counts[p] > 0:
                heapq.heappush(self.heap, (-self.counts[p], p))
            else:
                del self.counts[p]
                self.words_with.pop(p, None)


def _merge_ids(merge_lines, encoder):
    """'Ġ t' merge lines -> (id, id) pairs, checking that each merge's result is in the vocab."""
    merges = []
    for line in merge_lines:
        left, right = line.split(" ")
        if left not in encoder or right not in encoder or left + right not in encoder:
            raise ValueError(f"the merge {line!r} uses tokens that are not in the vocabulary: "
                             f"the merges and the vocabulary do not belong together")
        merges.append((encoder[left], encoder[right]))
    return merges


# ---- one format for every tokenizer train_own_text.py can use ----

def tokenizer_to_dict(tokenizer):
    """JSON-able description of a tokenizer (it goes into checkpoints, so plain data only)."""
    if isinstance(tokenizer, (CharTokenizer, BPETokenizer)):
        return tokenizer.to_dict()
    if getattr(tokenizer, "name", None) == "gpt2":  # tiktoken's Encoding: its name says it all
        return {"kind": "gpt2"}
    raise ValueError(f"cannot describe a tokenizer of type {type(tokenizer).__name__}")


def tokenizer_from_dict(data):
    kind = data.get("kind") if isinstance(data, dict) else None
    if kind == "char":
        return CharTokenizer.from_dict(data)
    if kind == "bpe":
        return BPETokenizer.from_dict(data)
    if kind == "gpt2":
        from d_tokenizer import get_gpt2_tokenizer
        return get_gpt2_tokenizer()
    raise ValueError(f"unknown tokenizer description (kind {kind!r}); expected char, bpe or gpt2")


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
