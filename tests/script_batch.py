"""Runs several scripts one after another in one Python process, each as `python SCRIPT ARGS...`
would run it, so that a smoke test pays for importing torch (2-3 s) once instead of once a script.

    python tests/script_batch.py JOBS.json RESULTS.jsonl

JOBS.json is a list of {"script", "args", "env"}. Each job gets a fresh __main__, its own
sys.argv and environment (LLM_DATA_DIR, LLM_OUTPUTS_DIR, proxies, ...), fresh copies of the
repository's own modules (so plumbing reads that environment again), urllib's default opener
rebuilt (it caches the proxies), and torch's random numbers and print options as a new process
has them (the scripts seed torch, and p and y turn off scientific notation). What stays loaded
between jobs is third-party code: torch, tiktoken, matplotlib, pandas. So a script that works
only after another one ran is still caught, as long as the series keeps its rule that importing
a script has no side effects.

Each job appends one JSON line to RESULTS.jsonl: {"script", "returncode", "stdout", "stderr"},
with what the interpreter would print on exit (an uncaught traceback, sys.exit's message)."""

import contextlib
import io
import json
import os
import runpy
import sys
import traceback
import urllib.request
from pathlib import Path

REPO_DIR = Path(__file__).resolve().parent.parent


def forget_repository_modules():
    """Drop the repository's top-level modules (the lettered scripts, plumbing, ...) from
    sys.modules, so that the next script imports them afresh."""
    for name, module in list(sys.modules.items()):
        path = getattr(module, "__file__", None)
        if path and Path(path).resolve().parent == REPO_DIR:
            del sys.modules[name]


def run_job(script, args, env, torch_rng_state):
    """Run one script; return (returncode, stdout, stderr) as a fresh process would end."""
    saved_env, saved_argv = dict(os.environ), sys.argv
    os.environ.update(env)
    sys.argv = [str(REPO_DIR / script), *args]
    forget_repository_modules()
    urllib.request.install_opener(None)
    import torch
    torch.set_rng_state(torch_rng_state)
    torch.set_printoptions(profile="default")  # also sci_mode=None, the default
    stdout, stderr, returncode = io.StringIO(), io.StringIO(), 0
    try:
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            try:
                runpy.run_path(sys.argv[0], run_name="__main__")
            except SystemExit as done:
                if isinstance(done.code, int) or done.code is None:
                    returncode = done.code or 0
                else:  # sys.exit("message"): the interpreter prints it and exits with 1
                    print(done.code, file=sys.stderr)
                    returncode = 1
            except BaseException:
                traceback.print_exc()
                returncode = 1
    finally:
        os.environ.clear()
        os.environ.update(saved_env)
        sys.argv = saved_argv
    return returncode, stdout.getvalue(), stderr.getvalue()


def main():
    jobs_path, results_path = sys.argv[1:3]
    import torch  # every batch runs scripts that use it; its random state as a new process has it
    torch_rng_state = torch.get_rng_state()
    sys.path[0] = str(REPO_DIR)  # where `python SCRIPT` looks first, instead of tests/
    os.chdir(REPO_DIR)
    for job in json.loads(Path(jobs_path).read_text(encoding="utf-8")):
        returncode, stdout, stderr = run_job(job["script"], job["args"], job["env"], torch_rng_state)
        with open(results_path, "a", encoding="utf-8") as results:
            results.write(json.dumps({"script": job["script"], "returncode": returncode,
                                      "stdout": stdout, "stderr": stderr}) + "\n")


if __name__ == "__main__":
    main()
