"""Downloads that leave nothing behind and accept nothing incomplete: stale .part files of killed
runs, SIGTERM/SIGHUP during a transfer, transfers cut short without a Content-Length, hand-placed
files checked against their pins, the umask, every missing file named at once, damaged GPT-2 files
and a zip with a symlink member. Servers run on 127.0.0.1."""

import hashlib
import io
import json
import os
import signal
import struct
import subprocess
import sys
import time
import zipfile

import numpy as np
import pytest

import a_tokenizer
import gpt_download
import w_finetune_classifier as w
from conftest import REPO_DIR, openai_variables, write_openai_checkpoint
from downloads import DownloadError, download_file, download_files, extract_zip_safely
from plumbing import ScriptError

SHARED_DATA = REPO_DIR.parent / "shared" / "data"  # copies of the published files (PROVENANCE.md)
BODY = b"The quick brown fox jumps over the lazy dog.\n" * 2000  # ~90 kB


def sha256(data):
    return hashlib.sha256(data).hexdigest()


def cut_short(body, sent):
    """An HTTP/1.0 answer without Content-Length that stops after `sent` bytes of `body`: the client
    cannot tell it from a complete file."""
    def handler(connection, stop):
        connection.sendall(b"HTTP/1.0 200 OK\r\nContent-Type: application/octet-stream\r\n\r\n" + body[:sent])
    return handler


def stall_after(body, sent):
    """Send the headers (with the full length) and `sent` bytes, then go quiet until the test ends."""
    def handler(connection, stop):
        connection.sendall(f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body[:sent])
        stop.wait(30)
    return handler


# ---- partial files of killed downloads ----

def dead_pid():
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_stale_part_files_of_the_destination_go_on_the_next_attempt(tmp_path, local_server):
    url = local_server.add("/data.bin", BODY)
    destination = tmp_path / "data.bin"
    stale = [tmp_path / f"data.bin.{dead_pid()}.1a2b3c4d.part",  # killed by SIGKILL
             tmp_path / "data.bin.k3j4h5_x.part"]              # an older mkstemp-style name
    running = tmp_path / f"data.bin.{os.getppid()}.5e6f7a8b.part"  # a download still running elsewhere
    other = tmp_path / "other.bin.123.abcd.part"                    # another file's
    for path in stale + [running, other]:
        path.write_bytes(b"half")
    download_file(url, destination, expected_sha256=sha256(BODY))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([destination.name, running.name, other.name])
    assert destination.read_bytes() == BODY


def test_stale_part_files_go_also_when_the_file_came_by_hand(tmp_path, local_server):
    destination = tmp_path / "data.bin"
    stale = tmp_path / f"data.bin.{dead_pid()}.1a2b3c4d.part"
    stale.write_bytes(b"half")
    destination.write_bytes(BODY)
    download_file(local_server.add("/data.bin", BODY), destination, expected_sha256=sha256(BODY))
    assert list(tmp_path.iterdir()) == [destination] and local_server.requests == []


@pytest.mark.skipif(os.name != "posix", reason="POSIX signals")
@pytest.mark.parametrize("signum", [signal.SIGTERM, getattr(signal, "SIGHUP", signal.SIGTERM)])
def test_sigterm_and_sighup_during_a_transfer_remove_the_part_file(tmp_path, raw_server, signum):
    server = raw_server(stall_after(BODY, 1000))
    destination = tmp_path / "data" / "data.bin"
    code = ("import sys; sys.path.insert(0, sys.argv[3]); from downloads import download_file; "
            "download_file(sys.argv[1], sys.argv[2], timeout=60)")
    process = subprocess.Popen([sys.executable, "-c", code, server.url + "/data.bin", str(destination),
                                str(REPO_DIR)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 20
        while not list(destination.parent.glob("*.part")):  # the transfer has begun
            assert time.monotonic() < deadline and process.poll() is None, process.communicate()
            time.sleep(0.05)
        time.sleep(0.2)  # inside the read that waits for more bytes
        process.send_signal(signum)
        process.wait(timeout=20)
    finally:
        process.kill()
    assert process.returncode == -signum  # it still ends the way the signal ends a process
    assert list(destination.parent.iterdir()) == []


def test_new_files_follow_the_umask(tmp_path, local_server):
    url = local_server.add("/data.bin", BODY)
    previous = os.umask(0o022)
    try:
        path = download_file(url, tmp_path / "data.bin")
    finally:
        os.umask(previous)
    assert path.stat().st_mode & 0o777 == 0o644  # readable by a second user of a shared data folder


# ---- transfers cut short without a Content-Length ----

def test_a_pinned_file_cut_short_is_refused(tmp_path, raw_server):
    server = raw_server(cut_short(BODY, 30_000))
    with pytest.raises(DownloadError, match=f"has 30000 bytes, expected {len(BODY)}"):
        download_file(server.url + "/the-verdict.txt", tmp_path / "the-verdict.txt", expected_size=len(BODY),
                      expected_sha256=sha256(BODY))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", ["instruction-data.json", "sms_spam_collection.zip"])
def test_json_and_zip_cut_short_are_refused_by_their_structure(tmp_path, raw_server, name):
    if name.endswith(".json"):
        body, reason = json.dumps([{"instruction": "x" * 50, "input": "", "output": "y"}] * 200).encode(), \
            "not valid JSON"
    else:
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w") as archive:
            archive.writestr("SMSSpamCollection", BODY)
        body, reason = buffer.getvalue(), "not a complete zip archive"
    server = raw_server(cut_short(body, len(body) // 2))
    with pytest.raises(DownloadError, match=f"{name}:\n  {server.url}/{name}: it is incomplete or damaged "
                                            f"\\({reason}"):
        download_file(f"{server.url}/{name}", tmp_path / name)
    assert list(tmp_path.iterdir()) == []
    complete = raw_server(cut_short(body, len(body)))  # the same answer, complete, is taken
    assert download_file(f"{complete.url}/{name}", tmp_path / name).read_bytes() == body


def chunked(body):
    """An HTTP/1.1 answer in chunks: its last, empty chunk says where the body ends."""
    def handler(connection, stop):
        chunks = b"".join(b"%x\r\n%s\r\n" % (len(piece), piece) for piece in (body[:1000], body[1000:]))
        connection.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n" +
                           chunks + b"0\r\n\r\n")
    return handler


def test_wikitext2_train_cut_short_without_a_length_is_refused(tmp_path, raw_server, monkeypatch):
    import own_text_data

    valid = b" = Valkyria Chronicles = \n" * 100
    monkeypatch.setitem(own_text_data.WIKITEXT2_SHA256, "valid.txt", sha256(valid))
    (tmp_path / "wikitext-2").mkdir()
    (tmp_path / "wikitext-2" / "valid.txt").write_bytes(valid)
    server = raw_server(cut_short(BODY, 30_000))  # no Content-Length, and the connection ends early
    monkeypatch.setattr(own_text_data, "WIKITEXT2_URL", server.url + "/{}")
    with pytest.raises(DownloadError) as error:
        own_text_data.load_training_text("wikitext2", 0.9, data_dir=tmp_path)
    assert str(error.value).startswith(  # its token count (own_text_data.WIKITEXT2_TOKENS) tells
        f"could not download train.txt:\n  {server.url}/train.txt: it has 6,667 tokens where the published "
        "WikiText-2 train.txt has 2,088,628; it may have been cut short\n"
        f"If this machine is offline, download the file elsewhere and put it at {tmp_path / 'wikitext-2'}")
    assert sorted(p.name for p in (tmp_path / "wikitext-2").iterdir()) == ["valid.txt"]  # no 30 kB train.txt


def test_a_file_with_a_known_end_needs_no_pin(tmp_path, raw_server, local_server):
    for url in (raw_server(chunked(BODY)).url + "/train.txt",  # chunks end with an empty one
                local_server.add("/train.txt", BODY)):         # a Content-Length
        path = download_file(url, tmp_path / "train.txt")
        assert path.read_bytes() == BODY
        path.unlink()
    cut = raw_server(cut_short(BODY, len(BODY)))  # complete, but nothing can tell: refused too
    with pytest.raises(DownloadError, match="no Content-Length"):
        download_file(cut.url + "/train.txt", tmp_path / "train.txt")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_data_folder_without_write_permission_is_named(tmp_path, local_server):
    url = local_server.add("/input.txt", BODY)
    folder = tmp_path / "data"
    folder.mkdir(mode=0o555)
    for destination in (folder / "input.txt", folder / "tinyshakespeare" / "input.txt"):
        with pytest.raises(ScriptError) as error:
            download_file(url, destination)
        assert str(error.value) == (
            f"cannot write to {destination.parent} (Permission denied), where the download goes; make it "
            "writable (check its owner and permissions) or free some space, or put the data elsewhere with "
            "LLM_DATA_DIR=/path/to/folder")
    assert local_server.requests == []  # refused before any transfer


def test_a_present_file_that_cannot_be_read_is_named(tmp_path, local_server):
    url = local_server.add("/input.txt", BODY)
    (tmp_path / "input.txt").mkdir()  # stands in for a file without read permission (root reads all)
    with pytest.raises(ScriptError) as error:
        download_file(url, tmp_path / "input.txt", expected_sha256=sha256(BODY))
    assert str(error.value) == (f"cannot read {tmp_path / 'input.txt'} (Is a directory); make it readable, "
                                f"or delete it and run again to download it afresh ({url})")
    assert local_server.requests == []


def test_a_data_folder_under_a_regular_file_is_named(tmp_path, local_server):
    url = local_server.add("/input.txt", BODY)
    (tmp_path / "data").write_text("not a folder")
    with pytest.raises(ScriptError) as error:
        download_file(url, tmp_path / "data" / "tinyshakespeare" / "input.txt")
    assert str(error.value).startswith(f"cannot write to {tmp_path / 'data' / 'tinyshakespeare'} (Not a "
                                       "directory), where the download goes; make it writable")
    assert "offline" not in str(error.value) and local_server.requests == []
    assert (tmp_path / "data").read_text() == "not a folder"


def safetensors_bytes(arrays):
    header, offset, data = {}, 0, b""
    for key, array in arrays.items():
        raw = array.astype("<f4").tobytes()
        header[key] = {"dtype": "F32", "shape": list(array.shape),
                       "data_offsets": [offset, offset + len(raw)]}
        offset, data = offset + len(raw), data + raw
    header_bytes = json.dumps(header).encode()
    return struct.pack("<Q", len(header_bytes)) + header_bytes + data


def test_safetensors_cut_short_is_refused_by_its_header(tmp_path, raw_server):
    body = safetensors_bytes({"wte.weight": np.ones((64, 32)), "wpe.weight": np.zeros((16, 32))})
    server = raw_server(cut_short(body, len(body) - 100))
    with pytest.raises(DownloadError, match=f"header describes {len(body)} bytes, but the file has "
                                            f"{len(body) - 100}"):
        download_file(server.url + "/model.safetensors", tmp_path / "model.safetensors",
                      validate=gpt_download.check_safetensors_size)
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "whole.safetensors").write_bytes(body)
    gpt_download.check_safetensors_size(tmp_path / "whole.safetensors")  # a complete file passes


@pytest.fixture(scope="module")
def openai_release(tmp_path_factory):
    """A GPT-2-shaped TensorFlow checkpoint with 12 layers (its index spans several table blocks)."""

    hparams = {"n_vocab": 16, "n_ctx": 8, "n_embd": 8, "n_head": 2, "n_layer": 12}
    model_dir = tmp_path_factory.mktemp("gpt2") / "124M"
    return write_openai_checkpoint(model_dir, hparams, openai_variables(hparams))


def test_the_tf_index_gives_the_size_of_its_data_file(openai_release):
    index = openai_release / gpt_download.TF_INDEX_FILE
    data = openai_release / gpt_download.TF_DATA_FILE
    assert gpt_download.tf_index_data_size(index) == data.stat().st_size
    with pytest.raises(ValueError, match="does not end like a TensorFlow checkpoint index"):
        gpt_download.tf_index_data_size(data)


def serve_release(raw_server, local_server, release, cut=None):
    """The seven files at local_server/124M/, except `cut`, which is served without a length, halved."""
    for name in gpt_download.GPT2_FILES:
        body = (release / name).read_bytes()
        local_server.add(f"/124M/{name}", body)
    if cut:
        body = (release / cut).read_bytes()
        return raw_server(cut_short(body, len(body) // 2)).url
    return None


def test_tf_data_file_cut_short_is_refused_against_its_index(openai_release, tmp_path, local_server,
                                                             raw_server, monkeypatch):
    monkeypatch.setattr(gpt_download, "GPT2_PINNED", {})  # the test release has stand-in tokenizer files
    monkeypatch.setattr(gpt_download, "GPT2_URL", local_server.base_url)
    cut_url = serve_release(raw_server, local_server, openai_release, cut=gpt_download.TF_DATA_FILE)
    monkeypatch.setattr(gpt_download, "GPT2_BACKUP_URL", cut_url)
    local_server.routes.pop(f"/124M/{gpt_download.TF_DATA_FILE}")  # the primary lacks it: 404
    with pytest.raises(DownloadError) as error:
        gpt_download.download_and_load_gpt2("124M", tmp_path)
    size = (openai_release / gpt_download.TF_DATA_FILE).stat().st_size
    assert f"{cut_url}/124M/{gpt_download.TF_DATA_FILE}: it is incomplete or damaged (it has {size // 2} " \
           f"bytes, but model.ckpt.index describes {size})" in str(error.value)
    model_dir = tmp_path / "124M"
    assert sorted(p.name for p in model_dir.iterdir()) == sorted(set(gpt_download.GPT2_FILES) -
                                                                 {gpt_download.TF_DATA_FILE})


def test_half_a_tf_data_file_placed_by_hand_names_the_file(openai_release, tmp_path, monkeypatch):
    monkeypatch.setattr(gpt_download, "GPT2_PINNED", {})
    model_dir = tmp_path / "124M"
    model_dir.mkdir()
    for name in gpt_download.GPT2_FILES:
        (model_dir / name).write_bytes((openai_release / name).read_bytes())
    data = model_dir / gpt_download.TF_DATA_FILE
    data.write_bytes(data.read_bytes()[:data.stat().st_size // 2])
    with pytest.raises(DownloadError) as error:
        gpt_download.download_and_load_gpt2("124M", tmp_path)
    message = str(error.value).splitlines()[0]
    assert message.startswith(f"{data} is not the expected file: it is incomplete or damaged")
    assert "Delete it and run again to download it afresh" in message


@pytest.mark.parametrize("content", ["", 'model_checkpoint_path: "model.ck'])  # empty, or cut short
def test_a_damaged_tf_checkpoint_state_file_is_named(openai_release, tmp_path, monkeypatch, content):
    monkeypatch.setattr(gpt_download, "GPT2_PINNED", {})
    model_dir = tmp_path / "124M"
    model_dir.mkdir()
    for name in gpt_download.GPT2_FILES:
        (model_dir / name).write_bytes((openai_release / name).read_bytes())
    (model_dir / "checkpoint").write_text(content)
    with pytest.raises(DownloadError) as error:
        gpt_download.download_and_load_gpt2("124M", tmp_path)
    assert str(error.value).splitlines()[0] == (
        f"{model_dir / 'checkpoint'} is not the expected file: it is incomplete or damaged (it names no "
        'model_checkpoint_path ("model.ckpt"), as TensorFlow\'s checkpoint state must). Delete it and run '
        f"again to download it afresh, or put the right file there ({gpt_download.GPT2_URL}/124M/checkpoint)")
    assert (model_dir / "checkpoint").read_text() == content  # the reader's file is left for them to delete


def test_tf_reader_error_names_the_damaged_files(openai_release, tmp_path):
    # Past the size check (e.g. bytes flipped inside): TensorFlow's own IndexError becomes one line.
    pytest.importorskip("tensorflow")
    for name in gpt_download.GPT2_FILES:
        (tmp_path / name).write_bytes((openai_release / name).read_bytes())
    data = tmp_path / gpt_download.TF_DATA_FILE
    data.write_bytes(data.read_bytes()[:100])
    settings = json.loads((tmp_path / "hparams.json").read_text())
    with pytest.raises(ScriptError, match="model.ckpt.data-00000-of-00001 or model.ckpt.index is damaged or "
                                          "incomplete; delete its folder and download it again"):
        gpt_download.load_gpt2_params_from_tf_ckpt(tmp_path / "model.ckpt", settings)


def test_safetensors_config_without_its_keys_names_the_file(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_embd": 8}), encoding="utf-8")
    with pytest.raises(ScriptError) as error:
        gpt_download.load_gpt2_params_from_safetensors(tmp_path)
    assert str(error.value) == (f"{tmp_path / 'config.json'} lacks vocab_size, n_head, n_layer, n_positions: "
                                "it is damaged or not GPT-2's; delete it and download it again")


# ---- files already there are checked too ----

def test_an_empty_hand_placed_verdict_is_refused_in_one_line(tmp_path):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "the-verdict.txt").write_text("", encoding="utf-8")
    env = dict(os.environ, LLM_DATA_DIR=str(data_dir), LLM_OUTPUTS_DIR=str(tmp_path / "outputs"))
    env.pop("LLM_UNVERIFIED_DATA", None)
    result = subprocess.run([sys.executable, str(REPO_DIR / "a_tokenizer.py")], env=env, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.splitlines()[0] == (
        f"error: {data_dir / 'the-verdict.txt'} is not the expected file: it has 0 bytes, expected 20479. "
        "Delete it and run again to download it afresh, or put the right file "
        f"there ({a_tokenizer.VERDICT_URL})")
    assert (data_dir / "the-verdict.txt").read_bytes() == b""  # the reader's file is not touched

    result = subprocess.run([sys.executable, str(REPO_DIR / "a_tokenizer.py")], capture_output=True,
                            text=True, env=dict(env, LLM_UNVERIFIED_DATA="1"), timeout=60)  # with a note
    assert result.returncode == 0 and "Total number of characters: 0" in result.stdout
    assert "is not the published file" in result.stderr and "LLM_UNVERIFIED_DATA is set" in result.stderr


def test_hand_placed_gpt2_tokenizer_files_are_checked_against_their_pins(openai_release, tmp_path):
    model_dir = tmp_path / "124M"
    model_dir.mkdir()
    for name in gpt_download.GPT2_FILES:
        (model_dir / name).write_bytes((openai_release / name).read_bytes())  # stand-in encoder.json
    with pytest.raises(DownloadError, match=f"{model_dir / 'encoder.json'} is not the expected file: it has "
                                            "\\d+ bytes, expected 1042301"):
        gpt_download.download_and_load_gpt2("124M", tmp_path)


def test_the_pins_are_those_of_the_published_files():
    shared = SHARED_DATA
    if not shared.is_dir():
        pytest.skip("the shared copies of the published files are not at hand")
    import x_finetune_instructions as x
    for path, (size, digest) in [(shared / "gpt2" / "encoder.json", gpt_download.GPT2_PINNED["encoder.json"]),
                                 (shared / "gpt2" / "vocab.bpe", gpt_download.GPT2_PINNED["vocab.bpe"]),
                                 (shared / "instruction-data.json",
                                  (x.INSTRUCTION_DATA_SIZE, x.INSTRUCTION_DATA_SHA256))]:
        data = path.read_bytes()
        assert (len(data), sha256(data)) == (size, digest), path


# ---- every missing file named at once ----

def test_download_files_names_every_missing_file(tmp_path, local_server):
    present = local_server.add("/valid.txt", BODY)
    urls = {name: f"{local_server.base_url}/{name}" for name in ("train.txt", "test.txt")}  # both 404
    with pytest.raises(DownloadError) as error:
        download_files([dict(url=urls["train.txt"], destination=tmp_path / "train.txt"),
                        dict(url=present, destination=tmp_path / "valid.txt", expected_sha256=sha256(BODY)),
                        dict(url=urls["test.txt"], destination=tmp_path / "test.txt")])
    assert str(error.value) == (
        f"could not download train.txt, test.txt:\n  {urls['train.txt']}: Not Found\n  {urls['test.txt']}: "
        f"Not Found\nIf this machine is offline, download them elsewhere and put them at "
        f"{tmp_path / 'train.txt'}, {tmp_path / 'test.txt'}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["valid.txt"]  # the one that could come came


def test_wikitext2_offline_names_both_files(tmp_path, local_server, monkeypatch):
    import own_text_data

    monkeypatch.setattr(own_text_data, "WIKITEXT2_URL", local_server.base_url + "/wikitext-2/{}")  # all 404
    with pytest.raises(DownloadError) as error:
        own_text_data.load_training_text("wikitext2", 0.9, data_dir=tmp_path)
    message = str(error.value)
    assert message.startswith("could not download train.txt, valid.txt:\n")
    for name in ("train.txt", "valid.txt"):
        assert f"{local_server.base_url}/wikitext-2/{name}: Not Found" in message
        assert str(tmp_path / "wikitext-2" / name) in message
    assert list(tmp_path.iterdir()) == []  # nothing half-written, and no empty folder the download made


def test_a_failed_download_removes_the_folders_it_made(tmp_path, local_server):
    data_dir = tmp_path / "data"
    with pytest.raises(DownloadError):  # nothing is served: as offline
        download_file(local_server.base_url + "/input.txt", data_dir / "tinyshakespeare" / "input.txt")
    assert list(tmp_path.iterdir()) == []  # neither data/tinyshakespeare/ nor data/
    (data_dir / "tinyshakespeare").mkdir(parents=True)  # folders that were there stay
    with pytest.raises(DownloadError):
        download_file(local_server.base_url + "/input.txt", data_dir / "tinyshakespeare" / "input.txt")
    assert (data_dir / "tinyshakespeare").is_dir() and list((data_dir / "tinyshakespeare").iterdir()) == []


# ---- reading a text file ----

def test_read_text_file_drops_the_bom_and_names_a_file_it_cannot_read(tmp_path):
    from plumbing import read_text_file

    (tmp_path / "bom.txt").write_bytes(b"\xef\xbb\xbfHello")
    assert read_text_file(tmp_path / "bom.txt") == "Hello"
    (tmp_path / "latin1.txt").write_bytes("caf\u00e9".encode("latin-1"))
    with pytest.raises(ScriptError, match=r"latin1\.txt is not UTF-8 text \(unexpected end of data at "
                                          r"byte 3\); convert it to UTF-8"):
        read_text_file(tmp_path / "latin1.txt")
    with pytest.raises(ScriptError, match=r"is a folder; give the path of a text file"):
        read_text_file(tmp_path)
    with pytest.raises(ScriptError, match=r"cannot read .*missing\.txt: No such file"):
        read_text_file(tmp_path / "missing.txt")


def test_a_non_utf8_verdict_names_the_file(tmp_path):
    path = tmp_path / "the-verdict.txt"
    path.write_bytes(b"I HAD always thought Jack Gisburn \xff rather a cheap genius")
    with pytest.raises(ScriptError, match=r"the-verdict\.txt is not UTF-8 text"):
        a_tokenizer.load_verdict(path)


# ---- a zip with a symlink member ----

def test_a_zip_with_a_symlink_member_says_to_delete_the_zip(tmp_path):
    zip_path = tmp_path / "sms_spam_collection.zip"
    with zipfile.ZipFile(zip_path, "w") as archive:
        link = zipfile.ZipInfo("SMSSpamCollection")
        link.external_attr = (0o120777 << 16)  # a symbolic link ...
        archive.writestr(link, "/etc/passwd")  # ... to a file elsewhere
    target = tmp_path / "sms_spam_collection"
    with pytest.raises(ScriptError) as error:
        w.download_and_unzip_spam_data("http://127.0.0.1:9/unused.zip", zip_path, target,
                                       target / "SMSSpamCollection.tsv")
    assert str(error.value) == (f"{zip_path} holds the member 'SMSSpamCollection', which is a symbolic link; "
                                "refusing to extract it. Delete the zip and download it again from a source "
                                "you trust")
    assert not target.exists() or list(target.iterdir()) == []


def spam_paths(monkeypatch, tmp_path, url="http://127.0.0.1:9/sms.zip"):
    """w's data paths (and its zip's URL) moved under tmp_path/data; returns the .tsv path."""
    data = tmp_path / "data"
    paths = {"URL": url, "ZIP_PATH": data / "sms_spam_collection.zip",
             "EXTRACTED_PATH": data / "sms_spam_collection",
             "DATA_FILE_PATH": data / "sms_spam_collection" / "SMSSpamCollection.tsv",
             "TRAIN_CSV": data / "train.csv", "VALIDATION_CSV": data / "validation.csv",
             "TEST_CSV": data / "test.csv"}
    for name, value in paths.items():
        monkeypatch.setattr(w, name, value)
    return paths["DATA_FILE_PATH"]


SMS_STAND_IN = "ham\tsee you soon\nspam\tWIN cash now\n" * 10


def test_a_hand_placed_sms_tsv_is_checked_against_its_pin(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("LLM_UNVERIFIED_DATA", raising=False)
    tsv = spam_paths(monkeypatch, tmp_path)
    tsv.parent.mkdir(parents=True)
    tsv.write_text(SMS_STAND_IN)
    with pytest.raises(DownloadError) as error:
        w.prepare_spam_splits()
    assert str(error.value) == (f"{tsv} is not the expected file: it has {len(SMS_STAND_IN)} bytes, expected "
                                f"477907. Delete it and run again to download it afresh, or put the right "
                                f"file there (http://127.0.0.1:9/sms.zip)")
    assert tsv.read_text() == SMS_STAND_IN and not (tmp_path / "data" / "train.csv").exists()
    monkeypatch.setenv("LLM_UNVERIFIED_DATA", "1")  # the reader's own stand-in, taken with a note
    _, balanced, _ = w.prepare_spam_splits()
    assert len(balanced) == 20 and "LLM_UNVERIFIED_DATA is set" in capsys.readouterr().err


def test_an_sms_file_unzipped_from_a_wrong_zip_says_to_delete_the_zip_too(tmp_path, local_server,
                                                                         monkeypatch):
    monkeypatch.delenv("LLM_UNVERIFIED_DATA", raising=False)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("SMSSpamCollection", SMS_STAND_IN)
    tsv = spam_paths(monkeypatch, tmp_path, local_server.add("/sms.zip", buffer.getvalue()))
    with pytest.raises(DownloadError) as error:
        w.prepare_spam_splits()
    assert str(error.value).startswith(f"{tsv} is not the expected file: it has {len(SMS_STAND_IN)} bytes, "
                                       f"expected 477907. Delete it and {w.ZIP_PATH} and run again")


def test_the_published_sms_file_passes_its_pin(tmp_path, monkeypatch):
    if not SHARED_DATA.is_dir():
        pytest.skip("the shared copies of the published files are not at hand")
    monkeypatch.delenv("LLM_UNVERIFIED_DATA", raising=False)
    tsv = spam_paths(monkeypatch, tmp_path)
    tsv.parent.mkdir(parents=True)
    tsv.write_bytes((SHARED_DATA / "sms_spam_collection" / "SMSSpamCollection").read_bytes())
    df, balanced, _ = w.prepare_spam_splits()
    assert df["Label"].value_counts().to_dict() == {"ham": 4825, "spam": 747} and len(balanced) == 1494


def test_extract_zip_safely_still_extracts_plain_members(tmp_path):
    zip_path = tmp_path / "plain.zip"
    with zipfile.ZipFile(zip_path, "w") as archive:
        archive.writestr("SMSSpamCollection", "ham\thello\n")
    extract_zip_safely(zip_path, tmp_path / "out")
    assert (tmp_path / "out" / "SMSSpamCollection").read_text() == "ham\thello\n"


def test_gpt2_124m_safetensors_come_from_a_fixed_revision_with_pinned_bytes(tmp_path, local_server,
                                                                            monkeypatch):
    monkeypatch.setattr(gpt_download, "HF_URL", local_server.base_url)
    base = f"/gpt2/resolve/{gpt_download.HF_REVISIONS['124M']}"
    local_server.add(f"{base}/config.json", b'{"vocab_size": 64}')  # not the published 665 bytes
    local_server.add(f"{base}/model.safetensors", safetensors_bytes({"wte.weight": np.ones((4, 2))}))
    with pytest.raises(DownloadError) as error:
        gpt_download.download_and_load_gpt2("124M", tmp_path, source="safetensors")
    message = str(error.value)
    assert message.startswith("could not download config.json, model.safetensors:\n")
    assert f"{local_server.base_url}{base}/config.json: it has 18 bytes, expected 665" in message
    assert "model.safetensors: it has 114 bytes, expected 548105171" in message
    assert list(tmp_path.iterdir()) == []  # 124M/, made for the download, went with it


class FullDisk(io.FileIO):
    """A file on a disk that is full once `room` bytes are in it; like a real file it may take less
    than it is given (at most `step` bytes a call) before it refuses."""

    room, step = 10_000, 3000

    def write(self, data):
        if self.tell() >= self.room:
            raise OSError(28, "No space left on device")
        return super().write(data[:min(self.step, self.room - self.tell())])


@pytest.mark.parametrize("room", [0, 10_000, len(BODY) - 1])
def test_a_full_disk_during_a_download_is_one_line_that_names_the_folder(tmp_path, local_server,
                                                                         monkeypatch, room):
    import downloads

    url = local_server.add("/data.bin", BODY)
    monkeypatch.setattr(FullDisk, "room", room)
    monkeypatch.setattr(downloads.os, "fdopen", lambda fd, mode, buffering: FullDisk(fd, mode))
    with pytest.raises(ScriptError) as error:
        download_file(url, tmp_path / "data.bin", expected_sha256=sha256(BODY))
    assert str(error.value).startswith(f"cannot write to {tmp_path} (No space left on device), where the "
                                       "download goes; make it writable")
    assert list(tmp_path.iterdir()) == []  # nothing half-written stays


def test_a_file_that_takes_a_little_at_a_time_gets_it_all(tmp_path, local_server, monkeypatch):
    import downloads

    url = local_server.add("/data.bin", BODY)
    monkeypatch.setattr(FullDisk, "room", len(BODY))
    monkeypatch.setattr(downloads.os, "fdopen", lambda fd, mode, buffering: FullDisk(fd, mode))
    download_file(url, tmp_path / "data.bin", expected_sha256=sha256(BODY))
    assert (tmp_path / "data.bin").read_bytes() == BODY
