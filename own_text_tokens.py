"""Pre-tokenised text on disk (not a chapter), for train_own_text.py --memmap: a text is tokenised
once into a flat array of token ids (uint16 where the vocabulary fits, else uint32), named by the
digests of the text and the tokenizer, and read through numpy.memmap. A second run finds the array
and reuses it, and the windows hold no copies of the ids: memory does not grow with the windows.
"""

import hashlib
import json

import numpy as np
import torch
from torch.utils.data import Dataset

from own_tokenizers import ENDOFTEXT, tokenizer_to_dict
from plumbing import write_atomically

CHUNK_CHARS = 1 << 20  # the text is encoded about a megabyte at a time


def token_dtype(n_vocab):
    return np.uint16 if n_vocab <= np.iinfo(np.uint16).max + 1 else np.uint32


def chunks(text, size=CHUNK_CHARS):
    """The text in pieces of about `size` characters, cut only where a line ends and the next one
    starts with a character that is not whitespace. No token of these tokenizers spans such a
    place (GPT-2's pre-split, chapter 2's words, characters), so the pieces' ids, joined, are the
    whole text's."""
    start = 0
    while start < len(text):
        end = start + size
        while end < len(text):
            newline = text.find("\n", end - 1)
            if newline == -1 or newline + 1 == len(text):
                end = len(text)
            elif text[newline + 1].isspace():
                end = newline + 2  # look for the next line end
                continue
            else:
                end = newline + 1
            break
        yield text[start:end]
        start = end


def token_file(text, tokenizer, folder):
    """(the path of `text`'s ids under `tokenizer` in `folder`, True when it was written now; False
    when an earlier run's array was there)."""
    description = json.dumps(tokenizer_to_dict(tokenizer), sort_keys=True, ensure_ascii=False)
    digest = hashlib.sha256(text.encode("utf-8") + b"\0" + description.encode("utf-8")).hexdigest()
    dtype = token_dtype(tokenizer.n_vocab)
    path = folder / f"{digest[:32]}.{np.dtype(dtype).name}"
    written = not path.exists()
    if written:
        def write(temp_path):
            with open(temp_path, "wb") as file:
                for piece in chunks(text):
                    np.asarray(tokenizer.encode(piece, allowed_special={ENDOFTEXT}), dtype=dtype).tofile(file)
        write_atomically(path, write)
    return path, written


class MemmapWindows(Dataset):
    """GPTDatasetV1's windows (max_length inputs, targets shifted by one, `stride` apart) over ids
    in a file: each window is read from the memory map when it is asked for."""

    def __init__(self, path, max_length, stride):
        self.ids = np.memmap(path, dtype=np.dtype(path.suffix[1:]), mode="r")
        if len(self.ids) < max_length + 1:
            raise ValueError(f"the text has {len(self.ids)} tokens, too few for one window of "
                             f"max_length={max_length}, which needs max_length + 1 = {max_length + 1} "
                             "tokens; use a longer text or a smaller max_length")
        self.max_length, self.stride = max_length, stride
        self.starts = range(0, len(self.ids) - max_length, stride)

    def __len__(self):
        return len(self.starts)

    def __getitem__(self, idx):
        start = self.starts[idx]
        window = torch.from_numpy(self.ids[start:start + self.max_length + 1].astype(np.int64))
        return window[:-1], window[1:]
