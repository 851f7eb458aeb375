"""Part bodies sent with sendfile to presigned UploadPart URLs (SeaweedFS, real sockets)."""

from __future__ import annotations

import hashlib
import socket
import time
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from botocore.exceptions import ClientError

from app.storage.part_upload import PartUploader
from app.storage.s3_client import direct_part_uploader, s3_session
from app.storage.staged_parts import crc32c_of_range
from tests.integration.s3.conftest import MIB
from tests.support.faulty_proxy import FaultyProxy, faulty_proxy
from tests.support.seaweed import S3Endpoint

PART = 5 * MIB


@pytest.fixture
def staged(tmp_path: Path) -> Path:
    """A staging file of two parts of distinct bytes."""
    path = tmp_path / "staged"
    with path.open("wb") as staged_file:
        for seed in (b"first", b"second"):
            block = hashlib.sha256(seed).digest() * 2048  # 64 KiB
            staged_file.write(block * (PART // len(block)))
    return path


@pytest.fixture
def multipart(seaweed: S3Endpoint, s3_prefix: str) -> Iterator[tuple[Any, str, str]]:
    """(client, key, UploadId) of an open multipart upload with CRC32C parts; aborted after."""
    client = seaweed.client()
    key = f"{s3_prefix}part-upload"
    upload_id = client.create_multipart_upload(
        Bucket=seaweed.bucket, Key=key, ChecksumAlgorithm="CRC32C"
    )["UploadId"]
    yield client, key, upload_id
    client.abort_multipart_upload(Bucket=seaweed.bucket, Key=key, UploadId=upload_id)


def presign(
    endpoint: S3Endpoint, multipart: tuple[Any, str, str], number: int, crc: str, url: str = ""
) -> str:
    client, key, upload_id = multipart
    signed: str = client.generate_presigned_url(
        "upload_part",
        Params={
            "Bucket": endpoint.bucket,
            "Key": key,
            "UploadId": upload_id,
            "PartNumber": number,
            "ContentLength": PART,
            "ChecksumCRC32C": crc,
        },
        ExpiresIn=600,
    )
    if url:  # the same signed request, sent to another address (a proxy in front of S3)
        signed = signed.replace(endpoint.url, url, 1)
    return signed


def holds_open(path: Path) -> bool:
    """Whether this process has ``path`` open."""
    fds = Path("/proc/self/fd")
    return any(_target(fd) == str(path) for fd in fds.iterdir())


def _target(fd: Path) -> str:
    try:
        return str(fd.readlink())
    except OSError:
        return ""


async def wait_until(condition: Callable[[], bool], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await anyio.sleep(0.05)


def origin_of(url: str) -> tuple[str, str]:
    parts = urllib.parse.urlsplit(url)
    return parts.scheme, parts.netloc


async def test_parts_sent_from_the_staging_file_are_what_s3_stores(
    seaweed: S3Endpoint, multipart: tuple[Any, str, str], staged: Path
) -> None:
    uploader = PartUploader(timeout=30, connect_timeout=5, ssl_context=None)
    etags = []
    for number in (1, 2):
        start = (number - 1) * PART
        crc = crc32c_of_range(staged, start, PART)
        url = presign(seaweed, multipart, number, crc)
        etags.append(await uploader.put(url, {"x-amz-checksum-crc32c": crc}, staged, start, PART))
    client, key, upload_id = multipart
    listed = client.list_parts(Bucket=seaweed.bucket, Key=key, UploadId=upload_id)["Parts"]
    assert [(p["PartNumber"], p["Size"], p["ETag"]) for p in listed] == [
        (1, PART, etags[0]),
        (2, PART, etags[1]),
    ]
    data = staged.read_bytes()
    assert etags[1].strip('"') == hashlib.md5(data[PART:]).hexdigest()  # a part's ETag is its MD5
    assert uploader.take_idle(origin_of(seaweed.url)) is not None, "the connection was kept"
    uploader.close()


async def test_a_part_whose_bytes_do_not_match_its_crc32c_is_refused(
    seaweed: S3Endpoint, multipart: tuple[Any, str, str], staged: Path
) -> None:
    uploader = PartUploader(timeout=30, connect_timeout=5, ssl_context=None)
    wrong = crc32c_of_range(staged, PART, PART)  # the other part's checksum
    url = presign(seaweed, multipart, 1, wrong)
    with pytest.raises(ClientError) as refused:
        await uploader.put(url, {"x-amz-checksum-crc32c": wrong}, staged, 0, PART)
    assert refused.value.response["Error"]["Code"] == "BadDigest"
    client, key, upload_id = multipart
    assert (
        client.list_parts(Bucket=seaweed.bucket, Key=key, UploadId=upload_id).get("Parts", []) == []
    )
    uploader.close()


async def test_a_kept_connection_the_server_dropped_is_replaced_without_failing_the_part(
    seaweed: S3Endpoint, multipart: tuple[Any, str, str], staged: Path
) -> None:
    uploader = PartUploader(timeout=30, connect_timeout=5, ssl_context=None)
    crc = crc32c_of_range(staged, 0, PART)
    await uploader.put(
        presign(seaweed, multipart, 1, crc), {"x-amz-checksum-crc32c": crc}, staged, 0, PART
    )
    kept = uploader.take_idle(origin_of(seaweed.url))
    assert kept is not None and kept.sock is not None
    kept.sock.shutdown(socket.SHUT_RDWR)  # what an idle timeout on the server side leaves
    uploader.give_back(origin_of(seaweed.url), kept)
    crc = crc32c_of_range(staged, PART, PART)
    etag = await uploader.put(
        presign(seaweed, multipart, 2, crc), {"x-amz-checksum-crc32c": crc}, staged, PART, PART
    )
    client, key, upload_id = multipart
    listed = client.list_parts(Bucket=seaweed.bucket, Key=key, UploadId=upload_id)["Parts"]
    assert [(p["PartNumber"], p["ETag"]) for p in listed][-1] == (2, etag)
    uploader.close()


@pytest.fixture
def proxy(seaweed: S3Endpoint) -> Iterator[FaultyProxy]:
    with faulty_proxy(seaweed.url) as running:
        yield running


async def test_cancelling_a_stalled_part_stops_it_at_once(
    seaweed: S3Endpoint, multipart: tuple[Any, str, str], staged: Path, proxy: FaultyProxy
) -> None:
    proxy.stall("partNumber=", seconds=20, times=1)
    uploader = PartUploader(timeout=60, connect_timeout=5, ssl_context=None)
    crc = crc32c_of_range(staged, 0, PART)
    url = presign(seaweed, multipart, 1, crc, url=proxy.url)
    started = time.monotonic()
    with anyio.move_on_after(0.5) as scope:
        await uploader.put(url, {"x-amz-checksum-crc32c": crc}, staged, 0, PART)
    assert scope.cancelled_caught
    assert time.monotonic() - started < 2
    # the worker thread let go of the staging file too (it does not wait out the stall)
    await wait_until(lambda: not holds_open(staged), seconds=2)
    uploader.close()


async def test_a_stalled_part_times_out_as_a_network_error(
    seaweed: S3Endpoint, multipart: tuple[Any, str, str], staged: Path, proxy: FaultyProxy
) -> None:
    proxy.stall("partNumber=", seconds=20, times=1)
    uploader = PartUploader(timeout=1, connect_timeout=5, ssl_context=None)
    crc = crc32c_of_range(staged, 0, PART)
    url = presign(seaweed, multipart, 1, crc, url=proxy.url)
    started = time.monotonic()
    with pytest.raises(OSError):
        await uploader.put(url, {"x-amz-checksum-crc32c": crc}, staged, 0, PART)
    assert time.monotonic() - started < 5
    uploader.close()


async def test_parts_take_the_s3_clients_road_when_a_proxy_applies(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    session = s3_session()
    assert direct_part_uploader(session, "http://s3.example.com", 30) is not None
    monkeypatch.setenv("HTTP_PROXY", "http://proxy.example.com:3128")
    assert direct_part_uploader(session, "http://s3.example.com", 30) is None
    monkeypatch.setenv("NO_PROXY", "s3.example.com")
    assert direct_part_uploader(session, "http://s3.example.com", 30) is not None
