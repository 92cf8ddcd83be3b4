"""The series' shared plumbing (not a chapter): where files live, errors that print one line,
atomic writes and the removal of the temporary files that killed writes and downloads leave, reading
a text file, the device choice and its one --device flag, the shared flags and the book-or-quick
settings helper, the temperature rule, saving a figure, and the allocator setting every script runs
with (keep_freed_memory). Downloads are in downloads.py.

Every lettered script imports what it needs from here; this module imports no chapter.
"""

import contextlib
import ctypes
import glob
import os
import platform
import signal
import sys
import tempfile
import threading
from pathlib import Path

# Downloads go to data/, everything a run produces to outputs/, both next to this file (not the
# current directory). Tests and readers can move them with LLM_DATA_DIR / LLM_OUTPUTS_DIR.
REPO_DIR = Path(__file__).resolve().parent
DATA_DIR = Path(os.environ.get("LLM_DATA_DIR", REPO_DIR / "data"))
OUTPUTS_DIR = Path(os.environ.get("LLM_OUTPUTS_DIR", REPO_DIR / "outputs"))


class ScriptError(Exception):
    """A predictable problem (missing file, no network, wrong device) with a message that says
    what happened and what to do. Scripts print it instead of a traceback."""


# mallopt's parameters (glibc's malloc.h)
M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4


def freed_memory_can_be_kept():
    """Whether keep_freed_memory() applies here: glibc on Linux, and LLM_ALLOCATOR is not "system"."""
    return (os.environ.get("LLM_ALLOCATOR") != "system" and sys.platform.startswith("linux")
            and platform.libc_ver()[0] == "glibc")


def keep_freed_memory():
    """Let this process reuse the memory it frees instead of giving it back to the system at once.

    glibc's malloc maps every block over 32 MB on its own and unmaps it when it is freed. A training
    step frees and allocates the same big tensors every time (124M's logits and their gradient are
    103 MB each, the embedding gradients 154 MB), so each step would get them as new pages that the
    kernel faults in and zeroes one 4 KB page at a time: 176,000 faults a step for the fast path and
    430,000 for the book path at 124M, batch 2, context 256, and up to a quarter of the book path's
    step on README's 2-core machine (benchmarks/bench_allocator.py measures it). With
    mmap off, big blocks come from the heap, and with no trim threshold the heap keeps freed memory
    for the next step. The cost: the process holds on to its peak memory until it ends (set
    LLM_ALLOCATOR=system to keep glibc's default). Elsewhere than glibc (macOS, Windows, musl)
    nothing changes. Returns whether the setting was applied."""
    if not freed_memory_can_be_kept():
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    # -1 as the trim threshold is the largest size_t: the heap is never trimmed.
    return bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, -1))


def run_main(main):
    """Run a script's main() with keep_freed_memory() on, turning predictable problems into one clear
    line on stderr."""
    keep_freed_memory()
    try:
        main()
    except (ScriptError, ValueError, FileNotFoundError) as error:
        if os.environ.get("LLM_TRACEBACK"):
            raise
        sys.exit(f"error: {error}\n(set LLM_TRACEBACK=1 to see the full traceback)")
    except KeyboardInterrupt:
        sys.exit("interrupted")


def outputs_folder(quick=False):
    """Where a run's files go: outputs/, or outputs/quick/ so that --quick never replaces a full run's."""
    return OUTPUTS_DIR / "quick" if quick else OUTPUTS_DIR


def _make_folder(folder):
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ScriptError(f"cannot create the folder {folder} ({error.strerror or error}); choose another "
                          "place, e.g. with LLM_OUTPUTS_DIR=/path/to/folder") from error


def output_path(name, quick=False):
    """Path of a file a run produces, with its folder (outputs_folder(quick)) created on first use."""
    folder = outputs_folder(quick)
    _make_folder(folder)
    return folder / name


def ensure_writable(folder):
    """Stop before any training, not after it, when `folder` cannot be created or written to
    (read-only, under a regular file, no permission). Returns the folder."""
    folder = Path(folder)
    _make_folder(folder)
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as error:
        raise ScriptError(f"cannot write to {folder} ({error.strerror or error}), where this run saves its "
                          "results; make it writable or choose another place with "
                          "LLM_OUTPUTS_DIR=/path/to/folder") from error
    return folder


# ---- temporary files that a killed or failed write leaves nothing of ----

def _process_alive(pid):
    """Whether process `pid` runs (POSIX). Elsewhere False: there, an open file cannot be deleted."""
    if os.name != "posix" or pid == os.getpid():  # our own pid: a run before us in this container
        return False
    try:
        os.kill(pid, 0)  # signal 0 only asks whether the process exists
    except ProcessLookupError:
        return False
    except OSError:  # it exists, but belongs to someone else
        pass
    return True


def remove_stale_parts(destination):
    """Delete the temporary files that earlier, killed writes or downloads of `destination` left
    (<name>.<pid>[.<random>].part), except those of a process that is still running."""
    destination = Path(destination)
    for part in destination.parent.glob(glob.escape(destination.name) + ".*.part"):
        pid = part.name[len(destination.name) + 1:].split(".")[0]
        if pid.isdigit() and _process_alive(int(pid)):
            continue
        with contextlib.suppress(OSError):  # e.g. still open elsewhere, on Windows
            part.unlink()


@contextlib.contextmanager
def removed_on_termination(path):
    """While the block runs, SIGTERM and SIGHUP first delete `path`, then do what they did before
    (end the process, or call the handler that was there). Ignored signals stay ignored."""
    previous_handlers = {}

    def handler(signum, frame):
        Path(path).unlink(missing_ok=True)
        signal.signal(signum, previous_handlers[signum])
        signal.raise_signal(signum)

    if threading.current_thread() is threading.main_thread():  # only the main thread may set handlers
        for name in ("SIGTERM", "SIGHUP"):
            signum = getattr(signal, name, None)  # Windows has no SIGHUP
            previous = signal.getsignal(signum) if signum is not None else None
            if previous is not None and previous != signal.SIG_IGN:
                previous_handlers[signum] = previous
                signal.signal(signum, handler)
    try:
        yield
    finally:
        for signum, previous in previous_handlers.items():
            signal.signal(signum, previous)


def new_folders(folder):
    """The folders that creating `folder` would create, innermost first (to remove them again
    after a failure, with remove_empty_folders)."""
    folder = Path(folder).absolute()
    return [parent for parent in (folder, *folder.parents) if not parent.exists()]


def remove_empty_folders(folders):
    """Remove `folders` (innermost first), stopping at the first one that holds something."""
    for folder in folders:
        try:
            folder.rmdir()
        except FileNotFoundError:
            continue
        except OSError:
            return


def write_atomically(path, write):
    """Call write(temporary_path), then rename the temporary file to `path`: a failed or interrupted
    write leaves the file that was at `path` as it was and nothing half-written beside it. A write
    error (full disk, read-only folder; torch.save reports a full disk as a RuntimeError from its
    inline_container) becomes one ScriptError naming the path. SIGTERM or SIGHUP during the write
    removes the temporary file, and each write removes those that killed (SIGKILL) runs left.
    Returns the path."""
    path = Path(path)
    _make_folder(path.parent)
    remove_stale_parts(path)
    # A name with the process id, not tempfile.mkstemp's, whose files only their owner can read.
    temp_path = path.with_name(f"{path.name}.{os.getpid()}.part")
    try:
        with removed_on_termination(temp_path):
            write(temp_path)
            os.replace(temp_path, path)
    except (OSError, RuntimeError) as error:
        if isinstance(error, RuntimeError) and "inline_container" not in str(error):
            raise
        reason = error.strerror if isinstance(error, OSError) and error.strerror else \
            f"the write stopped early, as on a full disk: {str(error).strip().splitlines()[-1]}"
        kept = "; the earlier file there is unchanged" if path.exists() else ""
        raise ScriptError(f"could not write {path} ({reason}){kept}. Free some disk space or make the "
                          "folder writable (LLM_OUTPUTS_DIR moves outputs/), then run again") from error
    finally:
        temp_path.unlink(missing_ok=True)
    return path


def read_text_file(path):
    """The text of a UTF-8 file, without the byte-order mark some editors put at its start
    ("utf-8-sig" drops it), or a ScriptError naming the file that cannot be read."""
    try:
        return Path(path).read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as error:
        raise ScriptError(f"{path} is not UTF-8 text ({error.reason} at byte {error.start}); "
                          "convert it to UTF-8 or use another file") from None
    except IsADirectoryError:
        raise ScriptError(f"{path} is a folder; give the path of a text file") from None
    except OSError as error:
        raise ScriptError(f"cannot read {path}: {error.strerror or error}") from None


def get_device(name=None):
    """cuda, then mps, then cpu; `name` ("cpu", "cuda", "cuda:1", "mps") overrides the choice."""
    import torch  # imported here so that chapter 2's scripts do not pay for it

    if name in (None, "", "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            print("note: on Apple's MPS GPU the losses differ from the book's; --device cpu reproduces "
                  "the book's numbers")
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise ScriptError(f"unknown device {name!r}; use cpu, cuda or mps") from error
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ScriptError("--device cuda was asked for, but this PyTorch sees no CUDA GPU; "
                          "use --device cpu (or install a CUDA build of PyTorch)")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ScriptError("--device mps was asked for, but MPS is not available here; use --device cpu")
    return device


def add_device_arg(parser, help_suffix=""):
    """The one --device flag of the series."""
    parser.add_argument("--device", default=None,
                        help="cpu, cuda or mps (default: cuda, then mps, then cpu)" + help_suffix)


def positive_int(text):
    """argparse type: a whole number of at least 1."""
    import argparse

    try:
        value = int(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from error
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


# Sampling divides the logits (float32) by the temperature. float32 holds numbers up to 3.4e38, so at
# 1e-30 logits of up to 3.4e8 in size (far more than any model here gives) stay finite; much below
# it they overflow to inf, and softmax turns inf into nan. Any temperature this small already
# picks the most likely token, as 0 does.
MIN_TEMPERATURE = 1e-30


def temperature_problem(value, shown=None):
    """Why `value` cannot be a sampling temperature, or None: 0 (greedy: always the most likely
    token) or a finite value of at least MIN_TEMPERATURE; inf, nan, negative values and values so
    small that logits / temperature overflows are refused. `shown` is how the value was written."""
    import math

    if value == 0 or (math.isfinite(value) and value >= MIN_TEMPERATURE):
        return None
    return (f"{value if shown is None else shown} is not a temperature that can be computed with: "
            f"give 0 (always the most likely token) or a finite number of at least {MIN_TEMPERATURE:g}, "
            "such as 0.8")


def check_temperature(text):
    """argparse type for --temperature (temperature_problem's rule), refused in one line."""
    import argparse

    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    problem = temperature_problem(value, shown=text)
    if problem:
        raise argparse.ArgumentTypeError(problem)
    return value


def positive_float(text):
    """argparse type: a finite number above 0 (seconds, a rate)."""
    import argparse
    import math

    try:
        value = float(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from error
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError("must be a finite number above 0")
    return value


def add_quick_and_epochs_args(parser, book_epochs, quick_epochs, quick_help):
    """--quick and --epochs, the two flags every training script shares."""
    parser.add_argument("--quick", action="store_true", help=quick_help)
    parser.add_argument("--epochs", type=positive_int, default=None,
                        help=f"training epochs (default: the book's {book_epochs}, {quick_epochs} "
                             "with --quick)")


def book_or_quick(args, book_settings, quick_settings):
    """The settings a run uses: the book's, or the quick ones with --quick, then --epochs."""
    settings = dict(quick_settings if args.quick else book_settings)
    if getattr(args, "epochs", None):
        settings["num_epochs"] = args.epochs
    return settings


def save_figure(fig, path):
    """Lay out, save and close a matplotlib figure; return its path. Written atomically
    (write_atomically), in the format of the path's suffix."""
    import matplotlib.pyplot as plt

    path = Path(path)
    try:
        fig.tight_layout()
        write_atomically(path, lambda temp: fig.savefig(temp, format=path.suffix.lstrip(".") or None))
    finally:
        plt.close(fig)
    return path
