"""The container tests: the image built from ``Containerfile`` and ``compose.yml`` run
for real with Debian's podman, on base images made by scripts/container-bases.sh.

Every test here is marked ``container`` (deselect with ``-m "not container"``). Outside
CI a machine without podman or the base images skips them, naming the command that
prepares it; with ``CI=true`` they fail instead.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.containers.podman import COMPOSE_FILE, CONTAINERFILE, Podman
from tests.support.services import require_service

HERE = Path(__file__).resolve().parent


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "container: builds and runs container images with podman (tests/containers)"
    )


#: A first build on a new machine installs every locked package (minutes on a busy machine);
#: the session's image is built in the setup of the first test that needs it.
TIMEOUT_SECONDS = 900


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test of this directory ``container``, with room for a first build."""
    for item in items:
        if HERE in Path(item.path).parents:
            item.add_marker(pytest.mark.container)
            item.add_marker(pytest.mark.timeout(TIMEOUT_SECONDS))


def base_images() -> list[str]:
    """The images the Containerfile and compose.yml start from (the ones
    scripts/container-bases.sh makes when no registry is reachable)."""
    images = re.findall(r"^FROM\s+(\S+)", CONTAINERFILE.read_text(), flags=re.MULTILINE)
    images += re.findall(
        r"^\s+image:\s+(\S+/(?:postgres|seaweedfs):\S+)", COMPOSE_FILE.read_text(), flags=re.M
    )
    return sorted(set(images))


@pytest.fixture(scope="session")
def podman() -> Podman:
    """Podman, with the base images in place."""
    require_service(
        Podman.installed(),
        "podman or podman-compose is missing: run `make test-containers` as root",
    )
    engine = Podman()
    missing = [image for image in base_images() if not engine.image_exists(image)]
    require_service(
        not missing,
        f"base images {missing} are missing: run `bash scripts/container-bases.sh` as root",
    )
    return engine


@pytest.fixture(scope="session")
def ferry_image(podman: Podman) -> Iterator[str]:
    """The image built from this checkout's Containerfile, under a name of this run's own.

    Only the name is removed afterwards: the image and its layers stay as podman's build
    cache, so the next build only redoes the layers of the files that changed.
    """
    tag = f"localhost/ferry-test:{uuid.uuid4().hex[:12]}"
    podman.build(tag)
    yield tag
    podman.run("untag", tag, tag)
