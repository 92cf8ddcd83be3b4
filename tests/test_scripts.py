"""Smoke test: every script runs end to end as a reader runs it (heavy ones in --quick mode),
offline, in a temporary data folder the test prepares, and prints what the book shows. Each
chapter's runs share one Python process (conftest.run_scripts), which imports torch once."""

import json
import re
import zipfile
from types import SimpleNamespace

import pytest
import torch

from conftest import (
    LocalServer,
    data_folder,
    free_port,
    openai_variables,
    run_script,
    run_scripts,
    script_job,
    succeeded,
    write_openai_checkpoint,
)


# A file in data/ that is not the published one is refused unless LLM_UNVERIFIED_DATA is set.
STAND_IN = {"LLM_UNVERIFIED_DATA": "1"}


def run_batch(folder, jobs):
    """Run {name: script_job(...)} one after another in one process; the results by name (.runs)
    and the folder the jobs read and write in (.folder)."""
    return SimpleNamespace(folder=folder, runs=dict(zip(jobs, run_scripts(*jobs.values()))))


def assert_printed(out, *texts):
    """Each of texts is somewhere in a script's output."""
    for text in texts:
        assert text in out, f"{text!r} not printed"


def offline_env():
    """Proxies at a local port nobody listens on: downloads fail as they do without a network."""
    dead_proxy = f"http://127.0.0.1:{free_port()}"
    return {**dict.fromkeys(("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"), dead_proxy),
            "no_proxy": "", "NO_PROXY": ""}


# ---- chapter 2 (a-g) ----

# A short stand-in for the-verdict.txt: it holds every word of b_tokenizer.TEXT (so V1 can encode it)
# and enough GPT-2 tokens (72) for e's and g's windows.
CH02_STORY = ('I had always liked the old painter, and I was glad to find him at home again. '
              '"It\'s the last he painted, you know," Mrs. Gisburn said with pardonable pride. '
              'The picture hung above the fireplace; we stood before it for a long time -- '
              'neither of us said a word -- until the tea was brought in.\n')

# What the tokenizer scripts must print on CH02_STORY (d also needs the GPT-2 encoding).
CH02_EXPECTED = {
    "a_tokenizer.py": ["Total number of characters: 292\n",
                       "['Hello', ',', 'world', '.', 'Is', 'this', '--', 'a', 'test', '?']",
                       "Number of tokens in the story: 70\n",
                       "First 30 tokens: ['I', 'had', 'always', 'liked', 'the', 'old', 'painter', ','"],
    "b_tokenizer.py": ["Vocabulary size: 56\n",
                       "Token IDs: [0, 8, 1, 42, 46, 31, 24, 37, 2, 55, 30, 2, 0, 9, 4, 6, 43, 53, 39, 41, "
                       "4]\n",
                       "Decoded: \" It' s the last he painted, you know,\" Mrs. Gisburn said with pardonable "
                       "pride.\n",
                       "fails: not in the vocabulary: 'Hello', 'do', 'like', '?'.",
                       "SimpleTokenizerV2"],
    "c_tokenizer.py": ["Vocabulary size with the special tokens: 58\n",
                       "('you', 55), ('<|endoftext|>', 56), ('<|unk|>', 57)]",
                       "Token IDs: [57, 2, 57, 55, 57, 45, 57, 56, 57, 46, 57, 57, 35, 46, 57, 4]\n",
                       "Decoded: <|unk|>, <|unk|> you <|unk|> tea <|unk|> <|endoftext|> <|unk|> the <|unk|> "
                       "<|unk|> of the <|unk|>.\n"],
    "d_tokenizer.py": ["Token IDs: [15496, 11, 466, 345, 588, 8887, 30, 220, 50256, 554, 262, 4252, 18250, "
                       "8812, 2114, 286, 617, 34680, 27271, 13]\n",
                       "Decoded: Hello, do you like tea? <|endoftext|> In the sunlit terraces of "
                       "someunknownPlace.\n",
                       "'Akwirw ier' -> [33901, 86, 343, 86, 220, 959]"],
}
CH02_SCRIPTS = [*CH02_EXPECTED, "e_data_preparation.py", "f_embeddings.py", "g_embeddings.py"]


@pytest.fixture(scope="module")
def ch02(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ch02")
    data_dir = data_folder(folder / "data", {"the-verdict.txt": CH02_STORY})
    return run_batch(folder, {script: script_job(script, data_dir=data_dir, outputs_dir=folder / "outputs",
                                                 env=STAND_IN)
                              for script in CH02_SCRIPTS})


@pytest.mark.parametrize("script", list(CH02_EXPECTED))
def test_chapter_2_tokenizer_scripts(script, ch02, request):
    if script == "d_tokenizer.py":
        request.getfixturevalue("gpt2_tokenizer")  # skips when the GPT-2 encoding cannot load
    assert_printed(succeeded(ch02.runs[script]), *CH02_EXPECTED[script])


def test_e_data_preparation(ch02, gpt2_tokenizer):
    out = succeeded(ch02.runs["e_data_preparation.py"])
    ids = gpt2_tokenizer.encode(CH02_STORY)
    assert len(ids) == 72
    assert "Number of GPT-2 tokens in the story: 72\n" in out
    assert f"x: {ids[50:54]}\ny:      {ids[51:55]}\n" in out
    assert f"{ids[50:54]} ----> {ids[54]}\n" in out

    def row(values):  # a printed tensor row, whatever the padding
        return r"\[\s*" + r",\s+".join(map(str, values)) + r"\]"

    # stride 1: the targets are the inputs shifted by one, and the second window starts one token later.
    assert re.search(rf"First batch .*: \[tensor\(\[{row(ids[0:4])}\]\), "
                     rf"tensor\(\[{row(ids[1:5])}\]\)\]", out)
    assert re.search(rf"Second batch: \[tensor\(\[{row(ids[1:5])}\]\), "
                     rf"tensor\(\[{row(ids[2:6])}\]\)\]", out)

    def printed_rows(text):
        return [[int(v) for v in line.split(",")] for line in re.findall(r"\[\s*(\d[\d,\s]*)\]", text)]

    # stride 4, batch 8: eight consecutive, non-overlapping windows and their shifted targets.
    inputs, targets = out.split("Inputs:\n")[1].split("Targets:\n")
    assert printed_rows(inputs) == [ids[4 * k:4 * k + 4] for k in range(8)]
    assert printed_rows(targets) == [ids[4 * k + 1:4 * k + 5] for k in range(8)]


def test_f_embeddings(ch02):
    out = succeeded(ch02.runs["f_embeddings.py"])
    for row in ("[ 0.3374, -0.1778, -0.1690]", "[ 0.9178,  1.5810,  1.3010]", "[ 1.2753, -0.2010, -0.1606]",
                "[-0.4015,  0.9666, -1.1481]", "[-1.1589,  0.3255, -0.6315]", "[-2.8400, -0.7849, -1.4096]"):
        assert row in out
    assert "tensor([[-0.4015,  0.9666, -1.1481]], grad_fn=<EmbeddingBackward0>)" in out
    lookup = out.split("(rows 2, 3, 5, 1):\n")[1]
    assert re.findall(r"\[\s*(-?\d\.\d{4}),", lookup) == ["1.2753", "-0.4015", "-2.8400", "0.9178"]


def test_g_embeddings(ch02, gpt2_tokenizer):
    out = succeeded(ch02.runs["g_embeddings.py"])
    assert "Inputs shape: torch.Size([8, 4])\n" in out
    assert "Token embeddings shape: torch.Size([8, 4, 256])\n" in out
    assert "Position embeddings shape: torch.Size([4, 256])\n" in out
    assert "Input embeddings shape: torch.Size([8, 4, 256])\n" in out
    values = {name: [float(v) for v in re.search(name + r":\s+tensor\(\[([^\]]*)\]", out)[1].split(",")]
              for name in ("token embedding", "position embedding", "input embedding")}
    # Seed 123 right before the token embedding layer, as in the book; then input = token + position.
    torch.manual_seed(123)
    first_id = gpt2_tokenizer.encode(CH02_STORY)[0]
    expected = torch.nn.Embedding(50257, 256).weight[first_id, :3].tolist()
    assert values["token embedding"] == pytest.approx(expected, abs=1e-4)
    assert values["input embedding"] == pytest.approx(
        [t + p for t, p in zip(values["token embedding"], values["position embedding"])], abs=2e-4)
    # Reversing the tokens only reverses attention's outputs, until position embeddings are added.
    assert re.search(r"^  token embeddings only:    True \(largest difference [\d.e-]+\)$", out, re.M)
    with_positions = re.search(r"^  plus position embeddings: False \(largest difference ([\d.]+)\)$",
                               out, re.M)
    assert float(with_positions[1]) > 0.1


def test_missing_story_without_network_gives_a_clear_message(tmp_path):
    data_dir = tmp_path / "data"
    result = run_script("a_tokenizer.py", data_dir=data_dir, outputs_dir=tmp_path / "outputs",
                        check=False, timeout=30, env=offline_env())
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("error: could not download the-verdict.txt")
    assert "raw.githubusercontent.com/rasbt/LLMs-from-scratch/main/" in result.stderr
    assert f"put it at {data_dir / 'the-verdict.txt'}" in result.stderr
    assert not data_dir.exists()  # the failed download removed the data/ folder it made


# ---- chapters 3-4 (h-s) ----

# What each script must print: the book's seeded values (h-m, o-s) and sizes.
CH03_04_EXPECTED = {
    "h_self_attention.py": ["Attention scores for x^2: tensor([0.9544, 1.4950, 1.4754, 0.8434, 0.7070, "
                            "1.0865])",
                            "Attention weights (torch.softmax): tensor([0.1385, 0.2379, 0.2333, 0.1240, "
                            "0.1082, 0.1581])",
                            "Context vector z^2: tensor([0.4419, 0.6515, 0.5683])",
                            "[0.4421, 0.5931, 0.5790]",
                            "  journey  1.4950  1.2227  1.0000\n  starts   1.4754  1.2071  0.9997\n"
                            "  with     0.8434  0.7026  0.9817\n"],
    "i_compact_self_attention.py": ["query_2: tensor([0.4306, 1.4551])",
                                    "Attention score omega_22: tensor(1.8524)",
                                    "Context vector z^2: tensor([0.3061, 0.8210])",
                                    "[[0.2996, 0.8053],\n        [0.3061, 0.8210]"],
    "j_linear_self_attention.py": ["[[-0.0739,  0.0713],", "[0.5517, 0.4483, 0.0000",
                                   "[0.4656, 0.1723,   -inf", "[[2., 2., 0., 2., 2., 0.],",
                                   "[0.7599, 0.6194, 0.6206, 0.0000"],
    "k_causal_attention.py": ["batch.shape: torch.Size([2, 6, 3])", "[[[-0.4519,  0.2216],",
                              "[-0.5299, -0.1081]]], grad_fn", "context_vecs.shape: torch.Size([2, 6, 2])"],
    "l_multi_head_attention.py": ["[[[-0.4519,  0.2216,  0.4772,  0.1063],",
                                  "context_vecs.shape: torch.Size([2, 6, 4])", "[[[-0.5740,  0.2216],"],
    "m_efficient_multi_head_attention.py": ["[[[[1.3208, 1.1631, 1.2879],", "[[[0.3190, 0.4858],",
                                            "[0.2575, 0.4028]]], grad_fn",
                                            "GPT-2-sized MultiHeadAttention: 2,360,064 parameters"],
    "n_dummy_gpt_model.py": ["vocab_size: 50257\n", "(trf_blocks): Sequential(",
                             "(out_head): Linear(in_features=768, out_features=50257, bias=False)"],
    "o_use_dummy_gpt_model.py": ["tensor([[6109, 3626, 6100,  345],\n        [6109, 1110, 6622,  257]])",
                                 "Output shape: torch.Size([2, 4, 50257])",
                                 "[[[-1.2034,  0.3201, -0.7130,  ..., -1.5548, -0.2390, -0.4667],"],
    "p_layernorm_gelu_feedforward.py": ["[[0.2260, 0.3470, 0.0000, 0.2216, 0.0000, 0.0000],",
                                        "Variance:\n tensor([[0.0231],\n        [0.0398]]",
                                        "LayerNorm variance:\n tensor([[1.0000],\n        [1.0000]]",
                                        "FeedForward output shape: torch.Size([2, 3, 768])"],
    "q_shortcut_dnn.py": ["layers.0.0.weight has gradient mean of 0.000201735",
                          "layers.4.0.weight has gradient mean of 0.0050496",
                          "layers.0.0.weight has gradient mean of 0.221697",
                          "layers.4.0.weight has gradient mean of 1.325854"],
    "r_transformer_block.py": ["Input shape: torch.Size([2, 4, 768])\nOutput shape: torch.Size([2, 4, 768])",
                               "feed forward 4,722,432, attention 2,360,064"],
    "s_gpt_model.py": ["[[[ 0.3613,  0.4222, -0.0711,  ...,  0.3483,  0.4661, -0.2838],",
                       "Total number of parameters: 163,009,536\n",
                       "Number of trainable parameters considering weight tying: 124,412,160\n",
                       "Total size of the model: 621.83 MB\n",
                       "encoded: [15496, 11, 314, 716]\n",
                       "Output length: 10\nHello, I am Featureiman Byeswickattribute argue\n",
                       "gpt2-medium (355M): 406,212,608 parameters, 354,749,440 with weight tying, "
                       "1549.58 MB",
                       "gpt2-large (774M): 838,220,800 parameters, 773,891,840 with weight tying, 3197.56 MB",
                       "gpt2-xl (1558M): 1,637,792,000 parameters, 1,557,380,800 with weight tying, "
                       "6247.68 MB"],
}


@pytest.fixture(scope="module")
def ch03_04(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ch03_04")
    return run_batch(folder, {script: script_job(script, data_dir=folder / "data",
                                                 outputs_dir=folder / script)
                              for script in CH03_04_EXPECTED})


@pytest.mark.parametrize("script", list(CH03_04_EXPECTED))
def test_chapters_3_4_scripts(script, ch03_04, request):
    if script in ("o_use_dummy_gpt_model.py", "s_gpt_model.py"):
        request.getfixturevalue("gpt2_tokenizer")  # skips when the GPT-2 encoding cannot load
    outputs_dir = ch03_04.folder / script
    out = succeeded(ch03_04.runs[script])
    assert_printed(out, *CH03_04_EXPECTED[script])
    if script == "p_layernorm_gelu_feedforward.py":
        assert (outputs_dir / "gelu_vs_relu.png").read_bytes()[:4] == b"\x89PNG"
    if script == "s_gpt_model.py":  # the book's greedy continuation of "Hello, I am", on CPU
        ids = re.search(r"Output: tensor\(\[\[([\d,\s]+)\]\]\)", out)[1]
        assert [int(i) for i in ids.split(",")] == [15496, 11, 314, 716, 27018, 24086, 47843, 30961, 42348,
                                                    7267]


# ---- chapter 5 (t, u, v, gpt_download) ----

# A stand-in for the-verdict.txt, longer than the 3,000 characters u --quick reads.
CH05_STORY = " ".join(f"Day {i}: the painter put down his brush, and we looked at the picture on the "
                      "wall for a long time without a word." for i in range(30))
# A tiny GPT-2 with GPT-2's vocabulary, in OpenAI's TensorFlow format, for v.
V_HPARAMS = {"n_vocab": 50257, "n_ctx": 32, "n_embd": 16, "n_head": 2, "n_layer": 2}


@pytest.fixture(scope="module")
def ch05(tmp_path_factory, gpt2_tokenizer):
    folder = tmp_path_factory.mktemp("ch05")
    story = data_folder(folder / "story", {"the-verdict.txt": CH05_STORY})
    too_short = data_folder(folder / "too-short", {"the-verdict.txt": "Far too short to train on."})
    # Where v looks by default: data/gpt2/124M.
    write_openai_checkpoint(folder / "data" / "gpt2" / "124M", V_HPARAMS, openai_variables(V_HPARAMS))
    v_dirs = {"data_dir": folder / "data", "outputs_dir": folder / "v", "env": STAND_IN}
    return run_batch(folder, {
        "t": script_job("t_pretraining_basics.py", data_dir=folder / "data", outputs_dir=folder / "t"),
        "u": script_job("u_pretraining.py", "--quick", "--device", "cpu", data_dir=story,
                        outputs_dir=folder / "u", env=STAND_IN),
        "u too short": script_job("u_pretraining.py", "--quick", data_dir=too_short,
                                  outputs_dir=folder / "too-short-outputs", env=STAND_IN),
        "appendix_d": script_job("appendix_d.py", "--quick", "--device", "cpu", data_dir=story,
                                 outputs_dir=folder / "appendix_d", env=STAND_IN),
        "v": script_job("v_load_gpt2_weights.py", "--device", "cpu", **v_dirs),
        "v --quick": script_job("v_load_gpt2_weights.py", "--quick", "--device", "cpu", **v_dirs),
        "fast_pretraining": script_job("fast_pretraining.py", "--quick", "--grad-accum", "2", "--device",
                                       "cpu", data_dir=story, outputs_dir=folder / "fast_pretraining",
                                       env=STAND_IN),
    })


def test_t_pretraining_basics(ch05):
    out = succeeded(ch05.runs["t"])
    assert "Output text:\n Every effort moves you rentingetic wasnم refres RexMeCHicular stren\n" in out
    assert "Targets batch 1:  effort moves you\nOutputs batch 1:  Armed heNetflix\n" in out
    assert "Cross entropy loss: tensor(10.7940)\n" in out  # the book's values, seed 123
    assert re.search(r"Perplexity: tensor\(4872[5-6]\.\d+\)\n", out)


def test_u_pretraining_quick(ch05):
    out, outputs_dir = succeeded(ch05.runs["u"]), ch05.folder / "u"
    assert "Characters: 3000\n" in out
    assert re.search(r"^Ep 1 \(Step 000000\): Train loss \d+\.\d{3}, Val loss \d+\.\d{3}$", out, re.M)
    assert re.search(r"^Ep 2 \(Step 0000\d\d\): Train loss \d+\.\d{3}", out, re.M)
    # The toy-vocabulary demos do not depend on the model: they print the book's numbers.
    assert ("73 x closer\n0 x every\n0 x effort\n582 x forward\n2 x inches\n0 x moves\n0 x pizza\n"
            "343 x toward\n") in out
    assert ("Top-k probabilities: tensor([0.0615, 0.0000, 0.0000, 0.5775, 0.0000, 0.0000, 0.0000, "
            "0.3610, 0.0000])") in out
    assert "The reloaded model gives the same logits: True" in out
    # A quick run writes under outputs/quick/, so it never replaces a full run's results.
    assert sorted(path.name for path in outputs_dir.iterdir()) == ["quick"]
    for name in ("pretraining-loss-plot.png", "temperature-plot.png"):
        assert (outputs_dir / "quick" / name).read_bytes()[:4] == b"\x89PNG"

    from checkpoints import load_checkpoint
    from u_pretraining import QUICK_CONFIG
    checkpoint = load_checkpoint(outputs_dir / "quick" / "model_and_optimizer.pth")
    assert checkpoint["config"] == QUICK_CONFIG and "optimizer_state_dict" in checkpoint


def test_appendix_d_quick(ch05):
    out, outputs_dir = succeeded(ch05.runs["appendix_d"]), ch05.folder / "appendix_d"
    steps = int(re.search(r"^D\.1 (\d+) steps, (\d+) of them warmup$", out, re.M)[1])
    assert steps > 0 and "D.2 Peak learning rate 0.001000" in out
    before, after = (float(v) for v in re.findall(
        r"Highest gradient (?:before|after) clipping: tensor\(([-\d.e]+)\)", out))
    assert after < before
    assert re.search(r"^Ep 1 \(Iter 000000\): Train loss \d+\.\d{3}", out, re.M)
    for name in ("appendix-d-lr-schedule.png", "appendix-d-loss-plot.png"):
        assert (outputs_dir / "quick" / name).read_bytes()[:4] == b"\x89PNG"


def test_fast_pretraining_quick(ch05):
    out, outputs_dir = succeeded(ch05.runs["fast_pretraining"]), ch05.folder / "fast_pretraining"
    assert "global batch 4; FastMultiHeadAttention, fused AdamW" in out
    assert "2 batches per optimizer step" in out
    assert re.search(r"^Ep 2 \(Step 0000\d\d\): Train loss \d+\.\d{3}", out, re.M)
    from checkpoints import load_checkpoint
    checkpoint = load_checkpoint(outputs_dir / "quick" / "fast_pretraining.pth")
    assert checkpoint["config"]["attention"] == "fast" and "optimizer_state_dict" in checkpoint


def test_u_pretraining_text_too_short(ch05):
    result = ch05.runs["u too short"]
    assert result.returncode == 1
    assert "too few for one window of context_length=32" in result.stderr
    assert "Traceback" not in result.stderr


def test_v_load_gpt2_weights(ch05):
    out = succeeded(ch05.runs["v"])
    assert f"Settings: {V_HPARAMS}" in out
    assert "Token embedding weight tensor dimensions: (50257, 16)" in out
    assert "not the published gpt2-small (124M)" in out
    assert "Output text:\n Every effort moves you" in out
    assert "The book prints" not in out  # only for the real 124M weights

    out = succeeded(ch05.runs["v --quick"])
    assert "tiny randomly initialised model" in out and "Output text:\n Every effort moves you" in out

# ---- chapters 6 and 7, appendices A and E (w, x, y, z) ----


def sms_spam_zip(path, num_ham=60, num_spam=30):
    """A small stand-in for the UCI zip: SMS-like ham and spam lines that are easy to tell apart."""
    ham = ["Are we still meeting for lunch at {}?", "Ok, I'll call you when I get home around {}.",
           "Can you pick up some milk on the way back? Thanks, see you at {}"]
    spam = ["WINNER!! You have won a {} prize. Call 09061701461 now to claim, T&C apply",
            "URGENT! Your mobile number has won {} cash. Text CLAIM to 81010 to collect"]
    lines = [f"ham\t{ham[i % 3].format(i)}" for i in range(num_ham)]
    lines += [f"spam\t{spam[i % 2].format(i * 100)}" for i in range(num_spam)]
    lines = [lines[i] for i in sorted(range(len(lines)), key=lambda i: (i * 37) % len(lines))]
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("SMSSpamCollection", "\n".join(lines) + "\n")
        archive.writestr("readme", "SMS Spam Collection v.1 (test stand-in)\n")
    return path


# Twelve entries in the format of instruction-data.json: the split gives 10 / 1 / 1.
CH07_ENTRIES = [dict(zip(("instruction", "input", "output"), entry)) for entry in [
    ("Convert the sentence to passive voice.", "The cat chased the mouse.",
     "The mouse was chased by the cat."),
    ("What is the capital of France?", "", "The capital of France is Paris."),
    ("Give a synonym for 'happy'.", "", "A synonym for 'happy' is 'joyful'."),
    ("Translate to Spanish.", "Good morning", "Buenos días"),
    ("What is 7 times 6?", "", "7 times 6 is 42."),
    ("Correct the spelling.", "recieve", "The correct spelling is 'receive'."),
    ("Name the largest planet.", "", "The largest planet is Jupiter."),
    ("Make the sentence shorter.", "He went to the store in order to buy some bread.",
     "He went to the store to buy bread."),
    ("What is the boiling point of water?", "", "Water boils at 100 degrees Celsius at sea level."),
    ("Give the plural of 'child'.", "", "The plural of 'child' is 'children'."),
    ("Classify the animal.", "Shark", "A shark is a fish."),
    ("What is the opposite of 'hot'?", "", "The opposite of 'hot' is 'cold'."),
]]
# A stand-in for Ollama's /api/chat: every reply streams "85" as two JSON lines.
OLLAMA_85 = "".join(json.dumps({"model": "llama3", "message": {"role": "assistant", "content": piece},
                                "done": piece == ""}) + "\n" for piece in ("8", "5", ""))
# The book's loss after each of the six steps of appendix A's training loop.
APPENDIX_A_LOSSES = "".join(f"Epoch: {epoch:03d}/003 | Batch {batch:03d}/002 | Train Loss: {loss}\n"
                            for (epoch, batch), loss in zip([(e, b) for e in (1, 2, 3) for b in (0, 1)],
                                                            ["0.75", "0.65", "0.44", "0.13", "0.03", "0.00"]))


@pytest.fixture(scope="module")
def w_to_z(tmp_path_factory):
    """w, x, y and z in one process; w and z read the same stand-in for the UCI zip."""
    folder = tmp_path_factory.mktemp("w_to_z")
    sms = data_folder(folder / "sms")
    sms_spam_zip(sms / "sms_spam_collection.zip")  # 60 ham, 30 spam: 42 / 6 / 12 after balancing
    instructions = data_folder(folder / "instructions",
                               {"instruction-data.json": json.dumps(CH07_ENTRIES, indent=4)})
    responses_path = folder / "responses.json"
    responses_path.write_text(json.dumps([{**entry, "model_response": entry["output"]}
                                          for entry in CH07_ENTRIES[:2]]), encoding="utf-8")
    server = LocalServer()
    ollama_url = server.add("/api/chat", OLLAMA_85, content_type="application/x-ndjson")
    no_ollama_url = f"http://127.0.0.1:{free_port()}/api/chat"  # nothing listens there
    y_dirs = {"data_dir": folder / "data", "outputs_dir": folder / "y"}
    batch = run_batch(folder, {
        "w": script_job("w_finetune_classifier.py", "--quick", data_dir=sms, outputs_dir=folder / "w",
                        env=STAND_IN),
        "w offline": script_job("w_finetune_classifier.py", "--quick", data_dir=folder / "no-data",
                                outputs_dir=folder / "w-offline", env=offline_env()),
        "x": script_job("x_finetune_instructions.py", "--quick", "--device", "cpu", "--ollama-url",
                        no_ollama_url, data_dir=instructions, outputs_dir=folder / "x", env=STAND_IN),
        "x --score-only": script_job("x_finetune_instructions.py", "--score-only", str(responses_path),
                                     "--ollama-url", ollama_url, data_dir=folder / "data",
                                     outputs_dir=folder / "x-score-only"),
        "y": script_job("y_neural_network_basics.py", "--device", "cpu", **y_dirs),
        "y --quick": script_job("y_neural_network_basics.py", "--quick", "--device", "cpu", **y_dirs),
        "z": script_job("z_lora.py", "--quick", "--device", "cpu", data_dir=sms, outputs_dir=folder / "z",
                        env=STAND_IN),
    })
    batch.server, batch.ollama_url, batch.no_ollama_url = server, ollama_url, no_ollama_url
    batch.responses = responses_path
    yield batch
    server.close()


def test_w_finetune_classifier_quick(w_to_z, gpt2_tokenizer):
    data_dir, outputs_dir = w_to_z.folder / "sms", w_to_z.folder / "w"
    out = succeeded(w_to_z.runs["w"])
    assert (data_dir / "sms_spam_collection" / "SMSSpamCollection.tsv").exists()  # extracted, renamed
    assert re.search(r"Labels in the full dataset:\nLabel\nham\s+60\nspam\s+30\n", out)
    assert re.search(r"Labels in the balanced dataset:\nLabel\nham\s+30\nspam\s+30\n", out)
    assert "Split sizes: train 42, validation 6, test 12" in out
    assert len((data_dir / "train.csv").read_text(encoding="utf-8").splitlines()) == 1 + 42
    assert "Padding token: [50256]" in out
    assert "Input batch dimensions: torch.Size([8, 25])" in out  # the longest training text
    assert "5 training batches\n1 validation batches\n2 test batches" in out
    assert "Trainable parameters: 12,834 of 1,637,858" in out
    assert "Outputs dimensions: torch.Size([1, 4, 2])" in out
    assert "Ep 1 (Step 000000): Train loss" in out
    assert re.search(r"Test accuracy: \d+\.\d\d%", out)
    assert re.search(r"-> (spam|not spam)\n", out)
    assert "same predictions: True" in out
    for name in ("classifier-loss-plot.png", "classifier-accuracy-plot.png"):
        assert (outputs_dir / "quick" / name).read_bytes()[:4] == b"\x89PNG"
    checkpoint = torch.load(outputs_dir / "quick" / "review_classifier.pth", weights_only=True)
    assert checkpoint["num_classes"] == 2 and checkpoint["max_length"] == 25
    assert checkpoint["model_state_dict"]["out_head.weight"].shape == (2, 32)


def test_w_finetune_classifier_offline_gives_a_clear_message(w_to_z):
    data_dir, result = w_to_z.folder / "no-data", w_to_z.runs["w offline"]
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.startswith("error: could not download sms_spam_collection.zip")
    assert "archive.ics.uci.edu" in result.stderr and "backblazeb2.com" in result.stderr
    assert f"put it at {data_dir / 'sms_spam_collection.zip'}" in result.stderr

def test_x_finetune_instructions_quick_without_ollama(w_to_z, gpt2_tokenizer):
    out, outputs_dir, ollama_url = succeeded(w_to_z.runs["x"]), w_to_z.folder / "x", w_to_z.no_ollama_url
    assert "Number of entries: 12\n" in out
    assert ("Entry 0 in the Alpaca prompt style:\nBelow is an instruction that describes a task. Write a "
            "response that appropriately completes the request.\n\n### Instruction:\nConvert the sentence "
            "to passive voice.\n\n### Input:\nThe cat chased the mouse.\n\n### Response:\n"
            "The mouse was chased by the cat.\n") in out
    assert "Training set length: 10\nValidation set length: 1\nTest set length: 1\n" in out
    assert "[    6, 50256,  -100,  -100,  -100]" in out  # the collate function on the book's example
    assert "loss_1: tensor(1.1269)\n" in out and "loss_1 == loss_3: tensor(True)\n" in out
    assert re.search(r"Train loader:\ntorch.Size\(\[8, \d+\]\) torch.Size\(\[8, \d+\]\)\n"
                     r"\.\.\. 1 training batches of 8", out)
    assert "note: --quick uses a tiny randomly initialised model" in out
    assert "### Instruction:\nWhat is the opposite of 'hot'?\n\nBefore fine-tuning" in out  # val_data[0]
    assert re.search(r"Training loss: \d+\.\d+\nValidation loss: \d+\.\d+\n", out)
    assert "Ep 1 (Step 000000): Train loss" in out
    assert "Correct response:\n>> A shark is a fish.\n" in out  # test_data[0]
    assert f"Skipping the scoring: no Ollama server answers at {ollama_url}" in out
    assert "`ollama serve`" in out and "`ollama pull llama3`" in out and "--score-only" in out

    outputs_dir = outputs_dir / "quick"
    responses = json.loads((outputs_dir / "instruction-data-with-response.json").read_text(encoding="utf-8"))
    assert len(responses) == 1 and isinstance(responses[0].pop("model_response"), str)
    assert responses == CH07_ENTRIES[10:11]
    assert (outputs_dir / "instruction-finetuning-losses.png").read_bytes()[:4] == b"\x89PNG"
    checkpoint = torch.load(outputs_dir / "quick-random-sft.pth", weights_only=True)
    assert checkpoint["config"]["emb_dim"] == 32 and checkpoint["config"]["context_length"] == 128
    assert checkpoint["model_state_dict"]["out_head.weight"].shape == (50257, 32)


def test_x_finetune_instructions_score_only(w_to_z):
    out, url, responses_path = succeeded(w_to_z.runs["x --score-only"]), w_to_z.ollama_url, w_to_z.responses
    assert f"Scoring the 2 responses in {responses_path} with llama3 at {url}" in out
    assert "Dataset response:\n>> The mouse was chased by the cat.\n" in out
    assert "Score:\n>> 85\n" in out
    assert "Number of scores: 2 of 2\nAverage score: 85.00\n" in out
    assert w_to_z.server.requests == ["/"] + ["/api/chat"] * 4  # 2 free-form answers, then 2 scores
    assert not (w_to_z.folder / "x-score-only").exists()  # no training, nothing written


def test_y_neural_network_basics(w_to_z):
    outputs_dir = w_to_z.folder / "y"
    assert_printed(succeeded(w_to_z.runs["y"]),
                   "tensor3d: ndim 3, shape (2, 2, 2)", "dtype of integers: torch.int64",
                   "torch.autograd.grad: grad L_w1 = -0.0898, grad L_b = -0.0817\n",
                   "loss.backward():     w1.grad = -0.0898, b.grad = -0.0817\n",
                   "by hand:             (a - y) * x1 = -0.0898, (a - y) = -0.0817\n",
                   "  backward: dL/da  = -y / a + (1 - y) / (1 - a) = -1.0889\n",
                   "  backward: dL/dz  = dL/da * da/dz              = -0.0817\n",
                   "  backward: dL/dw1 = dL/dz * x1                 = -0.0898\n",
                   "Total number of trainable model parameters: 2213\n",
                   "logits for a random input: tensor([[-0.1262,  0.1080, -0.1792]], "
                   "grad_fn=<AddmmBackward0>)",
                   "class-membership probabilities: tensor([[0.3113, 0.3934, 0.2952]])",
                   "Batch 3: tensor([[ 2.7000, -1.5000]]) tensor([1])",  # before drop_last
                   APPENDIX_A_LOSSES,
                   "Total number of trainable model parameters: 752\n",
                   "[0.9991, 0.0009]", "predictions: tensor([0, 0, 0, 1, 1])",
                   "Training accuracy: 1.00 | Test accuracy: 1.00\n",
                   "the reloaded model gives the same outputs: True",
                   "torchrun --nproc_per_node=2 y_neural_network_basics.py --ddp")
    assert (outputs_dir / "appendix-a-model.pth").exists()

    out = succeeded(w_to_z.runs["y --quick"])
    assert "A.2 tensors" not in out and "Batch 1:" not in out  # the walk-through parts are skipped
    assert APPENDIX_A_LOSSES in out and "Training accuracy: 1.00 | Test accuracy: 1.00\n" in out


def test_y_ddp_with_torchrun_on_cpu(tmp_path):
    """The reader's command, `torchrun --nproc_per_node=2 y_neural_network_basics.py --ddp`."""
    outputs_dir = tmp_path / "outputs"
    out = run_script("y_neural_network_basics.py", "--ddp", "--device", "cpu", data_dir=tmp_path / "data",
                     outputs_dir=outputs_dir, nproc_per_node=2, timeout=120).stdout
    for rank in (0, 1):
        assert f"[rank {rank}] Epoch: 003/003 | Batch 000/001 | Train Loss: " in out  # 3 samples per rank
        # no "\n": print writes it on its own, so the other rank's line can come between
        assert f"[rank {rank}] Training accuracy: 1.00 | Test accuracy: 1.00" in out
    assert "[rank 0] saved" in out and "(2 processes, backend gloo)" in out and "[rank 1] saved" not in out
    assert [p.name for p in outputs_dir.iterdir()] == ["appendix-a-model-ddp.pth"]


def test_z_lora_quick(w_to_z, gpt2_tokenizer):
    out, outputs_dir = succeeded(w_to_z.runs["z"]), w_to_z.folder / "z"
    assert_printed(out, "--quick: the first 80 examples of each split",
                   "5 training batches, 1 validation batches, 2 test batches (of 8 messages, 25 tokens)",
                   "note: --quick uses a tiny randomly initialised model",
                   "Total parameters of the classifier: 1,637,858",
                   "Total trainable parameters after freezing: 0\n",
                   # rank 16 on the tiny model: 2 blocks x (3 x 64 + 64 + 2 x 160) x 16 + (32 + 2) x 16
                   "Total trainable LoRA parameters: 18,976 (rank 16, alpha 16, scaling alpha = 16)",
                   "(W_query): LinearWithLoRA(", "Ep 1 (Step 000000): Train loss")
    assert re.search(r"After fine-tuning \(all batches\):\nTraining accuracy: \d+\.\d\d%\n"
                     r"Validation accuracy: \d+\.\d\d%\nTest accuracy: \d+\.\d\d%\n", out)
    assert "1,637,858 parameters, no LinearWithLoRA left: True" in out
    assert "same predictions: True" in out and "same logits: True" in out
    assert (outputs_dir / "quick" / "lora-loss-plot.png").read_bytes()[:4] == b"\x89PNG"
    checkpoint = torch.load(outputs_dir / "quick" / "review_classifier_lora.pth", weights_only=True)
    assert checkpoint["num_classes"] == 2 and checkpoint["lora_rank"] == 16
    assert checkpoint["max_length"] == 25
    assert not any("lora" in key for key in checkpoint["model_state_dict"])  # merged: plain Linear layers
    assert checkpoint["model_state_dict"]["out_head.weight"].shape == (2, 32)
