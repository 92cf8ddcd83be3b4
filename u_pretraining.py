"""Pretrain the GPT model on "The Verdict", sample with temperature and top-k, save and reload it.

Pretraining is next-token prediction on raw text: AdamW lowers t's cross entropy batch by batch,
and the training and validation losses show the model learning, then overfitting one short story.
Temperature divides the logits before sampling (low: safe and repetitive, high: varied and
erratic); top-k samples among the k most likely tokens only. Book sections 5.1-5.4.

Run: python u_pretraining.py            the book's run (on CPU it prints the book's loss log)
     python u_pretraining.py --quick    a tiny model for a few steps, to check that all runs
Next to this chapter: appendix_d.py (warmup, cosine decay, clipping) and fast_pretraining.py
(the same training, faster, and on several GPUs with torchrun).
"""

import argparse
import time

import torch

from a_tokenizer import load_verdict
from checkpoints import load_checkpoint, save_checkpoint
from d_tokenizer import get_gpt2_tokenizer
from e_data_preparation import create_dataloader_v1
from fast_attention import CachedNextTokenLogits
from plumbing import (ScriptError, add_device_arg, add_quick_and_epochs_args, book_or_quick, ensure_writable,
                      get_device, output_path, outputs_folder, run_main, save_figure, temperature_problem)
from s_gpt_model import GPTModel, generate_text_simple
from t_pretraining_basics import GPT_CONFIG_124M, START_CONTEXT, text_to_token_ids, token_ids_to_text

# The model is GPT_CONFIG_124M from t_pretraining_basics: GPT-2 124M with a 256-token context.
# To try another size, override it here, e.g. GPT_CONFIG_124M = {**GPT_CONFIG_124M, "n_layers": 6}

TRAIN_SETTINGS = {
    "train_ratio": 0.90,     # the first 90% of the characters train, the last 10% validate
    "batch_size": 2,
    "learning_rate": 0.0004,
    "weight_decay": 0.1,
    "num_epochs": 10,
    "eval_freq": 5,          # evaluate every 5 optimizer steps ...
    "eval_iter": 5,          # ... on the first 5 batches of each loader
    "continue_epochs": 1,    # epochs of training after reloading the checkpoint (exercise 5.4)
}

# --quick: a tiny model on the first 3,000 characters, to check in seconds that everything runs.
QUICK_CONFIG = {**GPT_CONFIG_124M, "context_length": 32, "emb_dim": 32, "n_heads": 2, "n_layers": 2}
QUICK_SETTINGS = {**TRAIN_SETTINGS, "num_epochs": 2, "eval_iter": 2}
QUICK_MAX_CHARS = 3_000

SEED = 123

# The toy vocabulary of section 5.3 and the logits a model might give for the next token.
TOY_VOCAB = {"closer": 0, "every": 1, "effort": 2, "forward": 3, "inches": 4, "moves": 5,
             "pizza": 6, "toward": 7, "you": 8}
TOY_NEXT_TOKEN_LOGITS = [4.51, 0.89, -1.90, 6.75, 1.63, -1.62, -1.89, 6.28, 1.79]


# ---- 5.1 the loss over batches and loaders ----

def calc_loss_batch(input_batch, target_batch, model, device):
    input_batch, target_batch = input_batch.to(device), target_batch.to(device)
    logits = model(input_batch)
    return torch.nn.functional.cross_entropy(logits.flatten(0, 1), target_batch.flatten())


def calc_loss_loader(data_loader, model, device, num_batches=None):
    """Mean batch loss over the first `num_batches` batches (all of them by default)."""
    total_loss = 0.0
    if len(data_loader) == 0:
        return float("nan")
    elif num_batches is None:
        num_batches = len(data_loader)
    else:
        num_batches = min(num_batches, len(data_loader))
    for i, (input_batch, target_batch) in enumerate(data_loader):
        if i < num_batches:
            loss = calc_loss_batch(input_batch, target_batch, model, device)
            total_loss += loss.item()
        else:
            break
    return total_loss / num_batches


# ---- 5.2 training ----

def evaluate_model(model, train_loader, val_loader, device, eval_iter):
    model.eval()  # no dropout while measuring
    with torch.no_grad():
        train_loss = calc_loss_loader(train_loader, model, device, num_batches=eval_iter)
        val_loss = calc_loss_loader(val_loader, model, device, num_batches=eval_iter)
    model.train()
    return train_loss, val_loss


def generate_and_print_sample(model, tokenizer, device, start_context):
    model.eval()
    context_size = model.pos_emb.weight.shape[0]
    encoded = text_to_token_ids(start_context, tokenizer).to(device)
    with torch.no_grad():
        token_ids = generate_text_simple(model=model, idx=encoded, max_new_tokens=50,
                                         context_size=context_size)
    decoded_text = token_ids_to_text(token_ids, tokenizer)
    print(decoded_text.replace("\n", " "))  # one line per sample
    model.train()


def train_model_simple(model, train_loader, val_loader, optimizer, device, num_epochs,
                       eval_freq, eval_iter, start_context, tokenizer):
    """The book's training loop: one optimizer step per batch, an evaluation every eval_freq
    steps, a sample after every epoch. Returns (train_losses, val_losses, track_tokens_seen)."""
    train_losses, val_losses, track_tokens_seen = [], [], []
    tokens_seen, global_step = 0, -1

    for epoch in range(num_epochs):
        model.train()
        for input_batch, target_batch in train_loader:
            optimizer.zero_grad()  # gradients from the previous step would add up otherwise
            loss = calc_loss_batch(input_batch, target_batch, model, device)
            loss.backward()
            optimizer.step()
            tokens_seen += input_batch.numel()
            global_step += 1

            if global_step % eval_freq == 0:
                train_loss, val_loss = evaluate_model(model, train_loader, val_loader, device, eval_iter)
                train_losses.append(train_loss)
                val_losses.append(val_loss)
                track_tokens_seen.append(tokens_seen)
                print(f"Ep {epoch + 1} (Step {global_step:06d}): "
                      f"Train loss {train_loss:.3f}, Val loss {val_loss:.3f}")

        generate_and_print_sample(model, tokenizer, device, start_context)

    return train_losses, val_losses, track_tokens_seen


def plot_losses(epochs_seen, tokens_seen, train_losses, val_losses, path):
    """Save the training and validation losses against epochs, with tokens seen on a top axis."""
    import matplotlib.pyplot as plt  # imported here so that importing this file stays light
    from matplotlib.ticker import MaxNLocator

    fig, ax1 = plt.subplots(figsize=(5, 3))
    ax1.plot(epochs_seen, train_losses, label="Training loss")
    ax1.plot(epochs_seen, val_losses, linestyle="-.", label="Validation loss")
    ax1.set_xlabel("Epochs")
    ax1.set_ylabel("Loss")
    ax1.legend(loc="upper right")
    ax1.xaxis.set_major_locator(MaxNLocator(integer=True))

    ax2 = ax1.twiny()  # a second x axis sharing the y axis
    ax2.plot(tokens_seen, train_losses, alpha=0)  # invisible: only sets the axis range
    ax2.set_xlabel("Tokens seen")
    return save_figure(fig, path)


# ---- 5.3 decoding strategies ----

def softmax_with_temperature(logits, temperature):
    """T > 1 flattens the distribution, T < 1 sharpens it towards the argmax."""
    scaled_logits = logits / temperature
    return torch.softmax(scaled_logits, dim=0)


def generate(model, idx, max_new_tokens, context_size, temperature=0.0, top_k=None, eos_id=None,
             use_cache=False):
    """Extend each row of `idx` by up to `max_new_tokens` tokens.

    temperature 0.0 picks the most likely token (greedy); temperature > 0 samples from the
    softmax of logits / temperature. top_k keeps only each row's k largest logits.
    eos_id: a row that produces eos_id is finished; generation stops once every row is. The
    eos_id that finishes the last rows is not appended (so a single sequence ends without it,
    as in the book); rows that finished earlier are padded with eos_id to keep the batch
    rectangular. So in every row, everything from the first eos_id on is padding.
    use_cache=True (beyond the book) keeps each token's keys and values instead of running the
    whole sequence again for every new token: the same ids, many times faster.
    """
    if temperature_problem(temperature):  # also nan, inf and values so small that logits overflow
        raise ValueError(temperature_problem(temperature))
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be a positive integer or None, got {top_k}")
    finished = torch.zeros(idx.shape[0], dtype=torch.bool, device=idx.device)
    cached_logits = CachedNextTokenLogits(model, context_size) if use_cache else None

    for _ in range(max_new_tokens):
        if use_cache:
            logits = cached_logits(idx)
        else:
            idx_cond = idx[:, -context_size:]
            with torch.no_grad():
                logits = model(idx_cond)
            logits = logits[:, -1, :]

        if top_k is not None:
            top_logits, _ = torch.topk(logits, min(top_k, logits.shape[-1]))
            min_val = top_logits[:, -1:]  # each row's k-th largest logit, shape (batch, 1)
            logits = torch.where(logits < min_val, torch.tensor(float("-inf")).to(logits.device), logits)

        if temperature > 0.0:
            logits = logits / temperature
            probs = torch.softmax(logits, dim=-1)
            idx_next = torch.multinomial(probs, num_samples=1)
        else:
            idx_next = torch.argmax(logits, dim=-1, keepdim=True)

        if eos_id is not None:
            idx_next = idx_next.masked_fill(finished.unsqueeze(1), eos_id)  # pad finished rows
            finished = finished | (idx_next.squeeze(1) == eos_id)
            if finished.all():
                break
        idx = torch.cat((idx, idx_next), dim=1)

    return idx


def print_sampled_tokens(probas, inverse_vocab):
    """Sample 1,000 next tokens from `probas` and print how often each word came up."""
    torch.manual_seed(123)
    sample = [torch.multinomial(probas, num_samples=1).item() for _ in range(1_000)]
    sampled_ids = torch.bincount(torch.tensor(sample), minlength=len(probas))
    for i, freq in enumerate(sampled_ids):
        print(f"{freq} x {inverse_vocab[i]}")


def plot_temperatures(scaled_probas, temperatures, vocab, path):
    import matplotlib.pyplot as plt

    x = torch.arange(len(vocab))
    bar_width = 0.15
    fig, ax = plt.subplots(figsize=(5, 3))
    for i, temperature in enumerate(temperatures):
        ax.bar(x + i * bar_width, scaled_probas[i], bar_width, label=f"Temperature = {temperature}")
    ax.set_ylabel("Probability")
    ax.set_xticks(x)
    ax.set_xticklabels(vocab.keys(), rotation=90)
    ax.legend()
    return save_figure(fig, path)


# ---- the walk-through ----

def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_device_arg(parser, "; the book's loss log reproduces on cpu")
    add_quick_and_epochs_args(parser, TRAIN_SETTINGS["num_epochs"], QUICK_SETTINGS["num_epochs"],
                              "a tiny model for a few steps: checks in seconds that everything runs")
    return parser.parse_args()


def verdict_text(quick=False):
    """The short story chapter 5 trains on; with quick=True only its first QUICK_MAX_CHARS."""
    text_data = load_verdict()
    return text_data[:QUICK_MAX_CHARS] if quick else text_data


def make_loaders(text_data, cfg, settings):
    """Split by characters and build the book's loaders. The training loader draws a new shuffle
    from torch's global random generator each time it is iterated."""
    split_idx = int(settings["train_ratio"] * len(text_data))
    train_data, val_data = text_data[:split_idx], text_data[split_idx:]
    tokenizer = get_gpt2_tokenizer()
    for name, part in (("training", train_data), ("validation", val_data)):
        num_tokens = len(tokenizer.encode(part, allowed_special={"<|endoftext|>"}))
        if num_tokens <= cfg["context_length"]:
            raise ScriptError(
                f"the {name} part of the text has {num_tokens} tokens, too few for one window of "
                f"context_length={cfg['context_length']} (+1 for the target); use a longer text, "
                "or lower context_length in the config at the top of this script")
    train_loader = create_dataloader_v1(
        train_data, batch_size=settings["batch_size"], max_length=cfg["context_length"],
        stride=cfg["context_length"], drop_last=True, shuffle=True, num_workers=0)
    val_loader = create_dataloader_v1(
        val_data, batch_size=settings["batch_size"], max_length=cfg["context_length"],
        stride=cfg["context_length"], drop_last=False, shuffle=False, num_workers=0)
    if len(train_loader) == 0:
        raise ScriptError(f"the training text gives fewer than batch_size={settings['batch_size']} "
                          "windows; use a longer text or a smaller batch size")
    return train_loader, val_loader


def start_run(args, book_settings, quick_settings):
    """The device, model config and settings of a run on the story (the book's, or with --quick a
    tiny model's), after checking that its outputs can be written: before training, not after."""
    device = get_device(args.device)
    settings = book_or_quick(args, book_settings, quick_settings)
    ensure_writable(outputs_folder(args.quick))
    print(f"Device: {device}" + ("   (--quick: a tiny model, not the book's numbers)" if args.quick else ""))
    return device, (QUICK_CONFIG if args.quick else GPT_CONFIG_124M), settings


def main():
    args = parse_args()
    device, cfg, settings = start_run(args, TRAIN_SETTINGS, QUICK_SETTINGS)
    num_epochs = settings["num_epochs"]

    tokenizer = get_gpt2_tokenizer()

    # 5.1: the untrained model, created exactly as the book creates it.
    torch.manual_seed(SEED)
    model = GPTModel(cfg)
    model.eval()

    # 5.1.3: the data, split 90/10 by characters.
    text_data = verdict_text(args.quick)
    print("\n5.1.3 Characters:", len(text_data))
    print("Tokens:", len(tokenizer.encode(text_data, allowed_special={"<|endoftext|>"})))

    torch.manual_seed(SEED)
    train_loader, val_loader = make_loaders(text_data, cfg, settings)
    x, y = next(iter(train_loader))
    print(f"Train loader: {len(train_loader)} batches, inputs {tuple(x.shape)}, targets {tuple(y.shape)}")
    x, y = next(iter(val_loader))
    print(f"Validation loader: {len(val_loader)} batches, inputs {tuple(x.shape)}, targets {tuple(y.shape)}")
    train_tokens = sum(input_batch.numel() for input_batch, _ in train_loader)
    val_tokens = sum(input_batch.numel() for input_batch, _ in val_loader)
    print("Training tokens:", train_tokens)
    print("Validation tokens:", val_tokens)
    print("All tokens:", train_tokens + val_tokens)

    model.to(device)
    torch.manual_seed(SEED)  # so that the training loader's shuffle is the book's
    with torch.no_grad():
        train_loss = calc_loss_loader(train_loader, model, device)
        val_loss = calc_loss_loader(val_loader, model, device)
    print("Training loss before training:", train_loss)
    print("Validation loss before training:", val_loss)

    # 5.2: train a fresh model (same seed) with AdamW.
    print(f"\n5.2 Training for {num_epochs} epochs")
    start_time = time.time()
    torch.manual_seed(SEED)
    model = GPTModel(cfg)
    model.to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings["learning_rate"],
                                  weight_decay=settings["weight_decay"])
    train_losses, val_losses, tokens_seen = train_model_simple(
        model, train_loader, val_loader, optimizer, device,
        num_epochs=num_epochs, eval_freq=settings["eval_freq"], eval_iter=settings["eval_iter"],
        start_context=START_CONTEXT, tokenizer=tokenizer)
    print(f"Training completed in {(time.time() - start_time) / 60:.2f} minutes.")
    # Saved now, before the plots and samples, so that nothing after the training can lose it; 5.4
    # below reloads this file.
    checkpoint_path = save_checkpoint(output_path("model_and_optimizer.pth", args.quick), model, cfg,
                                      optimizer)

    epochs_tensor = torch.linspace(0, num_epochs, len(train_losses))
    path = plot_losses(epochs_tensor, tokens_seen, train_losses, val_losses,
                       output_path("pretraining-loss-plot.png", args.quick))
    print("Saved the loss plot to", path)

    # 5.3: decoding. Greedy decoding always gives the same text.
    model.to("cpu")
    model.eval()
    token_ids = generate_text_simple(model=model, idx=text_to_token_ids(START_CONTEXT, tokenizer),
                                     max_new_tokens=25, context_size=cfg["context_length"])
    print("\n5.3 Greedy output text:\n", token_ids_to_text(token_ids, tokenizer))

    # 5.3.1: sampling from the probabilities, on a toy vocabulary of nine words.
    inverse_vocab = {v: k for k, v in TOY_VOCAB.items()}
    next_token_logits = torch.tensor(TOY_NEXT_TOKEN_LOGITS)
    probas = torch.softmax(next_token_logits, dim=0)
    print("\n5.3.1 Toy vocabulary, argmax picks:", inverse_vocab[torch.argmax(probas).item()])
    torch.manual_seed(123)
    print("One multinomial sample picks:", inverse_vocab[torch.multinomial(probas, num_samples=1).item()])
    print("1,000 samples (temperature 1):")
    print_sampled_tokens(probas, inverse_vocab)

    temperatures = [1, 0.1, 5]  # original, sharper, flatter
    scaled_probas = [softmax_with_temperature(next_token_logits, T) for T in temperatures]
    path = plot_temperatures(scaled_probas, temperatures, TOY_VOCAB,
                             output_path("temperature-plot.png", args.quick))
    print("Saved the temperature plot to", path)
    for T, scaled in zip(temperatures[1:], scaled_probas[1:]):
        print(f"1,000 samples (temperature {T}):")
        print_sampled_tokens(scaled, inverse_vocab)

    # 5.3.2: top-k keeps the k largest logits and masks the rest with -inf.
    top_k = 3
    top_logits, top_pos = torch.topk(next_token_logits, top_k)
    print("\n5.3.2 Top logits:", top_logits)
    print("Top positions:", top_pos)
    new_logits = torch.where(condition=next_token_logits < top_logits[-1],
                             input=torch.tensor(float("-inf")), other=next_token_logits)
    print("Masked logits:", new_logits)
    print("Top-k probabilities:", torch.softmax(new_logits, dim=0))

    # 5.3.3: temperature and top-k together.
    torch.manual_seed(123)
    token_ids = generate(model=model, idx=text_to_token_ids(START_CONTEXT, tokenizer), max_new_tokens=15,
                         context_size=cfg["context_length"], top_k=25, temperature=1.4)
    print("\n5.3.3 Output text (top_k=25, temperature=1.4):\n", token_ids_to_text(token_ids, tokenizer))

    # 5.4: save model and optimizer (AdamW keeps two moving averages per weight), reload, go on.
    print(f"\n5.4 Saved the model and optimizer to {checkpoint_path} "
          f"({checkpoint_path.stat().st_size / 1e6:.1f} MB)")
    checkpoint = load_checkpoint(checkpoint_path)
    reloaded = GPTModel(checkpoint["config"])
    reloaded.load_state_dict(checkpoint["model_state_dict"])
    reloaded.eval()
    with torch.no_grad():
        same = torch.equal(model(token_ids), reloaded(token_ids))
    print("The reloaded model gives the same logits:", same)

    reloaded.to(device)  # before the optimizer, so that its state follows the weights to the device
    optimizer = torch.optim.AdamW(reloaded.parameters(), lr=0.0005, weight_decay=0.1)
    optimizer.load_state_dict(checkpoint["optimizer_state_dict"])  # also restores lr 0.0004
    print(f"Continue training the reloaded model for {settings['continue_epochs']} epoch(s):")
    train_model_simple(reloaded, train_loader, val_loader, optimizer, device,
                       num_epochs=settings["continue_epochs"], eval_freq=settings["eval_freq"],
                       eval_iter=settings["eval_iter"], start_context=START_CONTEXT, tokenizer=tokenizer)


if __name__ == "__main__":
    run_main(main)
