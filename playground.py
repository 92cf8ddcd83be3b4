"""A local web page to try any model of the series and look inside it while it writes.

Generate with streaming tokens (temperature, top-k, max new tokens, seed as in section 5.3, with
the KV cache); click a generated token to see the candidates at that step before and after
temperature and top-k; see the attention weights of any layer and head over the prompt, the
prompt's tokens and ids, a chat with chapter 7's instruction model, chapter 6's spam classifier.

Run: python playground.py --quick                         tiny random models, nothing to download
     python playground.py --checkpoint outputs/own_text.pth outputs/gpt2-medium355M-sft.pth
     python playground.py --gpt2 --model 124M              OpenAI's GPT-2 from data/gpt2/124M
Without --checkpoint, --gpt2 or --quick it offers the checkpoints in outputs/. Then open the
address it prints. It listens on 127.0.0.1 only (this computer) unless --host is given.
"""

import argparse
import itertools
import json
import logging
import math
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import torch
from flask import Flask, Response, jsonify, request
from werkzeug.exceptions import HTTPException
from werkzeug.serving import make_server

from look_inside import TokenText, attention_weights, generate_stream, next_token_distributions
from own_tokenizers import ENDOFTEXT
from playground_models import (
    KIND_TEXT,
    model_info,
    model_prompt,
    model_sources,
    prompt_ids,
    token_label,
    tokenizer_kind,
)
from plumbing import MIN_TEMPERATURE, ScriptError, add_device_arg, get_device, run_main
from v_load_gpt2_weights import add_gpt2_args
from w_finetune_classifier import classify_review

STATIC_DIR = Path(__file__).resolve().parent / "playground_static"
MAX_TEMPERATURE = 10.0  # section 5.3 shows 0.1 to 5; far above, every token is about as likely
MAX_NEW_TOKENS = 1000
NUM_CANDIDATES = 10  # tokens listed in the next-token view
CLASS_NAMES = ("not spam", "spam")  # chapter 6's labels: ham is class 0, spam class 1
BUSY = "the model is busy with another request (it answers one at a time); try again when it is done"


class PageError(ScriptError):
    """A problem with a request: shown on the page as the message, and the server goes on. (The
    models' own checks raise ScriptError or ValueError, which the page shows the same way.)"""

    def __init__(self, message, status=400):
        super().__init__(message)
        self.status = status


# ---- requests ----

def read_number(body, key, default, whole=False):
    """body[key] (a number, or its text as the page's fields give it) or `default`; else a message."""
    value = body.get(key, default)
    try:
        if isinstance(value, bool) or value is None:
            raise ValueError
        number = int(value) if whole and isinstance(value, int) else float(value)
        if not math.isfinite(number) or (whole and number != int(number)):
            raise ValueError
    except (TypeError, ValueError, OverflowError):
        kind = "a whole number" if whole else "a number"
        raise PageError(f"{key.replace('_', ' ')} must be {kind}, got {value!r}") from None
    return int(number) if whole else number


def read_text(body, key):
    """body[key] as text; missing or null is empty; anything else (a number, a list) is a message."""
    value = body.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise PageError(f"{key} must be a string, got {value!r}")
    return value


def sampling_settings(body):
    """temperature, top_k (None for all tokens), max_new_tokens, seed from a request, checked."""
    temperature = read_number(body, "temperature", 0.0)
    if not (temperature == 0.0 or MIN_TEMPERATURE <= temperature <= MAX_TEMPERATURE):
        raise PageError(f"temperature must be 0 (greedy: always the most likely token) or from "
                        f"{MIN_TEMPERATURE:g} to {MAX_TEMPERATURE:g}, got {temperature:g}")
    top_k = read_number(body, "top_k", 0, whole=True)
    if top_k < 0:
        raise PageError(f"top-k must be 0 (sample among all tokens) or a positive number, got {top_k}")
    max_new_tokens = read_number(body, "max_new_tokens", 50, whole=True)
    if not 1 <= max_new_tokens <= MAX_NEW_TOKENS:
        raise PageError(f"max new tokens must be from 1 to {MAX_NEW_TOKENS}, got {max_new_tokens}")
    seed = read_number(body, "seed", 123, whole=True)
    if not 0 <= seed < 2**63:
        raise PageError(f"the seed must be a whole number from 0 to 2**63 - 1, got {seed}")
    return temperature, top_k or None, max_new_tokens, seed


def token_event(loaded, step, token_id, piece, logits, temperature, top_k):
    """One generated token and the next-token view of its step (section 5.3)."""
    before, after = next_token_distributions(logits.float(), temperature, top_k)
    shown = torch.topk(before, min(NUM_CANDIDATES, before.shape[0])).indices.tolist()
    if token_id not in shown:  # a sampled token from far down the list
        shown.append(token_id)
    candidates = [{"id": i, "label": token_label(loaded.tokenizer, i), "before": round(before[i].item(), 6),
                   "after": round(after[i].item(), 6), "rank": int((before > before[i]).sum()) + 1}
                  for i in shown]
    return {"type": "token", "step": step, "id": token_id, "text": piece,
            "label": token_label(loaded.tokenizer, token_id), "candidates": candidates}


def generation_events(loaded, ids, settings):
    """The stream of one generation: a start event, one event per token, an end event."""
    temperature, top_k, max_new_tokens, seed = settings
    text = TokenText(loaded.tokenizer, ids)  # a word's space, a character split across tokens
    eos_id = loaded.tokenizer.eot_token
    started, count = time.perf_counter(), 0
    torch.manual_seed(seed)
    idx = torch.tensor([ids], device=loaded.device)
    for count, (token_id, logits) in enumerate(generate_stream(
            loaded.model, idx, max_new_tokens, loaded.cfg["context_length"], temperature, top_k,
            eos_id, use_cache=True), start=1):
        yield token_event(loaded, count, token_id, text.add(token_id), logits, temperature, top_k)
    yield {"type": "end", "tokens": count, "seconds": round(time.perf_counter() - started, 3),
           "reason": "endoftext" if count < max_new_tokens else "max_new_tokens",
           "tail": text.finish()}


# ---- the web app ----

class Playground:
    """The models on offer, the one that is open, and the lock that lets one request use it at a time."""

    def __init__(self, sources):
        self.sources = sources
        self.current = None
        self.error = None  # why the last model could not be opened
        self.lock = threading.Lock()

    def open(self, name):
        if name not in self.sources:
            raise PageError(f"no model named {name!r} here; choose one of: {', '.join(self.sources)}")
        self.current = None  # let the old model go before the new one is read
        try:
            self.current = self.sources[name]()
            self.error = None
        except Exception as error:  # damaged file, missing weights, unknown tokenizer ...
            self.error = f"cannot open {name}: {error}"
            raise PageError(self.error) from error
        return self.current

    def model(self, kinds=("lm", "instruct", "classifier"), task="this"):
        """The open model, if it is of one of `kinds`; else a message that says what to do."""
        if self.current is None:
            raise PageError(self.error or "no model is open; choose one above")
        if self.current.kind not in kinds:
            raise PageError(WRONG_KIND[self.current.kind, task])
        return self.current

    def take_turn(self):
        if not self.lock.acquire(blocking=False):
            raise PageError(BUSY, status=429)

    @contextmanager
    def turn(self):
        """Hold the model for one request; a second request meanwhile is refused with BUSY."""
        self.take_turn()
        try:
            yield
        finally:
            self.lock.release()


WRONG_KIND = {
    ("classifier", "generate"): "this model is chapter 6's classifier: its output layer scores 2 "
                                "classes (not spam, spam), not the next token, so it cannot generate "
                                "text; use Classify",
    ("classifier", "chat"): "this model is chapter 6's classifier: it cannot write answers; use Classify",
    ("lm", "chat"): "chat needs an instruction-tuned model (chapter 7's *-sft.pth); this one continues "
                    "text: use Generate",
    ("lm", "classify"): "this model generates text; Classify needs chapter 6's classifier "
                        "(outputs/review_classifier.pth)",
    ("instruct", "classify"): "this model writes answers; Classify needs chapter 6's classifier "
                              "(outputs/review_classifier.pth)",
}


def ndjson(events, on_close):
    """A streamed response of one JSON object per line. on_close runs once, when the stream ends, or
    when the page goes away (also before the stream began)."""
    closed = []

    def close_once():
        if not closed:
            closed.append(True)
            on_close()

    def lines():
        try:
            for event in events:
                yield json_line(event)
        except Exception as error:  # the stream has begun: report in it rather than cut it
            yield json_line({"type": "error", "message": f"generation stopped: {error}"})
        finally:
            close_once()

    response = Response(lines(), mimetype="application/x-ndjson")
    response.call_on_close(close_once)
    return response


def json_line(event):
    return json.dumps(event) + "\n"


def create_app(playground):
    """The Flask app: the page, and the JSON routes it calls."""
    app = Flask(__name__, static_folder=str(STATIC_DIR), static_url_path="/static")
    add_error_messages(app)
    add_model_routes(app, playground)
    add_generation_route(app, playground)
    add_look_inside_routes(app, playground)
    return app


def add_error_messages(app):
    @app.errorhandler(Exception)
    def error_message(error):
        if isinstance(error, (ScriptError, ValueError)):  # a reader's mistake, said in a sentence
            return jsonify(error=str(error)), getattr(error, "status", 400)
        if isinstance(error, HTTPException):
            return jsonify(error=f"{error.code} {error.name}: {error.description}"), error.code
        app.logger.exception("unexpected error")
        return jsonify(error=f"the server hit an unexpected error ({type(error).__name__}: {error}); "
                             "it keeps running"), 500


def body():
    """The request's JSON object, or a PageError that says what a request must be."""
    data = request.get_json(silent=True)
    if not isinstance(data, dict):
        raise PageError('the request must be a JSON object such as {"prompt": "Every effort"}, sent '
                        "with Content-Type: application/json")
    return data


def add_model_routes(app, playground):
    @app.get("/")
    def index():
        return app.send_static_file("index.html")

    @app.get("/api/models")
    def models():
        current = playground.current
        return jsonify(models=list(playground.sources), error=playground.error,
                       current=None if current is None else model_info(current))

    @app.post("/api/model")
    def open_model():
        with playground.turn():
            return jsonify(model_info(playground.open(read_text(body(), "name"))))

    @app.post("/api/tokens")
    def tokens():
        loaded = playground.model()
        text = model_prompt(loaded, read_text(body(), "prompt"))
        ids = loaded.tokenizer.encode(text, allowed_special={ENDOFTEXT}) if text else []
        return jsonify(text=text, ids=ids, labels=[token_label(loaded.tokenizer, i) for i in ids],
                       tokenizer=tokenizer_kind(loaded.tokenizer), vocab_size=loaded.tokenizer.n_vocab,
                       context_length=loaded.cfg["context_length"])


def add_generation_route(app, playground):
    @app.post("/api/generate")
    def generate_route():
        data = body()
        task = "chat" if data.get("mode") == "chat" else "generate"
        playground.take_turn()  # given back when the stream ends (ndjson) or here on a bad request
        try:
            loaded = playground.model(("instruct",) if task == "chat" else ("lm", "instruct"), task)
            settings = sampling_settings(data)
            message = read_text(data, "prompt")
            if task == "chat" and not message.strip():
                raise PageError("type a message to send: chat answers an instruction")
            text = model_prompt(loaded, message)
            ids = prompt_ids(loaded, text)
        except Exception:
            playground.lock.release()
            raise
        start = {"type": "start", "prompt": text, "prompt_tokens": len(ids)}
        events = generation_events(loaded, ids, settings)
        return ndjson(itertools.chain([start], events), playground.lock.release)


def add_look_inside_routes(app, playground):
    @app.post("/api/attention")
    def attention():
        data = body()
        with playground.turn():
            loaded = playground.model()
            n_layers, n_heads = loaded.cfg["n_layers"], loaded.cfg["n_heads"]
            layer, head = read_number(data, "layer", 0, whole=True), read_number(data, "head", 0, whole=True)
            if not (0 <= layer < n_layers and 0 <= head < n_heads):
                raise PageError(f"this model has layers 0 to {n_layers - 1} and heads 0 to {n_heads - 1}; "
                                f"got layer {layer}, head {head}")
            ids = prompt_ids(loaded, model_prompt(loaded, read_text(data, "prompt")))
            weights = attention_weights(loaded.model, torch.tensor([ids], device=loaded.device), layer)
        labels = [token_label(loaded.tokenizer, i) for i in ids]
        return jsonify(layer=layer, head=head, ids=ids, labels=labels,
                       weights=[[round(w, 5) for w in row] for row in weights[head].tolist()])

    @app.post("/api/classify")
    def classify():
        text = read_text(body(), "text")
        with playground.turn():
            loaded = playground.model(("classifier",), "classify")
            if not text.strip():
                raise PageError("type a message to classify")
            return jsonify(classify_text(loaded, text))


def classify_text(loaded, text):
    """Chapter 6's classify_review, plus the two class probabilities read from its output layer and
    how much of the text it read: its first max_length tokens (the classifier's training length,
    when the checkpoint has one), at most the context length."""
    logits = []
    hook = loaded.model.out_head.register_forward_hook(
        lambda module, args, output: logits.append(output[0, -1]))
    try:
        label = classify_review(text, loaded.model, loaded.tokenizer, loaded.device,
                                max_length=loaded.max_length)
    finally:
        hook.remove()
    probabilities = torch.softmax(logits[-1].float(), dim=-1).tolist()
    context_length, max_length = loaded.cfg["context_length"], loaded.max_length
    by_max_length = max_length is not None and max_length < context_length
    tokens = len(loaded.tokenizer.encode(text))
    return {"label": label, "probabilities": dict(zip(CLASS_NAMES, probabilities)), "tokens": tokens,
            "read_tokens": min(tokens, max_length if by_max_length else context_length),
            "limit": "max_length" if by_max_length else "context_length",
            "max_length": max_length, "context_length": context_length}


def serve(app, host, port):
    # A port in use: werkzeug says so in a sentence and exits.
    server = make_server(host, port, app, threaded=True)
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no line per request
    print(f"Playground at http://{host}:{server.server_port}/  (Ctrl+C stops it)", flush=True)
    if host == "127.0.0.1":
        print("Listening on 127.0.0.1 only: other computers cannot reach it (--host 0.0.0.0 would open it)")
    else:
        print(f"Listening on {host} (--host): anyone who can reach this computer on port "
              f"{server.server_port} can use the page and its model", flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--checkpoint", nargs="+", metavar="PATH",
                        help="checkpoints of the series to offer (default: those in outputs/)")
    parser.add_argument("--gpt2", action="store_true",
                        help="offer OpenAI's GPT-2 too (which files: --model, --weights, --models-dir)")
    parser.add_argument("--quick", action="store_true",
                        help="offer tiny random models (a GPT, an instruction model, a classifier) to try "
                             "the page, with no weights to download; they use GPT-2's tokenizer where "
                             "tiktoken can load it, else a character tokenizer")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1: this computer only)")
    parser.add_argument("--port", type=int, default=8000, help="default 8000; 0 picks a free one")
    add_gpt2_args(parser)
    add_device_arg(parser)
    args = parser.parse_args(argv)
    if not 0 <= args.port <= 65535:
        parser.error("--port must be from 0 to 65535")
    return args


def main(argv=None):
    args = parse_args(argv)
    playground = Playground(model_sources(args, get_device(args.device)))
    first = next(iter(playground.sources))
    try:
        loaded = playground.open(first)
        print(f"Opened {first}: {KIND_TEXT[loaded.kind]}, {tokenizer_kind(loaded.tokenizer)} tokenizer")
    except PageError as error:
        print(f"note: {error}; the page says so, choose another model there")
    serve(create_app(playground), args.host, args.port)


if __name__ == "__main__":
    run_main(main)
