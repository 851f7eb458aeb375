"""tus concatenation and concatenation-unfinished, on the local backend and on S3.

On S3 partials are stored as objects of their own and the final is assembled inside S3
(``tests/integration/s3/test_s3_concatenation.py`` covers that road's details).
"""

from __future__ import annotations

import uuid

import pytest

from app.db.engine import migrate
from app.settings import Settings
from tests.conftest import MakeSettings
from tests.integration.tus_helpers import (  # noqa: F401 - fixtures for this module
    TUS,
    Client,
    create,
    database_url,
    head,
    patch,
    path_of,
    tus_postgres_database,
)

MIB = 1024 * 1024


@pytest.fixture(params=["local", "s3"])
def settings(request: pytest.FixtureRequest, make_settings: MakeSettings) -> Settings:
    """Every test once per backend (and, from ``database_url``, once per database)."""
    overrides = {}
    if request.param == "s3":
        endpoint = request.getfixturevalue("seaweed")
        overrides = {
            **endpoint.settings_overrides(request.getfixturevalue("s3_prefix")),
            "s3_min_part_size": 5 * MIB,
        }
    built = make_settings(**overrides)
    migrate(built)
    return built


async def create_final(client: Client, *parts: str) -> tuple[int, str]:
    response = await client.post(
        "/files/", headers={**TUS, "Upload-Concat": "final;" + " ".join(parts)}
    )
    location = response.headers.get("location", "")
    return response.status_code, path_of(location) if location else ""


async def test_final_upload_concatenates_finished_partials_in_order(client: Client) -> None:
    first = await create(client, 6, Upload_Concat="partial")
    second = await create(client, 5, Upload_Concat="partial")
    assert (await head(client, first)).headers["upload-concat"] == "partial"
    assert (await patch(client, first, 0, b"hello ")).status_code == 204
    assert (await patch(client, second, 0, b"world")).status_code == 204
    # a partial is not a file of its own
    assert (await client.get(first)).status_code == 404

    status, final = await create_final(client, second, f"http://ferry.local{first}")
    assert status == 201
    head_final = await head(client, final)
    assert head_final.status_code == 200
    assert head_final.headers["upload-concat"].startswith("final;")
    named = head_final.headers["upload-concat"].removeprefix("final;").split()
    assert [path_of(u) for u in named] == [second, first]
    assert head_final.headers["upload-offset"] == head_final.headers["upload-length"] == "11"
    download = await client.get(final)
    assert download.status_code == 200
    assert download.content == b"worldhello "


async def test_patch_on_a_final_upload_is_403(client: Client) -> None:
    part = await create(client, 3, Upload_Concat="partial")
    await patch(client, part, 0, b"abc")
    _, final = await create_final(client, part)
    response = await patch(client, final, 3, b"more")
    assert response.status_code == 403
    assert response.headers["tus-resumable"] == "1.0.0"


async def test_final_naming_unknown_or_non_partial_uploads_is_400(client: Client) -> None:
    plain = await create(client, 3)
    await patch(client, plain, 0, b"abc")
    partial = await create(client, 3, Upload_Concat="partial")
    await patch(client, partial, 0, b"abc")
    for parts in (
        [plain],
        [partial, plain],
        ["/files/not-a-uuid"],
        ["/elsewhere/" + partial.rsplit("/", 1)[-1]],
    ):
        status, _ = await create_final(client, *parts)
        assert status == 400, parts
    # An id that names no upload is refused too (404 like any unknown upload, or 400).
    for parts in ([f"/files/{uuid.uuid4()}"], [partial, f"/files/{uuid.uuid4()}"]):
        status, _ = await create_final(client, *parts)
        assert status in (400, 404), parts
    bad_length = await client.post(
        "/files/",
        headers={**TUS, "Upload-Concat": f"final;{partial}", "Upload-Length": "3"},
    )
    assert bad_length.status_code == 400
    assert (
        await client.post("/files/", headers={**TUS, "Upload-Concat": "final;"})
    ).status_code == 400


async def test_final_created_before_its_partials_finish_completes_when_they_do(
    client: Client,
) -> None:
    first = await create(client, 4, Upload_Concat="partial")
    second = await create(client, None, Upload_Concat="partial", Upload_Defer_Length="1")
    await patch(client, first, 0, b"ab")

    status, final = await create_final(client, first, second)
    assert status == 201
    waiting = await head(client, final)
    assert waiting.status_code == 200
    assert waiting.headers["upload-concat"].startswith("final;")
    assert "upload-offset" not in waiting.headers
    assert (await client.get(final)).status_code == 404
    assert (await patch(client, final, 0, b"x")).status_code == 403

    assert (await patch(client, first, 2, b"cd")).status_code == 204
    assert (await client.get(final)).status_code == 404
    assert (await patch(client, second, 0, b"efg", Upload_Length="3")).status_code == 204

    done = await head(client, final)
    assert done.headers["upload-offset"] == done.headers["upload-length"] == "7"
    assert (await client.get(final)).content == b"abcdefg"


async def test_final_of_empty_partials_is_an_empty_file(client: Client) -> None:
    empty = await create(client, 0, Upload_Concat="partial")
    also_empty = await create(client, 0, Upload_Concat="partial")
    status, final = await create_final(client, empty, also_empty)
    assert status == 201
    done = await head(client, final)
    assert done.headers["upload-offset"] == done.headers["upload-length"] == "0"
    download = await client.get(final)
    assert download.status_code == 200
    assert download.content == b""
