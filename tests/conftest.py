"""Helpers every chapter's tests share: a local HTTP server, a script runner, the GPT-2 encoding."""

import http.server
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch

# One thread for the whole suite: the test models are tiny, and on a small busy machine syncing
# threads costs far more than it saves (and results do not depend on the machine's core count).
torch.set_num_threads(1)

REPO_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_DIR))  # the lettered scripts are imported as modules


class LocalServer:
    """An HTTP server on 127.0.0.1 serving bytes registered with `add`.

    `truncate_at=n` announces the full length but sends only n bytes and closes the connection,
    which is what an interrupted transfer looks like to the client."""

    def __init__(self):
        self.routes = {}
        self.requests = []
        routes, requests = self.routes, self.requests

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                requests.append(self.path)
                if self.path not in routes:
                    self.send_error(404)
                    return
                body, truncate_at, content_type = routes[self.path]
                self.send_response(200)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body if truncate_at is None else body[:truncate_at])
                self.wfile.flush()
                if truncate_at is not None:
                    self.close_connection = True

            do_POST = do_GET

            def log_message(self, *args):
                pass

        self.handler_class = Handler
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05},
                         daemon=True).start()

    def add(self, path, body, truncate_at=None, content_type="application/octet-stream"):
        if isinstance(body, str):
            body = body.encode("utf-8")
        self.routes[path] = (body, truncate_at, content_type)
        return self.base_url + path

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def local_server():
    server = LocalServer()
    yield server
    server.close()


def run_script(script, *args, data_dir, outputs_dir, timeout=180, check=True, env=None):
    """Run a lettered script as a reader would, with data/ and outputs/ moved to test folders.
    Returns the CompletedProcess; with check=True a failure shows everything the script printed."""
    # One thread: test models are tiny, and on a small busy machine syncing threads costs more
    # than it saves.
    full_env = dict(os.environ, LLM_DATA_DIR=str(data_dir), LLM_OUTPUTS_DIR=str(outputs_dir),
                    PYTHONUNBUFFERED="1", MPLBACKEND="Agg", OMP_NUM_THREADS="1")
    full_env.update(env or {})
    result = subprocess.run([sys.executable, str(REPO_DIR / script), *args], cwd=REPO_DIR,
                            env=full_env, capture_output=True, text=True, encoding="utf-8",
                            timeout=timeout)
    if check and result.returncode != 0:
        pytest.fail(f"{script} {' '.join(args)} exited with {result.returncode}\n"
                    f"--- stdout ---\n{result.stdout}\n--- stderr ---\n{result.stderr}")
    return result


@pytest.fixture(scope="session")
def gpt2_tokenizer():
    """tiktoken's GPT-2 encoding; offline it needs TIKTOKEN_CACHE_DIR (see README)."""
    tiktoken = pytest.importorskip("tiktoken")
    try:
        return tiktoken.get_encoding("gpt2")
    except Exception as error:  # no network and no cache
        pytest.skip(f"tiktoken cannot load the GPT-2 encoding here: {error}")
