"""The in-memory whole-file SHA-256 kept between PATCHes of an upload."""

from __future__ import annotations

import hashlib
import uuid

from app.uploads.hashing import RunningHashes


def test_hash_continues_across_chunks_only_at_the_recorded_offset() -> None:
    hashes = RunningHashes()
    upload_id = uuid.uuid4()
    running = hashes.resume_at(upload_id, 0)
    assert running is not None
    running.update(b"hello ")
    hashes.record(upload_id, 6, running)

    assert hashes.resume_at(upload_id, 5) is None  # another offset: unknown, recompute
    resumed = hashes.resume_at(upload_id, 6)
    assert resumed is not None
    resumed.update(b"world")
    hashes.record(upload_id, 11, resumed)
    assert hashes.digest_at(upload_id, 11) == hashlib.sha256(b"hello world").hexdigest()


def test_resumed_state_is_a_copy_so_a_discarded_chunk_does_not_leak_in() -> None:
    hashes = RunningHashes()
    upload_id = uuid.uuid4()
    running = hashes.resume_at(upload_id, 0)
    assert running is not None
    running.update(b"abc")
    hashes.record(upload_id, 3, running)
    rejected = hashes.resume_at(upload_id, 3)
    assert rejected is not None
    rejected.update(b"bad chunk, checksum mismatch")  # never recorded
    assert hashes.digest_at(upload_id, 3) == hashlib.sha256(b"abc").hexdigest()


def test_unknown_upload_after_restart_has_no_hash_except_at_offset_zero() -> None:
    hashes = RunningHashes()
    upload_id = uuid.uuid4()
    assert hashes.digest_at(upload_id, 10) is None
    assert hashes.digest_at(upload_id, 0) == hashlib.sha256().hexdigest()


def test_capacity_evicts_the_least_recently_used_upload_and_forget_drops_one() -> None:
    hashes = RunningHashes(capacity=2)
    first, second, third = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    for upload_id in (first, second):
        hashes.record(upload_id, 1, hashlib.sha256(b"x"))
    assert hashes.resume_at(first, 1) is not None  # touch: second is now the oldest
    hashes.record(third, 1, hashlib.sha256(b"x"))
    assert hashes.resume_at(second, 1) is None
    assert hashes.resume_at(first, 1) is not None
    hashes.forget(first)
    assert hashes.resume_at(first, 1) is None
    assert hashes.resume_at(third, 1) is not None
