"""The byte quota after creation holds for the whole cluster: two apps (two nodes) on one
PostgreSQL database, bodies of unknown size racing on both, never overshoot (issue 14).

The racers run in threads against synchronous test clients, so they really overlap (each
app serves them concurrently on its own event loop). A gate holds every racer at its first
body read until all of them got there: by then each one has claimed its upload and read
what the quota leaves, so only the check where the bytes are committed can keep the total
within the quota.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import anyio.to_thread
import pytest
from litestar.testing import TestClient
from sqlalchemy import event

from app.db.engine import create_engine, create_session_factory, migrate
from app.db.models import File
from app.db.uploads import UploadRepository
from app.main import FerryApp, create_app
from app.ops.limits import OwnerQuotas
from app.settings import Settings
from tests.conftest import MakeSettings
from tests.integration.test_ops import _with_owner
from tests.integration.tus_helpers import OCTETS, TUS, path_of
from tests.support.services import postgres_database

QUOTA = 1000
BODY = 300
RACERS = 6
ALICE = {"X-Test-Owner": "alice"}
Node = TestClient[FerryApp]


@pytest.fixture
def database_url() -> Iterator[str]:
    """PostgreSQL only: several nodes need it."""
    with postgres_database() as url:
        yield url


def _gated(app: FerryApp, gate: threading.Barrier) -> FerryApp:
    """Requests marked ``X-Test-Gate`` wait at their first body read for every racer."""
    inner = app.asgi_handler

    async def handler(scope: Any, receive: Any, send: Any) -> None:
        if b"x-test-gate" not in dict(scope.get("headers", [])):
            await inner(scope, receive, send)
            return
        waited = False

        async def gated_receive() -> Any:
            nonlocal waited
            if not waited:
                waited = True
                with contextlib.suppress(threading.BrokenBarrierError):
                    await anyio.to_thread.run_sync(gate.wait, 20)
            return await receive()

        await inner(scope, gated_receive, send)

    app.asgi_handler = handler
    return app


@pytest.fixture
def gate() -> threading.Barrier:
    return threading.Barrier(RACERS)


@pytest.fixture(params=["local", "s3"])
def two_nodes(
    request: pytest.FixtureRequest, make_settings: MakeSettings, gate: threading.Barrier
) -> Iterator[list[Node]]:
    """Two nodes on one database (on S3: bytes are shipped before the commit decides)."""
    overrides: dict[str, Any] = {}
    if request.param == "s3":
        endpoint = request.getfixturevalue("seaweed")
        overrides = endpoint.settings_overrides(request.getfixturevalue("s3_prefix"))
    settings = make_settings(quota_bytes=QUOTA, **overrides)
    migrate(settings)
    with contextlib.ExitStack() as stack:
        nodes = [
            stack.enter_context(
                TestClient(
                    app=_gated(_with_owner(create_app(settings)), gate),
                    base_url="http://ferry.local",
                )
            )
            for _ in range(2)
        ]
        yield nodes


def _race(requests: list[Any]) -> list[Any]:
    with ThreadPoolExecutor(max_workers=len(requests)) as pool:
        return list(pool.map(lambda request: request(), requests))


def _chunked(data: bytes) -> Iterator[bytes]:
    yield data


def test_concurrent_appends_of_unknown_length_on_two_nodes_never_overshoot_the_quota(
    two_nodes: list[Node],
) -> None:
    paths = []
    for number in range(RACERS):
        created = two_nodes[number % 2].post(
            "/files/", headers={**TUS, **ALICE, "Upload-Defer-Length": "1"}
        )
        assert created.status_code == 201
        paths.append(path_of(created.headers["location"]))

    def append(number: int) -> Any:
        headers = {**TUS, **ALICE, "Upload-Offset": "0", "Content-Type": OCTETS}
        return two_nodes[number % 2].patch(
            paths[number], content=b"x" * BODY, headers={**headers, "X-Test-Gate": "1"}
        )

    responses = _race([lambda number=number: append(number) for number in range(RACERS)])
    statuses = sorted(response.status_code for response in responses)
    assert statuses == [204] * 3 + [413] * 3, statuses
    assert all("FERRY_QUOTA_BYTES" in r.text for r in responses if r.status_code == 413)
    offsets = {
        path: int(two_nodes[0].head(path, headers={**TUS, **ALICE}).headers["upload-offset"])
        for path in paths
    }
    assert sorted(offsets.values()) == [0] * 3 + [BODY] * 3
    # A refused body left nothing behind: the upload goes on from 0 with what still fits.
    refused = next(path for path, offset in offsets.items() if offset == 0)
    rest = QUOTA - 3 * BODY
    finished = two_nodes[1].patch(
        refused,
        content=b"z" * rest,
        headers={
            **TUS,
            **ALICE,
            "Upload-Offset": "0",
            "Content-Type": OCTETS,
            "Upload-Length": str(rest),
        },
    )
    assert finished.status_code == 204, finished.text
    assert two_nodes[0].get(refused, headers=ALICE).content == b"z" * rest


def test_concurrent_chunked_puts_on_two_nodes_never_overshoot_the_quota(
    two_nodes: list[Node],
) -> None:
    def put(number: int) -> Any:
        return two_nodes[number % 2].put(
            f"/api/files/racer{number}.bin",
            content=_chunked(b"y" * BODY),
            headers={**ALICE, "X-Test-Gate": "1"},
        )

    responses = _race([lambda number=number: put(number) for number in range(RACERS)])
    statuses = sorted(response.status_code for response in responses)
    assert statuses == [201] * 3 + [413] * 3, statuses
    listed = two_nodes[1].get("/api/files", headers=ALICE)
    assert listed.status_code == 200
    assert sum(item["size"] for item in listed.json()["items"]) == 3 * BODY


def test_concurrent_declared_lengths_on_two_nodes_never_overshoot_the_quota(
    two_nodes: list[Node],
) -> None:
    paths = []
    for number in range(RACERS):
        created = two_nodes[number % 2].post(
            "/files/", headers={**TUS, **ALICE, "Upload-Defer-Length": "1"}
        )
        paths.append(path_of(created.headers["location"]))

    def declare(number: int) -> Any:
        headers = {**TUS, **ALICE, "Upload-Offset": "0", "Content-Type": OCTETS}
        return two_nodes[number % 2].patch(
            paths[number], content=b"", headers={**headers, "Upload-Length": str(BODY)}
        )

    responses = _race([lambda number=number: declare(number) for number in range(RACERS)])
    statuses = sorted(response.status_code for response in responses)
    assert statuses == [204] * 3 + [413] * 3, statuses


def _file_it(url: str, upload_id: uuid.UUID) -> None:
    """File an upload from another connection (another node), as its completion does."""

    async def file_it() -> None:
        engine = create_engine(url)
        try:
            repository = UploadRepository(
                create_session_factory(engine), node_id="b", lease_seconds=30, ttl_seconds=60
            )
            claim = await repository.claim_and_load(upload_id)
            assert claim is not None
            stored = File(
                id=upload_id,
                owner="alice",
                name="a.bin",
                size=BODY,
                sha256="0" * 64,
                content_type="application/octet-stream",
                category="other",
                storage="local",
                storage_key="other/a.bin",
            )
            await repository.complete_and_file(claim, stored)
        finally:
            await engine.dispose()

    asyncio.run(file_it())


async def test_an_upload_filed_while_the_quota_counts_is_counted_once(
    make_settings: MakeSettings,
) -> None:
    """Filing takes no quota lock: the count must read files and uploads in one snapshot,
    or an upload that becomes a file between two reads is in neither."""
    settings: Settings = make_settings(quota_bytes=QUOTA)
    await anyio.to_thread.run_sync(migrate, settings)
    url = settings.resolved_database_url
    engine = create_engine(url)
    try:
        sessions = create_session_factory(engine)
        repository = UploadRepository(sessions, node_id="a", lease_seconds=30, ttl_seconds=60)
        upload = repository.new_upload(
            owner="alice",
            length=BODY,
            metadata={},
            is_partial=False,
            concat_parts=None,
            storage="local",
        )
        await repository.create(upload)
        filed: list[bool] = []

        def file_it_after_the_first_count(
            _conn: Any, _cursor: Any, statement: str, *_: Any
        ) -> None:
            if filed or "FROM files" not in statement:
                return
            filed.append(True)
            filer = threading.Thread(target=_file_it, args=(url, upload.id))
            filer.start()
            filer.join(30)

        event.listen(engine.sync_engine, "after_cursor_execute", file_it_after_the_first_count)
        assert await OwnerQuotas(settings, sessions).room("alice") == QUOTA - BODY
        assert filed == [True]
        assert await OwnerQuotas(settings, sessions).room("alice") == QUOTA - BODY
    finally:
        await engine.dispose()
