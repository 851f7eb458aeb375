"""RFC 9110 range downloads through the whole app: every rule of the downloads issue.

Runs on SQLite and PostgreSQL with the local backend. The tests only read, so one app and
one uploaded file serve the whole module per database (``shared_settings``);
``test_ranges_s3`` collects the same tests again with the settings pointing at S3.
"""

from __future__ import annotations

import email.parser
import email.policy
import hashlib
import random
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import msgspec
import pytest
from litestar.testing import AsyncTestClient

from app.db.engine import migrate
from app.main import create_app
from app.settings import Settings
from tests.integration.tus_helpers import Client, b64, upload
from tests.support.services import postgres_database

SIZE = 10_000
DATA = b"\x00" + random.Random(4).randbytes(SIZE - 1)  # sniffs as application/octet-stream
ETAG = f'"{hashlib.sha256(DATA).hexdigest()}"'


def build_settings(tmp: Path, database_url: str, **overrides: Any) -> Settings:
    """Migrated settings for an isolated Ferry with auth off."""
    values: dict[str, Any] = {
        "data_dir": str(tmp / "data"),
        "log_dir": str(tmp / "logs"),
        "database_url": database_url,
        "auth": ["none"],
        **overrides,
    }
    settings = msgspec.convert(values, Settings, strict=False, dec_hook=lambda _, v: Path(v))
    migrate(settings)
    return settings


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def shared_settings(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Settings]:
    """One Ferry per module and database: these tests never change what they read."""
    tmp = tmp_path_factory.mktemp("ranges")
    if request.param == "sqlite":
        yield build_settings(tmp, f"sqlite+aiosqlite:///{tmp / 'ferry.db'}")
        return
    with postgres_database() as url:
        yield build_settings(tmp, url)


@pytest.fixture(scope="module")
async def client(shared_settings: Settings) -> AsyncIterator[Client]:
    """The app for the whole module, lifespan included."""
    async with AsyncTestClient(
        app=create_app(shared_settings), base_url="http://ferry.local"
    ) as test_client:
        yield test_client


@pytest.fixture(scope="module")
async def file_path(client: Client) -> str:
    """A completed 10,000-byte upload; its URL is the download URL."""
    return await upload(client, DATA, Upload_Metadata=f"filename {b64('clip.bin')}")


def parse_multipart(content_type: str, body: bytes) -> list[tuple[str, bytes]]:
    """(Content-Range, bytes) of each part of a multipart/byteranges body."""
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        f"Content-Type: {content_type}\r\n\r\n".encode() + body
    )
    assert message.is_multipart()
    return [(part["Content-Range"], part.get_payload(decode=True)) for part in message.iter_parts()]


async def test_full_get_has_validators_and_accept_ranges(client: Client, file_path: str) -> None:
    response = await client.get(file_path)
    assert response.status_code == 200
    assert response.content == DATA
    assert response.headers["accept-ranges"] == "bytes"
    assert response.headers["etag"] == ETAG
    assert response.headers["content-length"] == str(SIZE)
    assert response.headers["last-modified"].endswith("GMT")
    assert response.headers["x-content-type-options"] == "nosniff"
    assert "default-src 'none'" in response.headers["content-security-policy"]
    assert response.headers["content-disposition"].startswith("attachment;")


SINGLE_RANGES = [
    ("bytes=0-99", 0, 99),
    ("bytes=9990-", 9990, 9999),
    ("bytes=-10", 9990, 9999),
    ("bytes=-20000", 0, 9999),  # suffix longer than the file: the whole file, as 206
    ("bytes=5000-999999", 5000, 9999),  # last position past the end is clamped
    ("bytes=0-18446744073709551615", 0, 9999),  # 2**64-1 does not overflow anything
    ("bytes=9999-9999", 9999, 9999),
    ("BYTES = 10-19", 10, 19),  # unit is case-insensitive, whitespace tolerated
    ("bytes=20-29,,", 20, 29),  # empty list elements are allowed and ignored
    ("bytes=20000-30000, 5-9", 5, 9),  # an unsatisfiable range among good ones is dropped
]


async def test_single_range_returns_206_with_content_range(client: Client, file_path: str) -> None:
    for header, start, end in SINGLE_RANGES:
        response = await client.get(file_path, headers={"Range": header})
        assert response.status_code == 206, header
        assert response.headers["content-range"] == f"bytes {start}-{end}/{SIZE}", header
        assert response.headers["content-length"] == str(end - start + 1)
        assert response.content == DATA[start : end + 1]
        assert response.headers["etag"] == ETAG


MALFORMED_RANGES = [
    "bytes=5-3",  # last before first: the whole header is invalid
    "items=0-5",  # unknown unit
    "bytes=abc",
    "bytes=",
    "bytes=--5",
    "bytes=1-2-3",
    "0-5",
    "bytes=0-123456789012345678901",  # longer than any file position we parse
    "bytes=" + ",".join(f"{i}-{i}" for i in range(0, 4000, 2)),  # thousands of ranges
    "bytes=" + ",".join(f"{i}-{i}" for i in range(0, 202, 2)),  # one over the cap of 100
]


async def test_malformed_or_abusive_range_is_ignored_with_200(
    client: Client, file_path: str
) -> None:
    for header in MALFORMED_RANGES:
        response = await client.get(file_path, headers={"Range": header})
        assert response.status_code == 200, header
        assert response.content == DATA
        assert "content-range" not in response.headers


async def test_unsatisfiable_range_returns_416_with_length(client: Client, file_path: str) -> None:
    for header in ("bytes=10000-", "bytes=20000-30000", "bytes=-0", "bytes=-0,-0"):
        response = await client.get(file_path, headers={"Range": header})
        assert response.status_code == 416, header
        assert response.headers["content-range"] == f"bytes */{SIZE}"


async def test_two_range_headers_are_ignored(client: Client, file_path: str) -> None:
    response = await client.get(file_path, headers=[("Range", "bytes=0-1"), ("Range", "bytes=5-6")])
    assert response.status_code == 200
    assert response.content == DATA


async def test_several_ranges_return_multipart_byteranges(client: Client, file_path: str) -> None:
    response = await client.get(file_path, headers={"Range": "bytes=0-9,100-199,-5"})
    assert response.status_code == 206
    content_type = response.headers["content-type"]
    assert content_type.startswith("multipart/byteranges; boundary=")
    assert int(response.headers["content-length"]) == len(response.content)
    parts = parse_multipart(content_type, response.content)
    assert parts == [
        (f"bytes 0-9/{SIZE}", DATA[0:10]),
        (f"bytes 100-199/{SIZE}", DATA[100:200]),
        (f"bytes 9995-9999/{SIZE}", DATA[9995:]),
    ]


async def test_overlapping_and_adjacent_ranges_are_coalesced(
    client: Client, file_path: str
) -> None:
    response = await client.get(
        file_path, headers={"Range": "bytes=50-99,0-59,100-109,500-599,550-560"}
    )
    assert response.status_code == 206
    parts = parse_multipart(response.headers["content-type"], response.content)
    assert parts == [
        (f"bytes 0-109/{SIZE}", DATA[0:110]),
        (f"bytes 500-599/{SIZE}", DATA[500:600]),
    ]


async def test_overlapping_ranges_never_send_more_than_the_file(
    client: Client, file_path: str
) -> None:
    """The "Apache Killer" request: the same whole range many times over."""
    header = "bytes=" + ",".join(["0-", "1-"] * 50)
    response = await client.get(file_path, headers={"Range": header})
    assert response.status_code == 206
    assert response.headers["content-range"] == f"bytes 0-9999/{SIZE}"
    assert len(response.content) == SIZE


async def test_ranges_covering_the_whole_file_in_pieces_get_one_200(
    client: Client, file_path: str
) -> None:
    response = await client.get(file_path, headers={"Range": "bytes=0-4999,5001-,5000-5000"})
    assert response.status_code == 206  # coalesced to one range 0-9999
    assert response.headers["content-range"] == f"bytes 0-9999/{SIZE}"
    response = await client.get(file_path, headers={"Range": "bytes=0-4999,5000-"})
    assert response.headers["content-range"] == f"bytes 0-9999/{SIZE}"


async def test_if_range_with_current_strong_etag_serves_the_range(
    client: Client, file_path: str
) -> None:
    response = await client.get(file_path, headers={"Range": "bytes=0-9", "If-Range": ETAG})
    assert response.status_code == 206
    assert response.content == DATA[:10]


async def test_if_range_that_does_not_match_serves_the_whole_file(
    client: Client, file_path: str
) -> None:
    """A weak ETag never matches in If-Range (RFC 9110 §13.1.5)."""
    for if_range in (f"W/{ETAG}", '"some-other-etag"', "not a date"):
        headers = {"Range": "bytes=0-9", "If-Range": if_range}
        response = await client.get(file_path, headers=headers)
        assert response.status_code == 200, if_range
        assert response.content == DATA


async def test_if_range_with_last_modified_date(client: Client, file_path: str) -> None:
    last_modified = (await client.head(file_path)).headers["last-modified"]
    exact = await client.get(file_path, headers={"Range": "bytes=0-9", "If-Range": last_modified})
    assert exact.status_code == 206
    earlier = format_datetime(datetime.now(UTC) - timedelta(days=1), usegmt=True)
    stale = await client.get(file_path, headers={"Range": "bytes=0-9", "If-Range": earlier})
    assert stale.status_code == 200


async def test_if_none_match_returns_304(client: Client, file_path: str) -> None:
    for value in (ETAG, f"W/{ETAG}", '"x", ' + ETAG, "*"):
        response = await client.get(file_path, headers={"If-None-Match": value})
        assert response.status_code == 304, value
        assert response.content == b""
        assert response.headers["etag"] == ETAG
    other = await client.get(file_path, headers={"If-None-Match": '"x"'})
    assert other.status_code == 200


async def test_if_modified_since_returns_304_until_the_file_changes(
    client: Client, file_path: str
) -> None:
    later = format_datetime(datetime.now(UTC) + timedelta(days=1), usegmt=True)
    assert (await client.get(file_path, headers={"If-Modified-Since": later})).status_code == 304
    earlier = format_datetime(datetime.now(UTC) - timedelta(days=1), usegmt=True)
    assert (await client.get(file_path, headers={"If-Modified-Since": earlier})).status_code == 200
    garbage = await client.get(file_path, headers={"If-Modified-Since": "yesterday"})
    assert garbage.status_code == 200
    # If-None-Match takes precedence over If-Modified-Since (RFC 9110 §13.1.3).
    both = await client.get(file_path, headers={"If-None-Match": '"x"', "If-Modified-Since": later})
    assert both.status_code == 200


async def test_if_match_and_if_unmodified_since_fail_with_412(
    client: Client, file_path: str
) -> None:
    assert (await client.get(file_path, headers={"If-Match": '"x"'})).status_code == 412
    assert (await client.get(file_path, headers={"If-Match": f"W/{ETAG}"})).status_code == 412
    assert (await client.get(file_path, headers={"If-Match": ETAG})).status_code == 200
    earlier = format_datetime(datetime.now(UTC) - timedelta(days=1), usegmt=True)
    response = await client.get(file_path, headers={"If-Unmodified-Since": earlier})
    assert response.status_code == 412


async def test_head_mirrors_get_without_a_body(client: Client, file_path: str) -> None:
    cases: list[dict[str, str]] = [
        {},
        {"Range": "bytes=10-19"},
        {"Range": "bytes=0-1,5-6"},
        {"If-None-Match": ETAG},
    ]
    for headers in cases:
        got = await client.get(file_path, headers=headers)
        headed = await client.head(file_path, headers=headers)
        assert headed.status_code == got.status_code
        assert headed.content == b""
        for name in (
            "content-length",
            "content-range",
            "accept-ranges",
            "etag",
            "last-modified",
            "content-disposition",
        ):
            assert headed.headers.get(name) == got.headers.get(name), (headers, name)
        if got.status_code != 304:
            # multipart boundaries are random per response; compare the type itself
            assert (
                headed.headers["content-type"].split(";")[0]
                == (got.headers["content-type"].split(";")[0])
            )


async def test_head_with_unsatisfiable_range_returns_416(client: Client, file_path: str) -> None:
    response = await client.head(file_path, headers={"Range": "bytes=99999-"})
    assert response.status_code == 416
    assert response.headers["content-range"] == f"bytes */{SIZE}"


async def test_head_with_tus_resumable_keeps_its_tus_meaning(
    client: Client, file_path: str
) -> None:
    response = await client.head(file_path, headers={"Tus-Resumable": "1.0.0"})
    assert response.status_code == 200
    assert response.headers["upload-offset"] == str(SIZE)
    assert "accept-ranges" not in response.headers


async def test_empty_file_serves_200_and_416_for_any_range(client: Client) -> None:
    path = await upload(client, b"")
    response = await client.get(path)
    assert response.status_code == 200
    assert response.content == b""
    ranged = await client.get(path, headers={"Range": "bytes=0-"})
    assert ranged.status_code == 416
    assert ranged.headers["content-range"] == "bytes */0"


async def test_unfinished_upload_is_not_downloadable(client: Client) -> None:
    created = await client.post("/files/", headers={"Tus-Resumable": "1.0.0", "Upload-Length": "9"})
    response = await client.get(created.headers["location"], headers={"Range": "bytes=0-1"})
    assert response.status_code == 404


DISPOSITIONS = [
    (b"plain words here\n", "notes.txt", "inline"),
    (b"\x89PNG\r\n\x1a\n" + bytes(64), "pic.png", "inline"),
    (b"<svg xmlns='http://www.w3.org/2000/svg'></svg>", "x.svg", "attachment"),
    (b"<!DOCTYPE html><html><script>alert(1)</script></html>", "x.html", "attachment"),
]


async def test_content_disposition_is_inline_only_for_safe_media(client: Client) -> None:
    for data, name, disposition in DISPOSITIONS:
        path = await upload(client, data, Upload_Metadata=f"filename {b64(name)}")
        response = await client.get(path)
        assert response.headers["content-disposition"].split(";")[0] == disposition, name
        assert response.headers["x-content-type-options"] == "nosniff"


async def test_hostile_file_name_is_neutralised_in_content_disposition(client: Client) -> None:
    name = 'a"b\r\nSet-Cookie: x=1/..\\é.txt'
    path = await upload(client, b"hello", Upload_Metadata=f"filename {b64(name)}")
    header = (await client.get(path)).headers["content-disposition"]
    assert "\r" not in header
    assert "\n" not in header
    ascii_part = header.split('filename="', 1)[1].split('"', 1)[0]
    assert "/" not in ascii_part
    assert "\\" not in ascii_part
    assert "filename*=UTF-8''" in header
    assert "%C3%A9.txt" in header
