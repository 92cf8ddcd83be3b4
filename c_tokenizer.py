"""SimpleTokenizerV2: unknown words become <|unk|>, and <|endoftext|> separates unrelated texts.

Two special tokens join the vocabulary: <|unk|> stands for any word the vocabulary lacks, and
<|endoftext|> marks where one document stops and the next starts when unrelated texts are joined
into one training stream. GPT-2 keeps only <|endoftext|>: its tokenizer never meets an unknown word.
Not here: the [BOS], [EOS] and [PAD] tokens of other tokenizers (GPT-2 pads with <|endoftext|>).

Book section 2.4. Run: python c_tokenizer.py
"""

from a_tokenizer import load_verdict, split_text
from b_tokenizer import SimpleTokenizerV1, build_vocab
from plumbing import run_main

SPECIAL_TOKENS = ["<|endoftext|>", "<|unk|>"]


def build_vocab_v2(tokens):
    """build_vocab's vocabulary with the two special tokens appended at the end."""
    vocab = build_vocab(tokens)
    for token in SPECIAL_TOKENS:
        vocab[token] = len(vocab)
    return vocab


class SimpleTokenizerV2(SimpleTokenizerV1):
    """SimpleTokenizerV1 (same decode) whose encode maps words missing from the vocabulary to <|unk|>."""

    def __init__(self, vocab):
        if "<|unk|>" not in vocab:
            raise ValueError("the vocabulary has no <|unk|> token; build it with build_vocab_v2")
        super().__init__(vocab)

    def encode(self, text):
        preprocessed = [token if token in self.str_to_int else "<|unk|>" for token in split_text(text)]
        return [self.str_to_int[s] for s in preprocessed]


def main():
    vocab = build_vocab_v2(split_text(load_verdict()))
    print("Vocabulary size with the special tokens:", len(vocab))
    print("Last 5 entries:", list(vocab.items())[-5:])

    tokenizer = SimpleTokenizerV2(vocab)
    text1 = "Hello, do you like tea?"
    text2 = "In the sunlit terraces of the palace."
    text = " <|endoftext|> ".join((text1, text2))
    print("\nText:", text)
    ids = tokenizer.encode(text)
    print("Token IDs:", ids)
    print("Decoded:", tokenizer.decode(ids))


if __name__ == "__main__":
    run_main(main)
