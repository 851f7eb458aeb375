"""``FERRY_WORKERS=2``: two server processes on one port behave as one server.

Each request here goes out on a fresh connection, so consecutive requests land on either
worker; what one worker started, the other must be able to continue.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import http.client
import os
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.services import FerryProcess, postgres_database, running_ferry

TUS = {"Tus-Resumable": "1.0.0"}
PATCH_SIZE = 256 * 1024
PATCHES = 24


@pytest.fixture
def two_workers(tmp_path: Path) -> Iterator[FerryProcess]:
    with (
        postgres_database() as database_url,
        running_ferry(
            tmp_path,
            {
                "FERRY_WORKERS": "2",
                "FERRY_DATABASE_URL": database_url,
                "FERRY_LOCK_LEASE_SECONDS": "3",
            },
        ) as server,
    ):
        wait_until_every_worker_serves(server, 2)
        yield server


def worker_pids(server: FerryProcess) -> list[int]:
    assert server.process is not None
    pid = server.process.pid
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return sorted(int(child) for child in children)


def wait_until_every_worker_serves(server: FerryProcess, count: int, timeout: float = 60) -> None:
    """``/health`` answers once worker 0 serves; the others are forked after it and may
    still be starting (under load, for seconds). Wait for each one's start-up line."""
    logs = server.data_dir.parent / "logs"
    deadline = time.monotonic() + timeout
    while True:
        started = [
            (logs / f"ferry-worker-{index}.log").is_file()
            and "Application startup complete" in (logs / f"ferry-worker-{index}.log").read_text()
            for index in range(count)
        ]
        if all(started) and len(worker_pids(server)) == count:
            return
        assert time.monotonic() < deadline, f"workers not serving after {timeout} s: {started}"
        time.sleep(0.1)


def fresh_request(
    server: FerryProcess, method: str, path: str, headers: dict[str, str], body: bytes = b""
) -> http.client.HTTPResponse:
    """One request on its own connection (so it may reach either worker)."""
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    connection.request(method, path, body=body, headers=headers)
    response = connection.getresponse()
    response.read()
    connection.close()
    return response


def upload_in_patches(server: FerryProcess, payload: bytes) -> str:
    created = fresh_request(server, "POST", "/files/", {**TUS, "Upload-Length": str(len(payload))})
    assert created.status == 201
    path = "/files/" + created.headers["Location"].rsplit("/", 1)[-1]
    for offset in range(0, len(payload), PATCH_SIZE):
        response = fresh_request(
            server,
            "PATCH",
            path,
            {
                **TUS,
                "Upload-Offset": str(offset),
                "Content-Type": "application/offset+octet-stream",
            },
            payload[offset : offset + PATCH_SIZE],
        )
        assert response.status == 204, response.status
    return path.rsplit("/", 1)[-1]


def access_lines(log: Path) -> int:
    return sum('"ferry.access"' in line for line in log.read_text().splitlines())


def test_two_workers_serve_one_port_and_both_take_requests(two_workers: FerryProcess) -> None:
    assert len(worker_pids(two_workers)) == 2
    creation_with_upload = {
        **TUS,
        "Upload-Length": str(PATCH_SIZE),
        "Content-Type": "application/offset+octet-stream",
    }
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        statuses = list(
            pool.map(
                lambda _: (
                    fresh_request(
                        two_workers, "POST", "/files/", creation_with_upload, os.urandom(PATCH_SIZE)
                    ).status
                ),
                range(96),
            )
        )
    assert statuses == [201] * 96
    logs = two_workers.data_dir.parent / "logs"
    assert access_lines(logs / "ferry-worker-0.log") > 0
    assert access_lines(logs / "ferry-worker-1.log") > 0


def test_an_upload_whose_patches_reach_either_worker_keeps_its_sha256(
    two_workers: FerryProcess,
) -> None:
    """The running SHA-256 lives in one process; completion on the other hashes again."""
    payload = os.urandom(PATCH_SIZE * PATCHES)
    uid = upload_in_patches(two_workers, payload)
    expected = hashlib.sha256(payload).hexdigest()
    record = httpx.get(f"{two_workers.url}/api/files/{uid}").json()
    assert record["sha256"] == expected
    download = httpx.get(f"{two_workers.url}/files/{uid}")
    assert hashlib.sha256(download.content).hexdigest() == expected


def test_metrics_add_up_every_worker(two_workers: FerryProcess) -> None:
    for _ in range(20):
        assert (
            fresh_request(two_workers, "POST", "/files/", {**TUS, "Upload-Length": "5"}).status
            == 201
        )
    for _ in range(6):  # whichever worker answers the scrape
        text = httpx.get(f"{two_workers.url}/metrics", headers={"Connection": "close"}).text
        created = re.search(r"^ferry_uploads_created_total (\S+)$", text, re.MULTILINE)
        assert created is not None and float(created.group(1)) == 20
        assert "ferry_staging_disk_bytes" in text


def test_a_signed_link_from_one_worker_opens_on_every_worker(two_workers: FerryProcess) -> None:
    payload = os.urandom(3 * PATCH_SIZE)
    uid = upload_in_patches(two_workers, payload)
    link = httpx.URL(httpx.post(f"{two_workers.url}/files/{uid}/link").json()["url"])
    path = f"{link.path}?{link.query.decode()}"
    for _ in range(10):
        response = fresh_request(two_workers, "GET", path, {})
        assert response.status == 200


def test_a_killed_worker_is_replaced_and_the_server_keeps_serving(
    two_workers: FerryProcess,
) -> None:
    before = worker_pids(two_workers)
    os.kill(before[0], signal.SIGKILL)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        now = worker_pids(two_workers)
        if len(now) == 2 and before[0] not in now:
            break
        time.sleep(0.1)
    else:
        raise AssertionError(f"worker {before[0]} was not replaced: {worker_pids(two_workers)}")
    payload = os.urandom(4 * PATCH_SIZE)
    uid = upload_in_patches(two_workers, payload)
    record = httpx.get(f"{two_workers.url}/api/files/{uid}").json()
    assert record["sha256"] == hashlib.sha256(payload).hexdigest()


def test_stopping_or_killing_the_supervisor_ends_every_worker(tmp_path: Path) -> None:
    for stop in ("sigterm", "sigkill"):
        # (A database of its own each: with local storage, a database's files live in one
        # data directory.)
        with (
            postgres_database() as database_url,
            running_ferry(
                tmp_path / stop, {"FERRY_WORKERS": "2", "FERRY_DATABASE_URL": database_url}
            ) as server,
        ):
            wait_until_every_worker_serves(server, 2)
            workers = worker_pids(server)
            if stop == "sigterm":
                server.stop()
            else:
                server.kill()  # the workers get SIGTERM from the kernel (PDEATHSIG)
            deadline = time.monotonic() + 20
            while any(Path(f"/proc/{pid}").exists() for pid in workers):
                assert time.monotonic() < deadline, f"workers outlived the supervisor: {stop}"
                time.sleep(0.1)
