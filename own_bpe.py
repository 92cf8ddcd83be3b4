"""Byte-level byte pair encoding as GPT-2 and tiktoken do it (not a chapter), trained from scratch
on your text or loaded from OpenAI's encoder.json + vocab.bpe, and tiktoken's rules for special
tokens, which every tokenizer of own_tokenizers.py follows.
"""

import heapq
import json
import re
from collections import Counter, defaultdict

import regex  # the `regex` package knows \p{L} and \p{N}; the standard `re` does not
from tqdm import tqdm

# GPT-2's pre-split (tiktoken's "r50k" pattern): contractions, letters, digits, other symbols
# each with an optional leading space, and whitespace runs. BPE never merges across these pieces.
GPT2_SPLIT_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
ENDOFTEXT = "<|endoftext|>"


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


def split_on_specials(text, special_tokens):
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
    return [part for part, special in split_on_specials(text, special_tokens) if not special]


def encode_with_specials(tokenizer, text, allowed_special, disallowed_special):
    """encode() of every tokenizer here: allowed special tokens become their id, the rest goes
    through tokenizer.encode_ordinary."""
    allowed = resolve_specials(text, tokenizer.special_tokens, allowed_special, disallowed_special)
    ids = []
    for part, special in split_on_specials(text, allowed):
        if special:
            ids.append(tokenizer.special_tokens[part])
        else:
            ids.extend(tokenizer.encode_ordinary(part))
    return ids


def resolve_specials(text, known, allowed_special, disallowed_special):
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
        return encode_with_specials(self, text, allowed_special, disallowed_special)

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
