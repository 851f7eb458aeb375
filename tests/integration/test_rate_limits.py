"""The per-owner creation rate limit: one token bucket per owner in the database, shared by
every process and node."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from app.composition import group_commit
from app.db.engine import create_engine, create_session_factory
from app.errors import TooManyRequests
from app.ops.limits import CreationRateLimiter
from app.settings import Settings

Node = Callable[..., CreationRateLimiter]
"""A limiter on a node of its own (its own group commit), sharing the database."""


@pytest.fixture
async def node(settings: Settings) -> AsyncIterator[Node]:
    engine = create_engine(settings.resolved_database_url)
    sessions = create_session_factory(engine)
    started = []

    def limiter(**limits: Any) -> CreationRateLimiter:
        writes = group_commit(settings.resolved_database_url, sessions)
        started.append(writes)
        return CreationRateLimiter(writes, **limits)

    try:
        yield limiter
    finally:
        for writes in started:
            writes.close()
        await engine.dispose()


async def test_owner_past_its_burst_gets_429_with_retry_after(
    node: Node,
) -> None:
    limiter = node(per_minute=60, burst=2)
    await limiter.take("alice")
    await limiter.take("alice")
    with pytest.raises(TooManyRequests) as refused:
        await limiter.take("alice")
    assert refused.value.headers == {"Retry-After": "1"}
    await limiter.take("bob")  # another owner has a bucket of its own


async def test_nodes_sharing_a_database_share_each_owners_bucket(
    node: Node,
) -> None:
    node_a = node(per_minute=1, burst=3)
    node_b = node(per_minute=1, burst=3)
    await node_a.take("carol")
    await node_b.take("carol")
    await node_a.take("carol")
    with pytest.raises(TooManyRequests):
        await node_b.take("carol")


async def test_concurrent_creations_never_spend_more_than_the_burst(
    node: Node,
) -> None:
    limiters = [node(per_minute=1, burst=5) for _ in range(4)]

    async def take(number: int) -> bool:
        try:
            await limiters[number % 4].take("dave")
        except TooManyRequests:
            return False
        return True

    outcomes = await asyncio.gather(*(take(number) for number in range(20)))
    assert sum(outcomes) == 5


async def test_a_node_whose_clock_lags_takes_no_tokens_away(
    node: Node,
) -> None:
    """A request that read the clock before another committed, or a node a second behind,
    spends one token like any other (the bucket's time never moves back)."""
    node_a = node(per_minute=1, burst=2)
    node_b = node(per_minute=1, burst=2, clock=lambda: time.time() - 1)
    await node_a.take("frank")
    await node_b.take("frank")
    with pytest.raises(TooManyRequests):
        await node_a.take("frank")


async def test_an_empty_bucket_refills_with_time(
    node: Node,
) -> None:
    limiter = node(per_minute=600, burst=1)  # one token per 0.1 s
    await limiter.take("erin")
    with pytest.raises(TooManyRequests):
        await limiter.take("erin")
    await asyncio.sleep(0.25)
    await limiter.take("erin")
