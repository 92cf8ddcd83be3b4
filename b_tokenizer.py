"""Build a vocabulary from the story and a first tokenizer that maps words to IDs and back.

The vocabulary gives every distinct token of the story an integer, in alphabetical order; encode
turns a text into those integers and decode turns them back into text. A vocabulary built from one
story knows only that story's words, so any other word fails, as "Hello" shows at the end.

Book section 2.3. Run: python b_tokenizer.py
"""

import re

from a_tokenizer import load_verdict, split_text
from plumbing import run_main

TEXT = """"It's the last he painted, you know,"
       Mrs. Gisburn said with pardonable pride."""


def build_vocab(tokens):
    """Each distinct token, in sorted order, gets the next integer ID."""
    all_words = sorted(set(tokens))
    return {token: integer for integer, token in enumerate(all_words)}


class SimpleTokenizerV1:
    def __init__(self, vocab):
        self.str_to_int = vocab
        self.int_to_str = {i: s for s, i in vocab.items()}

    def encode(self, text):
        preprocessed = split_text(text)
        unknown = [token for token in dict.fromkeys(preprocessed) if token not in self.str_to_int]
        if unknown:
            raise ValueError(f"not in the vocabulary: {', '.join(map(repr, unknown))}. "
                             "SimpleTokenizerV1 knows only the words of the text its vocabulary was "
                             "built from; SimpleTokenizerV2 (c_tokenizer.py) maps unknown words to <|unk|>")
        return [self.str_to_int[s] for s in preprocessed]

    def decode(self, ids):
        text = " ".join(self.int_to_str[i] for i in ids)
        # Remove the space that the join put before punctuation.
        return re.sub(r'\s+([,.:;?!"()\'])', r"\1", text)


def main():
    preprocessed = split_text(load_verdict())
    vocab = build_vocab(preprocessed)
    print("Vocabulary size:", len(vocab))
    print("First 51 entries:", list(vocab.items())[:51])

    tokenizer = SimpleTokenizerV1(vocab)
    print("\nText:", TEXT)
    ids = tokenizer.encode(TEXT)
    print("Token IDs:", ids)
    print("Decoded:", tokenizer.decode(ids))
    print("decode(encode(text)):", tokenizer.decode(tokenizer.encode(TEXT)))

    # Words that are not in the story have no ID: the reason for SimpleTokenizerV2.
    try:
        tokenizer.encode("Hello, do you like tea?")
    except ValueError as error:
        print("\nEncoding 'Hello, do you like tea?' fails:", error)


if __name__ == "__main__":
    run_main(main)
