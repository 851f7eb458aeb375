"""The JSON file API: listing with pagination, filters and sorting; metadata; rename; delete."""

from __future__ import annotations

import asyncio
import os
from datetime import UTC, datetime, timedelta

import pytest
from litestar.testing import AsyncTestClient

from app.auth.keys import ApiKeyStore
from app.core.metadata import encode_metadata_value
from app.db.engine import create_engine, create_session_factory, migrate
from app.errors import BadRequest, PayloadTooLarge
from app.http.file_api import check_metadata_caps
from app.main import FerryApp, create_app
from app.settings import Settings
from tests.conftest import MakeSettings
from tests.integration.tus_helpers import (  # noqa: F401 - per-module PostgreSQL database
    OCTETS,
    TUS,
    b64,
    database_url,
    tus_postgres_database,
)

PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + os.urandom(300)


async def _put(client: AsyncTestClient[FerryApp], name: str, body: bytes) -> dict[str, object]:
    response = await client.put(f"/api/files/{name}", content=body)
    assert response.status_code == 201, response.text
    data: dict[str, object] = response.json()
    return data


async def _seed(client: AsyncTestClient[FerryApp]) -> list[dict[str, object]]:
    made = []
    for index in range(5):
        made.append(
            await _put(client, f"report-{index}.txt", f"text {index}\n".encode() * (index + 1))
        )
    for index in range(2):
        made.append(await _put(client, f"photo-{index}.png", PNG + bytes([index])))
    made.append(await _put(client, "blob.bin", b"\x00\x01\x02" * 100))
    return made


async def test_listing_pages_through_every_file_once(client: AsyncTestClient[FerryApp]) -> None:
    made = await _seed(client)
    seen: list[str] = []
    offset: int | None = 0
    while offset is not None:
        page = (await client.get("/api/files", params={"limit": 3, "offset": offset})).json()
        assert page["total"] == len(made)
        assert len(page["items"]) <= 3
        seen += [item["uid"] for item in page["items"]]
        offset = page["next_offset"]
    assert sorted(seen) == sorted(str(item["uid"]) for item in made)


async def test_listing_filters_combine(client: AsyncTestClient[FerryApp]) -> None:
    await _seed(client)

    async def names(**params: object) -> list[str]:
        page = (await client.get("/api/files", params={**params, "sort": "name"})).json()
        return [item["name"] for item in page["items"]]

    assert await names(category="images") == ["photo-0.png", "photo-1.png"]
    assert await names(name_prefix="report-") == [f"report-{i}.txt" for i in range(5)]
    assert await names(content_type="image/png") == ["photo-0.png", "photo-1.png"]
    assert await names(content_type="image/*") == ["photo-0.png", "photo-1.png"]
    assert await names(category="text", name_prefix="report-3") == ["report-3.txt"]
    future = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    past = (datetime.now(UTC) - timedelta(hours=1)).isoformat()
    assert await names(created_after=future) == []
    assert len(await names(created_after=past, created_before=future)) == 8
    bad = await client.get("/api/files", params={"created_after": future, "created_before": past})
    assert bad.status_code == 400


async def test_listing_sorts_by_size_and_name_prefix_is_literal(
    client: AsyncTestClient[FerryApp],
) -> None:
    await _seed(client)
    await _put(client, "100%_done", b"percent")
    page = (await client.get("/api/files", params={"sort": "-size"})).json()
    sizes = [item["size"] for item in page["items"]]
    assert sizes == sorted(sizes, reverse=True)
    # LIKE wildcards in a prefix are taken literally.
    literal = (await client.get("/api/files", params={"name_prefix": "100%"})).json()
    assert [item["name"] for item in literal["items"]] == ["100%_done"]
    assert (await client.get("/api/files", params={"name_prefix": "1_0"})).json()["total"] == 0


async def test_get_and_patch_metadata_and_name(client: AsyncTestClient[FerryApp]) -> None:
    made = await _put(client, "draft.txt", b"draft\n")
    uid = made["uid"]
    fetched = (await client.get(f"/api/files/{uid}")).json()
    assert fetched["sha256"] == made["sha256"]
    patched = await client.patch(
        f"/api/files/{uid}", json={"name": "final.txt", "metadata": {"project": "Ørsted"}}
    )
    assert patched.status_code == 200, patched.text
    assert patched.json()["name"] == "final.txt"
    assert patched.json()["metadata"]["project"] == "Ørsted"
    removed = await client.patch(f"/api/files/{uid}", json={"metadata": {"project": None}})
    assert "project" not in removed.json()["metadata"]
    assert (await client.patch(f"/api/files/{uid}", json={"name": "../evil"})).status_code == 400
    assert (await client.patch(f"/api/files/{uid}", json={"colour": "red"})).status_code == 400
    download = await client.get(f"/files/{uid}")
    assert "final.txt" in download.headers["content-disposition"]


async def test_bidi_controls_are_stripped_from_put_tus_form_and_renamed_names_and_downloads(
    client: AsyncTestClient[FerryApp],
) -> None:
    # PUT: U+202E (right-to-left override) would show "invoice\u202efdp.exe" as "invoiceexe.pdf".
    put = await client.put("/api/files/invoice%E2%80%AEfdp.exe", content=b"plain text\n")
    assert put.status_code == 201, put.text
    uid = put.json()["uid"]
    assert put.json()["name"] == "invoicefdp.exe"
    assert put.json()["metadata"]["filename"] == "invoicefdp.exe"
    disposition = (await client.get(f"/files/{uid}")).headers["content-disposition"]
    assert disposition.endswith("filename*=UTF-8''invoicefdp.exe")
    # tus: the filename metadata becomes the file's name (isolates and marks too).
    isolated = b64("report\u2067\u200fcod.exe\u2069")
    created = await client.post(
        "/files/",
        headers={**TUS, "Upload-Length": "6", "Upload-Metadata": f"filename {isolated}"},
    )
    assert created.status_code == 201, created.text
    tus_uid = created.headers["location"].rsplit("/", 1)[-1]
    patched = await client.patch(
        f"/files/{tus_uid}",
        content=b"hello\n",
        headers={**TUS, "Upload-Offset": "0", "Content-Type": OCTETS},
    )
    assert patched.status_code == 204, patched.text
    assert (await client.get(f"/api/files/{tus_uid}")).json()["name"] == "reportcod.exe"
    # A multipart form's file name.
    form = await client.post(
        "/api/files", files=[("file", ("movie\u202a\u061c.txt", b"words\n", "text/plain"))]
    )
    assert form.status_code == 201, form.text
    assert form.json()["files"][0]["name"] == "movie.txt"
    # A rename.
    renamed = await client.patch(f"/api/files/{uid}", json={"name": "photo\u202egpj.exe"})
    assert renamed.status_code == 200, renamed.text
    assert renamed.json()["name"] == "photogpj.exe"
    disposition = (await client.get(f"/files/{uid}")).headers["content-disposition"]
    assert "%E2%80" not in disposition
    # A name made of bidi controls only is refused, not stored empty.
    empty = await client.patch(f"/api/files/{uid}", json={"name": "\u202e\u202c"})
    assert empty.status_code == 400


async def test_patched_file_metadata_is_held_to_the_upload_metadata_caps(
    client: AsyncTestClient[FerryApp],
) -> None:
    uid = (await _put(client, "notes.txt", b"notes\n"))["uid"]
    url = f"/api/files/{uid}"
    # 64 keys at most (FERRY_MAX_METADATA_KEYS); the PUT set "filename".
    keys = {f"k{i}": "v" for i in range(63)}
    assert (await client.patch(url, json={"metadata": keys})).status_code == 200
    too_many = await client.patch(url, json={"metadata": {"one-more": "v"}})
    assert too_many.status_code == 400
    assert "FERRY_MAX_METADATA_KEYS" in too_many.text
    cleared = await client.patch(url, json={"metadata": dict.fromkeys(keys)})
    assert set(cleared.json()["metadata"]) == {"filename"}
    # 16 KiB at most as Upload-Metadata (FERRY_MAX_METADATA_BYTES): one call fits, the
    # next one would pass the cap (three calls used to build a 17 MiB record).
    value = "x" * 6000  # 8000 bytes in base64
    assert (await client.patch(url, json={"metadata": {"a": value}})).status_code == 200
    too_large = await client.patch(url, json={"metadata": {"b": value, "c": value}})
    assert too_large.status_code == 413
    assert "FERRY_MAX_METADATA_BYTES" in too_large.text
    record = (await client.get(url)).json()
    assert set(record["metadata"]) == {"filename", "a"}
    assert (await client.patch(url, json={"metadata": {"b": "small"}})).status_code == 200


def test_file_metadata_already_over_a_lowered_cap_may_shrink_but_not_grow() -> None:
    settings = Settings(max_metadata_keys=2, max_metadata_bytes=100)
    before = {f"k{i}": encode_metadata_value("v" * 20) for i in range(4)}
    check_metadata_caps(dict(list(before.items())[:3]), before, settings)
    with pytest.raises(BadRequest, match="FERRY_MAX_METADATA_KEYS"):
        check_metadata_caps({**before, "k4": None}, before, settings)
    with pytest.raises(PayloadTooLarge, match="FERRY_MAX_METADATA_BYTES"):
        check_metadata_caps({**before, "k0": encode_metadata_value("v" * 40)}, before, settings)


async def test_delete_removes_object_row_and_is_then_404(
    client: AsyncTestClient[FerryApp], settings: Settings
) -> None:
    made = await _put(client, "gone.bin", os.urandom(1000))
    uid = made["uid"]
    stored = [p for p in settings.files_dir.rglob("*") if p.is_file()]
    assert len(stored) == 1
    deleted = await client.delete(f"/api/files/{uid}")
    assert deleted.status_code == 204
    assert [p for p in settings.files_dir.rglob("*") if p.is_file()] == []
    assert (await client.get(f"/api/files/{uid}")).status_code == 404
    assert (await client.get(f"/files/{uid}")).status_code in (404, 410)
    assert (await client.delete(f"/api/files/{uid}")).status_code == 404
    assert (await client.get("/api/files")).json()["total"] == 0


async def test_unknown_uid_is_404_and_malformed_uid_is_4xx(
    client: AsyncTestClient[FerryApp],
) -> None:
    missing = await client.get("/api/files/8a4f1f7e-0000-4000-8000-000000000000")
    assert missing.status_code == 404
    assert 400 <= (await client.get("/api/files/not-a-uid")).status_code < 500


async def test_listing_by_uid_and_sha256_for_batch_verification(
    client: AsyncTestClient[FerryApp],
) -> None:
    made = await _seed(client)
    wanted = [str(made[0]["uid"]), str(made[5]["uid"])]
    page = (await client.get("/api/files", params=[("uid", u) for u in wanted])).json()
    assert sorted(item["uid"] for item in page["items"]) == sorted(wanted)
    by_hash = (await client.get("/api/files", params={"sha256": made[1]["sha256"]})).json()
    assert [item["uid"] for item in by_hash["items"]] == [made[1]["uid"]]


async def test_listing_by_exact_names_is_repeatable_for_ingest_lookups(
    client: AsyncTestClient[FerryApp],
) -> None:
    made = await _seed(client)
    names = ["report-1.txt", "photo-0.png", "report-1", "nobody.txt"]
    page = (await client.get("/api/files", params=[("name", n) for n in names])).json()
    assert sorted(item["name"] for item in page["items"]) == ["photo-0.png", "report-1.txt"]
    both = {"name": "report-1.txt", "sha256": made[1]["sha256"]}
    assert [
        item["uid"] for item in (await client.get("/api/files", params=both)).json()["items"]
    ] == [made[1]["uid"]]
    too_many = await client.get("/api/files", params=[("name", "x")] * 1001)
    assert too_many.status_code == 400


@pytest.mark.parametrize("name", ["name_prefix", "category", "sha256", "content_type", "name"])
async def test_listing_filter_with_a_nul_byte_answers_400(
    client: AsyncTestClient[FerryApp], name: str
) -> None:
    await _put(client, "a.txt", b"a\n")
    response = await client.get("/api/files", params={name: "a\x00b"})
    assert response.status_code == 400, response.text
    assert name in response.text
    assert "Traceback" not in response.text


async def test_metadata_key_with_a_nul_byte_answers_400_and_changes_nothing(
    client: AsyncTestClient[FerryApp],
) -> None:
    uid = (await _put(client, "a.txt", b"a\n"))["uid"]
    response = await client.patch(f"/api/files/{uid}", json={"metadata": {"a\x00b": "x"}})
    assert response.status_code == 400, response.text
    assert (await client.get(f"/api/files/{uid}")).json()["metadata"] == {"filename": "a.txt"}
    # A value is stored base64-encoded: a NUL in it is just a character.
    kept = await client.patch(f"/api/files/{uid}", json={"metadata": {"a": "x\x00y"}})
    assert kept.status_code == 200, kept.text
    assert kept.json()["metadata"]["a"] == "x\x00y"


async def test_openapi_schema_documents_the_file_api(client: AsyncTestClient[FerryApp]) -> None:
    schema = (await client.get("/schema/openapi.json")).json()
    assert schema["info"]["title"] == "Ferry"
    assert "/api/files" in schema["paths"]
    assert "/api/files/{uid}" in schema["paths"]
    assert not any(path.startswith("/files/") and "{upload_id}" in path for path in schema["paths"])
    await asyncio.sleep(0)


@pytest.fixture
def keyed_settings(make_settings: MakeSettings) -> Settings:
    """A Ferry that requires API keys."""
    built = make_settings(auth=("keys",))
    migrate(built)
    return built


async def test_another_owners_file_is_invisible_and_answers_404(keyed_settings: Settings) -> None:
    engine = create_engine(keyed_settings.resolved_database_url)
    try:
        store = ApiKeyStore(create_session_factory(engine))
        alice = {"Authorization": f"Bearer {await store.create('alice')}"}
        bob = {"Authorization": f"Bearer {await store.create('bob')}"}
        admin = {"Authorization": f"Bearer {await store.create('root', is_admin=True)}"}
    finally:
        await engine.dispose()
    app = create_app(keyed_settings)
    async with AsyncTestClient(app=app, base_url="http://ferry.local") as client:
        assert (await client.get("/api/files")).status_code == 401
        made = await client.put("/api/files/alice.txt", content=b"mine\n", headers=alice)
        assert made.status_code == 201, made.text
        uid = made.json()["uid"]
        assert (await client.get("/api/files", headers=bob)).json()["total"] == 0
        by_name = {"name": "alice.txt", "sha256": made.json()["sha256"]}
        assert (await client.get("/api/files", params=by_name, headers=bob)).json()["total"] == 0
        assert (await client.get(f"/api/files/{uid}", headers=bob)).status_code == 404
        assert (
            await client.patch(f"/api/files/{uid}", json={"name": "x"}, headers=bob)
        ).status_code == 404
        assert (await client.delete(f"/api/files/{uid}", headers=bob)).status_code == 404
        assert (await client.get("/api/files", headers=alice)).json()["total"] == 1
        assert (await client.get("/api/files", headers=admin)).json()["total"] == 1
        assert (await client.delete(f"/api/files/{uid}", headers=alice)).status_code == 204
