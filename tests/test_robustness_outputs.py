"""What a run writes: names of its own per script, --quick under outputs/quick/, an outputs folder checked
before any training, the model saved before plots and samples, write errors (full disk) as one line with
the earlier file intact, no temporary file left by a killed write; and the clear errors of checkpoints:
weights that do not fit their config, --init-from a model that does not read GPT-2's token ids, and the
MPS note."""

import argparse
import ast
import json
import os
import signal
import subprocess
import sys

import pytest
import torch

import a_tokenizer
import plumbing
from checkpoints import load_checkpoint, model_from_checkpoint, save_checkpoint
from conftest import REPO_DIR, run_script
from plumbing import ScriptError, ensure_writable
from s_gpt_model import GPTModel
from starting_point import add_starting_point_args, load_starting_point

TINY_CFG = {"vocab_size": 64, "context_length": 8, "emb_dim": 16, "n_heads": 2, "n_layers": 1,
            "drop_rate": 0.0, "qkv_bias": False}
STORY = " ".join(f"Day {i}: the painter put down his brush, and we looked at the picture on the wall for a "
                 "long time without a word." for i in range(30))


# ---- names of their own ----

def output_path_calls(script):
    """(name, passes_quick, enclosing function) for each output_path("literal", ...) in a script."""
    tree = ast.parse((REPO_DIR / script).read_text(encoding="utf-8"))
    calls = []
    for function in (node for node in ast.walk(tree) if isinstance(node, ast.FunctionDef)):
        for node in ast.walk(function):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "output_path" and \
                    node.args and isinstance(node.args[0], ast.Constant):
                calls.append((node.args[0].value, len(node.args) > 1 or bool(node.keywords), function.name))
    return calls


TRAINING_SCRIPTS = ["u_pretraining.py", "appendix_d.py", "fast_pretraining.py", "w_finetune_classifier.py",
                    "x_finetune_instructions.py", "y_neural_network_basics.py", "z_lora.py"]


def test_every_script_writes_names_of_its_own_and_quick_runs_under_quick():
    owners = {}
    for script in TRAINING_SCRIPTS + ["p_layernorm_gelu_feedforward.py"]:
        for name, passes_quick, function in output_path_calls(script):
            assert owners.setdefault(name, script) == script, f"{name}: {owners[name]} and {script}"
            if script in TRAINING_SCRIPTS and function != "ddp_train":  # A.9's torchrun run has no --quick
                assert passes_quick, f"{script}: output_path({name!r}) in {function} ignores --quick"
    assert {"classifier-loss-plot.png", "classifier-accuracy-plot.png", "appendix-a-model.pth",
            "pretraining-loss-plot.png", "model_and_optimizer.pth"} <= owners.keys()
    assert not {"loss-plot.png", "accuracy-plot.png", "model.pth"} & owners.keys()


def test_output_path_puts_quick_files_apart(tmp_path, monkeypatch):
    monkeypatch.setattr(plumbing, "OUTPUTS_DIR", tmp_path / "outputs")
    assert plumbing.output_path("a.pth") == tmp_path / "outputs" / "a.pth"
    assert plumbing.output_path("a.pth", quick=True) == tmp_path / "outputs" / "quick" / "a.pth"
    assert (tmp_path / "outputs" / "quick").is_dir()


# ---- the outputs folder, checked before the training ----

def test_ensure_writable_refuses_a_folder_under_a_regular_file(tmp_path):
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(ScriptError) as error:
        ensure_writable(tmp_path / "file" / "outputs")
    assert str(error.value) == (f"cannot create the folder {tmp_path / 'file' / 'outputs'} (Not a "
                                "directory); choose another place, e.g. with LLM_OUTPUTS_DIR=/path/to/folder")
    assert (tmp_path / "file").read_text() == "not a folder"


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes into read-only folders")
def test_ensure_writable_refuses_a_read_only_folder(tmp_path):
    folder = tmp_path / "outputs"
    folder.mkdir(mode=0o555)
    with pytest.raises(ScriptError, match=f"cannot write to {folder} \\(Permission denied\\)"):
        ensure_writable(folder)
    assert list(folder.iterdir()) == []


def test_u_with_an_unwritable_outputs_folder_stops_before_training(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "the-verdict.txt").write_text(STORY, encoding="utf-8")
    (tmp_path / "file").write_text("not a folder")
    outputs_dir = tmp_path / "file" / "outputs"
    result = run_script("u_pretraining.py", "--quick", "--device", "cpu", data_dir=tmp_path / "data",
                        outputs_dir=outputs_dir, check=False, env={"LLM_UNVERIFIED_DATA": "1"})
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.splitlines()[0] == (
        f"error: cannot create the folder {outputs_dir / 'quick'} (Not a directory); choose another place, "
        "e.g. with LLM_OUTPUTS_DIR=/path/to/folder")
    assert "5.2 Training" not in result.stdout and "Characters" not in result.stdout


def test_u_saves_the_model_before_its_plots(tmp_path, monkeypatch, gpt2_tokenizer):
    import u_pretraining as u

    monkeypatch.setattr(plumbing, "OUTPUTS_DIR", tmp_path / "outputs")
    monkeypatch.setattr(a_tokenizer, "VERDICT_PATH", tmp_path / "the-verdict.txt")
    monkeypatch.setenv("LLM_UNVERIFIED_DATA", "1")
    (tmp_path / "the-verdict.txt").write_text(STORY, encoding="utf-8")
    monkeypatch.setattr(sys, "argv", ["u_pretraining.py", "--quick", "--device", "cpu", "--epochs", "1"])

    def full_disk(*args):
        raise ScriptError("could not write the plot")

    monkeypatch.setattr(u, "plot_losses", full_disk)
    with pytest.raises(ScriptError, match="could not write the plot"):
        u.main()
    checkpoint = load_checkpoint(tmp_path / "outputs" / "quick" / "model_and_optimizer.pth")
    assert checkpoint["config"] == u.QUICK_CONFIG and "optimizer_state_dict" in checkpoint


# ---- write errors: one line, the earlier file intact ----

FULL_DISK = """
import json, resource, signal, sys
sys.path.insert(0, sys.argv[1])
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch
from checkpoints import save_checkpoint
from plumbing import ScriptError, save_figure, write_atomically
from s_gpt_model import GPTModel

cfg = json.loads(sys.argv[3])
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a file that would grow past the limit gets EFBIG
resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))  # as if the disk were full
messages = []
for name, save in [
        ("model.pth", lambda path: save_checkpoint(path, GPTModel(cfg), cfg)),
        ("plot.png", lambda path: save_figure(plt.subplots(figsize=(20, 20), dpi=200)[0], path)),
        ("responses.json", lambda path: write_atomically(path, lambda temp: temp.write_text("x" * 50_000)))]:
    try:
        save(sys.argv[2] + "/" + name)
        messages.append("saved")
    except ScriptError as error:
        messages.append(str(error))
print(json.dumps(messages))
"""


@pytest.mark.skipif(os.name != "posix", reason="RLIMIT_FSIZE stands in for a full disk")
def test_write_errors_are_one_line_and_keep_the_earlier_files(tmp_path):
    torch.manual_seed(123)
    earlier = GPTModel(TINY_CFG)
    save_checkpoint(tmp_path / "model.pth", earlier, TINY_CFG)
    (tmp_path / "plot.png").write_bytes(b"\x89PNG earlier")
    (tmp_path / "responses.json").write_text("[]")
    bigger = {**TINY_CFG, "emb_dim": 64}  # about 150 kB of weights: past the limit
    result = subprocess.run([sys.executable, "-c", FULL_DISK, str(REPO_DIR), str(tmp_path),
                             json.dumps(bigger)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    messages = json.loads(result.stdout)
    checkpoint_message = messages[0]
    assert checkpoint_message.startswith(f"could not write {tmp_path / 'model.pth'} (the write stopped "
                                         "early, as on a full disk: [enforce fail at inline_container")
    assert messages[1] == messages[2].replace("responses.json", "plot.png") == (
        f"could not write {tmp_path / 'plot.png'} (File too large); the earlier file there is unchanged. "
        "Free some disk space or make the folder writable (LLM_OUTPUTS_DIR moves outputs/), then run again")
    assert all("\n" not in message and "the earlier file there is unchanged" in message
               for message in messages)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pth", "plot.png", "responses.json"]
    model, cfg = model_from_checkpoint(tmp_path / "model.pth")
    assert cfg == TINY_CFG and torch.equal(model.tok_emb.weight, earlier.tok_emb.weight)
    assert (tmp_path / "plot.png").read_bytes() == b"\x89PNG earlier"
    assert (tmp_path / "responses.json").read_text() == "[]"


# ---- temporary files of killed writes ----

def dead_pid():
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_a_write_removes_the_parts_that_killed_writes_left(tmp_path):
    path = tmp_path / "model.pth"
    killed = tmp_path / f"model.pth.{dead_pid()}.part"        # a run killed by SIGKILL during its save
    running = tmp_path / f"model.pth.{os.getppid()}.part"       # a save still going on in another process
    other = tmp_path / f"other.pth.{dead_pid()}.part"          # another file's
    for part in (killed, running, other):
        part.write_bytes(b"half a model")
    plumbing.write_atomically(path, lambda temp: temp.write_bytes(b"the model"))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([path.name, running.name, other.name])
    assert path.read_bytes() == b"the model"


SLOW_WRITE = """
import sys, time
sys.path.insert(0, sys.argv[1])
from plumbing import write_atomically

def write(temp):
    temp.write_bytes(b"half a model")
    print("writing", flush=True)
    time.sleep(30)

write_atomically(sys.argv[2], write)
"""


@pytest.mark.skipif(os.name != "posix", reason="POSIX signals")
@pytest.mark.parametrize("signum", [signal.SIGTERM, getattr(signal, "SIGHUP", signal.SIGTERM)])
def test_sigterm_or_sighup_during_a_write_removes_the_part(tmp_path, signum):
    path = tmp_path / "model.pth"
    path.write_bytes(b"the earlier model")
    process = subprocess.Popen([sys.executable, "-c", SLOW_WRITE, str(REPO_DIR), str(path)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert process.stdout.readline() == "writing\n", process.communicate()
        process.send_signal(signum)
        process.wait(timeout=20)
    finally:
        process.kill()
    assert process.returncode == -signum  # the signal still ends the process
    assert list(tmp_path.iterdir()) == [path] and path.read_bytes() == b"the earlier model"


# ---- checkpoints that do not fit ----

def test_weights_that_do_not_fit_their_config_say_which_keys_and_shapes(tmp_path):
    path = save_checkpoint(tmp_path / "model.pth", GPTModel(TINY_CFG), TINY_CFG)
    checkpoint = torch.load(path, weights_only=True)
    checkpoint["config"] = {**TINY_CFG, "vocab_size": 50, "n_layers": 2}
    del checkpoint["model_state_dict"]["final_norm.shift"]
    torch.save(checkpoint, path)
    with pytest.raises(ScriptError) as error:
        model_from_checkpoint(path)
    assert str(error.value) == (
        f"the weights in {path} do not fit a GPTModel built from its config: missing 15 key(s): "
        "trf_blocks.1.att.mask, trf_blocks.1.att.W_query.weight, trf_blocks.1.att.W_key.weight and 12 more; "
        "2 shape(s) differ: tok_emb.weight is (64, 16) in the file, (50, 16) in the model, "
        "out_head.weight is (64, 16) in the file, (50, 16) in the model")


def starting_point_args(*argv):
    parser = argparse.ArgumentParser()
    add_starting_point_args(parser, default_model="124M")
    return parser.parse_args(list(argv))


@pytest.mark.parametrize("kind", ["char", "bpe", None])
def test_init_from_a_model_that_does_not_read_gpt2_ids_is_refused(tmp_path, kind):
    cfg = {**TINY_CFG, "vocab_size": 65}  # train_own_text.py --tokenizer char on tiny-shakespeare
    extra = {"tokenizer": {"kind": kind, "chars": "abc"}} if kind else {}  # None: a file of u, resized
    path = save_checkpoint(tmp_path / "own_text.pth", GPTModel(cfg), cfg, **extra)
    with pytest.raises(ScriptError) as error:
        load_starting_point(starting_point_args("--init-from", str(path)), "cpu")
    assert str(error.value) == (
        f"{path} holds a model with a {kind or 'gpt2'} tokenizer and 65 token ids, but this script feeds it "
        "GPT-2's 50,257 token ids; start from a checkpoint trained with GPT-2's tokenizer "
        "(outputs/model_and_optimizer.pth from u_pretraining.py, or train_own_text.py --tokenizer gpt2), "
        "or from OpenAI's GPT-2 (leave out --init-from)")


def test_init_from_a_gpt2_tokenizer_model_of_train_own_text_is_taken(tmp_path):
    cfg = {**TINY_CFG, "vocab_size": 50257}
    path = save_checkpoint(tmp_path / "own_text.pth", GPTModel(cfg), cfg, tokenizer={"kind": "gpt2"})
    model, loaded = load_starting_point(starting_point_args("--init-from", str(path)), "cpu")
    assert loaded == cfg and model.tok_emb.weight.shape == (50257, 16)


# ---- Apple's MPS ----

def test_the_default_device_on_mps_says_how_to_get_the_books_numbers(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert plumbing.get_device() == torch.device("mps")
    assert capsys.readouterr().out == ("note: on Apple's MPS GPU the losses differ from the book's; --device "
                                       "cpu reproduces the book's numbers\n")
    assert plumbing.get_device("cpu") == torch.device("cpu") and capsys.readouterr().out == ""

