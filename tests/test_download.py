"""gpt_download.download_file against a local HTTP server on 127.0.0.1: nothing half-written is ever
left behind, and an unreachable source fails fast with a message that says where to put the file."""

import hashlib
import socket
import time

import pytest

from downloads import DownloadError, download_file

BODY = b"The quick brown fox jumps over the lazy dog.\n" * 2000  # ~90 kB: more than one read block


def sha256(data):
    return hashlib.sha256(data).hexdigest()


def closed_port():
    """A local port nothing listens on, so connecting to it is refused at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_success_writes_the_file_and_nothing_else(tmp_path, local_server):
    url = local_server.add("/data.bin", BODY)
    destination = tmp_path / "nested" / "data.bin"
    path = download_file(url, destination, expected_sha256=sha256(BODY), expected_size=len(BODY))
    assert path == destination
    assert destination.read_bytes() == BODY
    assert list(destination.parent.iterdir()) == [destination]  # the temporary .part file is gone


def test_existing_file_is_not_downloaded_again(tmp_path, local_server):
    url = local_server.add("/data.bin", BODY)
    destination = tmp_path / "data.bin"
    destination.write_bytes(BODY)  # put there by hand: it is checked, not downloaded again
    assert download_file(url, destination, expected_sha256=sha256(BODY)) == destination
    assert destination.read_bytes() == BODY
    assert local_server.requests == []


def test_checksum_mismatch_leaves_no_file(tmp_path, local_server):
    url = local_server.add("/data.bin", BODY)
    destination = tmp_path / "data.bin"
    with pytest.raises(DownloadError, match="checksum") as info:
        download_file(url, destination, expected_sha256=sha256(b"something else"))
    assert url in str(info.value) and str(destination) in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_size_mismatch_leaves_no_file(tmp_path, local_server):
    url = local_server.add("/data.bin", BODY)
    with pytest.raises(DownloadError, match=f"has {len(BODY)} bytes, expected {len(BODY) + 1}"):
        download_file(url, tmp_path / "data.bin", expected_size=len(BODY) + 1)
    assert list(tmp_path.iterdir()) == []


def test_interrupted_transfer_leaves_no_file_and_no_part_file(tmp_path, local_server):
    url = local_server.add("/data.bin", BODY, truncate_at=70_000)  # Content-Length promises all of BODY
    with pytest.raises(DownloadError, match=f"stopped after 70000 of {len(BODY)} bytes"):
        download_file(url, tmp_path / "data.bin")
    assert list(tmp_path.iterdir()) == []


def test_backup_url_takes_over(tmp_path, local_server):
    primary = local_server.add("/primary.bin", BODY, truncate_at=100)
    backup = local_server.add("/backup.bin", BODY)
    destination = tmp_path / "data.bin"
    download_file(primary, destination, backup_url=backup, expected_sha256=sha256(BODY))
    assert destination.read_bytes() == BODY
    assert local_server.requests == ["/primary.bin", "/backup.bin"]
    assert list(tmp_path.iterdir()) == [destination]


def test_all_sources_failing_names_each_url(tmp_path, local_server):
    primary = local_server.base_url + "/missing.bin"  # 404
    backup = local_server.add("/backup.bin", b"wrong bytes")
    destination = tmp_path / "data.bin"
    with pytest.raises(DownloadError) as info:
        download_file(primary, destination, backup_url=backup, expected_sha256=sha256(BODY))
    message = str(info.value)
    assert f"{primary}: Not Found" in message and f"{backup}: " in message and "checksum" in message
    assert list(tmp_path.iterdir()) == []


def test_unreachable_host_fails_fast_with_a_clear_message(tmp_path):
    url = f"http://127.0.0.1:{closed_port()}/the-verdict.txt"
    destination = tmp_path / "data" / "the-verdict.txt"
    start = time.monotonic()
    with pytest.raises(DownloadError) as info:
        download_file(url, destination)
    assert time.monotonic() - start < 5
    message = str(info.value)
    assert url in message and "refused" in message.lower()
    assert f"offline, download the file elsewhere and put it at {destination}" in message
    assert not destination.parent.exists()  # neither the file nor the data/ folder the download made


def test_silent_server_times_out(tmp_path):
    # A server that accepts the connection but never answers, like a stalled network.
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/data.bin"
        start = time.monotonic()
        with pytest.raises(DownloadError, match="timed out"):
            download_file(url, tmp_path / "data.bin", timeout=0.5)
        assert time.monotonic() - start < 5
    assert list(tmp_path.iterdir()) == []
