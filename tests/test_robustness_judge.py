"""Chapter 7's judge client against servers that misbehave on 127.0.0.1: a total deadline for a
trickling or endless answer, exact messages for a non-HTTP answer, a dropped connection and no
server at all, the --judge-timeout flag, and hints that name the responses file actually given."""

import json
import socket
import sys
import time

import pytest

import x_finetune_instructions as x
from conftest import run_script
from ollama_client import ollama_problem, query_model
from plumbing import ScriptError

ENTRY = {"instruction": "Rewrite the sentence using a simile.", "input": "The car is very fast.",
         "output": "The car is as fast as lightning.", "model_response": "The car is as fast as a bullet."}


def chat_line(content, done=False):
    return json.dumps({"model": "llama3", "message": {"role": "assistant", "content": content},
                       "done": done}).encode() + b"\n"


def trickle(connection, stop):
    """Headers, then one byte every 50 ms, forever: each read succeeds, the answer never ends."""
    connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\n\r\n")
    for byte in iter(lambda: chat_line("8")[:1], None):
        if stop.wait(0.05):
            return
        connection.sendall(byte)


def endless(connection, stop):
    """Well-formed JSON lines that never say "done"."""
    connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\n\r\n")
    while not stop.wait(0.02):
        connection.sendall(chat_line("8"))


def not_http(connection, stop):
    connection.sendall(b"SSH-2.0-OpenSSH_9.6\r\n")


def hang_up(connection, stop):
    pass  # reads the request, closes without a word


def drop_midway(connection, stop):
    body = chat_line("8") + chat_line("5", done=True)
    headers = f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\n\r\n".encode()
    connection.sendall(headers + body[:len(body) // 2])


def refused_url():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}/api/chat"


@pytest.mark.parametrize("handler", [trickle, endless], ids=["trickle", "endless"])
def test_the_timeout_bounds_the_whole_answer(raw_server, handler):  # noqa: F811
    url = raw_server(handler).url + "/api/chat"
    start = time.monotonic()
    with pytest.raises(ScriptError) as error:
        query_model("score this", url=url, timeout=0.5)
    assert time.monotonic() - start < 3
    assert str(error.value) == (f"the Ollama server at {url} did not answer within 0.5 s (for the whole "
                                "answer); a judge on a slow machine may need more: --judge-timeout SECONDS")


def test_a_program_that_does_not_speak_http(raw_server):  # noqa: F811
    url = raw_server(not_http).url + "/api/chat"
    with pytest.raises(ScriptError) as error:
        query_model("score this", url=url, timeout=5)
    assert str(error.value) == (f"the program at {url} does not answer in HTTP (BadStatusLine: "
                                "'SSH-2.0-OpenSSH_9.6'); is Ollama running at that address? check "
                                "--ollama-url")
    assert ollama_problem(url).startswith(f"the program at {url} does not answer in HTTP (BadStatusLine")


def test_a_dropped_connection_is_not_reported_as_no_server(raw_server):  # noqa: F811
    for handler in (hang_up, drop_midway):
        url = raw_server(handler).url + "/api/chat"
        with pytest.raises(ScriptError) as error:
            query_model("score this", url=url, timeout=5)
        name = "RemoteDisconnected" if handler is hang_up else "IncompleteRead"
        assert str(error.value) == (f"the server at {url} dropped the connection before its answer was "
                                    f"complete ({name}); check that the Ollama server still runs")
    url = raw_server(hang_up).url
    assert ollama_problem(url) == f"the server at {url} closed the connection without answering"

    url = refused_url()
    with pytest.raises(ScriptError, match=f"^no Ollama server answers at {url} \\(connection refused\\); "
                                          "install"):
        query_model("score this", url=url, timeout=5)
    assert ollama_problem(url) == f"no Ollama server answers at {url} (connection refused)"


def test_score_only_names_the_responses_file_given(tmp_path, raw_server):  # noqa: F811
    responses = tmp_path / "my responses.json"
    responses.write_text(json.dumps([ENTRY]), encoding="utf-8")
    url = raw_server(not_http).url + "/api/chat"
    with pytest.raises(ScriptError) as error:
        x.score_responses_file(responses, url, "llama3", timeout=42)
    message = str(error.value)
    assert message.startswith(f"the program at {url} does not answer in HTTP")
    assert message.endswith(f"then run: python x_finetune_instructions.py --score-only {responses} "
                            f"--ollama-url {url} --judge-timeout 42")


def test_a_judge_that_fails_midway_says_how_to_score_later(tmp_path, raw_server):  # noqa: F811
    responses = tmp_path / "responses.json"
    url = raw_server(hang_up).url + "/api/chat"
    with pytest.raises(ScriptError) as error:
        x.print_scores([ENTRY], "model_response", "llama3", url, timeout=5, responses_path=responses)
    assert str(error.value).startswith(f"the server at {url} dropped the connection before its answer was "
                                       "complete (RemoteDisconnected); check that the Ollama server still "
                                       "runs. The responses stay in")  # one sentence ends, the next begins
    assert str(error.value).endswith(f"The responses stay in {responses}; score them later with: python "
                                     f"x_finetune_instructions.py --score-only {responses} --ollama-url "
                                     f"{url} --judge-timeout 5")


@pytest.mark.parametrize("value", ["0", "-3", "nan", "inf", "soon"])
def test_judge_timeout_takes_finite_positive_seconds(tmp_path, value, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["x_finetune_instructions.py", "--score-only", str(tmp_path / "r.json"),
                                      f"--judge-timeout={value}"])
    with pytest.raises(SystemExit) as exit_info:
        x.main()
    assert exit_info.value.code == 2
    assert "argument --judge-timeout: " in capsys.readouterr().err.splitlines()[-1]


def test_judge_timeout_reaches_the_client(tmp_path, monkeypatch, raw_server):  # noqa: F811
    responses = tmp_path / "responses.json"
    responses.write_text(json.dumps([ENTRY]), encoding="utf-8")
    url = raw_server(endless).url + "/api/chat"
    result = run_script("x_finetune_instructions.py", "--score-only", str(responses), "--ollama-url", url,
                        "--judge-timeout", "0.3", data_dir=tmp_path, outputs_dir=tmp_path, check=False)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.startswith(f"error: the Ollama server at {url} did not answer within 0.3 s")
    assert f"--score-only {responses} --ollama-url {url} --judge-timeout 0.3" in result.stderr


def test_score_only_without_the_file_names_the_path_given_and_where_runs_write(tmp_path):
    with pytest.raises(ScriptError) as error:
        x.score_responses_file(tmp_path / "given.json", x.OLLAMA_URL, "llama3")
    assert str(error.value) == (f"no responses file at {tmp_path / 'given.json'}; give --score-only the file "
                                "that a run of python x_finetune_instructions.py wrote: "
                                "outputs/instruction-data-with-response.json, or "
                                "outputs/quick/instruction-data-with-response.json after --quick")
