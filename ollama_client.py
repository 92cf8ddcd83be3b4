"""Beyond the book's chapter files: the client for Ollama's chat API that chapter 7 uses to let a
larger model judge the fine-tuned model's answers (section 7.8's query_model).

Ollama serves open models on this machine (https://ollama.com); its /api/chat answer streams in
as JSON lines. Not a chapter: x_finetune_instructions.py imports it.
"""

import json
import urllib.error
import urllib.parse
import urllib.request

from plumbing import ScriptError

OLLAMA_URL = "http://localhost:11434/api/chat"
JUDGE_MODEL = "llama3"


def ollama_setup_hint(model):
    """What to do when no Ollama server answers."""
    return (f"install Ollama (https://ollama.com), start it with `ollama serve`, fetch the judge with "
            f"`ollama pull {model}`")


def is_ollama_running(url=OLLAMA_URL, timeout=3):
    """True when an HTTP server answers at the address of `url` (Ollama's root page says "Ollama is
    running"); False at once when the connection is refused."""
    parts = urllib.parse.urlsplit(url)
    try:
        with urllib.request.urlopen(f"{parts.scheme}://{parts.netloc}/", timeout=timeout):
            return True
    except urllib.error.HTTPError:
        return True  # a server answered, even if not with 200
    except (urllib.error.URLError, OSError):
        return False


def query_model(prompt, model="llama3", url=OLLAMA_URL, timeout=300):
    """Ask a model served by Ollama; its reply streams in as JSON lines, one piece of text each."""
    data = {
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "options": {"seed": 123, "temperature": 0, "num_ctx": 2048},  # deterministic replies
    }
    request = urllib.request.Request(url, data=json.dumps(data).encode("utf-8"), method="POST",
                                     headers={"Content-Type": "application/json"})
    response_data = ""
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            for line in response:
                if not line.strip():
                    continue
                response_json = json.loads(line.decode("utf-8"))
                if "error" in response_json:
                    raise ScriptError(f"the Ollama server at {url} reported: {response_json['error']}")
                response_data += response_json["message"]["content"]
    except urllib.error.HTTPError as error:
        detail = error.read().decode("utf-8", errors="replace").strip()
        hint = f"; fetch the model with `ollama pull {model}`" if "not found" in detail else ""
        raise ScriptError(f"the Ollama server at {url} answered HTTP {error.code}: {detail}{hint}") from error
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        if isinstance(reason, TimeoutError):
            raise ScriptError(f"the Ollama server at {url} did not answer within {timeout} s; a judge "
                              "on a slow machine may need a larger timeout") from error
        raise ScriptError(f"no Ollama server answers at {url} ({reason}); {ollama_setup_hint(model)}") from error
    except (ValueError, KeyError, TypeError) as error:
        raise ScriptError(f"the server at {url} did not answer with Ollama's chat JSON lines "
                          f"({type(error).__name__}: {error}); check --ollama-url") from error
    return response_data
