"""Fine-tune GPT-2 124M to tell spam SMS messages from normal ones (chapter 6).

Classification fine-tuning swaps the 50,257-way output head for a 2-way one (ham, spam) and trains
on labelled messages; only the last token's output counts, since under the causal mask it alone has
seen the whole message. The last block, the final norm and the new head train; the rest stays frozen.
The result classifies and nothing else: it can no longer write text.

Run: python w_finetune_classifier.py             (the book's run: GPT-2 124M, 5 epochs)
     python w_finetune_classifier.py --quick     (a tiny random model, a few steps, to check the setup)
     python w_finetune_classifier.py --init-from outputs/model_and_optimizer.pth   (no GPT-2 download)
"""

import argparse
import time
from pathlib import Path

import pandas as pd
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset, Subset

from checkpoints import load_checkpoint, load_weights, save_checkpoint
from d_tokenizer import get_gpt2_tokenizer
from downloads import download_file, extract_zip_safely, verify_file
from plumbing import (DATA_DIR, ScriptError, add_device_arg, add_quick_and_epochs_args, book_or_quick,
                      ensure_writable, get_device, output_path, outputs_folder, run_main, save_figure)
from s_gpt_model import GPTModel, generate_text_simple
from starting_point import add_starting_point_args, load_starting_point
from t_pretraining_basics import text_to_token_ids, token_ids_to_text
from v_load_gpt2_weights import QUICK_CONFIG

# The UCI SMS Spam Collection (the book's mirror is the backup); the size and SHA-256 of its data file.
URL = "https://archive.ics.uci.edu/static/public/228/sms+spam+collection.zip"
BACKUP_URL = "https://f001.backblazeb2.com/file/LLMs-from-scratch/sms%2Bspam%2Bcollection.zip"
SMS_SIZE, SMS_SHA256 = 477_907, "7d039a24a6083ed9ef0f806ebad56bbb976e3aeb8de05669173bfdc4996c239d"
ZIP_PATH = DATA_DIR / "sms_spam_collection.zip"
EXTRACTED_PATH = DATA_DIR / "sms_spam_collection"
DATA_FILE_PATH = EXTRACTED_PATH / "SMSSpamCollection.tsv"
TRAIN_CSV, VALIDATION_CSV, TEST_CSV = (DATA_DIR / f"{split}.csv" for split in ("train", "validation", "test"))

# The book's settings.
MAX_LENGTH = None  # None pads every text to the longest training text (120 tokens); a number truncates
BATCH_SIZE = 8
NUM_CLASSES = 2
SETTINGS = {"num_epochs": 5, "learning_rate": 5e-5, "weight_decay": 0.1, "eval_freq": 50, "eval_iter": 5}

# --quick: v's tiny random GPT (QUICK_CONFIG), one epoch on the first 80 examples of each split.
QUICK_SETTINGS = {**SETTINGS, "num_epochs": 1, "eval_freq": 5, "eval_iter": 2, "num_examples": 80}


def download_and_unzip_spam_data(url, zip_path, extracted_path, data_file_path, backup_url=None):
    """Download the dataset zip, extract it, and rename the data file to *.tsv, as the book does."""
    data_file_path = Path(data_file_path)
    if data_file_path.exists():
        print(f"{data_file_path} already exists. Skipping download and extraction.")
        return data_file_path
    original_file_path = Path(extracted_path) / "SMSSpamCollection"
    downloaded = not original_file_path.exists()  # else the zip was extracted before, e.g. by hand
    if downloaded:
        download_file(url, zip_path, backup_url=backup_url)
        extract_zip_safely(zip_path, extracted_path)
    if not original_file_path.exists():
        raise ScriptError(f"{zip_path} did not contain SMSSpamCollection; delete the zip and run again, "
                          f"or put the file by hand at {data_file_path}")
    original_file_path.rename(data_file_path)
    print(f"File {'downloaded and ' * downloaded}saved as {data_file_path}")
    return data_file_path


def read_sms_spam(data_file_path):
    """Read the tab-separated file the way the book does. pandas' default quoting lets one message
    that opens a quote absorb the next two lines, which gives the book's 4825 ham / 747 spam."""
    return pd.read_csv(data_file_path, sep="\t", header=None, names=["Label", "Text"])


def create_balanced_dataset(df):
    """Undersample "ham" to as many messages as there are "spam" ones."""
    num_spam = int((df["Label"] == "spam").sum())
    ham_subset = df[df["Label"] == "ham"].sample(num_spam, random_state=123)
    return pd.concat([ham_subset, df[df["Label"] == "spam"]])


def random_split(df, train_frac, validation_frac):
    """Shuffle the rows, then cut them into train / validation / test (the rest)."""
    df = df.sample(frac=1, random_state=123).reset_index(drop=True)
    train_end = int(len(df) * train_frac)
    validation_end = train_end + int(len(df) * validation_frac)
    return df[:train_end], df[train_end:validation_end], df[validation_end:]


class SpamDataset(Dataset):
    """Token IDs of every message, padded with pad_token_id to one length (the longest message
    unless max_length is given, in which case longer messages are truncated)."""

    def __init__(self, csv_file, tokenizer, max_length=None, pad_token_id=50256):
        self.data = pd.read_csv(csv_file)
        self.encoded_texts = [tokenizer.encode(text) for text in self.data["Text"]]
        if max_length is None:
            self.max_length = self._longest_encoded_length()
        else:
            self.max_length = max_length
            self.encoded_texts = [encoded[:max_length] for encoded in self.encoded_texts]
        self.encoded_texts = [encoded + [pad_token_id] * (self.max_length - len(encoded))
                              for encoded in self.encoded_texts]

    def __getitem__(self, index):
        encoded = self.encoded_texts[index]
        label = self.data.iloc[index]["Label"]
        return torch.tensor(encoded, dtype=torch.long), torch.tensor(label, dtype=torch.long)

    def __len__(self):
        return len(self.data)

    def _longest_encoded_length(self):
        return max(len(encoded) for encoded in self.encoded_texts)


def prepare_spam_splits():
    """Section 6.2 end to end: download, read, balance, label ham 0 / spam 1, split 70/10/20 and save
    the splits as CSV files. Returns (full df, balanced df, (train, validation, test))."""
    download_and_unzip_spam_data(URL, ZIP_PATH, EXTRACTED_PATH, DATA_FILE_PATH, backup_url=BACKUP_URL)
    verify_file(DATA_FILE_PATH, URL, expected_sha256=SMS_SHA256, expected_size=SMS_SIZE, made_from=ZIP_PATH)
    df = read_sms_spam(DATA_FILE_PATH)
    if set(df["Label"]) != {"ham", "spam"}:
        raise ScriptError(f"{DATA_FILE_PATH} should label every message ham or spam, but has the labels "
                          f"{sorted(map(str, set(df['Label'])))}; delete it and download it again")
    balanced_df = create_balanced_dataset(df)
    labelled_df = balanced_df.assign(Label=balanced_df["Label"].map({"ham": 0, "spam": 1}))
    splits = random_split(labelled_df, 0.7, 0.1)
    for split_df, path in zip(splits, (TRAIN_CSV, VALIDATION_CSV, TEST_CSV)):
        split_df.to_csv(path, index=None)
    return df, balanced_df, splits


def create_spam_loaders(tokenizer, batch_size=BATCH_SIZE, max_length=MAX_LENGTH):
    """Section 6.3: datasets from the saved CSV files, padded to the training set's length, and the
    book's loaders (seed 123; the training loader shuffles and drops the last partial batch)."""
    train_dataset = SpamDataset(TRAIN_CSV, max_length=max_length, tokenizer=tokenizer)
    val_dataset = SpamDataset(VALIDATION_CSV, max_length=train_dataset.max_length, tokenizer=tokenizer)
    test_dataset = SpamDataset(TEST_CSV, max_length=train_dataset.max_length, tokenizer=tokenizer)
    torch.manual_seed(123)
    train_loader = DataLoader(train_dataset, batch_size=batch_size, shuffle=True, num_workers=0,
                              drop_last=True)
    val_loader = DataLoader(val_dataset, batch_size=batch_size, num_workers=0, drop_last=False)
    test_loader = DataLoader(test_dataset, batch_size=batch_size, num_workers=0, drop_last=False)
    return train_loader, val_loader, test_loader


def first_examples_loader(dataset, num_examples, shuffle=False, drop_last=False):
    """A loader over the first num_examples of a dataset (--quick fine-tunes on a few batches)."""
    subset = Subset(dataset, range(min(num_examples, len(dataset))))
    return DataLoader(subset, batch_size=BATCH_SIZE, shuffle=shuffle, num_workers=0, drop_last=drop_last)


def build_classifier(model, num_classes=2, seed=123):
    """Turn a GPTModel into a classifier: freeze it, replace out_head by Linear(emb_dim, num_classes),
    and make the last transformer block and the final LayerNorm trainable again (section 6.5)."""
    for param in model.parameters():
        param.requires_grad = False
    if seed is not None:
        torch.manual_seed(seed)  # the book seeds right before creating the head
    # Created on the CPU and then moved, so the seeded weights are the same on every device.
    out_head = nn.Linear(in_features=model.out_head.in_features, out_features=num_classes)
    model.out_head = out_head.to(model.out_head.weight.device)
    for param in model.trf_blocks[-1].parameters():
        param.requires_grad = True
    for param in model.final_norm.parameters():
        param.requires_grad = True
    return model


def calc_accuracy_loader(data_loader, model, device, num_batches=None):
    """Share of correct predictions, reading the class from the last token's logits."""
    model.eval()
    correct_predictions, num_examples = 0, 0
    num_batches = len(data_loader) if num_batches is None else min(num_batches, len(data_loader))
    for i, (input_batch, target_batch) in enumerate(data_loader):
        if i >= num_batches:
            break
        input_batch, target_batch = input_batch.to(device), target_batch.to(device)
        with torch.no_grad():
            logits = model(input_batch)[:, -1, :]  # the last token has attended to all the others
        predicted_labels = torch.argmax(logits, dim=-1)
        num_examples += predicted_labels.shape[0]
        correct_predictions += (predicted_labels == target_batch).sum().item()
    return correct_predictions / num_examples


def calc_loss_batch(input_batch, target_batch, model, device):
    input_batch, target_batch = input_batch.to(device), target_batch.to(device)
    logits = model(input_batch)[:, -1, :]
    return torch.nn.functional.cross_entropy(logits, target_batch)


def calc_loss_loader(data_loader, model, device, num_batches=None):
    total_loss = 0.0
    if len(data_loader) == 0:
        return float("nan")
    num_batches = len(data_loader) if num_batches is None else min(num_batches, len(data_loader))
    for i, (input_batch, target_batch) in enumerate(data_loader):
        if i >= num_batches:
            break
        total_loss += calc_loss_batch(input_batch, target_batch, model, device).item()
    return total_loss / num_batches


def evaluate_model(model, train_loader, val_loader, device, eval_iter):
    """Chapter 5's evaluate_model, but with this chapter's classification loss."""
    model.eval()
    with torch.no_grad():
        train_loss = calc_loss_loader(train_loader, model, device, num_batches=eval_iter)
        val_loss = calc_loss_loader(val_loader, model, device, num_batches=eval_iter)
    model.train()
    return train_loss, val_loss


def train_classifier_simple(model, train_loader, val_loader, optimizer, device, num_epochs,
                            eval_freq, eval_iter):
    train_losses, val_losses, train_accs, val_accs = [], [], [], []
    examples_seen, global_step = 0, -1

    for epoch in range(num_epochs):
        model.train()
        for input_batch, target_batch in train_loader:
            optimizer.zero_grad()
            loss = calc_loss_batch(input_batch, target_batch, model, device)
            loss.backward()
            optimizer.step()
            examples_seen += input_batch.shape[0]  # chapter 5 counted tokens; here, messages
            global_step += 1

            if global_step % eval_freq == 0:
                train_loss, val_loss = evaluate_model(model, train_loader, val_loader, device, eval_iter)
                train_losses.append(train_loss)
                val_losses.append(val_loss)
                print(f"Ep {epoch + 1} (Step {global_step:06d}): "
                      f"Train loss {train_loss:.3f}, Val loss {val_loss:.3f}")

        train_accuracy = calc_accuracy_loader(train_loader, model, device, num_batches=eval_iter)
        val_accuracy = calc_accuracy_loader(val_loader, model, device, num_batches=eval_iter)
        print(f"Training accuracy: {train_accuracy * 100:.2f}% | "
              f"Validation accuracy: {val_accuracy * 100:.2f}%")
        train_accs.append(train_accuracy)
        val_accs.append(val_accuracy)

    return train_losses, val_losses, train_accs, val_accs, examples_seen


def plot_values(epochs_seen, examples_seen, train_values, val_values, label="loss", path=None):
    """Plot a training and a validation curve against epochs, with examples seen on a second
    x-axis, and save it as a PNG (default outputs/classifier-<label>-plot.png). Returns the path."""
    import matplotlib.pyplot as plt

    fig, ax1 = plt.subplots(figsize=(5, 3))
    ax1.plot(epochs_seen, train_values, label=f"Training {label}")
    ax1.plot(epochs_seen, val_values, linestyle="-.", label=f"Validation {label}")
    ax1.set_xlabel("Epochs")
    ax1.set_ylabel(label.capitalize())
    ax1.legend()
    ax2 = ax1.twiny()  # same curves, read against the number of examples seen
    ax2.plot(examples_seen, train_values, alpha=0)
    ax2.set_xlabel("Examples seen")
    return save_figure(fig, output_path(f"classifier-{label}-plot.png") if path is None else Path(path))


def fine_tune(model, train_loader, val_loader, device, settings):
    """Section 6.7's run: AdamW (seed 123) on the trainable parameters, then train_classifier_simple."""
    start_time = time.time()
    torch.manual_seed(123)
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings["learning_rate"],
                                  weight_decay=settings["weight_decay"])
    results = train_classifier_simple(model, train_loader, val_loader, optimizer, device,
                                      num_epochs=settings["num_epochs"], eval_freq=settings["eval_freq"],
                                      eval_iter=settings["eval_iter"])
    print(f"Training completed in {(time.time() - start_time) / 60:.2f} minutes.")
    return results


def plot_fine_tuning(results, settings, loss_plot_path, accuracy_plot_path=None):
    """Section 6.7's plots of a fine_tune run: the losses, and the accuracies where a path is given."""
    train_losses, val_losses, train_accs, val_accs, examples_seen = results
    for train_values, val_values, label, path in [(train_losses, val_losses, "loss", loss_plot_path),
                                                  (train_accs, val_accs, "accuracy", accuracy_plot_path)]:
        if path is not None:
            epochs = torch.linspace(0, settings["num_epochs"], len(train_values))
            seen = torch.linspace(0, examples_seen, len(train_values))
            print("Saved", plot_values(epochs, seen, train_values, val_values, label, path))


def classify_review(text, model, tokenizer, device, max_length=None, pad_token_id=50256):
    """Return "spam" or "not spam" for one message, prepared like the training data."""
    model.eval()
    input_ids = tokenizer.encode(text)
    if not input_ids:
        raise ValueError("classify_review needs a text with at least one token")
    supported_context_length = model.pos_emb.weight.shape[0]
    if max_length is None:
        input_ids = input_ids[:supported_context_length]
    else:
        max_length = min(max_length, supported_context_length)
        input_ids = input_ids[:max_length]
        input_ids += [pad_token_id] * (max_length - len(input_ids))  # pad as in training
    input_tensor = torch.tensor(input_ids, device=device).unsqueeze(0)
    with torch.no_grad():
        logits = model(input_tensor)[:, -1, :]
    predicted_label = torch.argmax(logits, dim=-1).item()
    return "spam" if predicted_label == 1 else "not spam"


def load_classifier(path, device="cpu"):
    """Rebuild a classifier saved by this script (save_checkpoint with num_classes) -> (model, cfg)."""
    checkpoint = load_checkpoint(path, device=device)
    if "num_classes" not in checkpoint:
        raise ScriptError(f"{path} is not a classifier checkpoint saved by w_finetune_classifier.py "
                          "(it has no num_classes)")
    cfg = checkpoint["config"]
    model = GPTModel(cfg)
    model.out_head = nn.Linear(cfg["emb_dim"], checkpoint["num_classes"])
    load_weights(model, checkpoint, path)
    model.to(device)
    model.eval()
    return model, cfg


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_device_arg(parser)
    add_quick_and_epochs_args(parser, SETTINGS["num_epochs"], QUICK_SETTINGS["num_epochs"],
                              "a tiny randomly initialised model and one short epoch, to check the setup")
    add_starting_point_args(parser, default_model="124M")
    args = parser.parse_args()
    settings = book_or_quick(args, SETTINGS, QUICK_SETTINGS)
    ensure_writable(outputs_folder(args.quick))  # now, not after the training

    # 6.2 Preparing the dataset
    df, balanced_df, (train_df, validation_df, test_df) = prepare_spam_splits()
    print("\nLabels in the full dataset:\n" + df["Label"].value_counts().to_string())
    print("\nLabels in the balanced dataset:\n" + balanced_df["Label"].value_counts().to_string())
    print("Labels as class ids: ham 0, spam 1")
    print(f"\nSplit sizes: train {len(train_df)}, validation {len(validation_df)}, test {len(test_df)} "
          f"(saved as {TRAIN_CSV.name}, {VALIDATION_CSV.name}, {TEST_CSV.name} in {DATA_DIR})")

    # 6.3 Creating data loaders
    tokenizer = get_gpt2_tokenizer()
    print("\nPadding token:", tokenizer.encode("<|endoftext|>", allowed_special={"<|endoftext|>"}))
    train_loader, val_loader, test_loader = create_spam_loaders(tokenizer)
    train_dataset = train_loader.dataset
    print("Padded length (the longest training text unless MAX_LENGTH is set):", train_dataset.max_length)
    input_batch, target_batch = next(iter(train_loader))
    print("Input batch dimensions:", input_batch.shape)
    print("Label batch dimensions", target_batch.shape)
    print(f"{len(train_loader)} training batches")
    print(f"{len(val_loader)} validation batches")
    print(f"{len(test_loader)} test batches")

    # 6.4 Initializing a model with pretrained weights
    device = get_device(args.device)
    print("\nDevice:", device)
    model, cfg = load_starting_point(args, device, quick_cfg=QUICK_CONFIG if args.quick else None)
    if train_dataset.max_length > cfg["context_length"]:
        raise ScriptError(f"the longest training text has {train_dataset.max_length} tokens, but the model "
                          f"reads at most {cfg['context_length']}; use a model with a longer context, or set "
                          f"MAX_LENGTH = {cfg['context_length']} at the top of {Path(__file__).name} "
                          "to truncate the texts")
    model.to(device)
    model.eval()
    text_1 = "Every effort moves you"
    token_ids = generate_text_simple(model, text_to_token_ids(text_1, tokenizer).to(device),
                                     max_new_tokens=15, context_size=cfg["context_length"])
    print("\n" + token_ids_to_text(token_ids, tokenizer))
    # Before fine-tuning, the model cannot follow an instruction to classify a message.
    text_2 = ("Is the following text 'spam'? Answer with 'yes' or 'no':"
              " 'You are a winner you have been specially"
              " selected to receive $1000 cash or a $2000 award.'")
    token_ids = generate_text_simple(model, text_to_token_ids(text_2, tokenizer).to(device),
                                     max_new_tokens=23, context_size=cfg["context_length"])
    print("\n" + token_ids_to_text(token_ids, tokenizer))

    # 6.5 Adding a classification head
    build_classifier(model, num_classes=NUM_CLASSES)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    print(f"\nClassification head: {model.out_head}")
    print(f"Trainable parameters: {trainable:,} of {total:,} "
          "(the last transformer block, the final LayerNorm and the new head)")
    inputs = torch.tensor(tokenizer.encode("Do you have time")).unsqueeze(0).to(device)
    print("Inputs:", inputs.tolist())
    print("Inputs dimensions:", inputs.shape)
    with torch.no_grad():
        outputs = model(inputs)
    print("Outputs dimensions:", outputs.shape)  # (batch, tokens, num_classes)
    print("Last output token:", outputs[:, -1, :].tolist())

    # 6.6 Calculating the classification loss and accuracy
    probas = torch.softmax(outputs[:, -1, :], dim=-1)
    print("Class label:", torch.argmax(probas).item())
    torch.manual_seed(123)
    train_accuracy = calc_accuracy_loader(train_loader, model, device, num_batches=10)
    val_accuracy = calc_accuracy_loader(val_loader, model, device, num_batches=10)
    test_accuracy = calc_accuracy_loader(test_loader, model, device, num_batches=10)
    print(f"\nBefore fine-tuning (10 batches each): training accuracy {train_accuracy * 100:.2f}%, "
          f"validation accuracy {val_accuracy * 100:.2f}%, test accuracy {test_accuracy * 100:.2f}%")
    with torch.no_grad():
        train_loss = calc_loss_loader(train_loader, model, device, num_batches=5)
        val_loss = calc_loss_loader(val_loader, model, device, num_batches=5)
        test_loss = calc_loss_loader(test_loader, model, device, num_batches=5)
    print(f"Before fine-tuning (5 batches each): training loss {train_loss:.3f}, "
          f"validation loss {val_loss:.3f}, test loss {test_loss:.3f}")

    # 6.7 Fine-tuning the model on supervised data
    if args.quick:
        num_examples = settings["num_examples"]
        train_loader = first_examples_loader(train_loader.dataset, num_examples, shuffle=True, drop_last=True)
        val_loader = first_examples_loader(val_loader.dataset, num_examples)
        test_loader = first_examples_loader(test_loader.dataset, num_examples)
        print(f"\n--quick: fine-tuning and evaluating on the first {num_examples} examples of each split "
              f"({len(train_loader)} / {len(val_loader)} / {len(test_loader)} batches)")
    print(f"\nFine-tuning for {settings['num_epochs']} epoch(s)")
    results = fine_tune(model, train_loader, val_loader, device, settings)
    path = output_path("review_classifier.pth", args.quick)  # the model first, before plots and samples
    save_checkpoint(path, model, cfg, num_classes=NUM_CLASSES, max_length=train_dataset.max_length)
    print(f"Saved the fine-tuned model to {path}")
    plot_fine_tuning(results, settings, output_path("classifier-loss-plot.png", args.quick),
                     output_path("classifier-accuracy-plot.png", args.quick))

    train_accuracy = calc_accuracy_loader(train_loader, model, device)
    val_accuracy = calc_accuracy_loader(val_loader, model, device)
    test_accuracy = calc_accuracy_loader(test_loader, model, device)
    print(f"\nTraining accuracy: {train_accuracy * 100:.2f}%")
    print(f"Validation accuracy: {val_accuracy * 100:.2f}%")
    print(f"Test accuracy: {test_accuracy * 100:.2f}%")
    print("(the book, with GPT-2 124M: 97.21% / 97.32% / 95.67%)")

    # 6.8 Using the LLM as a spam classifier
    text_1 = ("You are a winner you have been specially selected to receive $1000 cash or a $2000 award.")
    text_2 = ("Hey, just wanted to check if we're still on for dinner tonight? Let me know!")
    for text in [text_1, text_2]:
        label = classify_review(text, model, tokenizer, device, max_length=train_dataset.max_length)
        print(f"\n{text!r}\n-> {label}")

    reloaded, _ = load_classifier(path, device=device)
    same = all(classify_review(text, reloaded, tokenizer, device, max_length=train_dataset.max_length)
               == classify_review(text, model, tokenizer, device, max_length=train_dataset.max_length)
               for text in [text_1, text_2])
    print(f"\nReloaded {path} (weights_only=True); same predictions:", same)


if __name__ == "__main__":
    run_main(main)
