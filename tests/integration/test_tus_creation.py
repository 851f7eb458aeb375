"""tus creation, creation-with-upload and creation-defer-length."""

from __future__ import annotations

import anyio.to_thread
from litestar.testing import AsyncTestClient

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
    staging_file,
    tus_postgres_database,
)


async def test_post_creates_upload_with_location_and_echoes_metadata_on_head(
    client: Client, settings: Settings
) -> None:
    metadata = f"filename {b64('report.pdf')},is_confidential,filetype {b64('application/pdf')}"
    response = await client.post(
        "/files/", headers={**TUS, "Upload-Length": "100", "Upload-Metadata": metadata}
    )
    assert response.status_code == 201
    location = response.headers["location"]
    assert location.startswith("http://") and "/files/" in location
    assert "upload-offset" not in response.headers
    path = path_of(location)
    status = await head(client, path)
    assert status.headers["upload-offset"] == "0"
    assert status.headers["upload-length"] == "100"
    echoed = dict(
        pair.split(" ") if " " in pair else (pair, None)
        for pair in status.headers["upload-metadata"].split(",")
    )
    assert echoed == {
        "filename": b64("report.pdf"),
        "is_confidential": None,
        "filetype": b64("application/pdf"),
    }


async def test_empty_upload_metadata_header_is_accepted(client: Client) -> None:
    response = await client.post(
        "/files/", headers={**TUS, "Upload-Length": "5", "Upload-Metadata": ""}
    )
    assert response.status_code == 201
    status = await head(client, path_of(response.headers["location"]))
    assert status.headers.get("upload-metadata", "") == ""


async def test_bad_creation_headers_are_400_and_create_nothing(
    client: Client, settings: Settings
) -> None:
    bad_headers = [
        {},  # neither Upload-Length nor Upload-Defer-Length
        {"Upload-Length": "5", "Upload-Defer-Length": "1"},
        {"Upload-Defer-Length": "0"},
        {"Upload-Length": "-1"},
        {"Upload-Length": "+5"},
        {"Upload-Length": "5.0"},
        {"Upload-Length": "1" * 20},
        {"Upload-Length": "5", "Upload-Metadata": "filename not*base64"},
        {"Upload-Length": "5", "Upload-Metadata": f"a {b64('1')},a {b64('2')}"},
        {"Upload-Length": "5", "Upload-Metadata": "a b c"},
    ]
    for headers in bad_headers:
        response = await client.post("/files/", headers={**TUS, **headers})
        assert response.status_code == 400, headers
    assert list((settings.data_dir / "staging").iterdir()) == []


async def test_final_naming_a_malformed_url_is_400(client: Client) -> None:
    for concat in (
        "final;http://[::1/files/x",
        "final;http://[/files/x",
        "final;http://a:b/files/x",
    ):
        response = await client.post("/files/", headers={**TUS, "Upload-Concat": concat})
        assert response.status_code == 400, (concat, response.text)
        assert "Upload-Concat" in response.text


async def test_metadata_over_the_caps_is_400_for_keys_and_431_for_size(
    make_settings: MakeSettings,
) -> None:
    custom = make_settings(max_metadata_keys=3, max_metadata_bytes=200)
    await anyio.to_thread.run_sync(migrate, custom)
    async with AsyncTestClient(app=create_app(custom)) as small:
        keys = ",".join(f"k{i} {b64('v')}" for i in range(4))
        too_many = await small.post(
            "/files/", headers={**TUS, "Upload-Length": "1", "Upload-Metadata": keys}
        )
        too_big = await small.post(
            "/files/",
            headers={**TUS, "Upload-Length": "1", "Upload-Metadata": f"name {b64('x' * 300)}"},
        )
        at_cap = await small.post(
            "/files/",
            headers={**TUS, "Upload-Length": "1", "Upload-Metadata": keys.rsplit(",", 1)[0]},
        )
    assert too_many.status_code == 400
    assert too_big.status_code == 431
    assert at_cap.status_code == 201
    assert too_many.headers["tus-resumable"] == too_big.headers["tus-resumable"] == "1.0.0"


async def test_upload_larger_than_ferry_max_size_is_413_and_tus_max_size_says_so(
    make_settings: MakeSettings,
) -> None:
    custom = make_settings(max_size=1000)
    await anyio.to_thread.run_sync(migrate, custom)
    async with AsyncTestClient(app=create_app(custom)) as small:
        options = await small.options("/files/")
        over = await small.post("/files/", headers={**TUS, "Upload-Length": "1001"})
        at_limit = await small.post("/files/", headers={**TUS, "Upload-Length": "1000"})
        deferred = path_of(
            (await small.post("/files/", headers={**TUS, "Upload-Defer-Length": "1"})).headers[
                "location"
            ]
        )
        deferred_too_big = await small.patch(
            deferred,
            content=b"",
            headers={**TUS, "Upload-Offset": "0", "Upload-Length": "1001", "Content-Type": OCTETS},
        )
    assert options.headers["tus-max-size"] == "1000"
    assert over.status_code == 413
    assert at_limit.status_code == 201
    assert deferred_too_big.status_code == 413


async def test_upload_length_zero_is_complete_at_once_and_downloads_empty(
    client: Client,
) -> None:
    path = await create(client, 0)
    status = await head(client, path)
    assert status.headers["upload-offset"] == "0"
    assert status.headers["upload-length"] == "0"
    download = await client.get(path)
    assert download.status_code == 200
    assert download.content == b""
    assert download.headers["content-length"] == "0"


async def test_creation_with_upload_stores_the_body_and_returns_upload_offset(
    client: Client,
) -> None:
    partial_body = await client.post(
        "/files/",
        content=b"hello",
        headers={**TUS, "Upload-Length": "11", "Content-Type": OCTETS},
    )
    assert partial_body.status_code == 201
    assert partial_body.headers["upload-offset"] == "5"
    path = path_of(partial_body.headers["location"])
    assert (await patch(client, path, 5, b" world")).status_code == 204
    assert (await client.get(path)).content == b"hello world"

    whole = await client.post(
        "/files/",
        content=b"all at once",
        headers={**TUS, "Upload-Length": "11", "Content-Type": OCTETS},
    )
    assert whole.headers["upload-offset"] == "11"
    assert (await client.get(path_of(whole.headers["location"]))).content == b"all at once"


async def test_creation_with_upload_with_wrong_content_type_is_415(client: Client) -> None:
    response = await client.post(
        "/files/",
        content=b"hello",
        headers={**TUS, "Upload-Length": "5", "Content-Type": "text/plain"},
    )
    assert response.status_code == 415


async def test_deferred_length_is_announced_then_set_by_a_later_patch_and_then_fixed(
    client: Client,
) -> None:
    path = await create(client, None, Upload_Defer_Length="1")
    status = await head(client, path)
    assert status.headers["upload-defer-length"] == "1"
    assert "upload-length" not in status.headers

    first = await patch(client, path, 0, b"abc")
    assert first.status_code == 204
    assert (await head(client, path)).headers["upload-defer-length"] == "1"

    assert (await patch(client, path, 3, b"de", Upload_Length="2")).status_code == 400
    second = await patch(client, path, 3, b"de", Upload_Length="8")
    assert second.status_code == 204
    status = await head(client, path)
    assert status.headers["upload-length"] == "8"
    assert "upload-defer-length" not in status.headers

    changed = await patch(client, path, 5, b"fgh", Upload_Length="9")
    assert changed.status_code in (400, 409)
    assert (await head(client, path)).headers["upload-offset"] == "5"
    assert (await patch(client, path, 5, b"fgh", Upload_Length="8")).status_code == 204
    assert (await client.get(path)).content == b"abcdefgh"


async def test_deferred_length_declared_by_an_empty_final_patch_completes_the_upload(
    client: Client,
) -> None:
    # tus-js-client does this when a stream ends exactly on a chunk boundary.
    path = await create(client, None, Upload_Defer_Length="1")
    assert (await patch(client, path, 0, b"abc")).status_code == 204
    final = await patch(client, path, 3, b"", Upload_Length="3")
    assert final.status_code == 204
    assert final.headers["upload-offset"] == "3"
    status = await head(client, path)
    assert status.headers["upload-length"] == "3"
    assert "upload-defer-length" not in status.headers
    download = await client.get(path)
    assert download.status_code == 200
    assert download.content == b"abc"
