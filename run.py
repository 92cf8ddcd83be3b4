"""Set up and run the series with one command, on Linux, macOS and Windows.

    python run.py series            install what the scripts need, then run a_ ... z_ in order
                                    (appendix_d.py right after u, in the book's order)
    python run.py series --quick    the same with the heavy scripts in their quick mode
    python run.py series u v        only the scripts whose letters are given (u includes appendix D)
    python run.py test              install what the tests need, then run the test suite
    python run.py test -k ch05      extra arguments go to pytest
    python run.py test -n 0         the suite in one process (for -s or --pdb)
    python run.py lint              install the test tools, then check the style with ruff

Everything is installed into .venv/ beside this file, with constraints.txt pinning the tested
torch, and reinstalled only when a requirements file changes.
"""

import hashlib
import os
import re
import subprocess
import sys
import venv
from pathlib import Path

REPO_DIR = Path(__file__).resolve().parent
VENV_DIR = REPO_DIR / ".venv"
# The walk-throughs in the book's order: the lettered scripts, with appendix D's after chapter 5's
# (it trains chapter 5's model again with a schedule), as the book's appendix D builds on 5.2.
LETTERED = sorted(p.name for p in REPO_DIR.glob("[a-z]_*.py"))
SERIES = [name for script in LETTERED
          for name in ([script, "appendix_d.py"] if script.startswith("u_") else [script])]
HEAVY = {"u_", "v_", "w_", "x_", "y_", "z_", "appendix_d"}  # scripts that take --quick
# pytest-xdist runs the test files on this many processes, each file whole in one of them, so a
# file's shared fixtures (a chapter's script batch) run once. The tests use one torch thread each;
# at most 4 because a worker holds up to 2.4 GB at its peak (the 124M model of chapters 4 and 5).
TEST_WORKERS = min(4, os.cpu_count() or 1)


def venv_python():
    scripts = "Scripts" if os.name == "nt" else "bin"
    return VENV_DIR / scripts / ("python.exe" if os.name == "nt" else "python")


def ensure_installed(requirements):
    """Create .venv and pip-install `requirements` unless the same files were installed before."""
    files = [REPO_DIR / "requirements.txt", REPO_DIR / requirements, REPO_DIR / "constraints.txt"]
    stamp = hashlib.sha256(b"".join(f.read_bytes() for f in files)).hexdigest()
    stamp_file = VENV_DIR / f".installed-{Path(requirements).stem}"
    if stamp_file.exists() and stamp_file.read_text(encoding="utf-8") == stamp:
        return
    if not venv_python().exists():
        print(f"Creating a virtual environment in {VENV_DIR}")
        venv.create(VENV_DIR, with_pip=True)
    print(f"Installing {requirements} (first run only; PyTorch and TensorFlow are large)")
    subprocess.run([str(venv_python()), "-m", "pip", "install", "--disable-pip-version-check",
                    "-r", str(REPO_DIR / requirements), "-c", str(REPO_DIR / "constraints.txt")],
                   check=True)
    stamp_file.write_text(stamp, encoding="utf-8")


def run_series(args):
    quick = "--quick" in args
    letters = [a for a in args if re.fullmatch(r"[a-z]", a)]
    for script in SERIES:
        if letters and script[0] not in letters and not (script == "appendix_d.py" and "u" in letters):
            continue
        takes_quick = any(script.startswith(prefix) for prefix in HEAVY)
        command = [str(venv_python()), script] + (["--quick"] if quick and takes_quick else [])
        print(f"\n===== {' '.join(command[1:])} =====", flush=True)
        subprocess.run(command, cwd=REPO_DIR, check=True)


def pytest_workers():
    """pytest's options for TEST_WORKERS processes; a reader's own -n, given later, wins."""
    return ["-n", str(TEST_WORKERS), "--dist", "loadfile"] if TEST_WORKERS > 1 else []


def main():
    if sys.version_info < (3, 10):
        sys.exit("The series needs Python 3.10 or newer.")
    if len(sys.argv) == 2 and sys.argv[1] in ("-h", "--help"):
        print(__doc__)
        return
    if len(sys.argv) < 2 or sys.argv[1] not in ("series", "test", "lint"):
        sys.exit(__doc__)
    command, args = sys.argv[1], sys.argv[2:]
    try:
        if command == "series":
            ensure_installed("requirements.txt")
            run_series(args)
        elif command == "lint":
            ensure_installed("requirements-test.txt")
            sys.exit(subprocess.run([str(venv_python()), "-m", "ruff", "check", "."] + args,
                                    cwd=REPO_DIR).returncode)
        else:
            ensure_installed("requirements-test.txt")
            sys.exit(subprocess.run([str(venv_python()), "-m", "pytest", "tests"] + pytest_workers() + args,
                                    cwd=REPO_DIR).returncode)
    except subprocess.CalledProcessError as error:
        sys.exit(f"stopped: {' '.join(map(str, error.cmd))} exited with {error.returncode}")


if __name__ == "__main__":
    main()
