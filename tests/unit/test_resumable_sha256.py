"""The resumable SHA-256 that follows an upload from process to process."""

from __future__ import annotations

import hashlib
import os
import pickle
import threading
import time

import pytest

from app.core.sha256 import GIL_RELEASE_SIZE, ResumableSha256


@pytest.mark.parametrize("cuts", [[0], [1], [63, 64, 65], [1000, 4096, 70_000, 99_999]])
def test_a_hash_resumed_from_saved_states_equals_hashlib_over_the_whole(cuts: list[int]) -> None:
    data = os.urandom(100_000)
    running = ResumableSha256()
    done = 0
    for cut in [*cuts, len(data)]:
        running.update(data[done:cut])
        done = cut
        # Each acknowledgement saves the state; the next request may run anywhere.
        saved = pickle.loads(pickle.dumps(running.state()))
        resumed = ResumableSha256.resume(saved, done)
        assert resumed is not None
        running = resumed
    assert running.hexdigest() == hashlib.sha256(data).hexdigest()
    assert running.hashed_bytes == len(data)


def test_a_state_saved_at_another_offset_is_refused() -> None:
    running = ResumableSha256(b"abc")
    assert ResumableSha256.resume(running.state(), 2) is None
    assert ResumableSha256.resume(running.state(), 4) is None
    assert ResumableSha256.resume(b"garbage", 3) is None
    assert ResumableSha256.resume(None, 3) is None


def test_offset_zero_starts_a_fresh_hash_whatever_was_saved() -> None:
    fresh = ResumableSha256.resume(ResumableSha256(b"xyz").state(), 0)
    assert fresh is not None
    assert fresh.hexdigest() == hashlib.sha256(b"").hexdigest()


def test_digest_and_copy_leave_the_running_hash_untouched() -> None:
    running = ResumableSha256(b"hello ")
    twin = running.copy()
    assert running.hexdigest() == hashlib.sha256(b"hello ").hexdigest()
    twin.update(bytearray(b"world"))
    running.update(memoryview(b"there"))
    assert twin.hexdigest() == hashlib.sha256(b"hello world").hexdigest()
    assert running.hexdigest() == hashlib.sha256(b"hello there").hexdigest()


def test_blocks_on_either_side_of_the_gil_threshold_hash_like_hashlib() -> None:
    blocks = [
        os.urandom(size)
        for size in (GIL_RELEASE_SIZE - 1, GIL_RELEASE_SIZE, 7, 3 * GIL_RELEASE_SIZE)
    ]
    running = ResumableSha256()
    for block in blocks:
        running.update(block)
    assert running.hexdigest() == hashlib.sha256(b"".join(blocks)).hexdigest()


def test_a_large_block_is_hashed_with_the_gil_released() -> None:
    """Another thread runs Python while a large block is hashed (a worker thread's hashing
    never holds up the event loop). Held, the GIL would let it run one switch interval
    (5 ms) of the ~100 ms or more that 128 MiB take."""
    data = os.urandom(128 * 1024 * 1024)
    ticks = 0
    stop = threading.Event()

    def spin() -> None:
        nonlocal ticks
        while not stop.is_set():
            ticks += 1

    spinner = threading.Thread(target=spin)
    spinner.start()
    try:
        time.sleep(0.05)
        alone_from, alone_started = ticks, time.perf_counter()
        time.sleep(0.05)
        rate = (ticks - alone_from) / (time.perf_counter() - alone_started)
        running = ResumableSha256()
        before, started = ticks, time.perf_counter()
        running.update(data)
        ran = (ticks - before) / (time.perf_counter() - started)
    finally:
        stop.set()
        spinner.join()
    assert ran > rate / 5, f"the other thread ran at {ran:.0f}/s while hashing, {rate:.0f}/s alone"
