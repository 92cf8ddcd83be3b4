"""Text <-> token IDs helpers, and the training loss by hand: cross entropy and perplexity.

Training needs one number saying how wrong the model is: cross entropy, the mean of the negative
log probabilities the model gives the correct next tokens. Its exponential, the perplexity, reads
as how many tokens the model is torn between; untrained, that is close to the vocabulary size.
Not here: lowering the loss by training (u_pretraining.py).

Book section 5.1. Run: python t_pretraining_basics.py
"""

import torch

from d_tokenizer import get_gpt2_tokenizer
from n_dummy_gpt_model import GPT_CONFIG_124M as GPT_CONFIG_124M_1024
from plumbing import run_main
from s_gpt_model import GPTModel, generate_text_simple

# Chapter 5 shortens the context from 1,024 to 256 tokens so that training fits a laptop.
GPT_CONFIG_124M = {**GPT_CONFIG_124M_1024, "context_length": 256}

START_CONTEXT = "Every effort moves you"


def text_to_token_ids(text, tokenizer):
    """Encode `text` into a (1, num_tokens) tensor: a batch holding one sequence."""
    encoded = tokenizer.encode(text, allowed_special={"<|endoftext|>"})
    return torch.tensor(encoded).unsqueeze(0)  # add the batch dimension


def token_ids_to_text(token_ids, tokenizer):
    """Decode one sequence of token IDs, given as (num_tokens,) or (1, num_tokens), back into text."""
    if token_ids.dim() == 2 and token_ids.shape[0] == 1:
        token_ids = token_ids.squeeze(0)  # remove the batch dimension
    if token_ids.dim() != 1:
        raise ValueError(f"token_ids_to_text decodes one sequence, got a tensor of shape "
                         f"{tuple(token_ids.shape)}; decode each row on its own")
    return tokenizer.decode(token_ids.tolist())


def main():
    tokenizer = get_gpt2_tokenizer()

    torch.manual_seed(123)
    model = GPTModel(GPT_CONFIG_124M)
    model.eval()  # no dropout while we only look at the untrained model's outputs

    token_ids = generate_text_simple(model=model, idx=text_to_token_ids(START_CONTEXT, tokenizer),
                                     max_new_tokens=10, context_size=GPT_CONFIG_124M["context_length"])
    print("5.1.1 The untrained model continues the text with random tokens")
    print("Output text:\n", token_ids_to_text(token_ids, tokenizer))

    # Two training examples: each target is its input shifted one token to the left.
    inputs = torch.cat([text_to_token_ids("every effort moves", tokenizer),
                        text_to_token_ids("I really like", tokenizer)])
    targets = torch.cat([text_to_token_ids(" effort moves you", tokenizer),
                         text_to_token_ids(" really like chocolate", tokenizer)])
    print("\n5.1.2 Inputs:\n", inputs)
    print("Targets:\n", targets)

    with torch.no_grad():
        logits = model(inputs)
    probas = torch.softmax(logits, dim=-1)
    print("Probabilities shape:", probas.shape)  # (batch_size, num_tokens, vocab_size)

    token_ids = torch.argmax(probas, dim=-1, keepdim=True)
    print("Token IDs:\n", token_ids)
    print(f"Targets batch 1: {token_ids_to_text(targets[0], tokenizer)}")
    print(f"Outputs batch 1: {token_ids_to_text(token_ids[0].flatten(), tokenizer)}")

    # The probability the model gives to each correct next token; training pushes these towards 1.
    text_idx = 0
    target_probas_1 = probas[text_idx, [0, 1, 2], targets[text_idx]]
    print("Text 1:", target_probas_1)
    text_idx = 1
    target_probas_2 = probas[text_idx, [0, 1, 2], targets[text_idx]]
    print("Text 2:", target_probas_2)

    log_probas = torch.log(torch.cat((target_probas_1, target_probas_2)))
    print("Log probabilities:", log_probas)
    avg_log_probas = torch.mean(log_probas)
    print("Average log probability:", avg_log_probas)
    neg_avg_log_probas = avg_log_probas * -1  # deep learning minimises, so negate
    print("Negative average log probability:", neg_avg_log_probas)

    # PyTorch's cross_entropy does the softmax, the lookup, the log and the mean in one call.
    print("Logits shape:", logits.shape)
    print("Targets shape:", targets.shape)
    logits_flat = logits.flatten(0, 1)
    targets_flat = targets.flatten()
    print("Flattened logits:", logits_flat.shape)
    print("Flattened targets:", targets_flat.shape)
    loss = torch.nn.functional.cross_entropy(logits_flat, targets_flat)
    print("Cross entropy loss:", loss)

    # Perplexity: roughly how many tokens the model hesitates between at each step.
    perplexity = torch.exp(loss)
    print("Perplexity:", perplexity)


if __name__ == "__main__":
    run_main(main)
