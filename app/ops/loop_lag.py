"""How long the event loop was kept from running: ``ferry_event_loop_lag_seconds``.

Everything a worker does shares one event loop, so a blocking call (a sniff, a hash, a
JSON dump of a large payload done on the loop) delays every other request it holds. A
task sleeps a short interval at a time and records by how much each wake-up came late:
the time the loop was busy with something else past the moment the timer was due. A stall
of *S* seconds shows as a lag of at least *S* minus one interval.

The interval adapts so that the monitor costs nearly nothing: on this kind of machine a
wake-up of an idle process costs ~0.1-0.2 ms of CPU, so sampling an idle server every
5 ms would take a few percent of a core for nothing. While the loop works (its thread used
more than :data:`BUSY_CPU_SHARE` of the last interval in CPU, or the last wake-up was
late) the loop is sampled every :data:`BUSY_INTERVAL_SECONDS`; when idle, every
:data:`IDLE_INTERVAL_SECONDS`, where a lone stall may be under-read or missed.

Two series: a histogram of every sampled lag (the deltas of its buckets between two
scrapes bound the worst stall in between) and the worst lag since start
(``..._max_seconds``, the largest of any worker's).
"""

from __future__ import annotations

import asyncio
import time

from prometheus_client import Gauge, Histogram

#: Sampling interval while the process works; a stall is under-read by at most this.
BUSY_INTERVAL_SECONDS = 0.005
#: Sampling interval while the process is idle.
IDLE_INTERVAL_SECONDS = 0.1
#: Share of an interval the loop's thread spent in CPU above which the process counts as busy
#: (its own thread's clock: the process clock sums every thread, costly with dozens of them).
BUSY_CPU_SHARE = 0.1
#: A wake-up this late means the loop had work (timers fire to the millisecond).
BUSY_LAG_SECONDS = 0.002

#: Fine below 20 ms, where a healthy loop's lags fall, coarse above.
LAG_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

LOOP_LAG = Histogram(
    "ferry_event_loop_lag_seconds",
    "How late the event loop woke a timer (time it was blocked by other work), per sample.",
    buckets=LAG_BUCKETS,
)
WORST_LOOP_LAG = Gauge(
    "ferry_event_loop_lag_max_seconds",
    "The worst event-loop lag since the server started (the largest of any worker's).",
    multiprocess_mode="max",
)


async def watch_loop_lag(
    busy_interval: float = BUSY_INTERVAL_SECONDS, idle_interval: float = IDLE_INTERVAL_SECONDS
) -> None:
    """Sample the running loop's lag for ever (until cancelled) into the two metrics.

    Each sample is a bare timer callback, not a task waking from ``sleep``: at 200 samples
    a second under load, a task switch per sample cost a visible share of the loop.
    """
    loop = asyncio.get_running_loop()
    sampler = _LagSampler(loop, busy_interval, idle_interval)
    sampler.schedule()
    try:
        await loop.create_future()  # until cancelled
    finally:
        sampler.stop()


class _LagSampler:
    """Re-arms one timer after every wake-up and records how late it fired."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, busy_interval: float, idle_interval: float
    ) -> None:
        self._loop = loop
        self._busy_interval = busy_interval
        self._idle_interval = idle_interval
        self._interval = busy_interval
        self._worst = 0.0
        self._started = 0.0
        self._cpu_started = 0.0
        self._timer: asyncio.TimerHandle | None = None

    def schedule(self) -> None:
        self._started, self._cpu_started = self._loop.time(), time.thread_time()
        self._timer = self._loop.call_at(self._started + self._interval, self._woke)

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()

    def _woke(self) -> None:
        woke = self._loop.time()
        lag = max(0.0, woke - self._started - self._interval)
        LOOP_LAG.observe(lag)
        if lag > self._worst:
            self._worst = lag
            WORST_LOOP_LAG.set(lag)
        busy = lag >= BUSY_LAG_SECONDS or (
            time.thread_time() - self._cpu_started > BUSY_CPU_SHARE * (woke - self._started)
        )
        self._interval = self._busy_interval if busy else self._idle_interval
        self.schedule()
