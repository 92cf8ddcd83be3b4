"""Get the short story "The Verdict" and split its text into words and punctuation with a regex.

A model computes with numbers, not letters, so the first step is to cut text into tokens, each of
which will later get an ID and a vector. The pattern keeps punctuation and "--" as tokens of their
own and drops the whitespace; case is kept, since capitals carry meaning (names, sentence starts).
Not here: token IDs (b_tokenizer.py) and the subword tokenizer GPT-2 really uses (d_tokenizer.py).

Book sections 2.1-2.2. Run: python a_tokenizer.py
"""

import re

from downloads import download_file
from plumbing import DATA_DIR, read_text_file, run_main

# The book's training text: Edith Wharton's public-domain short story, as the book's repository serves it.
VERDICT_URL = ("https://raw.githubusercontent.com/rasbt/LLMs-from-scratch/main/"
               "ch02/01_main-chapter-code/the-verdict.txt")
VERDICT_SHA256 = "b41e41a68f0398a3154ae69e2e4c0e2694e17fe0d66730536837f1b01935b31f"
VERDICT_SIZE = 20_479  # bytes; the story is ASCII, so also its 20,479 characters
VERDICT_PATH = DATA_DIR / "the-verdict.txt"

# Split on punctuation, double dashes and whitespace, keeping them (the capture group) as tokens.
SPLIT_PATTERN = r'([,.:;?_!"()\']|--|\s)'


def load_verdict(path=None):
    """Return the text of the-verdict.txt. With no `path`, read data/the-verdict.txt, downloading it
    first if it is not there yet; a given `path` is read as it is."""
    if path is None:
        path = download_file(VERDICT_URL, VERDICT_PATH, expected_sha256=VERDICT_SHA256,
                             expected_size=VERDICT_SIZE)
    return read_text_file(path)


def split_text(text):
    """The book's preprocessing: split with SPLIT_PATTERN and drop the whitespace-only pieces."""
    return [item.strip() for item in re.split(SPLIT_PATTERN, text) if item.strip()]


def main():
    raw_text = load_verdict()
    print("Total number of characters:", len(raw_text))
    print("First 99 characters:", raw_text[:99])

    # Build the regex up step by step on a short sentence, as the book does.
    text = "Hello, world. This, is a test."
    print("\nSplit on whitespace:", re.split(r"(\s)", text))
    result = re.split(r"([,.]|\s)", text)
    print("Split on commas, periods and whitespace:", result)
    print("Without the whitespace items:", [item for item in result if item.strip()])

    text = "Hello, world. Is this-- a test?"
    print("\nThe full pattern on", repr(text) + ":", split_text(text))

    preprocessed = split_text(raw_text)
    print("\nNumber of tokens in the story:", len(preprocessed))
    print("First 30 tokens:", preprocessed[:30])


if __name__ == "__main__":
    run_main(main)
