"""Pure parts of ``ferry ingest`` and simple uploads: walking, the journal, hashing, digests."""

from __future__ import annotations

import base64
import hashlib
import os
from pathlib import Path
from urllib.parse import quote

import pytest

from app.errors import BadRequest
from app.http.simple_uploads import parse_digest_headers
from app.ingest.bandwidth import BandwidthLimit
from app.ingest.cli import parse_server_url
from app.ingest.hashing import FileHasher
from app.ingest.journal import DEFAULT_STATE_FILE, Entry, Journal, journal_files
from app.ingest.progress import PlainProgress
from app.ingest.tus_client import TusClient, encode_metadata, name_batches
from app.ingest.walk import PassedOver, find_files, missing_paths


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


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("127.0.0.1:8000", "has no scheme: use a URL such as http://127.0.0.1:8000"),
        ("localhost:8000", "has no scheme"),
        ("ftp://host", "only http:// and https://"),
        ("http://", "names no host"),
        ("http://host:port", "invalid port"),
        ("http://host/?x=1", "query or a fragment"),
    ],
)
def test_server_url_without_scheme_or_host_is_refused_in_one_line(text: str, words: str) -> None:
    with pytest.raises(ValueError, match="--server") as refused:
        parse_server_url(text)
    assert words in str(refused.value)
    assert "\n" not in str(refused.value)


def test_server_url_keeps_its_path_for_every_request() -> None:
    server = parse_server_url("https://host:8443/prefix/ferry/")
    assert server == "https://host:8443/prefix/ferry"
    client = TusClient(server)
    assert client.absolute("files/") == "https://host:8443/prefix/ferry/files/"
    assert client.absolute("api/files") == "https://host:8443/prefix/ferry/api/files"
    assert client.upload_url("abc") == "https://host:8443/prefix/ferry/files/abc"
    # A journaled absolute URL is used as it is.
    assert client.absolute("http://other/files/x") == "http://other/files/x"


def test_name_lookups_are_batched_under_the_query_budget() -> None:
    names = [f"données {index:04}.bin" for index in range(1000)]
    batches = name_batches(names, budget=6000)
    assert [name for batch in batches for name in batch] == names
    assert 1 < len(batches) < 20
    for batch in batches:
        assert sum(len(quote(name, safe="")) + len("&name=") for name in batch) <= 6000
    assert name_batches(["x" * 10_000]) == [["x" * 10_000]]  # one name always goes


def test_bandwidth_limit_books_bytes_at_the_rate_after_a_small_burst() -> None:
    limit = BandwidthLimit(1024 * 1024, burst=0.25)
    first = limit.reserve(1024 * 1024)
    second = limit.reserve(1024 * 1024)
    assert first == pytest.approx(0.75, abs=0.05)
    assert second == pytest.approx(1.75, abs=0.05)  # workers sharing it queue behind
    assert limit.block_size == 104857
    assert BandwidthLimit(10_000).block_size == 16 * 1024


@pytest.mark.parametrize(
    ("text", "rate"), [("10M", 10 * 1024**2), ("10M/s", 10 * 1024**2), ("512k", 524288)]
)
def test_bwlimit_accepts_units(text: str, rate: int) -> None:
    from app.ingest.cli import ByteRate

    assert ByteRate().convert(text, None, None) == rate


def test_walk_reports_what_it_leaves_out_and_why(tmp_path: Path) -> None:
    _touch(tmp_path / "keep.txt")
    _touch(tmp_path / "skip.tmp")
    _touch(tmp_path / ".git" / "objects" / "a")
    _touch(tmp_path / ".git" / "config")
    (tmp_path / "link.txt").symlink_to(tmp_path / "keep.txt")
    os.mkfifo(tmp_path / "pipe")
    left_out: list[PassedOver] = []
    found = list(
        find_files([str(tmp_path)], exclude=("*.tmp", ".git"), passed_over=left_out.append)
    )
    assert [item.relative for item in found] == ["keep.txt"]
    assert {(item.relative, item.kind, item.reason) for item in left_out} == {
        (".git/", "excluded", "excluded by --exclude '.git'"),  # not entered
        ("skip.tmp", "excluded", "excluded by --exclude '*.tmp'"),
        ("link.txt", "symlink", "symbolic link, not followed without --follow-symlinks"),
        ("pipe", "special", "not a regular file"),
    }


def test_walk_reports_a_dangling_followed_link_as_unreadable(tmp_path: Path) -> None:
    (tmp_path / "gone").symlink_to(tmp_path / "nowhere")
    left_out: list[PassedOver] = []
    found = list(find_files([str(tmp_path)], follow_symlinks=True, passed_over=left_out.append))
    assert found == []
    assert [(item.kind, item.reason) for item in left_out] == [
        ("unreadable", "unreadable: No such file or directory")
    ]


def test_missing_paths_are_paths_and_globs_naming_nothing(tmp_path: Path) -> None:
    _touch(tmp_path / "a.jpg")
    present = [str(tmp_path / "a.jpg"), str(tmp_path / "*.jpg"), str(tmp_path)]
    absent = [str(tmp_path / "b.jpg"), str(tmp_path / "*.png")]
    assert missing_paths(present + absent) == absent


def test_progress_counts_only_bytes_this_run_sends() -> None:
    view = PlainProgress(interval=3600)
    view.begin(2, 300)
    view.file_started("resumed", "resumed", 200, 150)  # 150 bytes were already there
    view.file_position("resumed", 200)
    view.file_done("resumed", 200, ok=True)
    view.file_started("broken", "broken", 100, 0)
    view.file_position("broken", 40)
    view.file_started("broken", "broken", 100, 30)  # a retry: the server kept 30
    view.file_done("broken", 100, ok=False)
    totals = view._totals
    assert (totals.total_bytes, totals.sent, totals.files_done) == (50 + 30, 50 + 30, 2)
