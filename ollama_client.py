"""Beyond the book's chapter files: the client for Ollama's chat API that chapter 7 uses to let a
larger model judge the fine-tuned model's answers (section 7.8's query_model).

Ollama serves open models on this machine (https://ollama.com); its /api/chat answer streams in
as JSON lines. Not a chapter: x_finetune_instructions.py imports it.
"""

import contextlib
import http.client
import json
import socket
import threading
import urllib.parse

from plumbing import ScriptError

OLLAMA_URL = "http://localhost:11434/api/chat"
JUDGE_MODEL = "llama3"
JUDGE_TIMEOUT = 300  # seconds for one whole answer; x_finetune_instructions.py --judge-timeout changes it


def ollama_setup_hint(model):
    """What to do when no Ollama server answers."""
    return (f"install Ollama (https://ollama.com), start it with `ollama serve`, fetch the judge with "
            f"`ollama pull {model}`")


@contextlib.contextmanager
def _connected(url, timeout):
    """An open HTTP connection to the server of `url` that is cut at `timeout` seconds, whatever the
    server does (trickles bytes, streams without end). Yields (connection, path, expired); expired
    is set once the deadline has cut the connection."""
    parts = urllib.parse.urlsplit(url)
    connection_class = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    connection = connection_class(parts.hostname or "localhost", parts.port, timeout=timeout)
    expired = threading.Event()

    def cut(sock):
        expired.set()
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)  # wakes the read that waits: it sees the end

    try:
        connection.connect()
        # the socket itself: the response reads from it even after the connection lets it go
        watchdog = threading.Timer(timeout, cut, args=(connection.sock,))
        watchdog.start()
        try:
            yield connection, parts.path or "/", expired
        finally:
            watchdog.cancel()
    finally:
        connection.close()


def _answer(error):
    """What a non-HTTP program said, on one line: BadStatusLine: 'SSH-2.0-OpenSSH_9.6'."""
    return f"{type(error).__name__}: {str(error).strip()[:80]!r}"


def ollama_problem(url=OLLAMA_URL, timeout=3):
    """Why no Ollama server can judge at the address of `url`, as a sentence naming it, or None when
    an HTTP server answers there (Ollama's root page says "Ollama is running")."""
    try:
        with _connected(url, timeout) as (connection, _, expired):
            try:
                connection.request("GET", "/")
                connection.getresponse()  # the status line is enough; the body may never end
            except (OSError, http.client.HTTPException):
                if expired.is_set():
                    raise TimeoutError from None
                raise
        return None  # any HTTP answer, also an error status, is a server
    except ConnectionRefusedError:
        return f"no Ollama server answers at {url} (connection refused)"
    except http.client.RemoteDisconnected:
        return f"the server at {url} closed the connection without answering"
    except http.client.HTTPException as error:
        return (f"the program at {url} does not answer in HTTP ({_answer(error)}); is that "
                "Ollama's address? (--ollama-url)")
    except TimeoutError:
        return f"nothing answered at {url} within {timeout:g} s"
    except OSError as error:
        return f"cannot connect to {url} ({error.strerror or error})"


def is_ollama_running(url=OLLAMA_URL, timeout=3):
    """True when an HTTP server answers at the address of `url`."""
    return ollama_problem(url, timeout) is None


class _HTTPStatus(Exception):
    """The server answered in HTTP, but not with 200."""


def _chat(connection, path, data):
    """Post `data` to Ollama's chat API and return the streamed reply's text."""
    connection.request("POST", path, body=json.dumps(data).encode("utf-8"),
                       headers={"Content-Type": "application/json"})
    response = connection.getresponse()
    if response.status != 200:
        detail = response.read().decode("utf-8", errors="replace").strip()
        raise _HTTPStatus(response.status, detail)
    reply = ""
    for line in response:
        if not line.strip():
            continue
        message = json.loads(line.decode("utf-8"))
        if "error" in message:
            raise ScriptError(f"the Ollama server reported: {message['error']}")
        reply += message["message"]["content"]
        if message.get("done"):
            return reply
    raise http.client.IncompleteRead(reply.encode("utf-8"))  # the stream ended before "done": true


def query_model(prompt, model="llama3", url=OLLAMA_URL, timeout=JUDGE_TIMEOUT):
    """Ask a model served by Ollama; its reply streams in as JSON lines, one piece of text each.
    `timeout` bounds the whole answer, in seconds."""
    data = {
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "options": {"seed": 123, "temperature": 0, "num_ctx": 2048},  # deterministic replies
    }
    try:
        with _connected(url, timeout) as (connection, path, expired):
            try:
                return _chat(connection, path, data)
            except (OSError, http.client.HTTPException, ValueError):
                if expired.is_set():  # the deadline cut the connection: not the server's doing
                    raise TimeoutError from None
                raise
    except ScriptError as error:
        raise ScriptError(f"{error} (at {url})") from error
    except TimeoutError as error:
        raise ScriptError(f"the Ollama server at {url} did not answer within {timeout:g} s (for the whole "
                          "answer); a judge on a slow machine may need more: --judge-timeout SECONDS") \
            from error
    except ConnectionRefusedError as error:
        raise ScriptError(f"no Ollama server answers at {url} (connection refused); "
                          f"{ollama_setup_hint(model)}") from error
    except (http.client.RemoteDisconnected, http.client.IncompleteRead, ConnectionResetError) as error:
        raise ScriptError(f"the server at {url} dropped the connection before its answer was complete "
                          f"({type(error).__name__}); check that the Ollama server still runs") from error
    except _HTTPStatus as error:
        status, detail = error.args
        hint = f"; fetch the model with `ollama pull {model}`" if "not found" in detail else ""
        raise ScriptError(f"the Ollama server at {url} answered HTTP {status}: {detail}{hint}") from error
    except http.client.HTTPException as error:
        raise ScriptError(f"the program at {url} does not answer in HTTP ({_answer(error)}); "
                          "is Ollama running at that address? check --ollama-url") from error
    except OSError as error:
        raise ScriptError(f"cannot connect to {url} ({error.strerror or error}); "
                          f"{ollama_setup_hint(model)}") from error
    except (ValueError, KeyError, TypeError) as error:
        raise ScriptError(f"the server at {url} did not answer with Ollama's chat JSON lines "
                          f"({type(error).__name__}: {error}); check --ollama-url") from error
