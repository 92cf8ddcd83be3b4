"""Chapter 7: the instruction data, the collate function, response extraction, and the Ollama
client and scorer against a local stand-in for Ollama's streaming chat API."""

import json
import time
from types import SimpleNamespace

import pytest
import torch
from conftest import free_port

from ollama_client import is_ollama_running
from plumbing import ScriptError
from s_gpt_model import GPTModel
from x_finetune_instructions import (InstructionDataset, custom_collate_draft_1, custom_collate_draft_2,
                                     custom_collate_fn, download_and_load_file, extract_response,
                                     format_input, generate_model_scores, generate_responses,
                                     query_model, score_responses_file, split_data)

PREAMBLE = ("Below is an instruction that describes a task. "
            "Write a response that appropriately completes the request.")
ENTRY_WITH_INPUT = {"instruction": "Identify the correct spelling of the following word.",
                    "input": "Ocassion", "output": "The correct spelling is 'Occasion.'"}
ENTRY_WITHOUT_INPUT = {"instruction": "What is an antonym of 'complicated'?",
                       "input": "", "output": "An antonym of 'complicated' is 'simple'."}
BOOK_BATCH = ([0, 1, 2, 3, 4], [5, 6], [7, 8, 9])


@pytest.fixture
def fake_ollama(local_server):
    """start(reply) makes local_server speak Ollama's /api/chat the way query_model uses it: the
    reply to each prompt streams back as JSON lines, a few characters per line, then a final line
    with "done": true. Returns the chat's .url and its .requests (path, content type, JSON body)."""

    def start(reply, known_models=("llama3",)):
        requests = []

        def chat(request):
            body = json.loads(request.rfile.read(int(request.headers["Content-Length"])))
            requests.append({"path": request.path, "content_type": request.headers["Content-Type"],
                             "body": body})
            if body["model"] not in known_models:
                request.send_response(404)
                request.end_headers()
                request.wfile.write(json.dumps({"error": f"model '{body['model']}' not found"}).encode())
                return
            text = reply(body["messages"][0]["content"])
            pieces = [text[i:i + 3] for i in range(0, len(text), 3)]
            lines = [{"model": body["model"], "message": {"role": "assistant", "content": piece},
                      "done": False} for piece in pieces]
            lines.append({"model": body["model"], "message": {"role": "assistant", "content": ""},
                          "done": True})
            request.send_response(200)
            request.send_header("Content-Type", "application/x-ndjson")
            request.end_headers()  # no Content-Length: the body ends when the connection closes
            for line in lines:
                request.wfile.write(json.dumps(line).encode() + b"\n")

        local_server.add("/", "Ollama is running")
        return SimpleNamespace(url=local_server.add_handler("/api/chat", chat), requests=requests)

    return start


def closed_port_url():
    """A chat URL on 127.0.0.1 where nothing listens (the port was free a moment ago)."""
    return f"http://127.0.0.1:{free_port()}/api/chat"


# ---- data ----

def test_format_input_with_input():
    assert format_input(ENTRY_WITH_INPUT) == (
        PREAMBLE + "\n\n### Instruction:\nIdentify the correct spelling of the following word."
        "\n\n### Input:\nOcassion")


def test_format_input_without_input_has_no_input_section():
    assert format_input(ENTRY_WITHOUT_INPUT) == (
        PREAMBLE + "\n\n### Instruction:\nWhat is an antonym of 'complicated'?")


def test_split_data_gives_the_books_sizes_in_the_books_order():
    data = [{"instruction": f"task {i}", "input": "", "output": str(i)} for i in range(1100)]
    train_data, val_data, test_data = split_data(data)
    assert (len(train_data), len(val_data), len(test_data)) == (935, 55, 110)
    # No shuffling: train, then test, then validation, as consecutive slices.
    assert train_data == data[:935]
    assert test_data == data[935:1045]
    assert val_data == data[1045:]


def test_download_and_load_file_downloads_once(local_server, tmp_path):
    url = local_server.add("/instruction-data.json", json.dumps([ENTRY_WITH_INPUT, ENTRY_WITHOUT_INPUT]))
    path = tmp_path / "instruction-data.json"
    assert download_and_load_file(path, url) == [ENTRY_WITH_INPUT, ENTRY_WITHOUT_INPUT]
    assert download_and_load_file(path, url) == [ENTRY_WITH_INPUT, ENTRY_WITHOUT_INPUT]
    assert local_server.requests == ["/instruction-data.json"]


def test_download_and_load_file_rejects_a_broken_file(tmp_path):
    path = tmp_path / "instruction-data.json"
    path.write_text('[{"instruction": "cut off', encoding="utf-8")
    with pytest.raises(ScriptError, match="not valid JSON"):
        download_and_load_file(path, "http://127.0.0.1:9/unused")
    path.write_text('[{"instruction": "no input or output"}]', encoding="utf-8")
    with pytest.raises(ScriptError, match="instruction, input and output"):
        download_and_load_file(path, "http://127.0.0.1:9/unused")


def test_instruction_dataset_tokenizes_prompt_and_response(gpt2_tokenizer):
    dataset = InstructionDataset([ENTRY_WITH_INPUT, ENTRY_WITHOUT_INPUT], gpt2_tokenizer)
    assert len(dataset) == 2
    expected = gpt2_tokenizer.encode(format_input(ENTRY_WITHOUT_INPUT) +
                                     "\n\n### Response:\nAn antonym of 'complicated' is 'simple'.")
    assert dataset[1] == expected
    assert gpt2_tokenizer.decode(dataset[0]).endswith("### Response:\nThe correct spelling is 'Occasion.'")


# ---- batching ----

def test_collate_drafts_on_the_books_example():
    assert custom_collate_draft_1(BOOK_BATCH).tolist() == [
        [0, 1, 2, 3, 4], [5, 6, 50256, 50256, 50256], [7, 8, 9, 50256, 50256]]
    inputs, targets = custom_collate_draft_2(BOOK_BATCH)
    assert inputs.tolist() == [[0, 1, 2, 3, 4], [5, 6, 50256, 50256, 50256], [7, 8, 9, 50256, 50256]]
    assert targets.tolist() == [[1, 2, 3, 4, 50256], [6, 50256, 50256, 50256, 50256],
                                [8, 9, 50256, 50256, 50256]]


def test_custom_collate_fn_keeps_one_end_of_text_target_and_masks_the_rest():
    inputs, targets = custom_collate_fn(BOOK_BATCH)
    assert inputs.dtype == targets.dtype == torch.long
    assert inputs.tolist() == [[0, 1, 2, 3, 4], [5, 6, 50256, 50256, 50256], [7, 8, 9, 50256, 50256]]
    assert targets.tolist() == [[1, 2, 3, 4, 50256], [6, 50256, -100, -100, -100], [8, 9, 50256, -100, -100]]
    for row in targets.tolist():
        assert row.count(50256) == 1


def test_custom_collate_fn_options_truncation_and_device():
    inputs, targets = custom_collate_fn(BOOK_BATCH, pad_token_id=99, ignore_index=-1,
                                        allowed_max_length=3, device="meta")
    assert inputs.device.type == targets.device.type == "meta"
    assert inputs.shape == targets.shape == (3, 3)
    inputs, targets = custom_collate_fn(BOOK_BATCH, pad_token_id=99, ignore_index=-1, allowed_max_length=3)
    assert inputs.tolist() == [[0, 1, 2], [5, 6, 99], [7, 8, 9]]
    assert targets.tolist() == [[1, 2, 3], [6, 99, -1], [8, 9, 99]]


def test_cross_entropy_ignores_minus_100_the_books_numbers():
    logits_1 = torch.tensor([[-1.0, 1.0], [-0.5, 1.5]])
    loss_1 = torch.nn.functional.cross_entropy(logits_1, torch.tensor([0, 1]))
    logits_2 = torch.tensor([[-1.0, 1.0], [-0.5, 1.5], [-0.5, 1.5]])
    loss_2 = torch.nn.functional.cross_entropy(logits_2, torch.tensor([0, 1, 1]))
    loss_3 = torch.nn.functional.cross_entropy(logits_2, torch.tensor([0, 1, -100]))
    assert loss_1.item() == pytest.approx(1.1269, abs=1e-4)
    assert loss_2.item() == pytest.approx(0.7936, abs=1e-4)
    assert loss_3.item() == loss_1.item()


def test_loss_on_a_padded_batch_counts_only_real_tokens_and_one_end_of_text():
    """The batch loss equals the loss over each sequence's own tokens plus its end-of-text token."""
    torch.manual_seed(123)
    cfg = {"vocab_size": 60, "context_length": 16, "emb_dim": 16, "n_heads": 2, "n_layers": 2,
           "drop_rate": 0.0, "qkv_bias": False}
    model = GPTModel(cfg).eval()
    batch = [[3, 14, 15, 9, 26], [5, 35], [8, 9, 7]]
    inputs, targets = custom_collate_fn(batch, pad_token_id=59)
    with torch.no_grad():
        batch_loss = torch.nn.functional.cross_entropy(model(inputs).flatten(0, 1), targets.flatten())
        token_losses = []
        for item in batch:
            sequence = torch.tensor([item + [59]])  # the sequence and its end-of-text token
            logits = model(sequence[:, :-1])
            token_losses.append(torch.nn.functional.cross_entropy(logits[0], sequence[0, 1:],
                                                                  reduction="none"))
    expected = torch.cat(token_losses).mean()
    assert len(torch.cat(token_losses)) == 10
    assert batch_loss.item() == pytest.approx(expected.item(), rel=1e-5)


# ---- responses ----

def test_extract_response_strips_the_prompt_and_the_label():
    input_text = format_input(ENTRY_WITH_INPUT)
    generated = input_text + "\n\n### Response:\nThe correct spelling is 'Occasion'.  \n"
    assert extract_response(generated, input_text) == "The correct spelling is 'Occasion'."
    # A model that has not learned the format yet may not write the label at all.
    assert extract_response(input_text + " and then some", input_text) == "and then some"


def test_generate_responses_adds_model_response_to_copies(gpt2_tokenizer):
    torch.manual_seed(123)
    cfg = {"vocab_size": 50257, "context_length": 128, "emb_dim": 16, "n_heads": 2, "n_layers": 1,
           "drop_rate": 0.0, "qkv_bias": True}
    model = GPTModel(cfg)
    test_data = [ENTRY_WITH_INPUT, ENTRY_WITHOUT_INPUT]
    results = generate_responses(model, test_data, gpt2_tokenizer, "cpu", max_new_tokens=8, context_size=128)
    assert "model_response" not in ENTRY_WITH_INPUT
    assert [{k: v for k, v in r.items() if k != "model_response"} for r in results] == test_data
    # Greedy decoding (through the KV cache): the response is the uncached argmax continuation, stripped.
    ids = gpt2_tokenizer.encode(format_input(ENTRY_WITHOUT_INPUT))
    for _ in range(8):
        with torch.no_grad():
            ids.append(int(model(torch.tensor([ids]))[0, -1].argmax()))
    generated_text = gpt2_tokenizer.decode(ids)
    assert results[1]["model_response"] == extract_response(generated_text, format_input(ENTRY_WITHOUT_INPUT))
    assert results[1]["model_response"] != ""


# ---- scoring through Ollama's API ----

def test_query_model_sends_the_books_options_and_joins_the_stream(fake_ollama):
    server = fake_ollama(lambda prompt: f"Llamas eat grass. You asked: {prompt}")
    reply = query_model("What do Llamas eat?", url=server.url)
    assert reply == "Llamas eat grass. You asked: What do Llamas eat?"
    (request,) = server.requests
    assert request["path"] == "/api/chat"
    assert request["content_type"] == "application/json"
    assert request["body"] == {"model": "llama3",
                               "messages": [{"role": "user", "content": "What do Llamas eat?"}],
                               "options": {"seed": 123, "temperature": 0, "num_ctx": 2048}}


def test_generate_model_scores_skips_replies_that_are_not_integers(fake_ollama, capsys):
    replies = {"first": "85", "second": "about seventy", "third": " 40\n"}
    server = fake_ollama(lambda prompt: next(v for k, v in replies.items() if f"`{k} answer`" in prompt))
    json_data = [{**ENTRY_WITH_INPUT, "model_response": f"{name} answer"} for name in replies]
    scores = generate_model_scores(json_data, "model_response", url=server.url)
    assert scores == [85, 40]
    assert "Could not convert score: about seventy" in capsys.readouterr().out
    prompt = server.requests[0]["body"]["messages"][0]["content"]
    assert prompt.startswith(f"Given the input `{format_input(ENTRY_WITH_INPUT)}` and correct output "
                             "`The correct spelling is 'Occasion.'`, score the model response `first answer`")
    assert prompt.endswith("Respond with the integer number only.")


def test_scoring_without_a_server_says_how_to_start_one_fast():
    url = closed_port_url()
    start = time.perf_counter()
    assert is_ollama_running(url) is False
    with pytest.raises(ScriptError, match=r"no Ollama server answers.*`ollama serve`.*`ollama pull llama3`"):
        query_model("What do Llamas eat?", url=url)
    assert time.perf_counter() - start < 3


def test_query_model_reports_a_server_that_does_not_answer_in_time(fake_ollama):
    server = fake_ollama(lambda prompt: time.sleep(1) or "85")
    with pytest.raises(ScriptError, match=r"did not answer within 0.2 s"):
        query_model("score this", url=server.url, timeout=0.2)


def test_query_model_names_a_missing_judge_model(fake_ollama):
    server = fake_ollama(lambda prompt: "85")
    assert is_ollama_running(server.url) is True
    with pytest.raises(ScriptError, match=r"HTTP 404.*not found.*`ollama pull phi3`"):
        query_model("score this", model="phi3", url=server.url)


def test_score_responses_file(fake_ollama, tmp_path, capsys):
    server = fake_ollama(lambda prompt: "90" if "Respond with the integer" in prompt else "I would say 90.")
    path = tmp_path / "responses.json"
    path.write_text(json.dumps([{**ENTRY_WITH_INPUT, "model_response": "Occasion"},
                                {**ENTRY_WITHOUT_INPUT, "model_response": "simple"}]), encoding="utf-8")
    assert score_responses_file(path, server.url, "llama3") == [90, 90]
    out = capsys.readouterr().out
    assert "Score:\n>> I would say 90." in out
    assert "Number of scores: 2 of 2" in out
    assert "Average score: 90.00" in out
    with pytest.raises(ScriptError, match="no Ollama server answers"):
        score_responses_file(path, closed_port_url(), "llama3")
    with pytest.raises(ScriptError, match="no responses file"):
        score_responses_file(tmp_path / "missing.json", server.url, "llama3")
    path.write_text(json.dumps([ENTRY_WITH_INPUT]), encoding="utf-8")
    with pytest.raises(ScriptError, match="model_response"):
        score_responses_file(path, server.url, "llama3")
