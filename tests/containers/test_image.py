"""The image alone: built from the Containerfile, run with podman on a free port."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.containers.podman import Podman
from tests.containers.smoke import upload_and_download, wait_until_serving
from tests.support.services import free_port


@pytest.fixture
def ferry_container(podman: Podman, ferry_image: str) -> Iterator[tuple[str, str]]:
    """A container of the image on 127.0.0.1 (SQLite and local disk in its volume):
    its id and URL. Removed, with its volumes, by id."""
    port = free_port()
    container = podman.run(
        "run", "--detach", "--publish", f"127.0.0.1:{port}:8000",
        "--env", "FERRY_AUTO_MIGRATE=true", ferry_image,
    ).stdout.strip()  # fmt: skip
    try:
        yield container, f"http://127.0.0.1:{port}"
    finally:
        podman.run("rm", "--force", "--volumes", container, check=False)


def test_the_image_serves_uploads_and_downloads_as_an_unprivileged_user_and_stops_cleanly(
    podman: Podman, ferry_container: tuple[str, str]
) -> None:
    container, url = ferry_container
    try:
        wait_until_serving(url)
    except AssertionError as error:
        raise AssertionError(podman.log(container)) from error
    key = podman.run("exec", container, "ferry", "keys", "create", "--owner", "smoke").stdout
    upload_and_download(url, key.strip())
    assert podman.healthy(container), "the image's HEALTHCHECK fails on a serving container"
    # ...and the same check fails where nothing answers.
    unanswered = "http://127.0.0.1:9/health/ready"
    check = podman.run("exec", container, "ferry", "healthcheck", "--url", unanswered, check=False)
    assert check.returncode == 1, check.stdout + check.stderr
    assert podman.run("exec", container, "id", "-u").stdout.strip() == "10001"
    # SIGTERM drains and exits 0 well within the engine's stop timeout.
    podman.run("stop", "--time", "40", container, timeout=60)
    assert podman.exit_code(container) == 0, podman.log(container)
