"""A real server sends whole parts to S3 while the PATCH body that completes them arrives.

The client here sends a body in two halves with a pause between them and looks into the
bucket during the pause: the part the first half completed is there already. A part sent
that way counts only once the body is received and verified: a body refused at its end
(wrong ``Upload-Checksum``) acknowledges nothing, and the upload completes with the right
bytes afterwards.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.integration.s3.conftest import S3View
from tests.support.seaweed import S3Endpoint
from tests.support.services import FerryProcess, running_ferry

MIB = 1024 * 1024
PART = 5 * MIB
TUS = {"Tus-Resumable": "1.0.0"}


@pytest.fixture
def s3_ferry(tmp_path: Path, seaweed: S3Endpoint, s3_prefix: str) -> Iterator[FerryProcess]:
    env = {**seaweed.env(s3_prefix), "FERRY_S3_MIN_PART_SIZE": str(PART)}
    with running_ferry(tmp_path, env) as server:
        yield server


def payload(size: int, seed: int) -> bytes:
    block = hashlib.sha256(str(seed).encode()).digest() * 2048
    return (block * (size // len(block) + 1))[:size]


def create(server: FerryProcess, length: int) -> str:
    response = httpx.post(
        f"{server.url}/files/", headers={**TUS, "Upload-Length": str(length)}, timeout=30
    )
    assert response.status_code == 201, response.text
    return "/files/" + response.headers["location"].rsplit("/", 1)[-1]


def parts_in_s3(view: S3View) -> int:
    uploads = view.open_multipart_uploads()
    if not uploads:
        return 0
    return len(view.parts_of(uploads[0]["Key"], uploads[0]["UploadId"]))


def patch_in_two_halves(
    server: FerryProcess,
    path: str,
    data: bytes,
    split: int,
    during_pause: S3View,
    headers: dict[str, str] | None = None,
) -> tuple[int, int]:
    """PATCH ``data`` at offset 0: the first ``split`` bytes, a pause until S3 holds a
    part (at most 20 s), the rest. Returns the status and the parts S3 held in the pause."""
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    connection.putrequest("PATCH", path)
    for name, value in {
        **TUS,
        "Upload-Offset": "0",
        "Content-Type": "application/offset+octet-stream",
        "Content-Length": str(len(data)),
        **(headers or {}),
    }.items():
        connection.putheader(name, value)
    connection.endheaders()
    connection.send(data[:split])
    deadline = time.monotonic() + 20
    while (held := parts_in_s3(during_pause)) == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    connection.send(data[split:])
    response = connection.getresponse()
    response.read()
    connection.close()
    return response.status, held


def test_a_part_is_in_s3_before_the_patch_that_completes_it_has_ended(
    s3_ferry: FerryProcess, seaweed: S3Endpoint, s3_prefix: str
) -> None:
    view = S3View(seaweed, s3_prefix)
    data = payload(2 * PART + 100, seed=1)
    path = create(s3_ferry, len(data))
    status, held_in_the_pause = patch_in_two_halves(s3_ferry, path, data, PART + MIB, view)
    assert status == 204
    assert held_in_the_pause == 1, "part 1 reached S3 while the body still streamed"
    stored = httpx.get(f"{s3_ferry.url}{path}", timeout=60)
    assert hashlib.sha256(stored.content).digest() == hashlib.sha256(data).digest()
    [key] = view.object_keys()
    assert view.sha256_of(key) == hashlib.sha256(data).hexdigest()
    assert view.open_multipart_uploads() == []


def test_a_part_sent_for_a_body_refused_at_its_end_is_not_acknowledged(
    s3_ferry: FerryProcess, seaweed: S3Endpoint, s3_prefix: str
) -> None:
    view = S3View(seaweed, s3_prefix)
    data = payload(2 * PART + 100, seed=2)
    path = create(s3_ferry, len(data))
    wrong = base64.b64encode(hashlib.sha1(b"other bytes").digest()).decode()
    status, held_in_the_pause = patch_in_two_halves(
        s3_ferry, path, data, PART + MIB, view, {"Upload-Checksum": f"sha1 {wrong}"}
    )
    assert (status, held_in_the_pause) == (460, 1), "S3 had part 1, the body was refused"
    offset = httpx.head(f"{s3_ferry.url}{path}", headers=TUS, timeout=30)
    assert offset.headers["upload-offset"] == "0"
    # Other bytes at the same offsets this time: the part S3 holds must not be the one used.
    other = payload(len(data), seed=3)
    status, _ = patch_in_two_halves(s3_ferry, path, other, PART + MIB, view)
    assert status == 204
    stored = httpx.get(f"{s3_ferry.url}{path}", timeout=60)
    assert hashlib.sha256(stored.content).digest() == hashlib.sha256(other).digest()
    [key] = view.object_keys()
    assert view.sha256_of(key) == hashlib.sha256(other).hexdigest()
