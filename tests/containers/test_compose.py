"""compose.yml for real: Ferry, its one-shot migration, PostgreSQL and SeaweedFS (S3),
started the way the file's ``depends_on`` says, under a project name of the run's own."""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.containers.podman import COMPOSE_FILE, ComposeProject, Podman
from tests.containers.smoke import upload_and_download, wait_until_serving
from tests.support.services import free_port


@pytest.fixture
def stack(podman: Podman, ferry_image: str, tmp_path: Path) -> Iterator[ComposeProject]:
    """compose.yml with this run's image for the Ferry services, fresh secrets and a free
    published port; taken down with its volumes afterwards."""
    override = tmp_path / "compose.test.yml"  # JSON is YAML
    override.write_text(
        json.dumps({"services": {name: {"image": ferry_image} for name in ("migrate", "ferry")}})
    )
    variables = {
        "POSTGRES_PASSWORD": secrets.token_urlsafe(16),
        "FERRY_S3_ACCESS_KEY": "ferry",
        "FERRY_S3_SECRET_KEY": secrets.token_urlsafe(24),
        "PUBLISH_ADDRESS": f"127.0.0.1:{free_port()}",
    }
    project = ComposeProject(podman, [COMPOSE_FILE, override], variables)
    try:
        yield project
    finally:
        project.down()


def test_compose_runs_ferry_on_postgresql_and_s3_and_passes_the_smoke_test(
    stack: ComposeProject,
) -> None:
    url = f"http://{stack.variables['PUBLISH_ADDRESS']}"
    try:
        stack.start("ferry")
        wait_until_serving(url)
    except AssertionError as error:
        raise AssertionError(f"{error}\n{stack.logs()}") from error
    key = stack.exec("ferry", "ferry", "keys", "create", "--owner", "smoke").strip()
    stored = upload_and_download(url, key)
    # The rows are in compose's PostgreSQL and say the bytes are in S3.
    rows = stack.exec(
        "postgres", "psql", "--username=ferry", "--dbname=ferry", "--tuples-only",
        "--no-align", "--field-separator= ",
        "--command=SELECT storage, sha256, size FROM files ORDER BY size",
    ).split("\n")  # fmt: skip
    expected = sorted(stored, key=lambda file: file.size)
    assert [row for row in rows if row] == [f"s3 {file.sha256} {file.size}" for file in expected]
