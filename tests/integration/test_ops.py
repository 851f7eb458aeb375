"""Operations in-process: quotas, rate limit, pre-create hook, metrics, health."""

from __future__ import annotations

import base64
import json
import re
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import anyio.to_thread
import pytest
from litestar.testing import AsyncTestClient

from app.db.engine import migrate
from app.main import FerryApp, create_app
from app.ops.hooks import PreCreateHook
from tests.conftest import MakeSettings
from tests.integration.tus_helpers import TUS, b64, path_of
from tests.support.http_receiver import Answer, HttpReceiver, Received

OCTETS = {"Content-Type": "application/offset+octet-stream"}
AppFactory = Callable[..., Any]


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    """Limits, hooks and metrics do not depend on the database engine: SQLite is enough."""
    return f"sqlite+aiosqlite:///{tmp_path / 'ferry.db'}"


@pytest.fixture
async def ferry(make_settings: MakeSettings) -> AsyncIterator[AppFactory]:
    """Start an app with setting overrides; keys are not needed: an owner is set by header."""
    clients: list[AsyncTestClient[FerryApp]] = []

    async def start(**overrides: Any) -> AsyncTestClient[FerryApp]:
        settings = make_settings(**overrides)
        await anyio.to_thread.run_sync(migrate, settings)
        client = AsyncTestClient(
            app=_with_owner(create_app(settings)), base_url="http://ferry.local"
        )
        await client.__aenter__()
        clients.append(client)
        return client

    yield start
    for client in clients:
        await client.__aexit__(None, None, None)


def _with_owner(app: FerryApp) -> FerryApp:
    """With auth off, take the owner from ``X-Test-Owner`` (limits are per owner)."""
    inner = app.asgi_handler

    async def handler(scope: Any, receive: Any, send: Any) -> None:
        owner = dict(scope.get("headers", [])).get(b"x-test-owner")
        if owner:
            scope["ferry_owner"] = owner.decode()
        await inner(scope, receive, send)

    app.asgi_handler = handler
    return app


async def _create(
    client: AsyncTestClient[FerryApp], length: int, owner: str = "alice", **extra: str
) -> Any:
    return await client.post(
        "/files/", headers={**TUS, "Upload-Length": str(length), "X-Test-Owner": owner, **extra}
    )


async def test_byte_quota_refuses_an_upload_that_would_not_fit_with_413(ferry: AppFactory) -> None:
    client = await ferry(quota_bytes=1000)
    first = await _create(client, 600)
    assert first.status_code == 201
    refused = await _create(client, 500)
    assert refused.status_code == 413
    assert "quota" in refused.text
    assert (await _create(client, 500, owner="bob")).status_code == 201  # per owner
    # Terminating the first upload frees its reservation.
    path = path_of(first.headers["location"])
    assert (await client.delete(path, headers={**TUS, "X-Test-Owner": "alice"})).status_code == 204
    assert (await _create(client, 500)).status_code == 201


async def test_unfinished_upload_quota_answers_429_with_retry_after(ferry: AppFactory) -> None:
    client = await ferry(quota_active_uploads=2)
    assert (await _create(client, 1)).status_code == 201
    assert (await _create(client, 10)).status_code == 201
    refused = await _create(client, 10)
    assert refused.status_code == 429
    assert int(refused.headers["retry-after"]) > 0
    assert (await _create(client, 10, owner="bob")).status_code == 201


async def test_creation_rate_limit_answers_429_with_retry_after(ferry: AppFactory) -> None:
    client = await ferry(create_rate_per_minute=6, create_burst=3)
    statuses = [(await _create(client, 1)).status_code for _ in range(4)]
    assert statuses == [201, 201, 201, 429]
    refused = await _create(client, 1)
    assert refused.status_code == 429
    assert 1 <= int(refused.headers["retry-after"]) <= 10
    assert (await _create(client, 1, owner="bob")).status_code == 201


def _hook_decision(request: Received) -> Answer:
    question = request.json()
    name = question["metadata"].get("filename") or ""
    if name.endswith(".exe"):
        return Answer(403, json.dumps({"message": "no executables"}).encode())
    if name == "slow.bin":
        return Answer(200, b"{}", delay=3)
    if name == "huge.bin":
        return Answer(200, b"{" + b" " * 100_000 + b"}")
    if name == "broken.bin":
        return Answer(500)
    if name == "rename.txt":
        return Answer(
            200, json.dumps({"metadata": {"filename": "renamed.txt", "checked": "yes"}}).encode()
        )
    if name == "veto.txt":
        return Answer(200, json.dumps({"reject": True, "message": "vetoed by policy"}).encode())
    return Answer(200)


async def test_pre_create_hook_rejects_changes_metadata_and_fails_closed(ferry: AppFactory) -> None:
    receiver = HttpReceiver(respond=_hook_decision).start()
    try:
        client = await ferry(
            pre_create_hook_url=f"{receiver.url}/hook",
            hook_timeout_seconds=1.0,
            hook_max_response_bytes=4096,
        )

        async def create(name: str) -> Any:
            return await _create(client, 3, **{"Upload-Metadata": f"filename {b64(name)}"})

        rejected = await create("setup.exe")
        assert rejected.status_code == 403
        assert "no executables" in rejected.text
        vetoed = await create("veto.txt")
        assert vetoed.status_code == 403 and "vetoed by policy" in vetoed.text
        for failing in ("slow.bin", "huge.bin", "broken.bin"):
            assert (await create(failing)).status_code == 503, failing

        changed = await create("rename.txt")
        assert changed.status_code == 201
        status = await client.head(path_of(changed.headers["location"]), headers=TUS)
        metadata = dict(item.split(" ") for item in status.headers["upload-metadata"].split(","))
        assert base64.b64decode(metadata["filename"]) == b"renamed.txt"
        assert base64.b64decode(metadata["checked"]) == b"yes"
        assert (await create("plain.txt")).status_code == 201

        asked = receiver.received[0].json()
        assert asked["event"] == "pre-create"
        assert asked["owner"] == "alice"
        assert asked["length"] == 3
        assert asked["metadata"] == {"filename": "setup.exe"}
    finally:
        receiver.stop()


async def test_unreachable_pre_create_hook_refuses_with_503() -> None:
    import httpx

    from app.errors import ServiceUnavailable
    from app.settings import load_settings
    from tests.support.services import free_port

    settings = load_settings(
        {
            "FERRY_PRE_CREATE_HOOK_URL": f"http://127.0.0.1:{free_port()}/",
            "FERRY_HOOK_TIMEOUT_SECONDS": "1",
        },
        env_file=None,
    )
    async with httpx.AsyncClient() as http:
        hook = PreCreateHook(settings, http)
        with pytest.raises(ServiceUnavailable):
            await hook.review(owner="a", length=1, is_partial=False, is_final=False, metadata={})


def _metric(text: str, name: str, **labels: str) -> float:
    """The sum of ``name``'s samples whose labels include ``labels``."""
    total = 0.0
    for line in text.splitlines():
        match = re.match(rf"^{name}(\{{[^}}]*\}})? ([0-9.e+-]+)$", line)
        if match and all(
            f'{key}="{value}"' in (match.group(1) or "") for key, value in labels.items()
        ):
            total += float(match.group(2))
    return total


async def test_metrics_move_as_uploads_happen(ferry: AppFactory) -> None:
    client = await ferry()
    names = [
        "ferry_uploads_created_total",
        "ferry_uploads_finished_total",
        "ferry_bytes_received_total",
        "ferry_patch_duration_seconds_count",
        "ferry_http_responses_total",
        "ferry_upload_requests_failed_total",
        "ferry_storage_operation_seconds_count",
        "ferry_uploads_terminated_total",
    ]
    before = (await client.get("/metrics")).text
    created = await _create(client, 2048)
    path = path_of(created.headers["location"])
    patched = await client.patch(
        path, content=b"a" * 2048, headers={**TUS, **OCTETS, "Upload-Offset": "0"}
    )
    assert patched.status_code == 204
    wrong = await client.patch(path, content=b"b", headers={**TUS, **OCTETS, "Upload-Offset": "5"})
    assert wrong.status_code in {400, 409, 413}
    other = path_of((await _create(client, 5)).headers["location"])
    assert (await client.delete(other, headers=TUS)).status_code == 204
    after = (await client.get("/metrics")).text
    moved = {name: _metric(after, name) - _metric(before, name) for name in names}
    assert moved["ferry_uploads_created_total"] == 2
    assert moved["ferry_uploads_terminated_total"] == 1
    assert moved["ferry_uploads_finished_total"] == 1
    assert moved["ferry_bytes_received_total"] >= 2048
    assert moved["ferry_patch_duration_seconds_count"] == 2
    assert moved["ferry_http_responses_total"] >= 4
    assert moved["ferry_upload_requests_failed_total"] == 1
    assert moved["ferry_storage_operation_seconds_count"] >= 1
    assert "ferry_upload_requests_in_flight" in after
    assert "ferry_staging_disk_bytes" in after


async def test_a_running_app_samples_its_event_loop_lag_into_metrics(ferry: AppFactory) -> None:
    client = await ferry()
    name = "ferry_event_loop_lag_seconds_count"
    before = _metric((await client.get("/metrics")).text, name)
    samples = 0.0
    with anyio.move_on_after(5):
        while samples == 0:
            await anyio.sleep(0.05)
            samples = _metric((await client.get("/metrics")).text, name) - before
    assert samples > 0


async def test_metrics_count_simple_uploads_and_downloads_but_no_record_edits_or_links(
    ferry: AppFactory,
) -> None:
    client = await ferry()
    names = {
        "created": "ferry_uploads_created_total",
        "received": "ferry_bytes_received_total",
        "failed": "ferry_upload_requests_failed_total",
        "patch": "ferry_patch_duration_seconds_count",
        "sent": "ferry_download_bytes_sent_total",
    }
    before = (await client.get("/metrics")).text

    def moved(after: str, name: str, **labels: str) -> float:
        return _metric(after, name, **labels) - _metric(before, name, **labels)

    body = bytes(range(256)) * 12
    put = await client.put("/api/files/named/data.bin", content=body)
    assert put.status_code == 201, put.text
    uid = put.json()["uid"]
    form = await client.post(
        "/api/files", files=[("a", ("a.txt", b"first\n")), ("b", ("b.txt", b"second\n"))]
    )
    assert form.status_code == 201, form.text
    form_bytes = int(form.request.headers["content-length"])
    after_uploads = (await client.get("/metrics")).text
    assert moved(after_uploads, names["created"]) == 3
    assert moved(after_uploads, names["received"]) == len(body) + form_bytes

    # Not uploads: editing a record, signing links (found or not).
    assert (await client.patch(f"/api/files/{uid}", json={"name": "x.bin"})).status_code == 200
    assert (await client.post(f"/files/{uid}/link")).status_code == 200
    assert (await client.post(f"/files/{uuid.uuid4()}/link")).status_code == 404
    # Downloads: whole, ranged, unsatisfiable, HEAD; a tus HEAD is no download.
    assert (await client.get(f"/files/{uid}")).status_code == 200
    assert (await client.get(f"/files/{uid}", headers={"Range": "bytes=0-99"})).status_code == 206
    assert (await client.get(f"/files/{uid}", headers={"Range": "bytes=9999-"})).status_code == 416
    assert (await client.head(f"/files/{uid}")).status_code == 200
    assert (await client.head(f"/files/{uid}", headers=TUS)).status_code == 200
    after = (await client.get("/metrics")).text
    for name in ("created", "received", "failed", "patch"):
        assert moved(after, names[name]) == moved(after_uploads, names[name]), name
    downloads = "ferry_download_requests_total"
    assert moved(after, downloads, method="GET", status="200") == 1
    assert moved(after, downloads, method="GET", status="206") == 1
    assert moved(after, downloads, method="GET", status="416") == 1
    assert moved(after, downloads, method="HEAD") == 1
    ranges = "ferry_download_range_requests_total"
    assert moved(after, ranges, status="206") == moved(after, ranges, status="416") == 1
    assert moved(after, ranges) == 2
    assert moved(after, names["sent"]) == len(body) + 100  # no error text, no HEAD body
    assert _metric(after, "ferry_upload_requests_in_flight") == 0
    assert "ferry_active_locks" not in after
    assert not re.search(r"^\w+_created(\{.*\})? ", after, re.MULTILINE)


async def test_x_http_method_override_with_unknown_value_adds_no_metric_label(
    ferry: AppFactory,
) -> None:
    client = await ferry()
    await client.get("/metrics")
    before = (await client.get("/metrics")).text.splitlines()
    overrides = [f"M{index:04d}" for index in range(200)]
    for override in overrides:
        response = await client.post("/files/", headers={"X-HTTP-Method-Override": override})
        assert response.status_code == 400
    after = (await client.get("/metrics")).text
    assert not any(override in after for override in overrides)
    # At most a series for the 400s and the histogram of a new label set; never one per value.
    assert len(after.splitlines()) <= len(before) + 3


async def test_unknown_http_methods_are_counted_as_other(ferry: AppFactory) -> None:
    client = await ferry()
    for method in ("FOO", "BREW", "PROPFIND", "MKCOL"):
        assert (await client.request(method, "/health")).status_code >= 400
    after = (await client.get("/metrics")).text
    assert re.search(r'ferry_http_responses_total\{method="other",status="4\d\d"\} 4\.0', after)
    for method in ("FOO", "BREW", "PROPFIND", "MKCOL"):
        assert f'method="{method}"' not in after


async def test_health_live_and_ready_report_database_and_storage(ferry: AppFactory) -> None:
    client = await ferry()
    live = await client.get("/health/live")
    assert live.status_code == 200
    ready = await client.get("/health/ready")
    assert ready.status_code == 200
    assert ready.json() == {"database": True, "storage": True, "accepting": True}
    assert "x-request-id" in ready.headers
    echoed = await client.get("/health/live", headers={"X-Request-Id": "trace-1234abcd"})
    assert echoed.headers["x-request-id"] == "trace-1234abcd"
