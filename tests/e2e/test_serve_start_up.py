"""What ``ferry serve`` refuses, or respects, before it serves: real processes, real ``.env``."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from tests.support.services import FERRY, PROJECT_ROOT, free_port


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

    ``-o install`` skips the install step (the test's ``.venv`` is installed); the recipe
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
            "install",
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
