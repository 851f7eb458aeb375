"""A PostgreSQL outage under load: 503 with Retry-After everywhere, nothing acknowledged lost,
and uploads going on as soon as the database answers again.

The database is a private cluster (tests/support/private_postgres.py) that the test crashes
with ``pg_ctl stop -m immediate`` while PATCH bodies stream, then starts again.
"""

from __future__ import annotations

import hashlib
import os
import time
import uuid
from pathlib import Path

import httpx

from tests.e2e.resuming_client import ResumingUpload
from tests.e2e.support import MIB, TUS, download_sha256
from tests.support.private_postgres import PrivatePostgres, private_postgres
from tests.support.services import FerryProcess, running_ferry

UPLOADS = 8
OUTAGE_SECONDS = 5.0
#: Longer than any honest wait after the outage, shorter than the lease.
RESUME_WITHIN_SECONDS = 5.0
LEASE_SECONDS = 30


def test_database_outage_answers_503_and_uploads_resume_once_it_is_back(
    tmp_path: Path,
) -> None:
    with (
        private_postgres() as database,
        running_ferry(
            tmp_path,
            {
                "FERRY_DATABASE_URL": database.url,
                "FERRY_NODE_ID": "outage-node",
                "FERRY_LOCK_LEASE_SECONDS": str(LEASE_SECONDS),
            },
        ) as ferry,
    ):
        contents = [os.urandom(8 * MIB) for _ in range(UPLOADS)]
        deadline = time.monotonic() + 120
        uploads = [ResumingUpload(ferry.url, content, deadline) for content in contents]
        for upload in uploads:
            upload.start()
        _wait_until(lambda: all(upload.acknowledged > 0 for upload in uploads), 20)

        database.stop("immediate")
        down_at = time.monotonic()
        probes = _probe_every_route(ferry, uploads[0].url or "")
        time.sleep(max(0.0, down_at + OUTAGE_SECONDS - time.monotonic()))
        database.start()
        back_at = time.monotonic()
        for upload in uploads:
            upload.join(timeout=max(1.0, deadline - time.monotonic()))

        log = (ferry.log_path or Path()).read_text()
        _report(uploads, back_at)
        for upload in uploads:
            assert upload.failure is None, upload.failure
            assert upload.finished
            assert upload.reported_below_acknowledged == [], "acknowledged bytes were lost"
            for answer in upload.answers:
                assert answer.status is None or answer.status < 500 or answer.status == 503, answer
                if answer.status == 503:
                    assert answer.retry_after, answer
            resumed = upload.first_success_after(back_at)
            assert resumed is not None
            assert resumed - back_at < RESUME_WITHIN_SECONDS, (
                f"{upload.url} resumed {resumed - back_at:.1f} s after the database was back: "
                f"{upload.statuses(back_at)}"
            )
            assert upload.url is not None
            expected = (len(upload.content), hashlib.sha256(upload.content).hexdigest())
            assert download_sha256(upload.url) == expected
        for route, (status, retry_after) in probes.items():
            assert status == 503 and retry_after, (route, status, retry_after)
        assert "unhandled error" not in log


def _probe_every_route(ferry: FerryProcess, upload_url: str) -> dict[str, tuple[int, str | None]]:
    """Every kind of route during the outage: each must be 503 with Retry-After."""
    ready = httpx.get(f"{ferry.url}/health/ready", timeout=20)
    assert ready.status_code == 503
    checks = ready.json()
    assert checks["database"] is False and checks["storage"] is True, checks
    assert checks["reason"], checks
    unknown = f"{ferry.url}/files/{uuid.uuid4()}"
    octets = {"Content-Type": "application/offset+octet-stream"}
    requests = {
        "tus creation": ("POST", f"{ferry.url}/files/", {**TUS, "Upload-Length": "10"}, None),
        "tus status": ("HEAD", upload_url, TUS, None),
        "tus patch": ("PATCH", upload_url, {**TUS, **octets, "Upload-Offset": "0"}, b"x"),
        "tus download": ("GET", upload_url, {}, None),
        "tus termination": ("DELETE", unknown, TUS, None),
        "file api list": ("GET", f"{ferry.url}/api/files/", {}, None),
        "upload info": ("GET", f"{upload_url}/info", {}, None),
        "simple upload": ("PUT", f"{ferry.url}/api/files/outage.bin", {}, b"simple"),
        "file api item": ("GET", f"{ferry.url}/api/files/{uuid.uuid4()}", {}, None),
        "signed link": ("POST", f"{upload_url}/link", {}, None),
    }
    answers: dict[str, tuple[int, str | None]] = {}
    for route, (method, url, headers, body) in requests.items():
        response = httpx.request(method, url, headers=headers, content=body, timeout=20)
        answers[route] = (response.status_code, response.headers.get("retry-after"))
    return answers


def _wait_until(condition: object, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if callable(condition) and condition():
            return
        time.sleep(0.05)
    raise AssertionError("timed out waiting for the uploads to start")


def _report(uploads: list[ResumingUpload], back_at: float) -> None:
    """The measurements, printed for the test log (``pytest -s``)."""
    statuses: dict[int | None, int] = {}
    for upload in uploads:
        for status in upload.statuses():
            statuses[status] = statuses.get(status, 0) + 1
    delays = [
        round(resumed - back_at, 2)
        for upload in uploads
        if (resumed := upload.first_success_after(back_at)) is not None
    ]
    print(f"answers by status: {statuses}; resumed after the database was back (s): {delays}")


_ = PrivatePostgres
