"""The event-loop lag monitor sees a call that blocks a working loop, and costs nearly
nothing on an idle one."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable

from prometheus_client import REGISTRY

from app.ops.loop_lag import watch_loop_lag


def _lag_samples() -> float:
    return REGISTRY.get_sample_value("ferry_event_loop_lag_seconds_count") or 0.0


def _lag_samples_above(seconds: float) -> float:
    at_most = REGISTRY.get_sample_value("ferry_event_loop_lag_seconds_bucket", {"le": str(seconds)})
    return _lag_samples() - (at_most or 0.0)


async def _watched(scenario: Awaitable[None]) -> None:
    watcher = asyncio.create_task(watch_loop_lag())
    try:
        await scenario
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher


async def _work_in_slices(seconds: float, slice_seconds: float = 0.003) -> None:
    """CPU work on the loop in short slices, as a server under load does."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        slice_end = time.perf_counter() + slice_seconds
        while time.perf_counter() < slice_end:
            pass
        await asyncio.sleep(0)


async def _block_a_working_loop(seconds: float) -> None:
    await _work_in_slices(0.06)
    time.sleep(seconds)  # a blocking call on the loop, the bug the monitor exists to show
    await _work_in_slices(0.02)  # the monitor's late wake-up is recorded


def test_a_blocking_150_ms_call_on_a_working_loop_shows_as_a_lag_above_20_ms() -> None:
    # Longer than the idle sampling interval (100 ms): on a machine so loaded that the
    # monitor never saw this loop as busy, the blocked wake-up is still at least 50 ms late.
    stalls_before = _lag_samples_above(0.02)

    asyncio.run(_watched(_block_a_working_loop(0.15)))

    assert _lag_samples_above(0.02) - stalls_before >= 1
    worst = REGISTRY.get_sample_value("ferry_event_loop_lag_max_seconds")
    assert worst is not None and worst >= 0.04


def test_an_idle_loop_is_sampled_about_ten_times_a_second_not_two_hundred() -> None:
    samples_before = _lag_samples()

    asyncio.run(_watched(asyncio.sleep(0.6)))

    assert _lag_samples() - samples_before <= 15
