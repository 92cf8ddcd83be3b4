"""Beyond the book: the model that chapters 6, 7 and appendix E fine-tune, picked by flags.

OpenAI's GPT-2 (--model, --weights, --models-dir, as in v_load_gpt2_weights.py), your own
checkpoint of the series (--init-from), or with --quick a tiny random model.

Not a chapter: w_finetune_classifier.py is the first script to import it, so it imports only
earlier letters (v and before).
"""

from pathlib import Path

from checkpoints import model_from_checkpoint
from v_load_gpt2_weights import add_gpt2_args, load_gpt2, quick_model


def add_starting_point_args(parser, default_model):
    """The flags that pick the model a fine-tuning script starts from."""
    group = add_gpt2_args(parser, default_model)
    group.add_argument("--init-from", type=Path, metavar="PATH",
                       help="start from your own checkpoint instead of GPT-2, e.g. "
                            "outputs/model_and_optimizer.pth from u_pretraining.py")


def load_starting_point(args, device, quick_cfg=None):
    """The model a fine-tuning script starts from, as (model, cfg), on `device`, in eval mode:
    --init-from PATH: your own checkpoint; else, with quick_cfg: a tiny random GPTModel;
    else OpenAI's GPT-2 --model. Each choice other than GPT-2 says so: never a silent stand-in."""
    if args.init_from is not None:
        model, cfg = model_from_checkpoint(args.init_from, device, gpt2_tokenizer=True)
        print(f"note: starting from your own model in {args.init_from}, not from OpenAI's GPT-2; "
              "results will be lower than the book's")
        return model, cfg
    if quick_cfg is not None:
        return quick_model(device, quick_cfg)
    model, cfg = load_gpt2(args.model, args.weights, args.models_dir)
    return model.to(device), cfg
