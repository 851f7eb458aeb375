"""Pure parts of ``ferry ingest`` and simple uploads: walking, the journal, hashing, digests."""

from __future__ import annotations

import base64
import hashlib
import os
from pathlib import Path

import pytest

from app.errors import BadRequest
from app.http.simple_uploads import parse_digest_headers
from app.ingest.journal import DEFAULT_STATE_FILE, Entry, Journal, journal_files
from app.ingest.tus_client import FileHasher, encode_metadata
from app.ingest.walk import find_files


def _touch(path: Path, data: bytes = b"x") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def test_walk_finds_nested_files_skips_excludes_and_symlinks(tmp_path: Path) -> None:
    _touch(tmp_path / "a" / "one.txt")
    _touch(tmp_path / "a" / "b" / "two.jpg")
    _touch(tmp_path / "a" / ".git" / "config")
    _touch(tmp_path / "a" / "skip.tmp")
    (tmp_path / "a" / "link.txt").symlink_to(tmp_path / "a" / "one.txt")
    found = [f.relative for f in find_files([str(tmp_path / "a")], exclude=(".git", "*.tmp"))]
    assert sorted(found) == ["b/two.jpg", "one.txt"]
    followed = [
        f.relative
        for f in find_files([str(tmp_path / "a")], exclude=(".git",), follow_symlinks=True)
    ]
    # A followed link is uploaded under its own name.
    assert sorted(followed) == ["b/two.jpg", "link.txt", "one.txt", "skip.tmp"]


def test_walk_never_yields_the_journal_or_its_temporary_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _touch(tmp_path / "photo.jpg")
    _touch(tmp_path / DEFAULT_STATE_FILE)
    _touch(tmp_path / f"{DEFAULT_STATE_FILE}.tmp")
    _touch(tmp_path / "sub" / DEFAULT_STATE_FILE)  # another folder's journal is a file
    monkeypatch.chdir(tmp_path)
    skip = journal_files(Path(DEFAULT_STATE_FILE))
    found = sorted(f.relative for f in find_files(["."], skip=skip))
    assert found == ["photo.jpg", f"sub/{DEFAULT_STATE_FILE}"]


def test_walk_expands_globs_recursively(tmp_path: Path) -> None:
    _touch(tmp_path / "x" / "p.jpg")
    _touch(tmp_path / "x" / "deep" / "q.jpg")
    _touch(tmp_path / "x" / "deep" / "r.png")
    found = sorted(f.path.name for f in find_files([str(tmp_path / "x" / "**" / "*.jpg")]))
    assert found == ["p.jpg", "q.jpg"]


def test_journal_survives_a_torn_line_and_keys_by_size_and_mtime(tmp_path: Path) -> None:
    _touch(tmp_path / "f.bin", b"12345")
    local = next(iter(find_files([str(tmp_path / "f.bin")])))
    state = tmp_path / "state.json"
    journal = Journal(state, "http://h:1/")
    journal.open()
    journal.record(Entry(str(local.path), local.size, local.mtime_ns, url="http://h:1/files/u"))
    journal.close()
    with state.open("a") as handle:
        handle.write('{"server": "http://h:1", "path": "trunc')  # kill -9 mid-write
    again = Journal(state, "http://h:1")
    again.open()
    entry = again.lookup(local)
    assert entry is not None and entry.url == "http://h:1/files/u"
    again.close()
    os.utime(tmp_path / "f.bin", ns=(local.mtime_ns + 10**9, local.mtime_ns + 10**9))
    changed = next(iter(find_files([str(tmp_path / "f.bin")])))
    other = Journal(state, "http://h:1")
    other.open()
    assert other.lookup(changed) is None  # a changed file is a new file
    assert Journal(state, "http://elsewhere").entries == {}


def test_file_hasher_is_right_whatever_the_resend_order(tmp_path: Path) -> None:
    data = os.urandom(300_000)
    _touch(tmp_path / "f", data)
    hasher = FileHasher(tmp_path / "f")
    hasher.take(0, data[:100_000])
    hasher.take(50_000, data[50_000:150_000])  # a resend that overlaps
    hasher.catch_up(200_000)  # a resume that starts past the hashed prefix
    hasher.take(200_000, data[200_000:])
    assert hasher.hexdigest() == hashlib.sha256(data).hexdigest()


def test_metadata_encoding_is_tus_base64_pairs() -> None:
    assert (
        encode_metadata({"filename": "é.txt"})
        == "filename " + base64.b64encode("é.txt".encode()).decode()
    )


def test_digest_headers_prefer_sha256_and_accept_every_spelling() -> None:
    body = b"payload"
    sha = hashlib.sha256(body).digest()
    md5 = hashlib.md5(body).digest()
    b64 = base64.b64encode
    parsed = parse_digest_headers(
        {"digest": f"md5={b64(md5).decode()}, sha-256={b64(sha).decode()}"}
    )
    assert parsed is not None and (parsed.algorithm, parsed.expected) == ("sha256", sha)
    parsed = parse_digest_headers({"content-digest": f"sha-256=:{b64(sha).decode()}:"})
    assert parsed is not None and parsed.expected == sha
    parsed = parse_digest_headers({"x-checksum-sha256": sha.hex()})
    assert parsed is not None and parsed.expected == sha
    parsed = parse_digest_headers({"content-md5": b64(md5).decode()})
    assert parsed is not None and (parsed.algorithm, parsed.expected) == ("md5", md5)
    assert parse_digest_headers({"digest": "unixsum=30"}) is None
    with pytest.raises(BadRequest):
        parse_digest_headers({"content-md5": "not base64!"})


@pytest.mark.parametrize("text", ["\u0661\u0662M", "\u00b2k", "1e3", "inf", "nan", "-1", ""])
def test_ingest_chunk_size_accepts_only_ascii_digits(text: str) -> None:
    import click

    from app.ingest.cli import ByteSize

    with pytest.raises(click.BadParameter):
        ByteSize().convert(text, None, None)
    assert ByteSize().convert("1.5k", None, None) == 1536
