"""Turn a text into input-target pairs with a sliding window: GPTDatasetV1 and create_dataloader_v1.

An LLM learns by predicting the next token, so each example is a window of max_length token IDs and
its target is the same window moved one token to the right: every position is one prediction. The
stride sets how far the next window starts; stride = max_length uses each token once, no overlap.

Book section 2.6. Run: python e_data_preparation.py
"""

import torch
from torch.utils.data import DataLoader, Dataset

from a_tokenizer import load_verdict
from d_tokenizer import get_gpt2_tokenizer
from plumbing import run_main


class GPTDatasetV1(Dataset):
    """Windows of `max_length` token IDs, `stride` tokens apart; each target is its input shifted by one."""

    def __init__(self, txt, tokenizer, max_length, stride):
        if max_length < 1 or stride < 1:
            raise ValueError(f"max_length and stride must be at least 1, got max_length={max_length}, "
                             f"stride={stride}")
        self.input_ids = []
        self.target_ids = []

        token_ids = tokenizer.encode(txt, allowed_special={"<|endoftext|>"})
        # One window needs max_length inputs plus one more token for the last target.
        if len(token_ids) < max_length + 1:
            raise ValueError(f"the text has {len(token_ids)} tokens, too few for one window of "
                             f"max_length={max_length}, which needs max_length + 1 = {max_length + 1} "
                             "tokens; use a longer text or a smaller max_length")

        for i in range(0, len(token_ids) - max_length, stride):
            input_chunk = token_ids[i:i + max_length]
            target_chunk = token_ids[i + 1:i + max_length + 1]
            self.input_ids.append(torch.tensor(input_chunk))
            self.target_ids.append(torch.tensor(target_chunk))

    def __len__(self):
        return len(self.input_ids)

    def __getitem__(self, idx):
        return self.input_ids[idx], self.target_ids[idx]


def create_dataloader_v1(txt, batch_size=4, max_length=256, stride=128, shuffle=True, drop_last=True,
                         num_workers=0):
    """A DataLoader of (inputs, targets) batches of GPT-2 token IDs from `txt`."""
    tokenizer = get_gpt2_tokenizer()
    dataset = GPTDatasetV1(txt, tokenizer, max_length, stride)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, drop_last=drop_last,
                      num_workers=num_workers)


def main():
    raw_text = load_verdict()
    tokenizer = get_gpt2_tokenizer()
    enc_text = tokenizer.encode(raw_text)
    print("Number of GPT-2 tokens in the story:", len(enc_text))

    # The next-word prediction task on a sample: the target is the input shifted by one position.
    enc_sample = enc_text[50:]
    context_size = 4
    x = enc_sample[:context_size]
    y = enc_sample[1:context_size + 1]
    print(f"\nx: {x}")
    print(f"y:      {y}")

    print("\nContext ----> desired next token (IDs):")
    for i in range(1, context_size + 1):
        print(enc_sample[:i], "---->", enc_sample[i])
    print("\nThe same as text:")
    for i in range(1, context_size + 1):
        print(tokenizer.decode(enc_sample[:i]), "---->", tokenizer.decode([enc_sample[i]]))

    dataloader = create_dataloader_v1(raw_text, batch_size=1, max_length=4, stride=1, shuffle=False)
    data_iter = iter(dataloader)
    print("\nFirst batch (batch_size=1, max_length=4, stride=1):", next(data_iter))
    print("Second batch:", next(data_iter))

    # stride = max_length uses every token once and keeps the batches from overlapping.
    dataloader = create_dataloader_v1(raw_text, batch_size=8, max_length=4, stride=4, shuffle=False)
    inputs, targets = next(iter(dataloader))
    print("\nbatch_size=8, max_length=4, stride=4")
    print("Inputs:\n", inputs)
    print("\nTargets:\n", targets)


if __name__ == "__main__":
    run_main(main)
