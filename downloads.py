"""The series' one download helper (not a chapter): every file a script fetches comes through
download_file. Downloads are atomic (a temporary name, renamed when complete and checked), verified
(a pinned size and SHA-256, a published count, or the file's structure), leave nothing
half-written behind (also after SIGTERM or SIGHUP, and stale partial files of a killed run are
removed), and fail with a message naming the URL and the path to put the file by hand when the
machine is offline. Also: safe zip extraction.

This module imports no chapter.
"""

import contextlib
import hashlib
import http.client
import json
import os
import secrets
import sys
import urllib.request
import zipfile
from pathlib import Path

from plumbing import (ScriptError, new_folders, remove_empty_folders, remove_stale_parts,
                      removed_on_termination)


class DownloadError(ScriptError):
    pass


class NotPublished(ValueError):
    """What a `validate` function raises for a file that is whole but not the published one (a count
    that differs from the published count). Like a size or checksum that differs, LLM_UNVERIFIED_DATA
    accepts it in a file that is already there; a download that differs is refused."""


def file_sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# ---- downloads ----

STRUCTURED_SUFFIXES = (".json", ".zip")  # the kinds of file check_structure can find incomplete


def check_structure(path, suffix=None):
    """Raise ValueError when a file of a structured kind (by `suffix`, default the path's) is
    incomplete: a JSON file must parse, a zip must open and list intact members. A transfer that
    stops early without a Content-Length fails here."""
    path = Path(path)
    suffix = suffix or path.suffix
    if suffix == ".json":
        try:
            json.loads(path.read_bytes())
        except ValueError as error:
            raise ValueError(f"not valid JSON: {error}") from None
    elif suffix == ".zip":
        try:
            with zipfile.ZipFile(path) as archive:
                if not archive.namelist() or archive.testzip() is not None:
                    raise ValueError("the zip archive is empty or has a damaged member")
        except (zipfile.BadZipFile, EOFError) as error:
            raise ValueError(f"not a complete zip archive: {error}") from None


def _check_file(path, expected_sha256, expected_size, validate, suffix, published=True):
    """The first way in which the file at `path` (named ...`suffix`) is not the expected one, or None.
    published=False passes a file that validate finds NotPublished (LLM_UNVERIFIED_DATA)."""
    size = path.stat().st_size
    if expected_size is not None and size != expected_size:
        return f"it has {size} bytes, expected {expected_size}"
    if expected_sha256 is not None:
        return None if file_sha256(path) == expected_sha256 else \
            "its SHA-256 checksum does not match the published one"
    try:
        validate(path) if validate else check_structure(path, suffix)
    except NotPublished as error:
        return str(error) if published else None
    except ValueError as error:
        return f"it is incomplete or damaged ({error})"
    return None


def _cannot_write(folder, error):
    """A download folder that cannot be written is the reader's to fix, not a network failure."""
    return ScriptError(f"cannot write to {folder} ({error.strerror or error}), where the download goes; "
                       "make it writable (check its owner and permissions) or free some space, or put "
                       "the data elsewhere with LLM_DATA_DIR=/path/to/folder")


def _new_part_file(destination):
    """Create <destination>.<pid>.<random>.part with the permissions the umask gives new files
    (tempfile.mkstemp's would be readable by their owner only), and its folder."""
    try:
        destination.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_parts(destination)
        while True:
            temp_path = destination.with_name(f"{destination.name}.{os.getpid()}.{secrets.token_hex(4)}.part")
            with contextlib.suppress(FileExistsError):
                return temp_path, os.open(temp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL |
                                          getattr(os, "O_BINARY", 0), 0o666)
    except OSError as error:
        raise _cannot_write(destination.parent, error) from error


def _write_all(file, block):
    """Write all of `block` to the unbuffered `file`, which may take less than all at a time. (With
    no buffer, a full disk shows here, and not again when the file closes.)"""
    view = memoryview(block)
    while view:
        view = view[file.write(view):]


def _transfer(url, file, destination, timeout):
    """Copy the body of `url` into the open `file` with a progress bar. Returns whether the server
    said where the body ends (a Content-Length, or chunks): without that, a connection that drops
    looks just like the end of the file."""
    from tqdm import tqdm

    request = urllib.request.Request(url, headers={"User-Agent": "llm-from-scratch-companion"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        total = int(response.headers.get("Content-Length") or 0) or None
        delimited = total is not None or bool(getattr(response, "chunked", False))
        received = 0
        with tqdm(total=total, unit="B", unit_scale=True, desc=destination.name, disable=None) as progress:
            while block := response.read(1 << 16):
                try:
                    _write_all(file, block)
                except OSError as error:  # a full disk: no other source would fare better
                    raise _cannot_write(destination.parent, error) from error
                received += len(block)
                progress.update(len(block))
    if total is not None and received != total:
        raise DownloadError(f"the transfer stopped after {received} of {total} bytes")
    return delimited


def _fetch(url, destination, expected_sha256, expected_size, validate, timeout):
    """Download one URL to a temporary file beside `destination`, check it, rename it into place.
    Any failure, and SIGTERM or SIGHUP, removes the temporary file: nothing half-written stays."""
    temp_path, handle = _new_part_file(destination)
    try:
        with removed_on_termination(temp_path):
            with os.fdopen(handle, "wb", buffering=0) as file:
                delimited = _transfer(url, file, destination, timeout)
            if not (delimited or expected_sha256 or expected_size or validate or
                    destination.suffix in STRUCTURED_SUFFIXES):
                raise DownloadError("the server did not say how long the file is (no Content-Length), "
                                    "and nothing else here can tell a complete file from one cut short")
            problem = _check_file(temp_path, expected_sha256, expected_size, validate, destination.suffix)
            if problem:
                raise DownloadError(problem)
            os.replace(temp_path, destination)
    finally:
        temp_path.unlink(missing_ok=True)


def _sources_failures(url, destination, backup_url, options):
    """Try `url`, then `backup_url`: [] once one of them gave the file, else one line per source."""
    failures = []
    for source in [url] + ([backup_url] if backup_url else []):
        try:
            _fetch(source, destination, timeout=options.get("timeout", 10),
                   **{key: options.get(key) for key in ("expected_sha256", "expected_size", "validate")})
            return []
        except (OSError, http.client.HTTPException, DownloadError) as error:
            reason = getattr(error, "reason", None) or error
            failures.append(f"  {source}: {reason}")
    return failures


def _check_present(url, destination, options, made_from=None):
    """A file already there (downloaded before or put there by hand) must be the expected one too.
    LLM_UNVERIFIED_DATA=1 accepts one that differs from the published file (your own text, a
    smaller data set), with a note that names it. `made_from`: the archive it came out of, if any."""
    sha256, size, validate = (options.get(key) for key in ("expected_sha256", "expected_size", "validate"))
    try:
        problem = _check_file(destination, sha256, size, validate, destination.suffix)
    except OSError as error:  # no permission to read it, or a folder where the file belongs
        raise ScriptError(f"cannot read {destination} ({error.strerror or error}); make it readable, or "
                          f"delete it and run again to download it afresh ({url})") from error
    if problem and os.environ.get("LLM_UNVERIFIED_DATA"):
        whole = _check_file(destination, None, None, validate, destination.suffix, published=False)
        if sha256 or size or whole is None:
            print(f"note: {destination} is not the published file ({problem}); using it as it is because "
                  "LLM_UNVERIFIED_DATA is set", file=sys.stderr)
        problem = whole
    if problem:
        also = f" and {made_from}" if made_from and Path(made_from).exists() else ""
        raise DownloadError(f"{destination} is not the expected file: {problem}. Delete it{also} and run "
                            f"again to download it afresh, or put the right file there ({url})")


def verify_file(path, url, expected_sha256=None, expected_size=None, made_from=None):
    """Check a file that did not come through download_file (put there by hand, or extracted from
    the archive `made_from`) as download_file checks one it finds: against the published size and
    SHA-256, unless LLM_UNVERIFIED_DATA is set. Raises DownloadError naming it; returns the path."""
    path = Path(path)
    _check_present(url, path, dict(expected_sha256=expected_sha256, expected_size=expected_size), made_from)
    return path


def download_files(downloads):
    """Download several files, each a dict of download_file's arguments; return their paths.

    Tries every file before it gives up, so that one DownloadError names all that are missing."""
    downloads = [dict(item) for item in downloads]
    failed = []
    for item in downloads:
        url, destination = item.pop("url"), Path(item.pop("destination"))
        item["destination"] = destination
        if destination.exists():
            remove_stale_parts(destination)  # left by a killed download before the file came by hand
            _check_present(url, destination, item)
            continue
        created, failures = new_folders(destination.parent), ["(stopped)"]
        try:
            failures = _sources_failures(url, destination, item.get("backup_url"), item)
        finally:
            if failures:  # a failed download leaves no empty data/<name>/ behind
                remove_empty_folders(created)
        if failures:
            failed.append((destination, failures))
    if failed:
        places = ", ".join(str(destination) for destination, _ in failed)
        raise DownloadError(
            f"could not download {', '.join(destination.name for destination, _ in failed)}:\n" +
            "\n".join(line for _, lines in failed for line in lines) + "\nIf this machine is offline, "
            f"download {'them' if len(failed) > 1 else 'the file'} elsewhere and put "
            f"{'them' if len(failed) > 1 else 'it'} at {places}")
    return [item["destination"] for item in downloads]


def download_file(url, destination, backup_url=None, expected_sha256=None, expected_size=None,
                  timeout=10, validate=None):
    """Download `url` to `destination` unless the file is already there; return its path.

    The file, downloaded or found, must have `expected_size` bytes and the SHA-256 `expected_sha256`
    where they are given; else it must pass `validate(path)` (default check_structure), which
    raises ValueError for an incomplete file (NotPublished for a whole one that differs). A file
    that nothing of these can check must come from a server that says where it ends (a
    Content-Length, or chunks). Tries `backup_url` when the
    primary fails. Raises DownloadError naming the URLs and the path where the file can be put by
    hand (the way to run offline)."""
    return download_files([dict(url=url, destination=destination, backup_url=backup_url,
                                expected_sha256=expected_sha256, expected_size=expected_size,
                                timeout=timeout, validate=validate)])[0]


def extract_zip_safely(zip_path, target_dir):
    """Extract a zip archive, refusing it whole if any member would land outside target_dir
    (a "../" or absolute name in a downloaded archive must not overwrite files elsewhere) or is a
    symbolic link (which could point anywhere)."""
    target_dir = Path(target_dir).resolve()
    try:
        with zipfile.ZipFile(zip_path) as archive:
            for info in archive.infolist():
                destination = (target_dir / info.filename).resolve()
                if not destination.is_relative_to(target_dir):
                    problem = "would be written outside " + str(target_dir)
                elif (info.external_attr >> 16) & 0o170000 == 0o120000:  # the Unix mode of a symlink
                    problem = "is a symbolic link"
                else:
                    continue
                raise ScriptError(f"{zip_path} holds the member {info.filename!r}, which {problem}; "
                                  "refusing to extract it. Delete the zip and download it again from a "
                                  "source you trust")
            archive.extractall(target_dir)
    except zipfile.BadZipFile as error:
        raise ScriptError(f"{zip_path} is not a valid zip file ({error}); delete it and run again "
                          "to download it afresh") from error
