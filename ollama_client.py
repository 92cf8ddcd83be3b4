"""Beyond the book's chapter files: the client for Ollama's chat API that chapter 7 uses to let a
larger model judge the fine-tuned model's answers (section 7.8's query_model).

Ollama serves open models on this machine (https://ollama.com); its /api/chat answer streams in
as JSON lines. Not a chapter: x_finetune_instructions.py imports it.
"""

import http.client
import json
import socket
import time
import urllib.parse

from plumbing import ScriptError

OLLAMA_URL = "http://localhost:11434/api/chat"
JUDGE_MODEL = "llama3"
JUDGE_TIMEOUT = 300  # seconds for one whole answer; x_finetune_instructions.py --judge-timeout changes it


def ollama_setup_hint(model):
    """What to do when no Ollama server answers."""
    return (f"install Ollama (https://ollama.com), start it with `ollama serve`, fetch the judge with "
            f"`ollama pull {model}`")


def _connection(url, timeout):
    parts = urllib.parse.urlsplit(url)
    connection_class = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    return connection_class(parts.hostname or "localhost", parts.port, timeout=timeout), parts


def ollama_problem(url=OLLAMA_URL, timeout=3):
    """Why no Ollama server can judge at the address of `url`, as a sentence naming it, or None when
    an HTTP server answers there (Ollama's root page says "Ollama is running")."""
    connection, _ = _connection(url, timeout)
    try:
        connection.request("GET", "/")
        connection.getresponse().read()
        return None  # any HTTP answer, also an error status, is a server
    except ConnectionRefusedError:
        return f"no Ollama server answers at {url} (connection refused)"
    except http.client.RemoteDisconnected:
        return f"the server at {url} closed the connection without answering"
    except http.client.HTTPException as error:
        return (f"the program at {url} does not answer in HTTP ({type(error).__name__}: {error}); is that "
                "Ollama's address? (--ollama-url)")
    except TimeoutError:
        return f"nothing answered at {url} within {timeout:g} s"
    except OSError as error:
        return f"cannot connect to {url} ({error.strerror or error})"
    finally:
        connection.close()


def is_ollama_running(url=OLLAMA_URL, timeout=3):
    """True when an HTTP server answers at the address of `url`."""
    return ollama_problem(url, timeout) is None


def _read_lines(response, sock, deadline):
    """The answer's lines, with the whole answer, not each read, bounded by `deadline`: a server
    that trickles bytes or streams without end stops at the deadline too."""
    buffer = b""
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError
        sock.settimeout(remaining)
        block = response.read1(1 << 16)
        if not block:
            break
        *lines, buffer = (buffer + block).split(b"\n")
        yield from lines
    if buffer:
        yield buffer


class _HTTPStatus(Exception):
    """The server answered in HTTP, but not with 200."""


def _chat(connection, path, data, deadline):
    """Post `data` to Ollama's chat API and return the streamed reply's text."""
    connection.request("POST", path, body=json.dumps(data).encode("utf-8"),
                       headers={"Content-Type": "application/json"})
    sock = connection.sock  # the response reads from it even after the connection lets it go
    response = connection.getresponse()
    if response.status != 200:
        detail = response.read().decode("utf-8", errors="replace").strip()
        raise _HTTPStatus(response.status, detail)
    reply = ""
    for line in _read_lines(response, sock, deadline):
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
    deadline = time.monotonic() + timeout
    connection, parts = _connection(url, timeout)
    try:
        return _chat(connection, parts.path or "/", data, deadline)
    except ScriptError as error:
        raise ScriptError(f"{error} (at {url})") from error
    except (TimeoutError, socket.timeout) as error:
        raise ScriptError(f"the Ollama server at {url} did not answer within {timeout:g} s (for the whole "
                          "answer); a judge on a slow machine may need more: --judge-timeout SECONDS") \
            from error
    except ConnectionRefusedError as error:
        raise ScriptError(f"no Ollama server answers at {url} (connection refused); "
                          f"{ollama_setup_hint(model)}") from error
    except (http.client.RemoteDisconnected, http.client.IncompleteRead, ConnectionResetError) as error:
        raise ScriptError(f"the server at {url} dropped the connection before its answer was complete "
                          f"({type(error).__name__}); is the Ollama server still running?") from error
    except _HTTPStatus as error:
        status, detail = error.args
        hint = f"; fetch the model with `ollama pull {model}`" if "not found" in detail else ""
        raise ScriptError(f"the Ollama server at {url} answered HTTP {status}: {detail}{hint}") from error
    except http.client.HTTPException as error:
        raise ScriptError(f"the program at {url} does not answer in HTTP ({type(error).__name__}: {error}); "
                          "is Ollama running at that address? check --ollama-url") from error
    except OSError as error:
        raise ScriptError(f"cannot connect to {url} ({error.strerror or error}); "
                          f"{ollama_setup_hint(model)}") from error
    except (ValueError, KeyError, TypeError) as error:
        raise ScriptError(f"the server at {url} did not answer with Ollama's chat JSON lines "
                          f"({type(error).__name__}: {error}); check --ollama-url") from error
    finally:
        connection.close()
