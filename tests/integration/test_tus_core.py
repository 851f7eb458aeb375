"""tus 1.0.0 core protocol: versions, OPTIONS, HEAD, PATCH, method override, ids, CORS."""

from __future__ import annotations

import shutil
import uuid

import anyio.to_thread
import pytest
from litestar.testing import AsyncTestClient
from sqlalchemy import Connection, event

from app.db.engine import migrate
from app.main import create_app
from app.settings import Settings
from tests.conftest import MakeSettings
from tests.integration.tus_helpers import (  # noqa: F401 - fixtures for this module
    OCTETS,
    TUS,
    Client,
    b64,
    create,
    database_url,
    head,
    patch,
    path_of,
    repeating_client,
    staged_bytes,
    staging_file,
    tus_postgres_database,
    upload_id_of,
)


async def test_options_describes_the_server_without_needing_tus_resumable(
    client: Client, settings: Settings
) -> None:
    for path in ("/files/", f"/files/{uuid.uuid4()}"):
        response = await client.options(path)
        assert response.status_code in (200, 204)
        assert response.headers["tus-resumable"] == "1.0.0"
        assert response.headers["tus-version"] == "1.0.0"
        assert response.headers["tus-max-size"] == str(settings.max_size)
        extensions = set(response.headers["tus-extension"].split(","))
        assert extensions >= {
            "creation",
            "creation-with-upload",
            "creation-defer-length",
            "termination",
            "checksum",
            "concatenation",
            "concatenation-unfinished",
            "expiration",
        }
        algorithms = set(response.headers["tus-checksum-algorithm"].split(","))
        assert algorithms >= {"sha1", "sha256", "md5", "crc32c"}


async def test_request_without_supported_version_is_412_with_tus_version_and_not_processed(
    client: Client, settings: Settings
) -> None:
    path = await create(client, 10)
    for version in (None, "0.2.2", "2.0.0", ""):
        headers = {} if version is None else {"Tus-Resumable": version}
        responses = [
            await client.post("/files/", headers={**headers, "Upload-Length": "10"}),
            await client.patch(
                path,
                content=b"x",
                headers={**headers, "Upload-Offset": "0", "Content-Type": OCTETS},
            ),
            await client.delete(path, headers=headers),
        ]
        if version is not None:
            responses.append(await client.head(path, headers=headers))
        for response in responses:
            assert response.status_code == 412, (version, response.request.method)
            assert response.headers["tus-version"] == "1.0.0"
            assert response.headers["tus-resumable"] == "1.0.0"
    assert (await head(client, path)).headers["upload-offset"] == "0"
    assert staged_bytes(settings.data_dir, path) == b""
    assert [entry.name for entry in (settings.data_dir / "staging").iterdir()] in (
        [],
        [upload_id_of(path)],
    ), "the refused requests staged nothing"


async def test_every_response_carries_tus_resumable_including_404_and_errors(
    client: Client,
) -> None:
    missing = f"/files/{uuid.uuid4()}"
    responses = [
        await client.head(missing, headers=TUS),
        await client.patch(
            missing, content=b"x", headers={**TUS, "Upload-Offset": "0", "Content-Type": OCTETS}
        ),
        await client.delete(missing, headers=TUS),
        await client.get(missing),
        await client.post("/files/", headers={**TUS, "Upload-Length": "abc"}),
        await client.get("/files/not-a-uuid"),
        await client.put(missing, content=b"x", headers=TUS),
    ]
    assert [r.status_code for r in responses] == [404, 404, 404, 404, 400, 404, 405]
    for response in responses:
        assert response.headers["tus-resumable"] == "1.0.0"


async def test_head_reports_offset_and_length_and_forbids_caching(client: Client) -> None:
    path = await create(client, 10)
    assert (await patch(client, path, 0, b"abcd")).status_code == 204
    response = await head(client, path)
    assert response.status_code == 200
    assert response.headers["upload-offset"] == "4"
    assert response.headers["upload-length"] == "10"
    assert "no-store" in response.headers["cache-control"]
    assert response.content == b""


async def test_patches_append_in_order_and_an_empty_patch_changes_nothing(client: Client) -> None:
    path = await create(client, 6)
    empty = await patch(client, path, 0, b"")
    assert empty.status_code == 204
    assert empty.headers["upload-offset"] == "0"
    first = await patch(client, path, 0, b"abc")
    assert first.status_code == 204
    assert first.headers["upload-offset"] == "3"
    second = await patch(client, path, 3, b"def")
    assert second.status_code == 204
    assert second.headers["upload-offset"] == "6"
    assert (await client.get(path)).content == b"abcdef"


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_a_patch_flushes_the_sqlite_log_for_its_offset_but_not_for_taking_the_lease(
    client: Client,
) -> None:
    """Only the offset must survive a power loss: a lost lease is given back at start-up."""
    path = await create(client, 10)
    levels: list[int] = []  # PRAGMA synchronous of each upload-write commit: 1 NORMAL, 2 FULL

    def record(connection: Connection) -> None:
        levels.append(connection.exec_driver_sql("PRAGMA synchronous").scalar_one())

    writes = client.app.state.ferry.repository.writes.engine  # type: ignore[attr-defined]
    event.listen(writes, "commit", record)
    try:
        assert (await patch(client, path, 0, b"0123456789")).status_code == 204
    finally:
        event.remove(writes, "commit", record)
    assert levels[0] == 1, "the claim commits without an fsync of the log"
    assert levels[-1] == 2, "the completion (offset and file row) is fsync'ed"
    assert (await head(client, path)).headers["upload-offset"] == "10"


async def test_patch_with_wrong_offset_returns_409_and_keeps_bytes(
    client: Client, settings: Settings
) -> None:
    path = await create(client, 10)
    await patch(client, path, 0, b"abcd")
    for wrong in (0, 2, 5, 9):
        response = await patch(client, path, wrong, b"ZZZZ")
        assert response.status_code == 409
    assert (await head(client, path)).headers["upload-offset"] == "4"
    assert staged_bytes(settings.data_dir, path) == b"abcd"
    assert (await patch(client, path, 4, b"efghij")).status_code == 204
    assert (await client.get(path)).content == b"abcdefghij"


async def test_patch_with_wrong_content_type_is_415_and_stores_nothing(
    client: Client, settings: Settings
) -> None:
    path = await create(client, 10)
    for content_type in (None, "application/octet-stream", "text/plain", "application/offset"):
        headers = {**TUS, "Upload-Offset": "0"}
        if content_type is not None:
            headers["Content-Type"] = content_type
        response = await client.patch(path, content=b"abc", headers=headers)
        assert response.status_code == 415, content_type
    assert (await head(client, path)).headers["upload-offset"] == "0"
    assert staged_bytes(settings.data_dir, path) == b""
    with_parameter = await client.patch(
        path,
        content=b"abc",
        headers={**TUS, "Upload-Offset": "0", "Content-Type": f"{OCTETS}; charset=binary"},
    )
    assert with_parameter.status_code == 204


async def test_patch_with_missing_or_malformed_upload_offset_is_400(client: Client) -> None:
    path = await create(client, 10)
    missing = await client.patch(path, content=b"abc", headers={**TUS, "Content-Type": OCTETS})
    assert missing.status_code == 400
    for offset in ("+5", "5.0", " 1e3", "-1", "0x0", "1" * 20, "", "abc", "9223372036854775808"):
        response = await client.patch(
            path, content=b"abc", headers={**TUS, "Upload-Offset": offset, "Content-Type": OCTETS}
        )
        assert response.status_code == 400, offset
    assert (await head(client, path)).headers["upload-offset"] == "0"


async def test_patch_past_the_upload_length_is_413_and_stores_nothing(
    client: Client, settings: Settings
) -> None:
    path = await create(client, 4)
    response = await patch(client, path, 0, b"abcdefgh")
    assert response.status_code == 413
    assert (await head(client, path)).headers["upload-offset"] == "0"
    assert staged_bytes(settings.data_dir, path) == b""


async def test_method_override_lets_post_act_as_patch_and_delete(client: Client) -> None:
    path = await create(client, 5)
    patched = await client.post(
        path,
        content=b"hello",
        headers={
            **TUS,
            "X-HTTP-Method-Override": "PATCH",
            "Upload-Offset": "0",
            "Content-Type": OCTETS,
        },
    )
    assert patched.status_code == 204
    assert patched.headers["upload-offset"] == "5"
    assert (await client.get(path)).content == b"hello"

    other = await create(client, 5)
    deleted = await client.post(other, headers={**TUS, "X-HTTP-Method-Override": "DELETE"})
    assert deleted.status_code == 204
    assert (await head(client, other)).status_code in (404, 410)


async def test_x_http_method_override_with_unknown_value_answers_400_and_changes_nothing(
    client: Client,
) -> None:
    path = await create(client, 5)
    for value in ("GET", "HEAD", "PUT", "POST", "FOO", "patch, delete", ""):
        response = await client.post(
            path,
            content=b"hello",
            headers={
                **TUS,
                "X-HTTP-Method-Override": value,
                "Upload-Offset": "0",
                "Content-Type": OCTETS,
            },
        )
        assert response.status_code == 400, value
        assert "X-HTTP-Method-Override" in response.text
        assert response.headers["tus-resumable"] == "1.0.0"
    assert (await head(client, path)).headers["upload-offset"] == "0"


async def test_two_different_x_http_method_overrides_answer_400(client: Client) -> None:
    path = await create(client, 5)
    overrides = [("X-HTTP-Method-Override", "PATCH"), ("X-HTTP-Method-Override", "DELETE")]
    async with repeating_client(client) as raw:
        response = await raw.post(path, headers=[*TUS.items(), *overrides])
    assert response.status_code == 400
    assert (await head(client, path)).status_code == 200


@pytest.mark.parametrize(
    ("name", "first", "second"),
    [
        ("Upload-Length", "10", "20"),
        ("Upload-Defer-Length", "1", "2"),
        ("Upload-Metadata", f"a {b64('1')}", f"b {b64('2')}"),
        ("Upload-Concat", "partial", "final;/files/x"),
        ("Tus-Resumable", "1.0.0", "0.2.2"),
    ],
)
async def test_creation_with_two_different_values_of_a_tus_header_is_400_and_creates_nothing(
    client: Client, settings: Settings, name: str, first: str, second: str
) -> None:
    base = {"Tus-Resumable": "1.0.0", "Upload-Length": "10"}
    base.pop(name, None)
    if name in {"Upload-Defer-Length", "Upload-Concat"}:
        base.pop("Upload-Length")
    async with repeating_client(client) as raw:
        response = await raw.post("/files/", headers=[*base.items(), (name, first), (name, second)])
    assert response.status_code == 400, response.text
    assert name in response.text
    assert list((settings.data_dir / "staging").iterdir()) == []


@pytest.mark.parametrize(
    ("name", "first", "second"),
    [
        ("Upload-Offset", "0", "5"),
        ("Upload-Checksum", f"sha1 {b64(b'x' * 20)}", f"md5 {b64(b'y' * 16)}"),
        ("Upload-Length", "5", "6"),
        ("Tus-Resumable", "1.0.0", "1.0.1"),
    ],
)
async def test_patch_with_two_different_values_of_a_tus_header_is_400_and_stores_nothing(
    client: Client, name: str, first: str, second: str
) -> None:
    path = await create(client, None, Upload_Defer_Length="1")
    base = {"Tus-Resumable": "1.0.0", "Upload-Offset": "0", "Content-Type": OCTETS}
    base.pop(name, None)
    async with repeating_client(client) as raw:
        response = await raw.patch(
            path, content=b"hello", headers=[*base.items(), (name, first), (name, second)]
        )
    assert response.status_code == 400, response.text
    assert name in response.text
    assert (await head(client, path)).headers["upload-offset"] == "0"


async def test_head_and_delete_with_two_different_tus_resumable_values_are_400(
    client: Client,
) -> None:
    path = await create(client, 5)
    twice = [("Tus-Resumable", "1.0.0"), ("Tus-Resumable", "2.0.0")]
    async with repeating_client(client) as raw:
        assert (await raw.head(path, headers=twice)).status_code == 400
        assert (await raw.delete(path, headers=twice)).status_code == 400
    assert (await head(client, path)).status_code == 200


async def test_identical_repeats_of_a_tus_header_are_accepted(client: Client) -> None:
    async with repeating_client(client) as raw:
        created = await raw.post(
            "/files/",
            headers=[*TUS.items(), *TUS.items(), ("Upload-Length", "5"), ("Upload-Length", " 5")],
        )
        assert created.status_code == 201, created.text
        offsets = [("Upload-Offset", "0"), ("Upload-Offset", "0")]
        patched = await raw.patch(
            path_of(created.headers["location"]),
            content=b"hello",
            headers=[*TUS.items(), *offsets, ("Content-Type", OCTETS)],
        )
    assert patched.status_code == 204, patched.text


async def test_malformed_upload_id_is_404_without_touching_disk(
    client: Client, settings: Settings
) -> None:
    before = sorted(str(p) for p in settings.data_dir.rglob("*"))
    for bad_id in (
        "not-a-uuid",
        "..%2F..%2Fetc%2Fpasswd",
        "%2E%2E%2F%2E%2E%2Fetc%2Fpasswd",
        "12345678123456781234567812345678",
        "ABCDEF12-1234-5678-1234-567812345678",
    ):
        url = f"/files/{bad_id}"
        responses = [
            await client.head(url, headers=TUS),
            await client.patch(
                url, content=b"x", headers={**TUS, "Upload-Offset": "0", "Content-Type": OCTETS}
            ),
            await client.delete(url, headers=TUS),
            await client.get(url),
            await client.head(url),
        ]
        assert [r.status_code for r in responses] == [404] * 5, bad_id
    assert sorted(str(p) for p in settings.data_dir.rglob("*")) == before
    assert (await head(client, f"/files/{uuid.uuid4()}")).status_code == 404


async def test_health_is_200_when_database_and_storage_work_and_503_when_storage_is_gone(
    client: Client, settings: Settings
) -> None:
    response = await client.get("/health")
    assert response.status_code == 200
    shutil.rmtree(settings.files_dir)  # the volume holding the files went away
    broken = await client.get("/health")
    assert broken.status_code == 503


async def test_cors_preflight_and_exposed_headers_for_an_allowed_origin(client: Client) -> None:
    preflight = await client.options(
        "/files/",
        headers={
            "Origin": "https://app.example",
            "Access-Control-Request-Method": "PATCH",
            "Access-Control-Request-Headers": "tus-resumable, upload-offset, content-type",
        },
    )
    assert preflight.status_code in (200, 204)
    assert preflight.headers["access-control-allow-origin"] in ("*", "https://app.example")
    assert "PATCH" in preflight.headers["access-control-allow-methods"]
    allowed = preflight.headers["access-control-allow-headers"].lower()
    assert "*" in allowed or "upload-offset" in allowed

    response = await client.post(
        "/files/", headers={**TUS, "Upload-Length": "3", "Origin": "https://app.example"}
    )
    assert response.status_code == 201
    assert response.headers["access-control-allow-origin"] in ("*", "https://app.example")
    exposed = {
        h.strip().lower() for h in response.headers["access-control-expose-headers"].split(",")
    }
    assert exposed >= {
        "location",
        "upload-offset",
        "upload-length",
        "tus-resumable",
        "upload-expires",
    }


async def test_cors_answers_only_configured_origins(make_settings: MakeSettings) -> None:
    custom = make_settings(cors_origins=("https://good.example",))
    await anyio.to_thread.run_sync(migrate, custom)
    async with AsyncTestClient(app=create_app(custom)) as strict:
        good = await strict.post(
            "/files/", headers={**TUS, "Upload-Length": "1", "Origin": "https://good.example"}
        )
        evil = await strict.post(
            "/files/", headers={**TUS, "Upload-Length": "1", "Origin": "https://evil.example"}
        )
    assert good.headers["access-control-allow-origin"] == "https://good.example"
    assert "access-control-allow-origin" not in evil.headers
