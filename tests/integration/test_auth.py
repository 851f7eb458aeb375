"""Authentication and ownership: no credential gets nothing, another owner gets 404."""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import jwt
import pytest
from click.testing import CliRunner
from litestar.routes import HTTPRoute
from litestar.testing import AsyncTestClient

from app.__main__ import main as ferry_cli
from app.auth.keys import ApiKeyStore
from app.auth.tokens import JwtVerifier
from app.db.engine import create_engine, create_session_factory, migrate
from app.main import FerryApp, create_app
from app.settings import Settings, load_settings
from tests.conftest import MakeSettings
from tests.integration.tus_helpers import TUS, b64, path_of
from tests.support.services import python_snippet_output

JWT_SECRET = "a-test-secret-that-is-long-enough-0123456789"
JWT_AUDIENCE = "ferry-tests"
JWT_ISSUER = "https://app.example"
OCTETS = {"Content-Type": "application/offset+octet-stream"}


@dataclass
class Keys:
    alice: str
    bob: str
    admin: str
    revoked: str


async def _make_keys(settings: Settings) -> Keys:
    engine = create_engine(settings.resolved_database_url)
    try:
        store = ApiKeyStore(create_session_factory(engine))
        revoked = await store.create("carol")
        await store.revoke(revoked)
        return Keys(
            alice=await store.create("alice"),
            bob=await store.create("bob"),
            admin=await store.create("root", is_admin=True),
            revoked=revoked,
        )
    finally:
        await engine.dispose()


@pytest.fixture
def auth_settings(make_settings: MakeSettings) -> Settings:
    settings = make_settings(
        auth=("keys", "jwt"),
        jwt_secret=JWT_SECRET,
        jwt_audience=JWT_AUDIENCE,
        jwt_issuer=JWT_ISSUER,
        signing_key="link-signing-key-for-tests-0123456789",
    )
    migrate(settings)
    return settings


@pytest.fixture
async def keys(auth_settings: Settings) -> Keys:
    return await _make_keys(auth_settings)


@pytest.fixture
def auth_app(auth_settings: Settings) -> FerryApp:
    return create_app(auth_settings)


@pytest.fixture
async def anon(auth_app: FerryApp) -> AsyncIterator[AsyncTestClient[FerryApp]]:
    async with AsyncTestClient(app=auth_app, base_url="http://ferry.local") as client:
        yield client


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def token(
    owner: str, *, audience: str = JWT_AUDIENCE, lifetime: int = 300, **claims: object
) -> str:
    now = int(time.time())
    payload = {"sub": owner, "aud": audience, "iss": JWT_ISSUER, "iat": now, "exp": now + lifetime}
    payload.update(claims)
    return jwt.encode(payload, JWT_SECRET, algorithm="HS256")


PUBLIC_PATHS = re.compile(r"^(/|/health(/.*)?|/metrics|/static/.*|/player/.*|/schema.*)$")


def _concrete(path: str) -> str:
    return re.sub(r"\{[^}]+\}", str(uuid.uuid4()), path)


async def test_every_non_public_endpoint_without_credentials_answers_401_with_bearer_challenge(
    anon: AsyncTestClient[FerryApp], auth_app: FerryApp
) -> None:
    checked = 0
    for route in auth_app.routes:
        if not isinstance(route, HTTPRoute) or PUBLIC_PATHS.match(_concrete(route.path)):
            continue
        for method in sorted(route.methods - {"OPTIONS"}):
            response = await anon.request(method, _concrete(route.path), headers=TUS)
            assert response.status_code == 401, (method, route.path, response.text)
            assert response.headers["www-authenticate"].startswith("Bearer")
            if route.path.startswith("/files"):
                assert response.headers["tus-resumable"] == "1.0.0"
            checked += 1
    assert checked >= 10  # tus, file API, links, info: all of them were tried


async def test_public_endpoints_answer_without_credentials(anon: AsyncTestClient[FerryApp]) -> None:
    assert (await anon.get("/health/live")).status_code == 200
    assert (await anon.get("/health/ready")).status_code == 200
    assert (await anon.get("/metrics")).status_code == 200
    options = await anon.options("/files/", headers=TUS)
    assert options.status_code == 204
    preflight = await anon.options(
        "/files/",
        headers={"Origin": "https://example.com", "Access-Control-Request-Method": "POST"},
    )
    assert preflight.status_code in {200, 204}


async def test_unknown_revoked_or_malformed_credentials_answer_401(
    anon: AsyncTestClient[FerryApp], keys: Keys
) -> None:
    for headers in (
        bearer("ferry_00000000_not-a-real-key"),
        bearer(keys.revoked),
        {"Authorization": f"Basic {keys.alice}"},
        bearer(token("alice", audience="someone-else")),
        bearer(token("alice", lifetime=-60)),
        bearer("not.a.jwt"),
    ):
        response = await anon.head(f"/files/{uuid.uuid4()}", headers={**TUS, **headers})
        assert response.status_code == 401, headers
        assert "Bearer" in response.headers["www-authenticate"]


async def test_a_key_revoked_while_the_server_runs_is_refused_on_its_next_request(
    anon: AsyncTestClient[FerryApp], auth_settings: Settings
) -> None:
    """Keys are read on every request, never cached: ``ferry keys revoke`` (another process,
    or another node) holds at once."""
    engine = create_engine(auth_settings.resolved_database_url)
    try:
        store = ApiKeyStore(create_session_factory(engine))
        dave = await store.create("dave")
        headers = {**TUS, **bearer(dave), "Upload-Length": "10"}
        assert (await anon.post("/files/", headers=headers)).status_code == 201
        assert await store.revoke(dave) == 1
    finally:
        await engine.dispose()
    assert (await anon.post("/files/", headers=headers)).status_code == 401


async def _create(client: AsyncTestClient[FerryApp], key: str, length: int, **extra: str) -> str:
    response = await client.post(
        "/files/", headers={**TUS, **bearer(key), "Upload-Length": str(length), **extra}
    )
    assert response.status_code == 201, response.text
    return path_of(response.headers["location"])


async def _finished_file(client: AsyncTestClient[FerryApp], key: str, data: bytes) -> str:
    path = await _create(client, key, len(data), **{"Upload-Metadata": f"filename {b64('a.txt')}"})
    done = await client.patch(
        path, content=data, headers={**TUS, **OCTETS, **bearer(key), "Upload-Offset": "0"}
    )
    assert done.status_code == 204, done.text
    return path


async def test_another_owners_uploads_and_files_answer_404_like_missing_ones(
    anon: AsyncTestClient[FerryApp], keys: Keys
) -> None:
    unfinished = await _create(anon, keys.alice, 10)
    finished = await _finished_file(anon, keys.alice, b"alice's bytes")
    partial = await _create(anon, keys.alice, 4, **{"Upload-Concat": "partial"})
    uid = finished.rsplit("/", 1)[-1]
    missing = f"/files/{uuid.uuid4()}"
    bob = bearer(keys.bob)

    async def answers(path: str) -> list[int]:
        uid_of = path.rsplit("/", 1)[-1]
        requests = [
            anon.head(path, headers={**TUS, **bob}),
            anon.patch(path, content=b"x", headers={**TUS, **OCTETS, **bob, "Upload-Offset": "0"}),
            anon.get(path, headers=bob),
            anon.head(path, headers=bob),
            anon.get(f"/files/{uid_of}/info", headers=bob),
            anon.post(f"/files/{uid_of}/link", headers=bob),
            anon.get(f"/api/files/{uid_of}", headers=bob),
            anon.patch(f"/api/files/{uid_of}", json={"name": "stolen"}, headers=bob),
            anon.delete(f"/api/files/{uid_of}", headers=bob),
            anon.delete(path, headers={**TUS, **bob}),
        ]
        return [(await request).status_code for request in requests]

    for path in (unfinished, finished, partial):
        assert await answers(path) == await answers(missing), path
    assert set(await answers(finished)) == {404}
    concat = await anon.post("/files/", headers={**TUS, **bob, "Upload-Concat": f"final;{partial}"})
    assert concat.status_code == 404
    listing = await anon.get("/api/files", headers=bob)
    assert listing.status_code == 200
    assert uid not in listing.text
    # Nothing bob did touched alice's uploads.
    alice = bearer(keys.alice)
    status = await anon.head(unfinished, headers={**TUS, **alice})
    assert status.status_code == 200
    assert status.headers["upload-offset"] == "0"
    assert (await anon.get(finished, headers=alice)).content == b"alice's bytes"


async def test_admin_key_sees_every_owner_and_owns_what_it_creates(
    anon: AsyncTestClient[FerryApp], keys: Keys
) -> None:
    finished = await _finished_file(anon, keys.alice, b"for the admin")
    unfinished = await _create(anon, keys.bob, 5)
    admin = bearer(keys.admin)
    assert (await anon.get(finished, headers=admin)).content == b"for the admin"
    assert (await anon.head(unfinished, headers={**TUS, **admin})).status_code == 200
    listing = await anon.get("/api/files", headers=admin)
    assert finished.rsplit("/", 1)[-1] in listing.text
    own = await _finished_file(anon, keys.admin, b"admin's own")
    # The admin's upload belongs to the admin: alice cannot see it.
    assert (await anon.get(own, headers=bearer(keys.alice))).status_code == 404
    info = await anon.get(f"/api/files/{own.rsplit('/', 1)[-1]}", headers=admin)
    assert info.status_code == 200


async def test_jwt_bearer_token_acts_as_its_subject(
    anon: AsyncTestClient[FerryApp], keys: Keys
) -> None:
    finished = await _finished_file(anon, keys.alice, b"jwt")
    assert (await anon.get(finished, headers=bearer(token("alice")))).content == b"jwt"
    assert (await anon.get(finished, headers=bearer(token("mallory")))).status_code == 404
    admin_token = token("ops", ferry_admin=True)
    assert (await anon.get(finished, headers=bearer(admin_token))).status_code == 200


async def test_signed_link_downloads_without_credentials_and_a_forged_one_does_not(
    anon: AsyncTestClient[FerryApp], keys: Keys
) -> None:
    finished = await _finished_file(anon, keys.alice, b"shared")
    uid = finished.rsplit("/", 1)[-1]
    link = await anon.post(f"/files/{uid}/link", headers=bearer(keys.alice))
    assert link.status_code == 200, link.text
    url = link.json()["url"]
    assert (await anon.get(url)).content == b"shared"
    forged = re.sub(r"sig=[^&]+", "sig=AAAA", url)
    assert (await anon.get(forged)).status_code == 403
    # A signature never opens the tus side of another upload.
    other = await _create(anon, keys.bob, 3)
    borrowed = f"{other}?{url.split('?', 1)[1]}"
    assert (await anon.head(borrowed, headers=TUS)).status_code == 403


async def test_tus_head_with_only_a_signed_link_reveals_no_upload_state_or_metadata(
    anon: AsyncTestClient[FerryApp], keys: Keys
) -> None:
    metadata = f"filename {b64('a.txt')},private {b64('not for link holders')}"
    path = await _create(anon, keys.alice, 6, **{"Upload-Metadata": metadata})
    done = await anon.patch(
        path,
        content=b"shared",
        headers={**TUS, **OCTETS, **bearer(keys.alice), "Upload-Offset": "0"},
    )
    assert done.status_code == 204
    uid = path.rsplit("/", 1)[-1]
    url = (await anon.post(f"/files/{uid}/link", headers=bearer(keys.alice))).json()["url"]
    response = await anon.head(url, headers=TUS)
    assert response.status_code in (200, 401, 403)
    for header in ("upload-metadata", "upload-offset", "upload-length", "upload-concat"):
        assert header not in response.headers, header
    if response.status_code == 200:  # answered as the plain download HEAD it may be
        assert response.headers["content-length"] == "6"
        assert response.headers["etag"]
    # What a link does grant still works: the bytes and the player page's summary.
    assert (await anon.get(url, headers=TUS)).content == b"shared"
    info = await anon.get(url.replace(f"/files/{uid}?", f"/files/{uid}/info?"))
    assert info.status_code == 200
    assert "private" not in info.text


async def test_signed_link_with_a_malformed_expires_answers_400_without_credentials(
    anon: AsyncTestClient[FerryApp], keys: Keys
) -> None:
    uid = (await _finished_file(anon, keys.alice, b"x")).rsplit("/", 1)[-1]
    for path in (f"/files/{uid}", f"/files/{uid}/info"):
        response = await anon.get(f"{path}?expires=%C2%B2&sig=abc")
        assert response.status_code == 400, (path, response.text)
        assert "expires" in response.text


def test_rs256_tokens_are_checked_against_the_public_key(tmp_path: object) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public_pem = (
        private.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    settings = load_settings(
        {
            "FERRY_AUTH": "jwt",
            "FERRY_JWT_ALGORITHM": "RS256",
            "FERRY_JWT_PUBLIC_KEY": public_pem,
            "FERRY_JWT_AUDIENCE": "ferry",
        },
        env_file=None,
    )
    verifier = JwtVerifier(settings)
    claims = {"sub": "dana", "aud": "ferry", "exp": int(time.time()) + 60}
    good = jwt.encode(claims, private, algorithm="RS256")
    assert verifier.verify(good) is not None
    assert verifier.verify(good).name == "dana"  # type: ignore[union-attr]
    # The same claims signed with HS256 and the public key as secret are refused.
    assert verifier.verify(jwt.encode(claims, "x" * 40, algorithm="HS256")) is None


def test_auth_defaults_to_keys_and_jwt_without_secret_stops_start_up() -> None:
    from app.ops.shutdown import auth_refusal_for_serving

    assert load_settings({}, env_file=None).auth == ("keys",)
    no_secret = load_settings({"FERRY_AUTH": "keys,jwt", "FERRY_JWT_AUDIENCE": "x"}, env_file=None)
    problem = auth_refusal_for_serving(no_secret, "127.0.0.1", forced=False)
    assert problem is not None and problem.startswith("FERRY_JWT_SECRET")
    with pytest.raises(ValueError, match="FERRY_JWT_SECRET"):
        JwtVerifier(no_secret)


APP_LOADS_JWT = """
import sys
from litestar.testing import TestClient
from app.db.engine import migrate
from app.main import create_app
from app.settings import load_settings
environment = {"FERRY_DATA_DIR": sys.argv[1], "FERRY_AUTH": sys.argv[2],
               "FERRY_JWT_SECRET": "s" * 40, "FERRY_JWT_AUDIENCE": "ferry"}
settings = load_settings(environment, env_file=None)
migrate(settings)
with TestClient(create_app(settings)) as client:
    assert client.get("/health/ready").status_code == 200
print("jwt" in sys.modules, "cryptography" in sys.modules)
"""


@pytest.mark.parametrize(("auth", "loaded"), [("keys", "False False"), ("keys,jwt", "True True")])
def test_pyjwt_and_cryptography_are_loaded_only_when_jwt_auth_is_on(
    tmp_path: Path, auth: str, loaded: str
) -> None:
    """About 8.5 MiB per serving process that a server without JWT auth does not carry."""
    printed = python_snippet_output(APP_LOADS_JWT, str(tmp_path), auth, env={})
    assert printed.strip() == loaded


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_keys_cli_prints_the_key_alone_and_revokes_it(
    auth_settings: Settings, tmp_path: object
) -> None:
    env = {
        "FERRY_DATABASE_URL": auth_settings.resolved_database_url,
        "FERRY_DATA_DIR": str(auth_settings.data_dir),
    }
    runner = CliRunner()
    created = runner.invoke(ferry_cli, ["keys", "create", "--owner", "erin"], env=env)
    assert created.exit_code == 0, created.output
    key = created.stdout.strip()
    assert re.fullmatch(r"ferry_[0-9a-f]{8}_[A-Za-z0-9_-]{40,}", key)
    assert created.stdout == key + "\n"
    listed = runner.invoke(ferry_cli, ["keys", "list"], env=env)
    assert "erin" in listed.stdout and "active" in listed.stdout
    assert key not in listed.stdout  # the secret is never shown again
    revoked = runner.invoke(ferry_cli, ["keys", "revoke", key], env=env)
    assert revoked.exit_code == 0, revoked.output
    assert "revoked" in runner.invoke(ferry_cli, ["keys", "list"], env=env).stdout
    again = runner.invoke(ferry_cli, ["keys", "revoke", key], env=env)
    assert again.exit_code == 1


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_serve_refuses_a_public_bind_with_auth_off_unless_forced(auth_settings: Settings) -> None:
    from app.ops.shutdown import auth_refusal_for_serving

    off = load_settings({"FERRY_AUTH": "none"}, env_file=None)
    assert auth_refusal_for_serving(off, "127.0.0.1", forced=False) is None
    assert auth_refusal_for_serving(off, "::1", forced=False) is None
    assert auth_refusal_for_serving(off, "0.0.0.0", forced=True) is None
    assert "FERRY_AUTH=none" in (auth_refusal_for_serving(off, "0.0.0.0", forced=False) or "")
    result = CliRunner().invoke(
        ferry_cli,
        ["serve", "--host", "0.0.0.0"],
        env={"FERRY_AUTH": "none", "FERRY_DATABASE_URL": auth_settings.resolved_database_url},
    )
    assert result.exit_code == 2
    assert "--insecure-no-auth" in result.stderr
