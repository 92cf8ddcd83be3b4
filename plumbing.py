"""The series' shared plumbing (not a chapter): where files live, errors that print one line,
the device choice and its one --device flag, the book-or-quick settings helper, the one download
helper, safe zip extraction and saving a figure.

Every lettered script imports what it needs from here; this module imports no chapter.
"""

import hashlib
import http.client
import os
import sys
import tempfile
import urllib.request
import zipfile
from pathlib import Path

# Downloads go to data/, everything a run produces to outputs/, both next to this file (not the
# current directory). Tests and readers can move them with LLM_DATA_DIR / LLM_OUTPUTS_DIR.
REPO_DIR = Path(__file__).resolve().parent
DATA_DIR = Path(os.environ.get("LLM_DATA_DIR", REPO_DIR / "data"))
OUTPUTS_DIR = Path(os.environ.get("LLM_OUTPUTS_DIR", REPO_DIR / "outputs"))


class ScriptError(Exception):
    """A predictable problem (missing file, no network, wrong device) with a message that says
    what happened and what to do. Scripts print it instead of a traceback."""


class DownloadError(ScriptError):
    pass


def run_main(main):
    """Run a script's main(), turning predictable problems into one clear line on stderr."""
    try:
        main()
    except (ScriptError, ValueError, FileNotFoundError) as error:
        if os.environ.get("LLM_TRACEBACK"):
            raise
        sys.exit(f"error: {error}\n(set LLM_TRACEBACK=1 to see the full traceback)")
    except KeyboardInterrupt:
        sys.exit("interrupted")


def output_path(name, quick=False):
    """Path of a file a run produces, with outputs/ created on first use. A --quick run's files go
    to outputs/quick/, so that they never replace what a full run produced."""
    folder = OUTPUTS_DIR / "quick" if quick else OUTPUTS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    return folder / name


def get_device(name=None):
    """cuda, then mps, then cpu; `name` ("cpu", "cuda", "cuda:1", "mps") overrides the choice."""
    import torch  # imported here so that chapter 2's scripts do not pay for it

    if name in (None, "", "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
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


def file_sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _fetch(url, destination, expected_sha256, expected_size, timeout):
    """Download one URL to a temporary file beside `destination`, check it, rename it into place.
    Any failure removes the temporary file, so nothing half-written is ever left behind."""
    from tqdm import tqdm

    destination.parent.mkdir(parents=True, exist_ok=True)
    handle, temp_name = tempfile.mkstemp(dir=destination.parent, prefix=destination.name + ".",
                                         suffix=".part")
    temp_path = Path(temp_name)
    try:
        request = urllib.request.Request(url, headers={"User-Agent": "llm-from-scratch-companion"})
        with os.fdopen(handle, "wb") as file, urllib.request.urlopen(request, timeout=timeout) as response:
            total = int(response.headers.get("Content-Length") or 0) or None
            received = 0
            with tqdm(total=total, unit="B", unit_scale=True, desc=destination.name,
                      disable=None) as progress:
                while block := response.read(1 << 16):
                    file.write(block)
                    received += len(block)
                    progress.update(len(block))
        if total is not None and received != total:
            raise DownloadError(f"the transfer stopped after {received} of {total} bytes")
        if expected_size is not None and received != expected_size:
            raise DownloadError(f"got {received} bytes, expected {expected_size}")
        if expected_sha256 is not None and file_sha256(temp_path) != expected_sha256:
            raise DownloadError("the file's SHA-256 checksum does not match the published one")
        os.replace(temp_path, destination)
    finally:
        temp_path.unlink(missing_ok=True)


def download_file(url, destination, backup_url=None, expected_sha256=None, expected_size=None,
                  timeout=10):
    """Download `url` to `destination` unless the file is already there; return its path.

    Tries `backup_url` when the primary fails. Raises DownloadError naming the URLs and the path
    where the file can be put by hand (the way to run offline)."""
    destination = Path(destination)
    if destination.exists():
        return destination
    failures = []
    for source in [url] + ([backup_url] if backup_url else []):
        try:
            _fetch(source, destination, expected_sha256, expected_size, timeout)
            return destination
        except (OSError, http.client.HTTPException, DownloadError) as error:
            reason = getattr(error, "reason", None) or error
            failures.append(f"  {source}: {reason}")
    raise DownloadError(
        f"could not download {destination.name}:\n" + "\n".join(failures) +
        f"\nIf this machine is offline, download the file elsewhere and put it at {destination}")


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


def extract_zip_safely(zip_path, target_dir):
    """Extract a zip archive, refusing it whole if any member would land outside target_dir
    (a "../" or absolute name in a downloaded archive must not overwrite files elsewhere)."""
    target_dir = Path(target_dir).resolve()
    try:
        with zipfile.ZipFile(zip_path) as archive:
            for member in archive.namelist():
                destination = (target_dir / member).resolve()
                if not destination.is_relative_to(target_dir):
                    raise ScriptError(f"{zip_path} holds the member {member!r}, which would be written "
                                      f"outside {target_dir}; refusing to extract it. Delete the zip and "
                                      "download it again from a source you trust")
            archive.extractall(target_dir)
    except zipfile.BadZipFile as error:
        raise ScriptError(f"{zip_path} is not a valid zip file ({error}); delete it and run again "
                          "to download it afresh") from error


def save_figure(fig, path):
    """Lay out, save and close a matplotlib figure; return its path."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
