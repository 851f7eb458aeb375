"""A full disk: a clean 507 with Retry-After, the synced bytes kept and acknowledged, the lease
given back with the answer, and uploads going on as soon as space is freed.

The data directory is a real 16 MiB tmpfs (tests/support/tmpfs.py) that a ballast file
fills; a real ``ferry serve`` runs on it.
"""

from __future__ import annotations

import base64
import hashlib
import os
import time
from pathlib import Path

import httpx

from tests.e2e.resuming_client import ResumingUpload
from tests.e2e.support import (
    MIB,
    OCTETS,
    TUS,
    create_upload,
    download_sha256,
    read_staging,
    tus_offset,
)
from tests.support.services import running_ferry
from tests.support.tmpfs import fill, small_tmpfs

#: Longer than any honest wait once space is back, shorter than the 30 s lease.
RESUME_WITHIN_SECONDS = 5.0


def patch(
    url: str, offset: int, body: bytes, headers: dict[str, str] | None = None
) -> httpx.Response:
    return httpx.patch(
        url,
        content=body,
        headers={**TUS, "Upload-Offset": str(offset), "Content-Type": OCTETS, **(headers or {})},
        timeout=60,
    )


def test_full_disk_mid_patch_answers_507_keeps_what_was_synced_and_frees_the_lease(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"  # the server's data directory: the tmpfs itself
    database = f"sqlite+aiosqlite:///{tmp_path / 'ferry.db'}"
    with small_tmpfs(data, 16), running_ferry(tmp_path, {"FERRY_DATABASE_URL": database}) as ferry:
        fill(data / "ballast", leave=3 * MIB)
        content = os.urandom(4 * MIB)
        url = create_upload(ferry.url, len(content))

        cut = patch(url, 0, content)
        assert cut.status_code == 507, cut.text
        assert cut.headers["retry-after"]
        offset = tus_offset(url)
        assert 2 * MIB < offset < len(content)
        # tus core: the bytes that reached the disk before it filled up are acknowledged.
        assert read_staging(data, url) == content[:offset]

        # The lease went with the answer: the next PATCH is refused for the disk, not locked.
        again = patch(url, offset, content[offset:])
        assert again.status_code == 507, again.text
        assert tus_offset(url) == offset

        # A creation-with-upload on the full disk: refused, but its Location resumes it.
        other = os.urandom(MIB)
        created = httpx.post(
            f"{ferry.url}/files/",
            content=other,
            headers={**TUS, "Upload-Length": str(len(other)), "Content-Type": OCTETS},
            timeout=60,
        )
        assert created.status_code == 507, created.text
        assert created.headers["retry-after"]
        other_url = str(httpx.URL(ferry.url).join(created.headers["location"]))
        assert tus_offset(other_url) == 0

        # With Upload-Checksum, part of a chunk cannot be checked: none of it is kept.
        (data / "ballast").unlink()
        fill(data / "ballast", leave=MIB // 2)
        rest = content[offset:]
        checksum = base64.b64encode(hashlib.sha1(rest).digest()).decode()
        checked = patch(url, offset, rest, {"Upload-Checksum": f"sha1 {checksum}"})
        assert checked.status_code == 507, checked.text
        assert tus_offset(url) == offset
        assert read_staging(data, url) == content[:offset]

        (data / "ballast").unlink()
        assert patch(url, offset, content[offset:]).status_code == 204
        assert patch(other_url, 0, other).status_code == 204
        assert download_sha256(url) == (len(content), hashlib.sha256(content).hexdigest())
        assert download_sha256(other_url) == (len(other), hashlib.sha256(other).hexdigest())
        assert "unhandled error" not in (ferry.log_path or Path()).read_text()


def test_full_disk_under_the_database_too_refuses_cleanly_and_uploads_resume_when_freed(
    tmp_path: Path,
) -> None:
    """SQLite on the full disk as well (the default: ``ferry.db`` in the data directory)."""
    data = tmp_path / "data"
    with small_tmpfs(data, 16), running_ferry(tmp_path) as ferry:
        fill(data / "ballast", leave=3 * MIB)
        deadline = time.monotonic() + 90
        uploads = [
            ResumingUpload(ferry.url, os.urandom(2 * MIB), deadline, with_creation_data=n * MIB)
            for n in (0, 0, 1, 1)
        ]
        for upload in uploads:
            upload.start()
        # Refused for the disk (507) or for SQLite (503: its next page did not fit either).
        _wait_until(lambda: any({503, 507} & set(u.statuses()) for u in uploads), 30)
        fill(data / "ballast-to-the-brim")  # SQLite's next page has nowhere to go either
        time.sleep(3)
        (data / "ballast").unlink()
        (data / "ballast-to-the-brim").unlink()
        freed_at = time.monotonic()
        for upload in uploads:
            upload.join(timeout=max(1.0, deadline - time.monotonic()))

        log = (ferry.log_path or Path()).read_text()
        statuses = sorted({status for upload in uploads for status in upload.statuses()}, key=str)
        delays = [
            round(resumed - freed_at, 2)
            for upload in uploads
            if (resumed := upload.first_success_after(freed_at)) is not None
        ]
        print(
            f"answers: {statuses}; SQLite full: {'database or disk is full' in log}; "
            f"resumed after space was freed (s): {delays}"
        )
        for upload in uploads:
            assert upload.failure is None, upload.failure
            assert upload.finished
            assert upload.reported_below_acknowledged == [], "acknowledged bytes were lost"
            for answer in upload.answers:
                assert answer.status in {None, 200, 201, 204, 503, 507}, upload.answers
                if answer.status in {503, 507}:
                    assert answer.retry_after, answer
            resumed = upload.first_success_after(freed_at)
            if resumed is not None:  # (an upload may have finished before the disk filled)
                assert resumed - freed_at < RESUME_WITHIN_SECONDS, upload.statuses(freed_at)
            assert upload.url is not None
            expected = (len(upload.content), hashlib.sha256(upload.content).hexdigest())
            assert download_sha256(upload.url) == expected
        assert "unhandled error" not in log


def _wait_until(condition: object, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if callable(condition) and condition():
            return
        time.sleep(0.05)
    raise AssertionError("timed out waiting for the disk to fill up")
