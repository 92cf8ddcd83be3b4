"""Helpers every chapter's tests share: a local HTTP server, script runners, a DDP launcher, the
GPT-2 encoding, and the tiny stand-ins (configs, a character tokenizer, data, an OpenAI-format
GPT-2 checkpoint) that tests in several files train and load."""

import http.server
import json
import multiprocessing
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

# One thread for the whole suite: the test models are tiny, and on a small busy machine syncing
# threads costs far more than it saves (and results do not depend on the machine's core count).
torch.set_num_threads(1)

REPO_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_DIR))  # the lettered scripts are imported as modules

# The files that take longest (40-60 s each on a 2-core machine) run first. run.py runs the test
# files on several processes, a file whole in one of them, in the order pytest collects them; in
# alphabetical order test_scripts.py came last, and one process ran it alone while the others idled.
SLOW_FILES_FIRST = ["test_own_text.py", "test_scripts.py", "test_benchmarks.py", "test_fast_pretraining.py"]


def pytest_collection_modifyitems(items):
    def rank(item):
        name = item.path.name
        return SLOW_FILES_FIRST.index(name) if name in SLOW_FILES_FIRST else len(SLOW_FILES_FIRST)
    items.sort(key=rank)  # stable: the other files, and the tests in a file, keep their order


class LocalServer:
    """An HTTP server on 127.0.0.1 serving bytes registered with `add`, or answering through a
    function registered with `add_handler` (a streamed, slow or failing reply).

    `truncate_at=n` announces the full length but sends only n bytes and closes the connection,
    which is what an interrupted transfer looks like to the client."""

    def __init__(self):
        self.routes = {}
        self.requests = []
        routes, requests = self.routes, self.requests

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                requests.append(self.path)
                route = routes.get(self.path)
                if route is None:
                    self.send_error(404)
                elif callable(route):
                    try:
                        route(self)
                    except (BrokenPipeError, ConnectionResetError):
                        pass  # the client gave up waiting (a timeout test)
                else:
                    self.send_bytes(*route)

            do_POST = do_GET

            def send_bytes(self, body, truncate_at, content_type):
                self.send_response(200)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body if truncate_at is None else body[:truncate_at])
                self.wfile.flush()
                if truncate_at is not None:
                    self.close_connection = True

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.01},
                         daemon=True).start()

    def add(self, path, body, truncate_at=None, content_type="application/octet-stream"):
        if isinstance(body, str):
            body = body.encode("utf-8")
        self.routes[path] = (body, truncate_at, content_type)
        return self.base_url + path

    def add_handler(self, path, respond):
        """respond(request) answers each request to path itself; request is the
        http.server.BaseHTTPRequestHandler (headers, rfile, send_response, wfile)."""
        self.routes[path] = respond
        return self.base_url + path

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def local_server():
    server = LocalServer()
    yield server
    server.close()


# ---- running scripts ----

# What every script run here has: one thread (see above), figures without a display.
SCRIPT_ENV = {"PYTHONUNBUFFERED": "1", "MPLBACKEND": "Agg", "OMP_NUM_THREADS": "1"}


class RawServer:
    """A TCP server on 127.0.0.1 that answers every connection with `handler(connection)`: for the
    answers an HTTP library would not give (no Content-Length, a stall, a non-HTTP reply)."""

    def __init__(self, handler):
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.stop = threading.Event()

        def serve():
            while not self.stop.is_set():
                try:
                    connection, _ = self.listener.accept()
                except OSError:
                    return
                threading.Thread(target=self._answer, args=(handler, connection), daemon=True).start()

        threading.Thread(target=serve, daemon=True).start()

    @staticmethod
    def _read_request(connection):
        """Read the whole request (headers, then Content-Length bytes of body): a socket closed with
        unread bytes sends a reset, which the client would see instead of the answer under test."""
        data = b""
        while b"\r\n\r\n" not in data and (chunk := connection.recv(65536)):
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                       if line.lower().startswith(b"content-length:")), 0)
        while len(body) < length and (chunk := connection.recv(65536)):
            body += chunk

    def _answer(self, handler, connection):
        with connection:
            try:
                self._read_request(connection)  # its content does not matter here
                handler(connection, self.stop)
            except OSError:
                pass  # the client went away

    def close(self):
        self.stop.set()
        self.listener.close()


@pytest.fixture
def raw_server():
    servers = []

    def start(handler):
        servers.append(RawServer(handler))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def script_env(data_dir, outputs_dir, env=None):
    """A script's environment variables, with data/ and outputs/ moved to test folders."""
    return {**SCRIPT_ENV, "LLM_DATA_DIR": str(data_dir), "LLM_OUTPUTS_DIR": str(outputs_dir), **(env or {})}


def succeeded(result):
    """The stdout of a script run that exited with 0; otherwise the test fails, showing everything
    the script printed."""
    if result.returncode != 0:
        pytest.fail(f"{' '.join(map(str, result.args))} exited with {result.returncode}\n"
                    f"--- stdout ---\n{result.stdout}\n--- stderr ---\n{result.stderr}")
    return result.stdout


def run_script(script, *args, data_dir, outputs_dir, timeout=180, check=True, env=None, nproc_per_node=None):
    """Run a lettered script as a reader would, in a process of its own, or with nproc_per_node as
    `torchrun --nproc_per_node=N script` (run as a module of this Python; --standalone picks a
    free port). Returns the CompletedProcess; with check=True a failure shows everything the
    script printed."""
    torchrun = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc_per_node}"]
    command = [sys.executable, *(torchrun if nproc_per_node else []), str(REPO_DIR / script), *args]
    result = subprocess.run(command, cwd=REPO_DIR,
                            env={**os.environ, **script_env(data_dir, outputs_dir, env)},
                            capture_output=True, text=True, encoding="utf-8", timeout=timeout)
    if check:
        succeeded(result)
    return result


def data_folder(path, files=None):
    """A data/ folder for script runs, holding `files` ({file name: text})."""
    path.mkdir(parents=True, exist_ok=True)
    for name, text in (files or {}).items():
        (path / name).write_text(text, encoding="utf-8")
    return path


def script_job(script, *args, data_dir, outputs_dir, env=None):
    """One run for run_scripts, described as run_script takes it."""
    return {"script": script, "args": list(args), "env": script_env(data_dir, outputs_dir, env)}


def run_scripts(*jobs, timeout=300):
    """Run script_job()s one after another in one Python process (tests/script_batch.py runs each
    as a fresh run of its script, but imports torch and the other libraries once). Returns one
    CompletedProcess a job, in order: check each with succeeded()."""
    with tempfile.TemporaryDirectory() as folder:
        jobs_path, results_path = Path(folder) / "jobs.json", Path(folder) / "results.jsonl"
        jobs_path.write_text(json.dumps(jobs), encoding="utf-8")
        command = [sys.executable, str(Path(__file__).parent / "script_batch.py"), str(jobs_path),
                   str(results_path)]
        try:
            batch = subprocess.run(command, cwd=REPO_DIR, env={**os.environ, **SCRIPT_ENV},
                                   capture_output=True, text=True, encoding="utf-8", timeout=timeout)
            problem = f"the batch exited with {batch.returncode}\n{batch.stdout}{batch.stderr}"
        except subprocess.TimeoutExpired:
            problem = f"the batch ran past {timeout} s"
        lines = results_path.read_text(encoding="utf-8").splitlines() if results_path.exists() else []
    results = []
    for i, job in enumerate(jobs):
        result = json.loads(lines[i]) if i < len(lines) else {"returncode": -1, "stdout": "",
                                                              "stderr": f"not run: {problem}"}
        results.append(subprocess.CompletedProcess([job["script"], *job["args"]], result["returncode"],
                                                   result["stdout"], result["stderr"]))
    return results


# ---- two processes, as torchrun starts them ----

def free_port():
    """A port on 127.0.0.1 that was free a moment ago: nothing listens there."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _start_rank(rank, world_size, port, env, worker_module, worker_name, args):
    """What torchrun gives each process: its place in the environment, and the address of the
    store that the processes meet at, which outlives them (TORCHELASTIC_USE_AGENT_STORE). The
    worker's module is imported only then, so that it reads that environment (plumbing reads
    LLM_OUTPUTS_DIR)."""
    import importlib

    os.environ.update(env, RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), TORCHELASTIC_USE_AGENT_STORE="True")
    getattr(importlib.import_module(worker_module), worker_name)(rank, world_size, *args)


def run_ranks(worker, *args, world_size=2, env=None, timeout=120):
    """Run worker(rank, world_size, *args), a function at the top of a test module, in world_size
    processes set up as torchrun sets them up, with `env` added to their environment. Where the
    platform has a fork server, the processes are forked from one that imported torch once for
    the whole session: a process costs a fraction of a second instead of a fresh interpreter and
    torch (and DDP's torch._dynamo) each time."""
    import torch.multiprocessing as mp

    if "forkserver" in multiprocessing.get_all_start_methods():
        multiprocessing.set_forkserver_preload(["conftest", "torch._dynamo"])  # takes effect once
        start_method = "forkserver"
    else:
        start_method = "spawn"
    # As torchrun's agent does, this process holds the store, on a port it picks itself: no rank
    # has to keep it alive for the others while they shut down.
    store = torch.distributed.TCPStore("127.0.0.1", 0, world_size, is_master=True, wait_for_workers=False)
    context = mp.start_processes(
        _start_rank, args=(world_size, store.port, env or {}, worker.__module__, worker.__name__, args),
        nprocs=world_size, join=False, start_method=start_method)
    deadline = time.monotonic() + timeout
    while not context.join(timeout=1):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail(f"{worker.__name__} did not finish in {world_size} processes within {timeout} s")


@pytest.fixture
def two_threads():
    """Two torch threads for one test (the suite runs on one), so that fast_attention's
    DecodingLinear splits its products; gives the number of splits it makes."""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    yield 2 if torch.backends.mkl.is_available() else 1
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def gpt2_tokenizer():
    """tiktoken's GPT-2 encoding; offline it needs TIKTOKEN_CACHE_DIR (see README)."""
    tiktoken = pytest.importorskip("tiktoken")
    try:
        return tiktoken.get_encoding("gpt2")
    except Exception as error:  # no network and no cache
        pytest.skip(f"tiktoken cannot load the GPT-2 encoding here: {error}")


# ---- tiny stand-ins that tests in several files train and load ----

class CharTokenizer:
    """A stand-in for tiktoken with a tiny vocabulary: one token per character. With the default 96
    tokens, characters 32-127 (printable ASCII) are ids 0-95, one to one."""

    def __init__(self, vocab_size=96):
        self.vocab_size = vocab_size

    def encode(self, text, allowed_special=None):
        return [(ord(char) - 32) % self.vocab_size for char in text]

    def decode(self, ids):
        return "".join(chr(32 + i % self.vocab_size) for i in ids)


# A GPT that reads CharTokenizer()'s ids, for training on CHAR_TEXT with char_loaders().
CHAR_CFG = {"vocab_size": 96, "context_length": 16, "emb_dim": 32, "n_heads": 2, "n_layers": 2,
            "drop_rate": 0.1, "qkv_bias": False}

CHAR_TEXT = ("Every effort moves you forward. The quick brown fox jumps over the lazy dog. "
             "I really like chocolate, and I really like tea. ") * 4


def char_loaders(batch_size=2, context=CHAR_CFG["context_length"]):
    """Train and validation loaders over CHAR_TEXT (90% / 10%), in non-overlapping windows."""
    ids = torch.tensor(CharTokenizer().encode(CHAR_TEXT))
    starts = range(0, len(ids) - context - 1, context)
    inputs = torch.stack([ids[i:i + context] for i in starts])
    targets = torch.stack([ids[i + 1:i + context + 1] for i in starts])
    split = int(0.9 * len(inputs))
    train_loader = DataLoader(TensorDataset(inputs[:split], targets[:split]), batch_size=batch_size,
                              shuffle=True, drop_last=True)
    val_loader = DataLoader(TensorDataset(inputs[split:], targets[split:]), batch_size=batch_size,
                            shuffle=False)
    return train_loader, val_loader


# A GPT for token_dataset()'s random ids: the book's and the fast attention, cached generation.
TOKEN_CFG = {"vocab_size": 64, "context_length": 12, "emb_dim": 16, "n_heads": 2, "n_layers": 2,
             "drop_rate": 0.0, "qkv_bias": True}
# For comparing weights after training: the key bias's true gradient is 0 (softmax ignores a shift
# that is the same for every key), so Adam would blow its rounding noise up to full-size steps.
TOKEN_CFG_NO_QKV_BIAS = {**TOKEN_CFG, "qkv_bias": False}
TRAIN_SETTINGS = {"learning_rate": 0.004, "weight_decay": 0.1}


def token_dataset(num_windows=16, seed=7):
    """Windows of random token ids with next-token targets, like GPTDatasetV1's."""
    generator = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, TOKEN_CFG["vocab_size"], (num_windows, TOKEN_CFG["context_length"] + 1),
                           generator=generator)
    return TensorDataset(tokens[:, :-1], tokens[:, 1:])


def openai_variables(hparams, seed=123):
    """Random weights with the names and shapes of OpenAI's checkpoints (conv1d weights [1, nx, nf])."""
    rng = np.random.default_rng(seed)
    nx = hparams["n_embd"]

    def rand(*shape, mean=0.0):
        return (mean + 0.2 * rng.standard_normal(shape)).astype(np.float32)

    variables = {"model/wte": rand(hparams["n_vocab"], nx), "model/wpe": rand(hparams["n_ctx"], nx),
                 "model/ln_f/g": rand(nx, mean=1.0), "model/ln_f/b": rand(nx)}
    for i in range(hparams["n_layer"]):
        h = f"model/h{i}/"
        variables.update({
            h + "ln_1/g": rand(nx, mean=1.0), h + "ln_1/b": rand(nx),
            h + "attn/c_attn/w": rand(1, nx, 3 * nx), h + "attn/c_attn/b": rand(3 * nx),
            h + "attn/c_proj/w": rand(1, nx, nx), h + "attn/c_proj/b": rand(nx),
            h + "ln_2/g": rand(nx, mean=1.0), h + "ln_2/b": rand(nx),
            h + "mlp/c_fc/w": rand(1, nx, 4 * nx), h + "mlp/c_fc/b": rand(4 * nx),
            h + "mlp/c_proj/w": rand(1, 4 * nx, nx), h + "mlp/c_proj/b": rand(nx)})
    return variables


def hf_state_dict(variables, prefix="transformer."):
    """The same weights under Hugging Face's GPT-2 names (its Conv1D keeps OpenAI's [nx, nf])."""
    state = {}
    for name, value in variables.items():
        parts = name.split("/")[1:]  # ["h0", "attn", "c_attn", "w"], ["ln_f", "g"] or ["wte"]
        if parts[0].startswith("h"):
            parts = ["h", parts[0][1:], *parts[1:]]
        if parts[-1] in ("w", "g", "b"):
            parts[-1] = "bias" if parts[-1] == "b" else "weight"
        else:
            parts.append("weight")
        state[prefix + ".".join(parts)] = value[0] if value.ndim == 3 else value
    return state


def write_openai_checkpoint(model_dir, hparams, variables):
    """Write the seven files of OpenAI's release: a TF1 Saver checkpoint (checkpoint,
    model.ckpt.index/.data-00000-of-00001/.meta), hparams.json, and stand-ins for the tokenizer
    files (encoder.json, vocab.bpe), which loading does not read."""
    tf = pytest.importorskip("tensorflow")
    model_dir.mkdir(parents=True, exist_ok=True)
    with tf.Graph().as_default():
        for name, value in variables.items():
            tf.compat.v1.get_variable(name, initializer=value)
        saver = tf.compat.v1.train.Saver(save_relative_paths=True)  # OpenAI's "checkpoint" file is relative
        with tf.compat.v1.Session() as session:
            session.run(tf.compat.v1.global_variables_initializer())
            saver.save(session, str(model_dir / "model.ckpt"))
    (model_dir / "hparams.json").write_text(json.dumps(hparams, indent=2), encoding="utf-8")
    (model_dir / "encoder.json").write_text('{"!": 0}', encoding="utf-8")
    (model_dir / "vocab.bpe").write_text("#version: 0.2\n", encoding="utf-8")
    return model_dir
