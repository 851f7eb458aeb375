"""The per-owner creation rate limit: token buckets with bounded memory."""

from __future__ import annotations

import pytest

from app.errors import TooManyRequests
from app.ops.limits import CreationRateLimiter


def test_owner_past_its_burst_gets_429_with_retry_after() -> None:
    limiter = CreationRateLimiter(per_minute=60, burst=2)
    limiter.take("alice")
    limiter.take("alice")
    with pytest.raises(TooManyRequests) as refused:
        limiter.take("alice")
    assert refused.value.headers == {"Retry-After": "1"}
    limiter.take("bob")  # another owner has a bucket of its own


def test_refilled_buckets_are_forgotten_so_memory_stays_bounded() -> None:
    limiter = CreationRateLimiter(per_minute=6_000_000, burst=5, prune_above=100)
    for number in range(10_000):
        limiter.take(f"owner-{number}")
    # Each bucket refills within microseconds here, so pruning keeps the map small.
    assert limiter.tracked_owners <= 200


def test_throttled_owners_are_kept_while_pruning() -> None:
    limiter = CreationRateLimiter(per_minute=1, burst=1, prune_above=10)
    for number in range(50):
        limiter.take(f"owner-{number}")  # every bucket is empty now, refill takes a minute
    for number in range(50):
        with pytest.raises(TooManyRequests):
            limiter.take(f"owner-{number}")
    assert limiter.tracked_owners == 50
