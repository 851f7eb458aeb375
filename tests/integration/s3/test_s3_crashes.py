"""``kill -9`` of a real ``ferry serve`` storing in S3, at each dangerous moment.

After the restart the upload resumes from the right offset, completes with the right
SHA-256 in S3, and no multipart upload is left open. The crash windows are opened
deterministically with the fault proxy (no test hooks in the server): it forwards a
request to S3 and keeps the answer, so S3 has done the work the server never hears of.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import subprocess
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest

from tests.integration.s3.conftest import MIB, PART, S3View
from tests.support.faulty_proxy import FaultyProxy, faulty_proxy
from tests.support.seaweed import S3Endpoint
from tests.support.services import FERRY, FerryProcess, ferry_env, postgres_database

TUS = {"Tus-Resumable": "1.0.0"}
OCTETS = {"Content-Type": "application/offset+octet-stream"}
UPLOAD_PART = "partNumber="
COMPLETE = ("POST ", "uploadId=")


@pytest.fixture
def crash_database_url() -> Iterator[str]:
    """PostgreSQL, the production database, for the crash tests."""
    with postgres_database() as url:
        yield url


@pytest.fixture
def proxy(seaweed: S3Endpoint) -> Iterator[FaultyProxy]:
    with faulty_proxy(seaweed.url) as running:
        yield running


@pytest.fixture
def server(
    tmp_path: Path, seaweed: S3Endpoint, proxy: FaultyProxy, s3_prefix: str, crash_database_url: str
) -> Iterator[FerryProcess]:
    """``ferry serve`` on S3 through the proxy; the test kills and restarts it."""
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    env = ferry_env(
        data_dir,
        {
            **seaweed.env(s3_prefix),
            "FERRY_S3_ENDPOINT_URL": proxy.url,
            "FERRY_S3_MIN_PART_SIZE": str(PART),
            "FERRY_DATABASE_URL": crash_database_url,
            "FERRY_S3_TIMEOUT_SECONDS": "5",
        },
    )
    process = FerryProcess(data_dir=data_dir, env=env)
    process.start()
    try:
        yield process
    finally:
        process.stop()


def payload(size: int) -> bytes:
    block = hashlib.sha256(b"crash").digest() * 2048
    return (block * (size // len(block) + 1))[:size]


def create(server: FerryProcess, length: int) -> str:
    response = httpx.post(
        f"{server.url}/files/", headers={**TUS, "Upload-Length": str(length)}, timeout=30
    )
    assert response.status_code == 201, response.text
    return str(httpx.URL(server.url).join(response.headers["location"]))


def send(url: str, offset: int, data: bytes) -> httpx.Response:
    return httpx.patch(
        url, content=data, headers={**TUS, **OCTETS, "Upload-Offset": str(offset)}, timeout=60
    )


def offset_of(url: str) -> int:
    response = httpx.head(url, headers=TUS, timeout=60)
    assert response.status_code == 200, response.text
    return int(response.headers["upload-offset"])


def finish_from_server_offset(url: str, data: bytes) -> None:
    offset = offset_of(url)
    if offset < len(data):
        response = send(url, offset, data[offset:])
        assert response.status_code == 204, response.text


def assert_complete_in_s3(s3_view: S3View, url: str, data: bytes, parts: int) -> None:
    uid = url.rstrip("/").rsplit("/", 1)[-1]
    keys = [k for k in s3_view.object_keys() if k.endswith(uid)]
    assert len(keys) == 1
    assert s3_view.sha256_of(keys[0]) == hashlib.sha256(data).hexdigest()
    etag = s3_view.client.head_object(Bucket=s3_view.endpoint.bucket, Key=keys[0])["ETag"]
    assert etag.strip('"').endswith(f"-{parts}"), "no duplicate or missing part"
    assert s3_view.open_multipart_uploads() == []


def test_kill_mid_patch_resumes_from_the_durable_offset(
    server: FerryProcess, s3_view: S3View
) -> None:
    data = payload(3 * PART + 100)
    url = create(server, len(data))
    assert send(url, 0, data[: 7 * MIB]).status_code == 204
    release = threading.Event()

    def slow_body() -> Iterator[bytes]:
        yield data[7 * MIB : 9 * MIB]
        release.wait(30)
        yield data[9 * MIB :]

    def patch_in_background() -> None:
        with contextlib.suppress(httpx.HTTPError):
            httpx.patch(
                url,
                content=slow_body(),
                headers={**TUS, **OCTETS, "Upload-Offset": str(7 * MIB)},
                timeout=60,
            )

    sender = threading.Thread(target=patch_in_background)
    sender.start()
    threading.Event().wait(1.0)  # the first 2 MiB reach the server
    server.kill()
    release.set()
    sender.join(30)
    server.start()
    assert 7 * MIB <= offset_of(url) <= 9 * MIB
    finish_from_server_offset(url, data)
    assert_complete_in_s3(s3_view, url, data, parts=4)


def test_kill_after_upload_part_before_the_ledger_commit_acknowledges_nothing_and_replaces_it(
    server: FerryProcess, proxy: FaultyProxy, s3_view: S3View
) -> None:
    data = payload(3 * PART + 10)
    url = create(server, len(data))
    proxy.hold_response(UPLOAD_PART, times=1)
    first = threading.Thread(target=lambda: _ignore_errors(send, url, 0, data[: PART + MIB]))
    first.start()
    assert proxy.held.wait(30), "S3 got part 1; its answer is held, so is the PATCH's"
    server.kill()
    first.join(30)
    assert len(s3_view.open_multipart_uploads()) == 1, "S3 holds a part the ledger lacks"
    server.start()
    assert offset_of(url) == 0, "a PATCH is acknowledged only once its bytes are in S3"
    finish_from_server_offset(url, data)
    assert_complete_in_s3(s3_view, url, data, parts=4)


def test_kill_after_a_segment_is_put_before_it_is_recorded_leaves_no_segment_behind(
    server: FerryProcess, proxy: FaultyProxy, s3_view: S3View
) -> None:
    data = payload(2 * PART + 10)
    url = create(server, len(data))
    assert send(url, 0, data[: PART + MIB]).status_code == 204  # part 1 and a segment
    proxy.hold_response("PUT ", "/segments/", times=1)
    start, end = PART + MIB, PART + 2 * MIB
    second = threading.Thread(target=lambda: _ignore_errors(send, url, start, data[start:end]))
    second.start()
    assert proxy.held.wait(30), "S3 has the segment; its answer is held"
    server.kill()
    second.join(30)
    server.start()
    assert offset_of(url) == start, "a PATCH is acknowledged only once its segment is recorded"
    finish_from_server_offset(url, data)
    assert_complete_in_s3(s3_view, url, data, parts=3)
    segments = [k for k in s3_view.object_keys() if k.startswith(f"{s3_view.prefix}segments/")]
    assert segments == [], "the segment no row names went with the completion"


def test_kill_after_a_file_sent_whole_at_creation_is_put_leaves_nothing_on_restart(
    server: FerryProcess, proxy: FaultyProxy, s3_view: S3View
) -> None:
    """A one-part creation-with-upload is put at its final key before its row exists: a
    crash in between acknowledged nothing, and start-up deletes the object no row names."""
    data = payload(300_000)

    def post_whole() -> httpx.Response:
        headers = {**TUS, **OCTETS, "Upload-Length": str(len(data))}
        return httpx.post(f"{server.url}/files/", content=data, headers=headers, timeout=60)

    proxy.hold_response("PUT ", "/other/", times=1)
    sender = threading.Thread(target=lambda: _ignore_errors(post_whole))
    sender.start()
    assert proxy.held.wait(30), "S3 has the object; its answer is held"
    server.kill()
    sender.join(30)
    assert len(s3_view.object_keys()) == 1, "S3 holds an object no row names"
    server.start()  # start-up reconciliation finds the staging file without a row
    assert s3_view.object_keys() == []


@pytest.mark.parametrize("then", ["sent again", "terminated"])
def test_kill_after_a_one_part_patch_is_put_acknowledged_nothing(
    server: FerryProcess, proxy: FaultyProxy, s3_view: S3View, then: str
) -> None:
    """A PATCH that carries a whole one-part upload is put at the final key, then filed with
    its offset: killed in between, the upload is still at 0. Sent again, it is stored once;
    terminated, the object no row names goes with it."""
    data = payload(300_000)
    url = create(server, len(data))
    proxy.hold_response("PUT ", "/other/", times=1)
    sender = threading.Thread(target=lambda: _ignore_errors(send, url, 0, data))
    sender.start()
    assert proxy.held.wait(30), "S3 has the object; its answer is held"
    server.kill()
    sender.join(30)
    server.start()
    assert offset_of(url) == 0, "nothing was acknowledged"
    if then == "sent again":
        assert send(url, 0, data).status_code == 204
        keys = s3_view.object_keys()
        assert len(keys) == 1
        assert s3_view.sha256_of(keys[0]) == hashlib.sha256(data).hexdigest()
    else:
        assert len(s3_view.object_keys()) == 1, "S3 holds an object no row names"
        assert httpx.delete(url, headers=TUS, timeout=30).status_code == 204
        assert s3_view.object_keys() == []


def test_kill_during_complete_multipart_upload_finishes_on_restart(
    server: FerryProcess, proxy: FaultyProxy, s3_view: S3View
) -> None:
    data = payload(2 * PART + 3)
    url = create(server, len(data))
    assert send(url, 0, data[: 2 * PART]).status_code == 204
    proxy.hold_response(*COMPLETE, times=1)
    last = threading.Thread(target=lambda: _ignore_errors(send, url, 2 * PART, data[2 * PART :]))
    last.start()
    assert proxy.held.wait(30), "S3 completed the object; its answer is held"
    server.kill()
    last.join(30)
    server.start()  # start-up reconciliation finishes the upload
    assert offset_of(url) == len(data)
    download = httpx.get(url, timeout=60)
    assert download.status_code == 200
    assert hashlib.sha256(download.content).hexdigest() == hashlib.sha256(data).hexdigest()
    assert_complete_in_s3(s3_view, url, data, parts=3)


def _ignore_errors(function, *args) -> None:  # type: ignore[no-untyped-def]
    with contextlib.suppress(httpx.HTTPError):
        function(*args)


def create_partial(server: FerryProcess, length: int) -> str:
    response = httpx.post(
        f"{server.url}/files/",
        headers={**TUS, "Upload-Length": str(length), "Upload-Concat": "partial"},
        timeout=30,
    )
    assert response.status_code == 201, response.text
    return str(httpx.URL(server.url).join(response.headers["location"]))


def kill_while_a_final_is_assembled(
    server: FerryProcess, proxy: FaultyProxy, s3_view: S3View
) -> tuple[str, bytes]:
    """A final whose first copied part S3 made but whose answer never came; then kill -9."""
    first, second = payload(PART + 1), payload(PART + 3)[::-1]
    done = create_partial(server, len(first))
    assert send(done, 0, first).status_code == 204
    last = create_partial(server, len(second))
    assert send(last, 0, second[:MIB]).status_code == 204
    response = httpx.post(
        f"{server.url}/files/",
        headers={**TUS, "Upload-Concat": f"final;{done} {last}"},
        timeout=30,
    )
    assert response.status_code == 201, response.text
    final = str(httpx.URL(server.url).join(response.headers["location"]))
    proxy.hold_response("PUT ", final.rsplit("/", 1)[-1], "partNumber=1", times=1)
    finishing = threading.Thread(target=lambda: _ignore_errors(send, last, MIB, second[MIB:]))
    finishing.start()  # completing the last partial starts the final's assembly
    assert proxy.held.wait(30), "S3 copied part 1 of the final; its answer is held"
    server.kill()
    finishing.join(30)
    (open_upload,) = s3_view.open_multipart_uploads()
    assert open_upload["Key"].endswith(final.rsplit("/", 1)[-1]), "the assembly is left open"
    return final, first + second


def test_kill_during_a_final_assembly_redoes_it_on_restart(
    server: FerryProcess, proxy: FaultyProxy, s3_view: S3View
) -> None:
    final, data = kill_while_a_final_is_assembled(server, proxy, s3_view)
    server.start()  # start-up reconciliation aborts the stale assembly and redoes it
    status = httpx.head(final, headers=TUS, timeout=60)
    assert status.headers["upload-offset"] == status.headers["upload-length"] == str(len(data))
    download = httpx.get(final, timeout=60)
    assert hashlib.sha256(download.content).hexdigest() == hashlib.sha256(data).hexdigest()
    uid = final.rsplit("/", 1)[-1]
    info = httpx.get(f"{server.url}/api/files/{uid}", timeout=30).json()
    assert info["sha256"] == hashlib.sha256(data).hexdigest()
    assert s3_view.open_multipart_uploads() == []


def test_final_expiring_after_a_crash_mid_assembly_leaves_no_multipart_upload(
    server: FerryProcess, proxy: FaultyProxy, s3_view: S3View, crash_database_url: str
) -> None:
    final, _ = kill_while_a_final_is_assembled(server, proxy, s3_view)
    uid = final.rsplit("/", 1)[-1]
    # The crashed node's lease runs out and so does the final's time to live.
    asyncio.run(
        _execute(
            crash_database_url,
            "UPDATE uploads SET expires_at = now() - interval '1 second', "
            "lock_expires_at = now() - interval '1 second' WHERE id = $1",
            uuid.UUID(uid),
        )
    )
    cleanup = subprocess.run(
        [str(FERRY), "cleanup"], env=server.env, capture_output=True, timeout=120, check=False
    )
    assert cleanup.returncode == 0, cleanup.stderr.decode()[-2000:]
    assert s3_view.open_multipart_uploads() == []
    assert not [k for k in s3_view.object_keys() if k.endswith(uid)]


async def _execute(url: str, sql: str, *args: object) -> None:
    connection = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://", 1))
    try:
        await connection.execute(sql, *args)
    finally:
        await connection.close()
