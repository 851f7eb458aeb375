"""Podman and podman-compose as the container tests drive them.

Every container, volume and network a test makes is found again by its id or by its
compose project, whose name is unique to the run, and removed by the test that made it;
nothing is ever looked up or removed by a name pattern others could share.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML

from tests.support.services import PROJECT_ROOT

CONTAINERFILE = PROJECT_ROOT / "Containerfile"
COMPOSE_FILE = PROJECT_ROOT / "compose.yml"
PODMAN_CONF = PROJECT_ROOT / "deploy" / "podman-containers.conf"
PODMAN_COMPOSE = PROJECT_ROOT / ".venv" / "bin" / "podman-compose"


class PodmanError(AssertionError):
    """A podman command failed; the message carries its output."""


@dataclass(frozen=True)
class Podman:
    """The podman CLI with this machine's settings (deploy/podman-containers.conf, Docker
    image format so that HEALTHCHECK survives the build)."""

    env: dict[str, str] = field(
        default_factory=lambda: {
            **os.environ,
            "CONTAINERS_CONF": os.environ.get("CONTAINERS_CONF", str(PODMAN_CONF)),
            "BUILDAH_FORMAT": "docker",
        }
    )

    @staticmethod
    def installed() -> bool:
        """Whether podman and podman-compose are there to run."""
        return shutil.which("podman") is not None and PODMAN_COMPOSE.exists()

    def run(
        self, *args: str, timeout: float = 120, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """``podman ARGS``; a failure raises with the command's output when ``check``."""
        return _run(["podman", *args], self.env, timeout, check)

    def image_exists(self, image: str) -> bool:
        """Whether ``image`` is in local storage."""
        return self.run("image", "exists", image, check=False).returncode == 0

    def build(self, tag: str, timeout: float = 900) -> None:
        """Build the Containerfile as ``tag``, from local base images only."""
        self.run(
            "build", "--pull=never", "--format", "docker", "--file", str(CONTAINERFILE),
            "--tag", tag, str(PROJECT_ROOT), timeout=timeout,
        )  # fmt: skip

    def healthy(self, container: str) -> bool:
        """Run the container's own health check once; True when it passes."""
        return self.run("healthcheck", "run", container, check=False).returncode == 0

    def wait_healthy(self, container: str, timeout: float = 120) -> None:
        """Run the container's health check until it passes (no systemd here runs the
        checks on a timer), or fail with the container's log."""
        deadline = time.monotonic() + timeout
        while not self.healthy(container):
            state = self.run("inspect", "--format", "{{.State.Status}}", container).stdout
            if time.monotonic() > deadline or state.strip() == "exited":
                raise PodmanError(
                    f"{container[:12]} not healthy ({state.strip()}):\n{self.log(container)}"
                )
            time.sleep(1)

    def exit_code(self, container: str) -> int:
        """The exit status of a container that has stopped."""
        code = self.run("inspect", "--format", "{{.State.ExitCode}}", container).stdout
        return int(code.strip())

    def log(self, container: str, lines: int = 60) -> str:
        """The last lines a container wrote."""
        result = self.run("logs", "--tail", str(lines), container, check=False)
        return result.stdout + result.stderr


def _run(
    command: list[str], env: Mapping[str, str], timeout: float, check: bool
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        command, env=dict(env), capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and result.returncode != 0:
        raise PodmanError(
            f"{' '.join(command)} exited {result.returncode}:\n"
            f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        )
    return result


@dataclass
class ComposeProject:
    """compose.yml run by podman-compose under a project name of its own.

    podman 4.3 cannot start containers that depend on each other in one go (podman-compose
    links them with ``--requires``, and podman fails to build the dependency graph) and
    cannot wait for ``service_healthy``, so :meth:`start` follows the file's
    ``depends_on`` itself.
    """

    podman: Podman
    files: Sequence[Path]
    variables: Mapping[str, str]
    name: str = field(default_factory=lambda: f"ferry-test-{uuid.uuid4().hex[:10]}")
    _started: set[str] = field(default_factory=set)

    def compose(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        """``podman-compose -p NAME -f FILE... ARGS`` with the project's variables."""
        files = [argument for path in self.files for argument in ("-f", str(path))]
        command = [str(PODMAN_COMPOSE), "-p", self.name, *files, *args]
        return _run(command, {**self.podman.env, **self.variables}, timeout, check=True)

    def services(self) -> dict[str, Any]:
        """The services of the merged files (a later file's keys win, as in compose)."""
        merged: dict[str, Any] = {}
        for path in self.files:
            for name, service in YAML(typ="safe").load(path.read_text())["services"].items():
                merged.setdefault(name, {}).update(service)
        return merged

    def container(self, service: str) -> str:
        """The id of the container of ``service`` in this project."""
        found = self.podman.run(
            "ps", "--all", "--quiet", "--no-trunc",
            "--filter", f"label=com.docker.compose.project={self.name}",
            "--filter", f"label=com.docker.compose.service={service}",
        ).stdout.split()  # fmt: skip
        assert len(found) == 1, f"{service}: containers {found}"
        return found[0]

    def start(self, service: str) -> None:
        """Start ``service`` and what it depends on, wave by wave: every service whose
        dependencies are ready starts in one ``up``, then each is waited for as the
        ``depends_on`` conditions on it say, before the next wave."""
        services = self.services()
        conditions = _conditions(services, service)
        pending = [name for name in services if name in conditions]
        ready: set[str] = set()
        while pending:
            wave = [name for name in pending if _depends_on(services[name]).keys() <= ready]
            assert wave, f"depends_on has a cycle among {pending}"
            self.compose("up", "--detach", "--no-deps", *wave)
            self._started.update(wave)
            for name in wave:
                for condition in sorted(conditions[name]):
                    WAITS[condition](self, name)
            ready.update(wave)
            pending = [name for name in pending if name not in ready]

    def exec(self, service: str, *command: str) -> str:
        """Run a command in the running container of ``service``; its output."""
        return self.podman.run("exec", self.container(service), *command).stdout

    def logs(self) -> str:
        """The last lines of every container of the project, for a failure message."""
        return "\n".join(
            f"--- {service}\n{self.podman.log(self.container(service))}"
            for service in sorted(self._started)
        )

    def down(self) -> None:
        """Stop and remove the project's containers, network and volumes."""
        self.compose("down", "--volumes", timeout=180)


def _depends_on(service: dict[str, Any]) -> dict[str, str]:
    """A service's dependencies and the condition on each (both forms of ``depends_on``)."""
    depends_on = service.get("depends_on", {})
    if isinstance(depends_on, list):
        return {name: "service_started" for name in depends_on}
    return {name: rule.get("condition", "service_started") for name, rule in depends_on.items()}


def _conditions(services: dict[str, Any], target: str) -> dict[str, set[str]]:
    """``target`` and everything it needs, each with the conditions others put on it."""
    conditions: dict[str, set[str]] = {target: set()}
    todo = [target]
    while todo:
        for dependency, condition in _depends_on(services[todo.pop()]).items():
            if dependency not in conditions:
                conditions[dependency] = set()
                todo.append(dependency)
            conditions[dependency].add(condition)
    return conditions


def _wait_started(project: ComposeProject, service: str) -> None:
    """``service_started``: ``up`` has returned, nothing more to wait for."""


def _wait_healthy(project: ComposeProject, service: str) -> None:
    project.podman.wait_healthy(project.container(service))


def _wait_completed(project: ComposeProject, service: str) -> None:
    container = project.container(service)
    project.podman.run("wait", container, timeout=300)
    code = project.podman.exit_code(container)
    if code != 0:
        raise PodmanError(f"{service} exited {code}:\n{project.podman.log(container)}")


WAITS: dict[str, Callable[[ComposeProject, str], None]] = {
    "service_started": _wait_started,
    "service_healthy": _wait_healthy,
    "service_completed_successfully": _wait_completed,
}
