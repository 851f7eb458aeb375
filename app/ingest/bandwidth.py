"""``--bwlimit``: one byte rate shared by every upload worker."""

from __future__ import annotations

import asyncio
import time


class BandwidthLimit:
    """A token bucket of ``rate`` bytes per second holding at most ``burst`` seconds' worth.

    :meth:`take` waits until the bytes may leave. A request larger than the bucket runs
    it into debt instead of waiting for tokens that can never accumulate, so any block
    size works and the long-run rate still holds: ``n`` bytes beyond the burst take
    ``n / rate`` seconds, however the workers interleave.
    """

    def __init__(self, rate: int, burst: float = 0.25) -> None:
        if rate <= 0:
            raise ValueError("the rate must be positive")
        self.rate = rate
        self.burst = burst
        self._free_at = 0.0
        """When the bucket is next empty-but-not-in-debt (monotonic seconds)."""

    @property
    def block_size(self) -> int:
        """A block size that keeps the rate smooth: about a tenth of a second of bytes."""
        return max(16 * 1024, min(1024 * 1024, self.rate // 10))

    def reserve(self, count: int) -> float:
        """Book ``count`` bytes; returns how long to wait before sending them."""
        now = time.monotonic()
        self._free_at = max(self._free_at, now - self.burst) + count / self.rate
        return max(0.0, self._free_at - now)

    async def take(self, count: int) -> None:
        """Wait until ``count`` more bytes fit the rate."""
        delay = self.reserve(count)
        if delay > 0:
            await asyncio.sleep(delay)
