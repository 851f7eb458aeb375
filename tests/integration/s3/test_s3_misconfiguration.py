"""S3 settings that can never work (wrong secret or key, missing bucket) are said to be so.

SeaweedFS (``weed mini``, the session's S3) checks signatures: a wrong secret gets
``SignatureDoesNotMatch``, an unknown key ``InvalidAccessKeyId``, a missing bucket
``NoSuchBucket``, as AWS answers. ``ferry serve`` refuses to start on them with one line;
an app that runs anyway answers 500 naming a configuration problem, never "retry later".
"""

from __future__ import annotations

import logging
import os
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from litestar.testing import AsyncTestClient

from app.db.engine import migrate
from app.main import FerryApp, create_app
from app.settings import Settings
from tests.integration.s3.conftest import MIB, PART
from tests.integration.tus_helpers import create, head, patch
from tests.support.seaweed import MakeS3Settings, S3Endpoint
from tests.support.services import FERRY, FerryProcess, ferry_env, free_port


@pytest.mark.parametrize(
    ("wrong", "variable", "code"),
    [
        ({"FERRY_S3_SECRET_KEY": "not-the-secret"}, "FERRY_S3_SECRET_KEY", "SignatureDoesNotMatch"),
        ({"FERRY_S3_ACCESS_KEY": "nobody"}, "FERRY_S3_ACCESS_KEY", "InvalidAccessKeyId"),
        ({"FERRY_S3_BUCKET": "no-such-bucket"}, "FERRY_S3_BUCKET", "NoSuchBucket"),
    ],
)
def test_serve_refuses_wrong_s3_credentials_or_bucket_with_one_line_naming_the_variable(
    tmp_path: Path, seaweed: S3Endpoint, wrong: dict[str, str], variable: str, code: str
) -> None:
    env = ferry_env(tmp_path / "data", {**seaweed.env("refused/"), **wrong})
    done = subprocess.run(
        [str(FERRY), "serve", "--port", str(free_port())],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    refusal = [line for line in done.stderr.splitlines() if line.startswith("ferry: ")]
    assert len(refusal) == 1, done.stderr
    assert refusal[0].startswith(f"ferry: {variable}: "), done.stderr
    assert code in refusal[0]
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "data").exists(), "refused before touching anything"


def test_serve_starts_with_the_right_s3_settings(tmp_path: Path, seaweed: S3Endpoint) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    server = FerryProcess(data_dir=data_dir, env=ferry_env(data_dir, seaweed.env("ok/")))
    server.start()
    server.stop()


@pytest.fixture
def wrong_secret_settings(make_s3_settings: MakeS3Settings) -> Settings:
    """An app that runs with a wrong S3 secret (as one started before the check would)."""
    built = make_s3_settings(s3_secret_key="not-the-secret", s3_min_part_size=PART)
    migrate(built)
    return built


@pytest.fixture
async def wrong_secret_client(
    wrong_secret_settings: Settings,
) -> AsyncIterator[AsyncTestClient[FerryApp]]:
    app = create_app(wrong_secret_settings)
    async with AsyncTestClient(app=app, base_url="http://ferry.local") as client:
        app.state.backend.retry_pause_max = 0.5
        yield client


async def test_uploads_with_a_wrong_s3_secret_get_a_500_naming_a_configuration_problem(
    wrong_secret_client: AsyncTestClient[FerryApp], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    # A small file: one PutObject at completion.
    small = await wrong_secret_client.put("/api/files/notes.txt", content=b"notes\n" * 100)
    assert small.status_code == 500, small.text
    assert "configuration" in small.text
    assert "retry later" not in small.text
    assert "retry-after" not in small.headers
    # A multipart upload: S3 refuses its first part before anything is acknowledged, and
    # the PATCH says why at once instead of "retry later".
    body = os.urandom(2 * PART + MIB)
    path = await create(wrong_secret_client, len(body))
    first = await patch(wrong_secret_client, path, 0, body[: 2 * PART])
    assert first.status_code == 500, first.text
    assert "SignatureDoesNotMatch" in first.text and "configuration" in first.text
    assert "retry-after" not in first.headers
    status = await head(wrong_secret_client, path)
    assert status.headers["upload-offset"] == "0", "nothing S3 refused was acknowledged"
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert any("SignatureDoesNotMatch" in m and "configuration problem" in m for m in errors)
