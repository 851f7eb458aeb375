"""Quotas hold for the whole cluster: two apps (two nodes) on one database count each
other's uploads. (The in-process client sends one request at a time; the races themselves
are in test_cluster_quotas.py, with threads, and test_rate_limits.py.)"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import anyio.to_thread
import pytest
from litestar.testing import AsyncTestClient

from app.db.engine import migrate
from app.main import FerryApp, create_app
from tests.conftest import MakeSettings
from tests.integration.test_ops import _create, _with_owner
from tests.integration.tus_helpers import TUS


@pytest.fixture
async def two_nodes(make_settings: MakeSettings) -> AsyncIterator[list[AsyncTestClient[FerryApp]]]:
    settings = make_settings(quota_bytes=1000, quota_active_uploads=8)
    await anyio.to_thread.run_sync(migrate, settings)
    nodes = [
        AsyncTestClient(app=_with_owner(create_app(settings)), base_url="http://ferry.local")
        for _ in range(2)
    ]
    for node in nodes:
        await node.__aenter__()
    yield nodes
    for node in nodes:
        await node.__aexit__(None, None, None)


async def test_creations_by_one_owner_on_two_nodes_count_against_one_quota(
    two_nodes: list[AsyncTestClient[FerryApp]],
) -> None:
    responses = await asyncio.gather(*(_create(two_nodes[number % 2], 100) for number in range(24)))
    statuses = sorted(response.status_code for response in responses)
    assert statuses.count(201) == 8, statuses  # the unfinished-upload quota (8 x 100 bytes)
    assert set(statuses) <= {201, 413, 429}


async def test_creations_with_upload_on_two_nodes_count_against_the_byte_quota_at_once(
    two_nodes: list[AsyncTestClient[FerryApp]],
) -> None:
    """A creation-with-upload's row exists from the start when a quota applies."""
    headers = {
        **TUS,
        "Upload-Length": "400",
        "Content-Type": "application/offset+octet-stream",
        "X-Test-Owner": "alice",
    }
    responses = await asyncio.gather(
        *(
            two_nodes[number % 2].post("/files/", headers=headers, content=b"x" * 100)
            for number in range(6)
        )
    )
    accepted = [response for response in responses if response.status_code == 201]
    assert len(accepted) == 2, [response.status_code for response in responses]
    assert all(response.headers["upload-offset"] == "100" for response in accepted)
