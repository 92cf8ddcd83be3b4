"""Byte pair encoding with tiktoken's GPT-2 encoding: no unknown words, any text becomes token IDs.

Byte pair encoding builds its vocabulary by merging frequent pairs of characters, then of pieces,
into longer pieces, so common words are one token and rare ones split into known subwords or, at
worst, single bytes. GPT-2's vocabulary has 50,257 entries, the last being <|endoftext|> (50256).
Not here: learning merges from your own text; own_tokenizers.py trains a byte pair encoding.

Book section 2.5. Run: python d_tokenizer.py
"""

from importlib.metadata import version

from plumbing import ScriptError, run_main

TEXT = "Hello, do you like tea? <|endoftext|> In the sunlit terraces of someunknownPlace."


def get_gpt2_tokenizer():
    """tiktoken's "gpt2" encoding (50,257 tokens; <|endoftext|> is 50256)."""
    try:
        import tiktoken
    except ImportError as error:
        raise ScriptError("tiktoken is not installed; run: pip install -r requirements.txt") from error
    try:
        return tiktoken.get_encoding("gpt2")
    except Exception as error:  # tiktoken downloads its files on first use and fails in many ways offline
        raise ScriptError(
            f"tiktoken could not load the GPT-2 encoding ({type(error).__name__}: {error}). "
            "It downloads two files (vocab.bpe, encoder.json) on first use; offline, set "
            "TIKTOKEN_CACHE_DIR to a folder that holds them (see README)") from error


def main():
    print("tiktoken version:", version("tiktoken"))
    tokenizer = get_gpt2_tokenizer()

    print("\nText:", TEXT)
    integers = tokenizer.encode(TEXT, allowed_special={"<|endoftext|>"})
    print("Token IDs:", integers)
    print("Decoded:", tokenizer.decode(integers))

    # Exercise 2.1: an unknown word is broken into subword pieces that decode back to the word.
    word = "Akwirw ier"
    ids = tokenizer.encode(word)
    print(f"\nExercise 2.1, {word!r} -> {ids}")
    print("Pieces:", [tokenizer.decode([i]) for i in ids])
    print("Decoded:", repr(tokenizer.decode(ids)))


if __name__ == "__main__":
    run_main(main)
