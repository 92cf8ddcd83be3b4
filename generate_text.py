"""Generate text from any GPT checkpoint this project writes, printing tokens as they come.

Works with train_own_text.py's checkpoints (their own tokenizer is stored inside),
u_pretraining.py's outputs/model_and_optimizer.pth (GPT-2 tokenizer) and chapter 7's
instruction-tuned *-sft.pth (the prompt is put into the Alpaca template). Chapter 6's spam
classifier answers "spam" / "not spam" instead of predicting tokens, so it cannot generate.

Run: python generate_text.py "ROMEO:" --checkpoint outputs/own_text.pth --max-new-tokens 300
     python generate_text.py --chat --checkpoint outputs/gpt2-medium355M-sft.pth
     python generate_text.py "Every effort moves you" --checkpoint outputs/model_and_optimizer.pth
     python generate_text.py "Rewrite the sentence using a simile: The car is very fast." \
         --checkpoint outputs/gpt2-medium355M-sft.pth --temperature 0
"""

import argparse
import sys
import time
from pathlib import Path

import torch

from own_text_checkpoints import checkpoint_tokenizer
from own_tokenizers import ENDOFTEXT, CharTokenizer
from plumbing import (OUTPUTS_DIR, ScriptError, add_device_arg, check_temperature, get_device, positive_int,
                      run_main)
from checkpoints import load_checkpoint, model_from_checkpoint
from fast_attention import lay_out_weights_for_decoding
from look_inside import TokenText, generate_stream

DEFAULT_CHECKPOINT = OUTPUTS_DIR / "own_text.pth"


def check_can_generate(checkpoint, path):
    """Chapter 6's classifier replaced the output layer (vocab_size logits) by a 2-class head."""
    out_head = checkpoint["model_state_dict"].get("out_head.weight")
    vocab_size = checkpoint["config"].get("vocab_size")
    if "num_classes" in checkpoint or (out_head is not None and out_head.shape[0] != vocab_size):
        num_classes = checkpoint.get("num_classes", None if out_head is None else out_head.shape[0])
        raise ScriptError(
            f"{path} is a classifier: its output layer scores {num_classes} classes, not the next "
            f"token among {vocab_size}, so it cannot generate text. Classify with it instead "
            "(w_finetune_classifier.py's classify_review), or pick a language model checkpoint")


def uses_alpaca_prompt(checkpoint, path, prompt_format):
    """Chapter 7 fine-tunes on Alpaca-style prompts and saves <model>-sft.pth."""
    if prompt_format != "auto":
        return prompt_format == "alpaca"
    return checkpoint.get("prompt_format") == "alpaca" or Path(path).name.endswith("-sft.pth")


def alpaca_prompt(instruction, input_text=""):
    from x_finetune_instructions import format_input
    return format_input({"instruction": instruction, "input": input_text}) + "\n\n### Response:\n"


def stream_generate(model, token_ids, tokenizer, max_new_tokens, context_size, temperature, top_k,
                    eos_id, write, use_cache=True):
    """Generate one token at a time with chapter 5's generate() (look_inside.generate_stream, through
    the KV cache) and write the text each one adds after the prompt token_ids as soon as it is known
    (look_inside.TokenText: the word tokenizer's spaces come out right, and the bytes of a character
    split across tokens wait for the rest). use_cache=False runs the whole window again for every
    token, as the book's loop does."""
    text = TokenText(tokenizer, token_ids[0].tolist())
    new_ids = []
    for token_id, _ in generate_stream(model, token_ids, max_new_tokens, context_size, temperature, top_k,
                                       eos_id, use_cache=use_cache):
        new_ids.append(token_id)
        write(text.add(token_id))
    write(text.finish())
    return new_ids


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("prompt", nargs="?", default="",
                        help="text to continue (default: start from <|endoftext|>); for an instruction "
                             "model, the instruction")
    parser.add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT),
                        help="a .pth file written by this project (default outputs/own_text.pth)")
    parser.add_argument("--max-new-tokens", type=positive_int, default=200)
    parser.add_argument("--temperature", type=check_temperature, default=0.8,
                        help="0 picks the most likely token every time; higher is more varied (default 0.8)")
    parser.add_argument("--top-k", type=int, default=50,
                        help="sample among the k most likely tokens only (default 50; 0 for all)")
    parser.add_argument("--seed", type=int, default=123)
    parser.add_argument("--no-cache", action="store_true",
                        help="run the whole window again for every token, as the book's loop does, instead "
                             "of keeping the keys and values (the KV cache); slower, for comparison")
    parser.add_argument("--format", choices=["auto", "plain", "alpaca"], default="auto",
                        help="alpaca wraps the prompt in chapter 7's instruction template; auto uses it "
                             "for *-sft.pth checkpoints (default auto)")
    parser.add_argument("--input", default="", help="with --format alpaca: the entry's input text")
    parser.add_argument("--chat", action="store_true",
                        help="type a line, read the reply, again: an instruction model answers each line "
                             "(<|endoftext|> ends a reply), a plain one continues it; an empty line or "
                             "Ctrl-D ends")
    add_device_arg(parser)
    args = parser.parse_args(argv)
    if args.top_k < 0:
        parser.error("--top-k must be 0 (no limit) or positive")
    return args


def load_generator(args):
    """(model, cfg, tokenizer, alpaca, device) for --checkpoint, with clear errors for files that
    cannot generate."""
    path = Path(args.checkpoint)
    if not path.is_file():
        found = sorted(p.name for p in OUTPUTS_DIR.glob("*.pth")) if OUTPUTS_DIR.is_dir() else []
        raise ScriptError(f"no checkpoint at {path}; train one with python train_own_text.py (or "
                          "u_pretraining.py, x_finetune_instructions.py), or pass --checkpoint PATH"
                          + (f". In {OUTPUTS_DIR}: {', '.join(found)}" if found else ""))
    device = get_device(args.device)
    checkpoint = load_checkpoint(path)
    if not isinstance(checkpoint.get("config"), dict):
        raise ScriptError(f"{path} holds no model config; it was not written by this project's "
                          "save_checkpoint")
    check_can_generate(checkpoint, path)
    tokenizer = checkpoint_tokenizer(checkpoint, path)
    alpaca = uses_alpaca_prompt(checkpoint, path, args.format)
    del checkpoint  # model_from_checkpoint reads the file again; do not hold two copies of the weights
    model, cfg = model_from_checkpoint(path, device)
    lay_out_weights_for_decoding(model)  # the layout one token at a time reads fastest on CPU
    kind = {"CharTokenizer": "character", "WordTokenizer": "word", "BPETokenizer": "own BPE"}.get(
        type(tokenizer).__name__, "GPT-2")
    print(f"[{path.name}: {sum(p.numel() for p in model.parameters()):,} parameters, {kind} tokenizer "
          f"({tokenizer.n_vocab:,} tokens), {device}]", file=sys.stderr)
    return model, cfg, tokenizer, alpaca, device


def prompt_ids(tokenizer, prompt, context_length):
    """The prompt's token ids (<|endoftext|> for an empty one), with notes on what the model misses."""
    ids = tokenizer.encode(prompt, allowed_special={ENDOFTEXT}) if prompt else []
    if not ids:
        if tokenizer.eot_token is None:
            raise ScriptError("give a prompt: this tokenizer has no <|endoftext|> token to start from")
        ids = [tokenizer.eot_token]
    unk = getattr(tokenizer, "unk_token", None)  # the char and word tokenizers have one
    if unk is not None and unk in ids:
        print(f"note: {ids.count(unk)} {'character' if isinstance(tokenizer, CharTokenizer) else 'word'}(s) "
              "of the prompt are not in the vocabulary and became <|unk|>", file=sys.stderr)
    if len(ids) > context_length:
        print(f"note: the prompt has {len(ids)} tokens; the model sees only the last {context_length}",
              file=sys.stderr)
    return ids


def write(text):
    sys.stdout.write(text)
    sys.stdout.flush()


def reply(model, cfg, tokenizer, prompt, args, device):
    """Stream the model's continuation of prompt; return the new ids."""
    return stream_generate(model, torch.tensor([prompt_ids(tokenizer, prompt, cfg["context_length"])],
                                               device=device),
                           tokenizer, args.max_new_tokens, cfg["context_length"], args.temperature,
                           args.top_k or None, tokenizer.eot_token, write, use_cache=not args.no_cache)


def chat(model, cfg, tokenizer, alpaca, args, device, read=input):
    """--chat: a reply to every line typed, until an empty line or the end of the input (Ctrl-D)."""
    print("[chat: " + ("each line is an instruction (chapter 7's template)" if alpaca else
                       "the model continues each line") + "; an empty line or Ctrl-D ends]", file=sys.stderr)
    while True:
        try:
            line = read("> ")
        except EOFError:
            write("\n")
            return
        if not line.strip():
            return
        reply(model, cfg, tokenizer, alpaca_prompt(line) if alpaca else line, args, device)
        write("\n")


def main(argv=None):
    args = parse_args(argv)
    model, cfg, tokenizer, alpaca, device = load_generator(args)
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(errors="replace")  # a console that cannot show a character shows '?'
    torch.manual_seed(args.seed)
    if args.chat:
        chat(model, cfg, tokenizer, alpaca, args, device)
        return
    prompt = alpaca_prompt(args.prompt, args.input) if alpaca else args.prompt
    write(prompt)
    start = time.perf_counter()
    new_ids = reply(model, cfg, tokenizer, prompt, args, device)
    seconds = time.perf_counter() - start
    write("\n")
    print(f"[{len(new_ids)} tokens in {seconds:.2f} s: {len(new_ids) / seconds:,.1f} tokens/s"
          f"{', without the KV cache' if args.no_cache else ''}]", file=sys.stderr)


if __name__ == "__main__":
    run_main(main)
