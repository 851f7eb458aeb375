"""What ``ferry serve`` refuses, or respects, before it serves: real processes, real ``.env``."""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from app.ops.data_dir_lock import lock_file_name
from tests.e2e.support import MIB, OCTETS, TUS, create_upload, tus_offset
from tests.support.services import (
    FERRY,
    PROJECT_ROOT,
    FerryProcess,
    free_port,
    postgres_database,
    running_ferry,
)


def _clean_env(**variables: str) -> dict[str, str]:
    """The test's environment without any FERRY_* variable, plus ``variables``."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("FERRY_") and k not in {"MAKEFLAGS", "MFLAGS", "MAKELEVEL"}
    }
    env.update(PYTHONUNBUFFERED="1", **variables)
    return env


def test_serve_refuses_the_env_example_signing_key_and_an_unsigned_webhook(
    tmp_path: Path,
) -> None:
    env_file = tmp_path / ".env"
    base = f"FERRY_DATA_DIR={tmp_path / 'data'}\nFERRY_LOG_DIR={tmp_path / 'logs'}\n"
    cases = {
        "FERRY_SIGNING_KEY=change-me-to-a-long-random-string\n": "FERRY_SIGNING_KEY",
        "FERRY_SIGNING_KEY=short-key\n": "FERRY_SIGNING_KEY",
        "FERRY_WEBHOOK_URL=http://127.0.0.1:9/hooks\n": "FERRY_WEBHOOK_SECRET",
    }
    for line, variable in cases.items():
        env_file.write_text(base + line)
        done = subprocess.run(
            [str(FERRY), "serve", "--port", str(free_port())],
            env=_clean_env(),
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 2, (line, done.stderr)
        assert done.stderr.startswith(f"ferry: invalid configuration: {variable}: "), done.stderr
        assert done.stderr.count("\n") == 1, done.stderr
        assert not (tmp_path / "data").exists(), "nothing may be touched before refusing"


@contextlib.contextmanager
def _make_run(directory: Path, port: int) -> Iterator[str]:
    """``make run`` with the project's Makefile, from ``directory`` (its ``.env``).

    ``-o install-serve`` skips the install step (the test's ``.venv`` is installed); the recipe
    that starts ``ferry serve`` is the Makefile's own. Stopped by its process group.
    """
    log = (directory / "make-run.log").open("wb")
    process = subprocess.Popen(
        [
            "make",
            "--no-print-directory",
            "-f",
            str(PROJECT_ROOT / "Makefile"),
            "-o",
            "install-serve",
            "run",
            f"VENV={PROJECT_ROOT / '.venv'}",
        ],
        cwd=directory,
        env=_clean_env(),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, (directory / "make-run.log").read_text()
            assert time.monotonic() < deadline, (directory / "make-run.log").read_text()
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            time.sleep(0.1)
        yield url
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)  # make, and the ferry serve it started
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
        log.close()


def test_make_run_respects_ferry_auth_from_dot_env_and_defaults_to_none_without_it(
    tmp_path: Path,
) -> None:
    for auth_line, expected in (("FERRY_AUTH=keys\n", 401), ("", 200)):
        directory = tmp_path / ("keys" if auth_line else "default")
        directory.mkdir()
        port = free_port()
        (directory / ".env").write_text(
            f"FERRY_PORT={port}\nFERRY_DATA_DIR={directory / 'data'}\n"
            f"FERRY_LOG_DIR={directory / 'logs'}\n{auth_line}"
        )
        with _make_run(directory, port) as url:
            assert httpx.get(f"{url}/api/files", timeout=10).status_code == expected, auth_line


def _staging_size(data_dir: Path, url: str) -> int:
    return (data_dir / "staging" / url.rstrip("/").rsplit("/", 1)[-1]).stat().st_size


def _read_response(sock: socket.socket) -> bytes:
    answer = b""
    while b"\r\n\r\n" not in answer:
        piece = sock.recv(65536)
        if not piece:
            break
        answer += piece
    return answer


def test_a_second_serve_on_the_same_data_dir_exits_and_leaves_a_live_patch_untouched(
    tmp_path: Path,
) -> None:
    payload = os.urandom(16 * MIB)
    half = len(payload) // 2
    with running_ferry(tmp_path) as first:
        url = create_upload(first.url, len(payload))
        parts = urlsplit(url)
        head = (
            f"PATCH {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
            f"Tus-Resumable: 1.0.0\r\nContent-Type: {OCTETS}\r\n"
            f"Upload-Offset: 0\r\nContent-Length: {len(payload)}\r\n\r\n"
        ).encode()
        with socket.create_connection(("127.0.0.1", first.port), timeout=60) as sock:
            # A PATCH in progress: most of half its body is in the staging file,
            # uncommitted (a lone writer keeps its last full 1 MiB buffer, and the piece
            # that filled it, until the next piece comes).
            sock.sendall(head + payload[:half])
            deadline = time.monotonic() + 30
            while _staging_size(first.data_dir, url) < half - 2 * MIB:
                assert time.monotonic() < deadline, "the first half never reached staging"
                time.sleep(0.05)
            staged = _staging_size(first.data_dir, url)
            lock_file = (first.data_dir / lock_file_name(os.uname().nodename)).read_bytes()
            assert first.process is not None
            first_pid = first.process.pid
            # A second `make run` (same port), then one on a port of its own.
            for port in (first.port, free_port()):
                second = subprocess.run(
                    [str(FERRY), "serve", "--host", "127.0.0.1", "--port", str(port)],
                    env=first.env,
                    cwd=first.data_dir.parent,
                    capture_output=True,
                    text=True,
                    timeout=60,
                    check=False,
                )
                assert second.returncode == 1, second.stderr
                assert second.stderr.startswith("ferry: data directory "), second.stderr
                assert f"in use by another ferry serve (pid {first_pid})" in second.stderr
                assert second.stderr.count("\n") == 1, second.stderr
            assert _staging_size(first.data_dir, url) >= staged
            assert (first.data_dir / lock_file_name(os.uname().nodename)).read_bytes() == lock_file
            # The live PATCH goes on as if nothing had happened.
            sock.sendall(payload[half:])
            answer = _read_response(sock)
        assert answer.startswith(b"HTTP/1.1 204"), answer
        assert f"upload-offset: {len(payload)}".encode() in answer.lower()
        assert tus_offset(url) == len(payload)
        record = httpx.get(f"{first.url}/api/files/{url.rsplit('/', 1)[-1]}", headers=TUS)
        assert record.json()["sha256"] == hashlib.sha256(payload).hexdigest()


def test_workers_hold_the_data_dir_until_the_supervisor_stops(tmp_path: Path) -> None:
    with (
        postgres_database() as database_url,
        running_ferry(
            tmp_path, {"FERRY_WORKERS": "2", "FERRY_DATABASE_URL": database_url}
        ) as server,
    ):
        assert server.process is not None
        supervisor = server.process.pid
        second = subprocess.run(
            [str(FERRY), "serve", "--port", str(free_port())],
            env=server.env,
            cwd=server.data_dir.parent,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert second.returncode == 1, second.stderr
        assert f"in use by another ferry serve (pid {supervisor})" in second.stderr
        server.stop()
        # Stopped, it lets go: the next server starts on the same directory.
        after = FerryProcess(data_dir=server.data_dir, env=server.env)
        after.start()
        after.stop()
