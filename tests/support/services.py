"""Real services for tests: PostgreSQL databases and ``ferry serve`` processes.

Outside CI a missing service skips the tests that need it, with the reason; with
``CI=true`` it fails them, because CI must run everything.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[2]
FERRY = PROJECT_ROOT / ".venv" / "bin" / "ferry"
POSTGRES_ADMIN_URL = os.environ.get(
    "FERRY_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test"
)


def in_ci() -> bool:
    """CI runs every test; a missing service is a failure there, a skip elsewhere."""
    return os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def python_snippet_output(script: str, *args: str, env: Mapping[str, str]) -> str:
    """What ``script`` prints when run by a fresh interpreter from the project's root: what a
    test of a process's import-time state needs (this one's modules are long loaded)."""
    done = subprocess.run(
        [sys.executable, "-c", script, *args],
        env={"PATH": "/usr/bin", **env},
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def require_service(available: bool, reason: str) -> None:
    """Skip (locally) or fail (in CI) when a needed service is missing."""
    if available:
        return
    if in_ci():
        pytest.fail(f"required in CI: {reason}")
    pytest.skip(reason)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def postgres_available() -> bool:
    """Whether the PostgreSQL server on 127.0.0.1:5432 answers."""
    try:
        with socket.create_connection(("127.0.0.1", 5432), timeout=1):
            return True
    except OSError:
        return False


async def _admin_execute(sql: str) -> None:
    import asyncpg

    connection = await asyncpg.connect(POSTGRES_ADMIN_URL)
    try:
        await connection.execute(sql)
    finally:
        await connection.close()


@contextlib.contextmanager
def postgres_database() -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test; dropped afterwards."""
    from tests.support.markers import expect_marker  # a plugin: imported by pytest first

    expect_marker("postgres", "a PostgreSQL database")
    require_service(postgres_available(), "PostgreSQL is not running on 127.0.0.1:5432")
    name = f"ferry_t_{uuid.uuid4().hex[:12]}"
    asyncio.run(_admin_execute(f'CREATE DATABASE "{name}"'))
    try:
        yield f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"
    finally:
        asyncio.run(_admin_execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@dataclass
class FerryProcess:
    """A ``ferry serve`` process on a free port, stopped by PID by the test that started it."""

    data_dir: Path
    env: dict[str, str]
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None
    own_process_group: bool = False
    """Start the server in a session of its own, so that :meth:`kill_group` reaches its
    workers too (``FERRY_WORKERS`` > 1): the whole node dies at once, as in a power cut."""

    @property
    def url(self) -> str:
        """Base URL of the server."""
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> None:
        """Start the server and wait until ``/health`` answers 200."""
        from tests.support.markers import expect_marker

        expect_marker("serve", "a ferry serve process")
        self.log_path = self.data_dir.parent / f"ferry-{self.port}.log"
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [str(FERRY), "serve", "--host", "127.0.0.1", "--port", str(self.port)],
            env=self.env,
            cwd=self.data_dir.parent,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=self.own_process_group,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"ferry exited early:\n{self.log_path.read_text()[-4000:]}")
            try:
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"ferry did not become healthy:\n{self.log_path.read_text()[-4000:]}")

    def peak_rss_mib(self) -> float:
        """The server's peak resident memory so far (VmHWM), in MiB."""
        assert self.process is not None
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        raise AssertionError("no VmHWM in /proc status")

    def kill(self) -> None:
        """``kill -9`` the server: the crash the invariants are about."""
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)
        self.process = None

    def kill_group(self, timeout: float = 10.0) -> None:
        """``kill -9`` the server and every worker it forked, at once (needs
        ``own_process_group``); returns when none of them holds the port or the data
        directory any more."""
        assert self.own_process_group, "kill_group needs own_process_group=True"
        if self.process is None:
            return
        group = self.process.pid
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, signal.SIGKILL)
        self.process.wait(timeout=timeout)
        self.process = None
        deadline = time.monotonic() + timeout
        while _live_members_of(group):
            if time.monotonic() > deadline:
                raise RuntimeError(f"processes of group {group} outlived SIGKILL")
            time.sleep(0.05)

    def stop(self) -> None:
        """Stop the server gracefully (SIGTERM), killing it if it does not exit."""
        if self.process is None:
            return
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()
        self.process = None


def _live_members_of(group: int) -> list[int]:
    """PIDs in process group ``group`` that have not exited (zombies hold nothing)."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        state, pgrp = fields[0], int(fields[2])
        if pgrp == group and state not in {"Z", "X"}:
            members.append(int(stat.parent.name))
    return members


def ferry_env(data_dir: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment for a test server: isolated data and log dirs, no inherited FERRY_*."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FERRY_")}
    env.update(
        FERRY_DATA_DIR=str(data_dir),
        FERRY_LOG_DIR=str(data_dir.parent / "logs"),
        FERRY_AUTH="none",
        PYTHONUNBUFFERED="1",
    )
    env.update(extra or {})
    return env


@contextlib.contextmanager
def running_ferry(
    tmp_path: Path, extra_env: Mapping[str, str] | None = None
) -> Iterator[FerryProcess]:
    """Start ``ferry serve`` for one test and always stop it."""
    data_dir = tmp_path / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    server = FerryProcess(data_dir=data_dir, env=ferry_env(data_dir, extra_env))
    server.start()
    try:
        yield server
    finally:
        server.stop()


PYTHON = sys.executable


def zero_stream(total: int, piece: int = 1024 * 1024) -> Iterator[bytes]:
    """``total`` zero bytes in pieces: a multi-GiB body that costs no memory or disk."""
    block = bytes(piece)
    sent = 0
    while sent < total:
        size = min(piece, total - sent)
        yield block if size == piece else block[:size]
        sent += size
