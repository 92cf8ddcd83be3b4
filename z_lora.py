"""LoRA: fine-tune chapter 6's spam classifier through small low-rank adapters (appendix E).

LoRA freezes every original weight matrix W and learns its change as the product of two thin
matrices A and B (rank r), whose output is scaled by alpha and added to W's. With rank 16 that
trains about 2% of the parameters, which saves memory; after training, merge_lora folds the
adapters into W, so inference costs nothing extra.

Run: python z_lora.py                  (the book's run: GPT-2 124M, rank 16, alpha 16, 5 epochs)
     python z_lora.py --quick          (a tiny random model, a few steps, to check the setup)
     python z_lora.py --init-from outputs/model_and_optimizer.pth   (no GPT-2 download)
     python z_lora.py --scale-by-rank  (scale the update by alpha / rank instead of alpha)
"""

import argparse
import math

import torch
import torch.nn as nn

from checkpoints import save_checkpoint
from d_tokenizer import get_gpt2_tokenizer
from plumbing import (add_device_arg, add_quick_and_epochs_args, book_or_quick, ensure_writable, get_device,
                      output_path, outputs_folder, run_main)
from starting_point import add_starting_point_args, load_starting_point
from v_load_gpt2_weights import QUICK_CONFIG
from w_finetune_classifier import (QUICK_SETTINGS, build_classifier, calc_accuracy_loader,
                                   create_spam_loaders, fine_tune, first_examples_loader, load_classifier,
                                   plot_fine_tuning, prepare_spam_splits)

# The book's settings for appendix E (the same training recipe as chapter 6).
LORA_RANK = 16   # inner dimension of the low-rank matrices A and B
LORA_ALPHA = 16  # multiplies the low-rank update
BATCH_SIZE = 8
NUM_CLASSES = 2
SETTINGS = {"num_epochs": 5, "learning_rate": 5e-5, "weight_decay": 0.1, "eval_freq": 50, "eval_iter": 5}
# --quick is chapter 6's: QUICK_CONFIG (a tiny random GPT) and QUICK_SETTINGS (one epoch on the
# first few examples of each split), both imported from w_finetune_classifier.


class LoRALayer(nn.Module):
    """The low-rank update alpha * (x @ A @ B). B starts at zero, so the update is zero (and the
    model unchanged) until training moves B; A starts random so that B's gradient is not zero.

    scale_by_rank=True multiplies by alpha / rank instead of alpha: the LoRA paper's convention,
    which keeps the update's size about the same when the rank changes, so alpha and the
    learning rate need not be retuned for every rank."""

    def __init__(self, in_dim, out_dim, rank, alpha, scale_by_rank=False):
        super().__init__()
        if rank < 1:
            raise ValueError(f"the LoRA rank must be at least 1, got {rank}")
        self.A = nn.Parameter(torch.empty(in_dim, rank))
        nn.init.kaiming_uniform_(self.A, a=math.sqrt(5))  # as nn.Linear initialises its weights
        self.B = nn.Parameter(torch.zeros(rank, out_dim))
        self.alpha = alpha
        self.rank = rank
        self.scale_by_rank = scale_by_rank
        self.scaling = alpha / rank if scale_by_rank else alpha

    def forward(self, x):
        return self.scaling * (x @ self.A @ self.B)


class LinearWithLoRA(nn.Module):
    """A (frozen) nn.Linear plus a LoRALayer of the same shape, added to its output."""

    def __init__(self, linear, rank, alpha, scale_by_rank=False):
        super().__init__()
        self.linear = linear
        self.lora = LoRALayer(linear.in_features, linear.out_features, rank, alpha, scale_by_rank)
        # created on the CPU, then moved beside the weights it adapts (same seeded values everywhere)
        self.lora.to(device=linear.weight.device, dtype=linear.weight.dtype)

    def forward(self, x):
        return self.linear(x) + self.lora(x)


def replace_linear_with_lora(model, rank, alpha, scale_by_rank=False):
    """Wrap every nn.Linear inside `model` (in place, at any depth) in a LinearWithLoRA."""
    for name, module in model.named_children():
        if isinstance(module, nn.Linear):
            setattr(model, name, LinearWithLoRA(module, rank, alpha, scale_by_rank))
        else:
            replace_linear_with_lora(module, rank, alpha, scale_by_rank)


def merge_lora(model):
    """Fold every LinearWithLoRA into its base Linear (in place): W + scaling * (A @ B)^T, since
    Linear computes x @ W^T. The model computes the same function with plain Linear layers, so
    inference costs nothing extra and the result loads like any chapter-6 classifier."""
    for name, module in model.named_children():
        if isinstance(module, LinearWithLoRA):
            with torch.no_grad():
                module.linear.weight += (module.lora.scaling * (module.lora.A @ module.lora.B)).T
            setattr(model, name, module.linear)
        else:
            merge_lora(module)


def count_parameters(model, trainable_only=True):
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def print_accuracies(train_loader, val_loader, test_loader, model, device, num_batches=None):
    for name, loader in [("Training", train_loader), ("Validation", val_loader), ("Test", test_loader)]:
        accuracy = calc_accuracy_loader(loader, model, device, num_batches=num_batches)
        print(f"{name} accuracy: {accuracy * 100:.2f}%")


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_device_arg(parser)
    add_quick_and_epochs_args(parser, SETTINGS["num_epochs"], QUICK_SETTINGS["num_epochs"],
                              "a tiny randomly initialised model, one epoch on the first "
                              f"{QUICK_SETTINGS['num_examples']} examples of each split, to check the setup")
    parser.add_argument("--rank", type=int, default=LORA_RANK, help=f"LoRA rank (default {LORA_RANK})")
    parser.add_argument("--alpha", type=float, default=LORA_ALPHA, help=f"LoRA alpha (default {LORA_ALPHA})")
    parser.add_argument("--scale-by-rank", action="store_true",
                        help="multiply the LoRA update by alpha / rank (the LoRA paper) instead of the "
                             "book's alpha; with rank = alpha = 16 the update is 16x smaller, so "
                             "training at the same learning rate is slower")
    add_starting_point_args(parser, default_model="124M")
    args = parser.parse_args()
    if args.rank < 1:
        parser.error("--rank must be at least 1")
    settings = book_or_quick(args, SETTINGS, QUICK_SETTINGS)
    ensure_writable(outputs_folder(args.quick))  # now, not after the training

    # E.2 Preparing the dataset: chapter 6's spam messages and loaders
    tokenizer = get_gpt2_tokenizer()
    prepare_spam_splits()
    train_loader, val_loader, test_loader = create_spam_loaders(tokenizer, batch_size=BATCH_SIZE)
    max_length = train_loader.dataset.max_length  # the longest training message, in tokens
    if args.quick:
        num_examples = settings["num_examples"]
        train_loader = first_examples_loader(train_loader.dataset, num_examples, shuffle=True, drop_last=True)
        val_loader = first_examples_loader(val_loader.dataset, num_examples)
        test_loader = first_examples_loader(test_loader.dataset, num_examples)
        print(f"--quick: the first {num_examples} examples of each split")
    print(f"{len(train_loader)} training batches, {len(val_loader)} validation batches, "
          f"{len(test_loader)} test batches (of {BATCH_SIZE} messages, {max_length} tokens)")

    # E.3 Initializing the model: pretrained GPT-2 with chapter 6's two-class head
    device = get_device(args.device)
    print("Device:", device)
    model, cfg = load_starting_point(args, device, quick_cfg=QUICK_CONFIG if args.quick else None)
    build_classifier(model, num_classes=NUM_CLASSES)  # the seeded Linear(emb_dim, 2) head, on device
    print(f"\nTotal parameters of the classifier: {count_parameters(model, trainable_only=False):,}"
          " (all trainable in a full fine-tuning)")

    # E.4 Parameter-efficient fine-tuning with LoRA
    for param in model.parameters():
        param.requires_grad = False  # the original weights stay as they are
    print(f"Total trainable parameters after freezing: {count_parameters(model):,}")
    # (each LoRALayer is created beside the weights it adapts, so the model stays on `device`)
    replace_linear_with_lora(model, rank=args.rank, alpha=args.alpha, scale_by_rank=args.scale_by_rank)
    print(f"Total trainable LoRA parameters: {count_parameters(model):,} "
          f"(rank {args.rank}, alpha {args.alpha:g}, scaling "
          f"{'alpha / rank' if args.scale_by_rank else 'alpha'} = {model.out_head.lora.scaling:g})")
    print("Every Linear is now a LinearWithLoRA; the first transformer block:\n", model.trf_blocks[0])
    print("The classification head:\n", model.out_head)

    # B is zero, so the LoRA model still predicts exactly what the classifier did.
    print("\nBefore fine-tuning (10 batches each):")
    torch.manual_seed(123)
    print_accuracies(train_loader, val_loader, test_loader, model, device, num_batches=10)

    # AdamW skips the frozen parameters: they never get a gradient
    print(f"\nFine-tuning the LoRA parameters for {settings['num_epochs']} epoch(s)")
    results = fine_tune(model, train_loader, val_loader, device, settings)
    print("\nAfter fine-tuning (all batches):")
    print_accuracies(train_loader, val_loader, test_loader, model, device)

    # Beyond the book: merge A and B into the frozen weights for inference
    input_batch, _ = next(iter(val_loader))
    input_batch = input_batch.to(device)
    model.eval()
    with torch.no_grad():
        lora_logits = model(input_batch)[:, -1, :]
    merge_lora(model)
    with torch.no_grad():
        merged_logits = model(input_batch)[:, -1, :]
    print(f"\nMerged the LoRA weights into the Linear layers: {count_parameters(model, False):,} parameters, "
          f"no LinearWithLoRA left: {not any(isinstance(m, LinearWithLoRA) for m in model.modules())}")
    print(f"Largest logit difference, merged vs LoRA, on a validation batch: "
          f"{(merged_logits - lora_logits).abs().max().item():.2e}; same predictions: "
          f"{torch.equal(merged_logits.argmax(-1), lora_logits.argmax(-1))}")

    path = output_path("review_classifier_lora.pth", args.quick)  # the model before the plot
    save_checkpoint(path, model, cfg, num_classes=NUM_CLASSES, max_length=max_length,
                    lora_rank=args.rank, lora_alpha=args.alpha, lora_scale_by_rank=args.scale_by_rank)
    plot_fine_tuning(results, settings, output_path("lora-loss-plot.png", args.quick))
    reloaded, _ = load_classifier(path, device=device)
    with torch.no_grad():
        same = torch.allclose(reloaded(input_batch)[:, -1, :], merged_logits, atol=1e-5)
    print(f"Saved the merged classifier to {path}; it loads like chapter 6's "
          f"(w_finetune_classifier.load_classifier), same logits: {same}")


if __name__ == "__main__":
    run_main(main)
