"""plumbing.py's small helpers that every script shares: the flags, the settings, where outputs go."""

import argparse
import platform
import subprocess
import sys

import pytest
import torch

import plumbing
from plumbing import add_device_arg, add_quick_and_epochs_args, book_or_quick, positive_int

BOOK = {"num_epochs": 10, "learning_rate": 0.0004}
QUICK = {"num_epochs": 2, "learning_rate": 0.0004}


def parse(*argv):
    parser = argparse.ArgumentParser()
    add_device_arg(parser)
    add_quick_and_epochs_args(parser, BOOK["num_epochs"], QUICK["num_epochs"], "a tiny run")
    return parser.parse_args(argv)


def test_book_settings_unless_quick_then_epochs_overrides_either():
    assert book_or_quick(parse(), BOOK, QUICK) == BOOK
    assert book_or_quick(parse("--quick"), BOOK, QUICK) == QUICK
    assert book_or_quick(parse("--epochs", "3"), BOOK, QUICK) == {**BOOK, "num_epochs": 3}
    assert book_or_quick(parse("--quick", "--epochs", "5"), BOOK, QUICK) == {**QUICK, "num_epochs": 5}
    assert BOOK["num_epochs"] == 10 and QUICK["num_epochs"] == 2  # the tables themselves stay as they are


def test_device_defaults_to_automatic_and_epochs_must_be_positive(capsys):
    args = parse()
    assert args.device is None and args.quick is False and args.epochs is None
    assert parse("--device", "cpu").device == "cpu"
    for bad in ("0", "-2", "two"):
        with pytest.raises(SystemExit):
            parse("--epochs", bad)
    assert "--epochs" in capsys.readouterr().err
    assert positive_int("7") == 7


def test_quick_outputs_never_land_where_a_full_run_writes(tmp_path, monkeypatch):
    monkeypatch.setattr(plumbing, "OUTPUTS_DIR", tmp_path / "outputs")
    full = plumbing.output_path("model_and_optimizer.pth")
    quick = plumbing.output_path("model_and_optimizer.pth", quick=True)
    assert full == tmp_path / "outputs" / "model_and_optimizer.pth"
    assert quick == tmp_path / "outputs" / "quick" / "model_and_optimizer.pth"
    assert quick.parent.is_dir() and full.parent.is_dir()  # created on first use


def test_save_figure_writes_a_png_and_closes_the_figure(tmp_path):
    plt = pytest.importorskip("matplotlib.pyplot")
    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    path = plumbing.save_figure(fig, tmp_path / "line.png")
    assert path.read_bytes()[:4] == b"\x89PNG"
    assert not plt.fignum_exists(fig.number)


def test_tiny_temperatures_are_taken_as_long_as_sampling_can_compute_with_them():
    logits = torch.tensor([120.0, -80.0, 119.0, 3.0])  # a trained GPT-2's logits are this large
    for text in ("1e-7", "1e-12", f"{plumbing.MIN_TEMPERATURE:g}"):
        temperature = plumbing.check_temperature(text)
        assert temperature == float(text)
        probs = torch.softmax(logits / temperature, dim=-1)  # what generate computes
        assert torch.equal(probs, torch.tensor([1.0, 0.0, 0.0, 0.0]))  # finite: the most likely token
    for tiny in (1e-37, 1e-40):  # below MIN_TEMPERATURE the same logits overflow and softmax gives nan
        assert torch.isnan(torch.softmax(logits / tiny, dim=-1)).all()
        assert plumbing.temperature_problem(tiny) == (
            f"{tiny} is not a temperature that can be computed with: give 0 (always the most likely token) "
            "or a finite number of at least 1e-30, such as 0.8")
    for text in ("inf", "nan", "-0.5", "warm"):
        with pytest.raises(argparse.ArgumentTypeError, match=f"^{text} is not a temperature"):
            plumbing.check_temperature(text)


KEEP_CHECK = """
import resource, torch, plumbing
def faults(make):
    start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    kept = make()
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start, kept
for setting in ("system", "keep"):
    if setting == "keep":
        assert plumbing.keep_freed_memory()
    for _ in range(2):  # a training step's big tensors, freed at its end, then the next step's
        _, step = faults(lambda: [torch.ones(25_000_000) for _ in range(4)])  # 4 x 100 MB
        del step
        print(setting, faults(lambda: torch.ones(12_500_000))[0])  # 50 MB
"""


@pytest.mark.skipif(sys.platform != "linux" or platform.libc_ver()[0] != "glibc",
                    reason="the setting is glibc's")
def test_kept_memory_serves_the_next_big_tensor_without_page_faults(monkeypatch):
    """glibc maps each block over 32 MB on its own and unmaps it when freed, so the next 50 MB tensor
    costs 12,000 page faults; with keep_freed_memory() it reuses the freed heap memory."""
    result = subprocess.run([sys.executable, "-c", KEEP_CHECK], capture_output=True, text=True,
                            cwd=plumbing.REPO_DIR, check=True)
    counts = [line.split() for line in result.stdout.splitlines()]
    assert [setting for setting, _ in counts] == ["system"] * 2 + ["keep"] * 2
    assert all(int(count) > 10_000 for setting, count in counts if setting == "system")
    assert all(int(count) < 100 for setting, count in counts if setting == "keep")
    monkeypatch.setenv("LLM_ALLOCATOR", "system")  # the reader's way back to glibc's default
    assert not plumbing.keep_freed_memory()
