"""Instruction fine-tuning: teach a pretrained GPT-2 to follow instructions, and judge it (chapter 7).

A pretrained model only continues text; trained on instruction-response pairs in one prompt format
(Alpaca's), it learns to answer. The loss is pretraining's next-token loss, with the padding
targets set to -100 so they do not count. Free-form answers have no single right text, so a larger
model scores them. Not here: preference tuning (RLHF, DPO), which chat models add after this step.

Run: python x_finetune_instructions.py            (the book's run: GPT-2 medium 355M, 2 epochs)
     python x_finetune_instructions.py --quick    (a tiny random model on a few entries, to check the setup)
     python x_finetune_instructions.py --init-from outputs/model_and_optimizer.pth   (no GPT-2 download)
     python x_finetune_instructions.py --score-only outputs/instruction-data-with-response.json
Scoring (7.8) needs a local Ollama server (https://ollama.com): `ollama serve`, then `ollama pull llama3`.
"""

import argparse
import json
import re
import time
import urllib.parse
from functools import partial
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from checkpoints import save_checkpoint
from d_tokenizer import get_gpt2_tokenizer
from ollama_client import (JUDGE_MODEL, JUDGE_TIMEOUT, OLLAMA_URL, ollama_problem, ollama_setup_hint,
                           query_model)
from downloads import download_file
from plumbing import (DATA_DIR, ScriptError, add_device_arg, add_quick_and_epochs_args, book_or_quick,
                      ensure_writable, get_device, output_path, outputs_folder, positive_float, run_main,
                      write_atomically)
from starting_point import add_starting_point_args, load_starting_point
from t_pretraining_basics import text_to_token_ids, token_ids_to_text
from u_pretraining import calc_loss_loader, generate, plot_losses, train_model_simple
from v_load_gpt2_weights import QUICK_CONFIG

# 1,100 instruction-response pairs that the book made for this chapter.
INSTRUCTION_DATA_URL = ("https://raw.githubusercontent.com/rasbt/LLMs-from-scratch/main/"
                        "ch07/01_main-chapter-code/instruction-data.json")
INSTRUCTION_DATA_PATH = DATA_DIR / "instruction-data.json"
INSTRUCTION_DATA_SIZE = 203_524  # bytes, and the SHA-256, of the published file
INSTRUCTION_DATA_SHA256 = "7e09a9af353722ca15c18bc580f093f9c39d3178335a75177319cb1e1d163944"
RESPONSES_FILE = "instruction-data-with-response.json"

# The book's settings.
CHOOSE_MODEL = "355M"  # gpt2-medium; the smaller 124M model learns to follow instructions poorly
BATCH_SIZE = 8
ALLOWED_MAX_LENGTH = 1024  # GPT-2's context length
SETTINGS = {"num_epochs": 2, "learning_rate": 5e-5, "weight_decay": 0.1, "eval_freq": 5, "eval_iter": 5,
            "preview_new_tokens": 35,  # the answer before fine-tuning, in 7.5
            "max_new_tokens": 256}     # the test-set responses in 7.7

# --quick: v's tiny random GPT (QUICK_CONFIG; its context fits the longest entry, 91 tokens) on the
# first few entries, one epoch, short responses.
QUICK_SETTINGS = {**SETTINGS, "num_epochs": 1, "eval_freq": 1, "eval_iter": 1, "preview_new_tokens": 8,
                  "max_new_tokens": 8}
QUICK_NUM_ENTRIES = 20

# The judge: a local Ollama server, asked for reproducible answers.


def download_and_load_file(file_path, url):
    """Download the instruction data (once) and return it as a list of dicts."""
    pinned = url == INSTRUCTION_DATA_URL  # the published file; another one is only checked to be JSON
    download_file(url, file_path, expected_size=INSTRUCTION_DATA_SIZE if pinned else None,
                  expected_sha256=INSTRUCTION_DATA_SHA256 if pinned else None)
    with open(file_path, "r", encoding="utf-8") as file:
        try:
            data = json.load(file)
        except json.JSONDecodeError as error:
            raise ScriptError(f"{file_path} is not valid JSON ({error}); delete it and run again "
                              "to download it afresh") from error
    if not isinstance(data, list) or not all(isinstance(entry, dict) and
                                             {"instruction", "input", "output"} <= entry.keys()
                                             for entry in data):
        raise ScriptError(f"{file_path} should hold a list of entries with the keys instruction, input "
                          "and output; delete it and run again to download it afresh")
    return data


def format_input(entry):
    """The Alpaca prompt style: a fixed preamble, the instruction, and the input when there is one."""
    instruction_text = ("Below is an instruction that describes a task. "
                        "Write a response that appropriately completes the request."
                        f"\n\n### Instruction:\n{entry['instruction']}")
    input_text = f"\n\n### Input:\n{entry['input']}" if entry["input"] else ""
    return instruction_text + input_text


def split_data(data, train_frac=0.85, test_frac=0.1):
    """The book's split, without shuffling: the first 85% train, the next 10% test, the rest
    validation. Returned as (train_data, val_data, test_data)."""
    train_portion = int(len(data) * train_frac)
    test_portion = int(len(data) * test_frac)
    train_data = data[:train_portion]
    test_data = data[train_portion:train_portion + test_portion]
    val_data = data[train_portion + test_portion:]
    return train_data, val_data, test_data


class InstructionDataset(Dataset):
    """Each entry pre-tokenized as prompt + response, the text the model learns to continue."""

    def __init__(self, data, tokenizer):
        self.data = data
        self.encoded_texts = []
        for entry in data:
            full_text = format_input(entry) + f"\n\n### Response:\n{entry['output']}"
            self.encoded_texts.append(tokenizer.encode(full_text))

    def __getitem__(self, index):
        return self.encoded_texts[index]

    def __len__(self):
        return len(self.data)


def custom_collate_draft_1(batch, pad_token_id=50256, device="cpu"):
    """First draft: pad every sequence of the batch to the same length."""
    batch_max_length = max(len(item) + 1 for item in batch)
    inputs_lst = []
    for item in batch:
        padded = list(item) + [pad_token_id] * (batch_max_length - len(item))
        inputs_lst.append(torch.tensor(padded[:-1]))  # the extra pad token is only for the targets
    return torch.stack(inputs_lst).to(device)


def custom_collate_draft_2(batch, pad_token_id=50256, device="cpu"):
    """Second draft: also return the targets, the inputs shifted one position to the left."""
    batch_max_length = max(len(item) + 1 for item in batch)
    inputs_lst, targets_lst = [], []
    for item in batch:
        padded = list(item) + [pad_token_id] * (batch_max_length - len(item))
        inputs_lst.append(torch.tensor(padded[:-1]))
        targets_lst.append(torch.tensor(padded[1:]))
    return torch.stack(inputs_lst).to(device), torch.stack(targets_lst).to(device)


def custom_collate_fn(batch, pad_token_id=50256, ignore_index=-100, allowed_max_length=None, device="cpu"):
    """Pad the batch, shift the targets, and hide all padding but the first from the loss."""
    batch_max_length = max(len(item) + 1 for item in batch)
    inputs_lst, targets_lst = [], []
    for item in batch:
        padded = list(item) + [pad_token_id] * (batch_max_length - len(item))
        inputs = torch.tensor(padded[:-1])
        targets = torch.tensor(padded[1:])
        # The first padding token stays as a target, so the model learns to end its response with
        # <|endoftext|>; cross_entropy skips the targets set to ignore_index.
        targets[len(item):] = ignore_index
        if allowed_max_length is not None:
            inputs = inputs[:allowed_max_length]
            targets = targets[:allowed_max_length]
        inputs_lst.append(inputs)
        targets_lst.append(targets)
    return torch.stack(inputs_lst).to(device), torch.stack(targets_lst).to(device)


def extract_response(response_text, input_text):
    """The model's answer: the generated text after the prompt, without the "### Response:" label."""
    return response_text[len(input_text):].replace("### Response:", "").strip()


def generate_responses(model, test_data, tokenizer, device, max_new_tokens, context_size):
    """Greedy answers to every test entry, returned as copies of the entries with "model_response".
    Beyond the book, generate keeps a KV cache (use_cache=True): the same ids, many times faster."""
    model.eval()
    results = []
    for entry in tqdm(test_data, desc="Generating responses"):
        input_text = format_input(entry)
        token_ids = generate(model=model, idx=text_to_token_ids(input_text, tokenizer).to(device),
                             max_new_tokens=max_new_tokens, context_size=context_size, eos_id=50256,
                             use_cache=True)
        generated_text = token_ids_to_text(token_ids, tokenizer)
        results.append({**entry, "model_response": extract_response(generated_text, input_text)})
    return results


def score_command(responses_path, url, model, timeout=JUDGE_TIMEOUT):
    """The command line that scores `responses_path` later, with the judge settings of this run."""
    command = f"python x_finetune_instructions.py --score-only {responses_path}"
    if url != OLLAMA_URL:
        command += f" --ollama-url {url}"
    if model != JUDGE_MODEL:
        command += f" --judge-model {model}"
    if timeout != JUDGE_TIMEOUT:
        command += f" --judge-timeout {timeout:g}"
    return command


def ollama_help(url, model, responses_path, problem=None, timeout=JUDGE_TIMEOUT):
    """How to get a judge running and score the responses later; `problem` says what went wrong."""
    return (f"{problem or f'no Ollama server answers at {url}'}. To score the responses, "
            f"{ollama_setup_hint(model)}, then run: {score_command(responses_path, url, model, timeout)}")


def score_prompt(entry, json_key):
    """The judge sees the prompt, the dataset's answer and the answer to score."""
    return (f"Given the input `{format_input(entry)}` "
            f"and correct output `{entry['output']}`, "
            f"score the model response `{entry[json_key]}`"
            f" on a scale from 0 to 100, where 100 is the best score. ")


def generate_model_scores(json_data, json_key, model="llama3", url=OLLAMA_URL, timeout=JUDGE_TIMEOUT):
    """One integer score per entry; replies that are not an integer are reported and skipped."""
    scores = []
    for entry in tqdm(json_data, desc="Scoring entries"):
        prompt = score_prompt(entry, json_key) + "Respond with the integer number only."
        score = query_model(prompt, model, url, timeout)
        try:
            scores.append(int(score))
        except ValueError:
            tqdm.write(f"Could not convert score: {score}")
    return scores


def print_scores(json_data, json_key, model, url, timeout=JUDGE_TIMEOUT, responses_path=None):
    """Section 7.8: three judged examples in words, then an integer score for every entry. When the
    judge fails, the error says how to score `responses_path` (the file of these responses) later."""
    try:
        for entry in json_data[:3]:
            print("\nDataset response:\n>>", entry["output"])
            print("\nModel response:\n>>", entry[json_key])
            print("\nScore:\n>>", query_model(score_prompt(entry, json_key), model, url, timeout))
            print("\n-------------------------")
        scores = generate_model_scores(json_data, json_key, model, url, timeout)
    except ScriptError as error:
        if responses_path is None:
            raise
        raise ScriptError(f"{error}. The responses stay in {responses_path}; score them later with: "
                          f"{score_command(responses_path, url, model, timeout)}") from error
    print(f"Number of scores: {len(scores)} of {len(json_data)}")
    if scores:
        print(f"Average score: {sum(scores) / len(scores):.2f}")
    return scores


def score_responses_file(path, url, model, timeout=JUDGE_TIMEOUT):
    """--score-only: judge a responses file written by an earlier run, without training."""
    path = Path(path)
    if not path.exists():
        raise ScriptError(f"no responses file at {path}; give --score-only the file that a run of "
                          f"python x_finetune_instructions.py wrote: outputs/{RESPONSES_FILE}, or "
                          f"outputs/quick/{RESPONSES_FILE} after --quick")
    with open(path, "r", encoding="utf-8") as file:
        try:
            json_data = json.load(file)
        except json.JSONDecodeError as error:
            raise ScriptError(f"{path} is not valid JSON ({error})") from error
    if not isinstance(json_data, list) or not json_data or not all(
            isinstance(entry, dict) and {"instruction", "input", "output", "model_response"} <= entry.keys()
            for entry in json_data):
        raise ScriptError(f"{path} should hold a list of entries with the keys instruction, input, output "
                          f"and model_response, as the {RESPONSES_FILE} this script writes")
    print(f"Scoring the {len(json_data)} responses in {path} with {model} at {url}")
    problem = ollama_problem(url)
    if problem:
        raise ScriptError(ollama_help(url, model, path, problem, timeout))
    return print_scores(json_data, "model_response", model, url, timeout, responses_path=path)


def checkpoint_name(args):
    """The book's file name for the fine-tuned model, e.g. gpt2-medium355M-sft.pth."""
    if args.init_from:
        label = Path(args.init_from).stem
    elif args.quick:
        label = "quick-random"
    else:
        label = args.model  # e.g. "gpt2-medium (355M)"
    return f"{re.sub(r'[ ()]', '', label)}-sft.pth"


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_device_arg(parser)
    add_quick_and_epochs_args(parser, SETTINGS["num_epochs"], QUICK_SETTINGS["num_epochs"],
                              f"a tiny randomly initialised model, the first {QUICK_NUM_ENTRIES} entries, "
                              f"one epoch, {QUICK_SETTINGS['max_new_tokens']}-token responses: "
                              "checks the setup")
    add_starting_point_args(parser, default_model=CHOOSE_MODEL)
    parser.add_argument("--ollama-url", default=OLLAMA_URL, help=f"Ollama's chat API (default {OLLAMA_URL})")
    parser.add_argument("--judge-model", default=JUDGE_MODEL, help=f"the judge (default {JUDGE_MODEL})")
    parser.add_argument("--judge-timeout", type=positive_float, default=JUDGE_TIMEOUT, metavar="SECONDS",
                        help=f"the most one judged answer may take (default {JUDGE_TIMEOUT})")
    parser.add_argument("--score-only", metavar="PATH",
                        help=f"only score the responses in PATH (e.g. outputs/{RESPONSES_FILE}), no training")
    args = parser.parse_args()
    if urllib.parse.urlsplit(args.ollama_url).scheme not in ("http", "https"):
        parser.error(f"--ollama-url should look like {OLLAMA_URL}")
    if args.score_only:
        score_responses_file(args.score_only, args.ollama_url, args.judge_model, args.judge_timeout)
        return
    settings = book_or_quick(args, SETTINGS, QUICK_SETTINGS)
    ensure_writable(outputs_folder(args.quick))  # now, not after the training

    # 7.2 Preparing a dataset for supervised instruction fine-tuning
    data = download_and_load_file(INSTRUCTION_DATA_PATH, INSTRUCTION_DATA_URL)
    print("Number of entries:", len(data))
    example_indices = (50, 999) if len(data) > 999 else (0, len(data) - 1)
    for index in example_indices:
        print(f"\nEntry {index}:\n", data[index])
    for index in example_indices:
        model_input = format_input(data[index])
        desired_response = f"\n\n### Response:\n{data[index]['output']}"
        print(f"\nEntry {index} in the Alpaca prompt style:\n" + model_input + desired_response)
    if args.quick:
        data = data[:QUICK_NUM_ENTRIES]
        print(f"\n--quick: using the first {len(data)} entries")
    train_data, val_data, test_data = split_data(data)
    print("\nTraining set length:", len(train_data))
    print("Validation set length:", len(val_data))
    print("Test set length:", len(test_data))
    if len(train_data) < BATCH_SIZE or not val_data or not test_data:
        raise ScriptError(f"{len(data)} entries are too few: training needs at least {BATCH_SIZE} "
                          "entries and validation and test at least one each (10 entries in all)")

    # 7.3 Organizing data into training batches
    tokenizer = get_gpt2_tokenizer()
    print("\nPadding token:", tokenizer.encode("<|endoftext|>", allowed_special={"<|endoftext|>"}))
    inputs_1 = [0, 1, 2, 3, 4]
    inputs_2 = [5, 6]
    inputs_3 = [7, 8, 9]
    batch = (inputs_1, inputs_2, inputs_3)
    print("\nDraft 1, padded inputs:\n", custom_collate_draft_1(batch))
    inputs, targets = custom_collate_draft_2(batch)
    print("\nDraft 2, inputs:\n", inputs)
    print("Draft 2, targets (the inputs shifted by one):\n", targets)
    inputs, targets = custom_collate_fn(batch)
    print("\ncustom_collate_fn, inputs:\n", inputs)
    print("custom_collate_fn, targets (padding after the first end-of-text token is -100):\n", targets)

    # cross_entropy skips targets equal to -100, so the masked padding does not count in the loss.
    logits_1 = torch.tensor([[-1.0, 1.0], [-0.5, 1.5]])
    targets_1 = torch.tensor([0, 1])
    loss_1 = torch.nn.functional.cross_entropy(logits_1, targets_1)
    print("\nloss_1:", loss_1)
    logits_2 = torch.tensor([[-1.0, 1.0], [-0.5, 1.5], [-0.5, 1.5]])
    targets_2 = torch.tensor([0, 1, 1])
    loss_2 = torch.nn.functional.cross_entropy(logits_2, targets_2)
    print("loss_2 (a third token):", loss_2)
    targets_3 = torch.tensor([0, 1, -100])
    loss_3 = torch.nn.functional.cross_entropy(logits_2, targets_3)
    print("loss_3 (the third target is -100):", loss_3)
    print("loss_1 == loss_3:", loss_1 == loss_3)

    # 7.4 Creating data loaders for an instruction dataset
    device = get_device(args.device)
    print("\nDevice:", device)
    customized_collate_fn = partial(custom_collate_fn, device=device, allowed_max_length=ALLOWED_MAX_LENGTH)
    torch.manual_seed(123)
    train_dataset = InstructionDataset(train_data, tokenizer)
    train_loader = DataLoader(train_dataset, batch_size=BATCH_SIZE, collate_fn=customized_collate_fn,
                              shuffle=True, drop_last=True, num_workers=0)
    val_dataset = InstructionDataset(val_data, tokenizer)
    val_loader = DataLoader(val_dataset, batch_size=BATCH_SIZE, collate_fn=customized_collate_fn,
                            shuffle=False, drop_last=False, num_workers=0)
    # Each batch is padded only to its own longest entry, so batch lengths differ.
    shapes = [(inputs.shape, targets.shape) for inputs, targets in train_loader]
    print("Train loader:")
    for inputs_shape, targets_shape in shapes[:3]:
        print(inputs_shape, targets_shape)
    lengths = [inputs_shape[1] for inputs_shape, _ in shapes]
    print(f"... {len(shapes)} training batches of {BATCH_SIZE}, {min(lengths)} to {max(lengths)} "
          f"tokens long; {len(val_loader)} validation batches")

    # 7.5 Loading a pretrained LLM
    model, cfg = load_starting_point(args, device, quick_cfg=QUICK_CONFIG if args.quick else None)
    longest = min(max(len(item) for item in train_dataset.encoded_texts + val_dataset.encoded_texts),
                  ALLOWED_MAX_LENGTH)
    if longest > cfg["context_length"]:
        raise ScriptError(f"the longest entry has {longest} tokens, but the model reads at most "
                          f"{cfg['context_length']}; use a model with a longer context, or set "
                          f"ALLOWED_MAX_LENGTH = {cfg['context_length']} to truncate the entries")
    torch.manual_seed(123)
    input_text = format_input(val_data[0])
    print("\n" + input_text)
    token_ids = generate(model=model, idx=text_to_token_ids(input_text, tokenizer).to(device),
                         max_new_tokens=settings["preview_new_tokens"], context_size=cfg["context_length"],
                         eos_id=50256)
    generated_text = token_ids_to_text(token_ids, tokenizer)
    print("\nBefore fine-tuning, the model answers:\n" + extract_response(generated_text, input_text))

    # 7.6 Fine-tuning the LLM on instruction data
    torch.manual_seed(123)
    with torch.no_grad():
        train_loss = calc_loss_loader(train_loader, model, device, num_batches=5)
        val_loss = calc_loss_loader(val_loader, model, device, num_batches=5)
    print("\nTraining loss:", train_loss)
    print("Validation loss:", val_loss)

    start_time = time.time()
    torch.manual_seed(123)
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings["learning_rate"],
                                  weight_decay=settings["weight_decay"])
    num_epochs = settings["num_epochs"]
    print(f"\nFine-tuning for {num_epochs} epoch(s)")
    train_losses, val_losses, tokens_seen = train_model_simple(
        model, train_loader, val_loader, optimizer, device, num_epochs=num_epochs,
        eval_freq=settings["eval_freq"], eval_iter=settings["eval_iter"],
        start_context=format_input(val_data[0]), tokenizer=tokenizer)
    print(f"Training completed in {(time.time() - start_time) / 60:.2f} minutes.")
    model_path = output_path(checkpoint_name(args), args.quick)  # the model first, before plots and samples
    save_checkpoint(model_path, model, cfg, prompt_format="alpaca")  # generate_text.py reads this
    print("Saved", model_path)
    epochs_tensor = torch.linspace(0, num_epochs, len(train_losses))
    plot_path = output_path("instruction-finetuning-losses.png", args.quick)
    plot_losses(epochs_tensor, tokens_seen, train_losses, val_losses, plot_path)
    print("Saved", plot_path)

    # 7.7 Extracting and saving responses
    torch.manual_seed(123)
    test_results = generate_responses(model, test_data, tokenizer, device,
                                      max_new_tokens=settings["max_new_tokens"],
                                      context_size=cfg["context_length"])
    for entry in test_results[:3]:
        print("\n" + format_input(entry))
        print(f"\nCorrect response:\n>> {entry['output']}")
        print(f"\nModel response:\n>> {entry['model_response']}")
        print("-------------------------------------")
    responses_json = json.dumps(test_results, indent=4)
    responses_path = write_atomically(output_path(RESPONSES_FILE, args.quick),
                                      lambda temp: temp.write_text(responses_json, encoding="utf-8"))
    print("Saved", responses_path)

    # 7.8 Evaluating the fine-tuned LLM
    problem = ollama_problem(args.ollama_url)
    if problem:
        print("\nSkipping the scoring: " +
              ollama_help(args.ollama_url, args.judge_model, responses_path, problem, args.judge_timeout))
        return
    print(f"\nScoring the test-set responses with {args.judge_model} at {args.ollama_url}")
    print_scores(test_results, "model_response", args.judge_model, args.ollama_url, args.judge_timeout,
                 responses_path)


if __name__ == "__main__":
    run_main(main)
