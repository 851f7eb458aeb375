"""An operator's first hour with the real ``ferry`` command: what the console shows on a
terminal, the one-line failures of a wrong setting, and ``ferry keys`` in the wrong place."""

from __future__ import annotations

import contextlib
import json
import os
import re
import select
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from app.settings import load_settings
from tests.support.services import FERRY, FerryProcess, free_port

#: A console line: local time, level, then words (never JSON, never colour codes).
CONSOLE_LINE = re.compile(r"\d\d:\d\d:\d\d (DEBUG|INFO|WARNING|ERROR|CRITICAL) +[^{\s].*")
SERVING = re.compile(r"Ferry is serving on (http://127\.0\.0\.1:\d+/) — open it to upload$", re.M)


def _env(**variables: str) -> dict[str, str]:
    """The test's environment without any FERRY_* variable, plus ``variables``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FERRY_")}
    env.update(PYTHONUNBUFFERED="1", **variables)
    return env


class _Terminal:
    """The reading end of a pseudo-terminal a process writes its stdout and stderr to."""

    def __init__(self) -> None:
        self.master, self.slave = os.openpty()
        self.text = ""

    def read_until(self, pattern: re.Pattern[str], timeout: float) -> re.Match[str]:
        """Read until ``pattern`` matches; fail after ``timeout`` seconds or at the end."""
        deadline = time.monotonic() + timeout
        while not (found := pattern.search(self.text.replace("\r\n", "\n"))):
            left = deadline - time.monotonic()
            assert left > 0, self.text
            assert self.read_for(min(left, 1.0)), self.text
        return found

    def read_for(self, seconds: float) -> bool:
        """Read what arrives within ``seconds``; ``False`` once the writer is gone."""
        end = time.monotonic() + max(seconds, 0)
        while (left := end - time.monotonic()) > 0:
            ready, _, _ = select.select([self.master], [], [], left)
            if not ready:
                break
            try:
                chunk = os.read(self.master, 65536)
            except OSError:  # EIO: every writer closed the terminal
                return False
            if not chunk:
                return False
            self.text += chunk.decode("utf-8", "replace")
        return True

    def lines(self) -> list[str]:
        return [line for line in self.text.replace("\r\n", "\n").split("\n") if line]

    def close(self) -> None:
        for descriptor in (self.master, self.slave):
            with contextlib.suppress(OSError):
                os.close(descriptor)


@contextlib.contextmanager
def _serve_on_a_terminal(
    directory: Path, port: int
) -> Iterator[tuple[subprocess.Popen[bytes], _Terminal]]:
    terminal = _Terminal()
    process = subprocess.Popen(
        [str(FERRY), "serve", "--port", str(port), "--default-auth", "none"],
        cwd=directory,
        env=_env(),
        stdin=subprocess.DEVNULL,
        stdout=terminal.slave,
        stderr=terminal.slave,
        start_new_session=True,
    )
    os.close(terminal.slave)
    try:
        yield process, terminal
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
        terminal.close()


@pytest.mark.serve
def test_serve_on_a_terminal_prints_one_readable_line_per_event_and_ends_with_the_url(
    tmp_path: Path,
) -> None:
    port = free_port()
    with _serve_on_a_terminal(tmp_path, port) as (process, terminal):
        url = terminal.read_until(SERVING, timeout=180).group(1)
        terminal.read_for(0.5)
        start_up = terminal.lines()
        assert SERVING.search(start_up[-1]), "the URL is the last start-up line"
        assert httpx.get(f"{url}health", timeout=10).status_code == 200
        terminal.read_until(re.compile(r"INFO +GET /health 200 +\d+\.\d ms$", re.M), timeout=10)
        process.send_signal(signal.SIGTERM)
        # uvicorn ends by re-raising the signal once it has shut down cleanly.
        assert process.wait(timeout=60) in {0, -signal.SIGTERM}
        terminal.read_for(0.5)
    lines = terminal.lines()
    assert all(CONSOLE_LINE.fullmatch(line) for line in lines), lines
    assert "\x1b" not in terminal.text
    assert any("Running upgrade" in line for line in lines), "a first start migrates"
    assert not any("Context impl" in line or "setup plugin" in line for line in lines)
    written = [
        json.loads(line) for line in (tmp_path / "logs" / "ferry.log").read_text().splitlines()
    ]
    assert not any("color_message" in line for line in written)
    assert any(SERVING.search(line["message"]) for line in written)
    assert any(line["logger"] == "alembic.runtime.migration" for line in written)


def test_serve_writes_json_lines_to_stdout_when_it_is_not_a_terminal(
    shared_ferry: FerryProcess,
) -> None:
    assert httpx.get(f"{shared_ferry.url}/health", timeout=10).status_code == 200
    assert shared_ferry.log_path is not None  # its stdout and stderr, a file
    deadline = time.monotonic() + 10  # the access line follows the answer
    while True:
        complete = shared_ferry.log_path.read_text().rpartition("\n")[0]
        printed = [json.loads(line) for line in complete.splitlines()]
        if any(line["logger"] == "ferry.access" for line in printed):
            break
        assert time.monotonic() < deadline, printed
        time.sleep(0.05)
    assert any(SERVING.search(line["message"]) for line in printed)
    assert not any("color_message" in line for line in printed)


def _closed_port() -> int:
    """A loopback port nothing listens on (free right now)."""
    return free_port()


def test_serve_migrate_and_keys_report_a_wrong_setting_in_one_line(tmp_path: Path) -> None:
    """A bad database URL, an unreachable PostgreSQL, a data directory that cannot be
    written (under a regular file: root ignores permission bits) and a busy port: one line
    on stderr, a non-zero status, no traceback."""
    (tmp_path / "a-file").write_text("not a directory")
    unwritable = str(tmp_path / "a-file" / "data")
    closed = f"postgresql+asyncpg://ferry:pw-secret@127.0.0.1:{_closed_port()}/ferry"
    cases: dict[str, tuple[dict[str, str], str]] = {
        "bad url": (
            {"FERRY_DATABASE_URL": "mysql://ferry:pw-secret@db/ferry"},
            "ferry: invalid configuration: FERRY_DATABASE_URL: 'mysql' is not a database",
        ),
        "unreachable": (
            {"FERRY_DATABASE_URL": closed},
            f"ferry: cannot use the database {closed.replace('pw-secret', '***')}: "
            "ConnectionRefusedError",
        ),
        "unwritable": ({"FERRY_DATA_DIR": unwritable}, "ferry: "),
    }
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    runs = {}
    for case, (variables, _) in cases.items():
        directory = tmp_path / case
        directory.mkdir()
        for command in (["serve", "--port", str(free_port())], ["migrate"], ["keys", "list"]):
            runs[case, command[0]] = _start(command, directory, variables)
    (tmp_path / "busy").mkdir()
    runs["busy port", "serve"] = _start(
        ["serve", "--port", str(busy.getsockname()[1])], tmp_path / "busy", {}
    )
    with busy:
        results = {key: process.communicate(timeout=60) for key, process in runs.items()}
    for (case, command), (stdout, stderr) in results.items():
        status = runs[case, command].returncode
        assert status in {1, 2}, (case, command, status, stderr)
        assert stderr.count("\n") == 1 and "Traceback" not in stderr, (case, command, stderr)
        assert "pw-secret" not in stderr
        assert stdout == "", (case, command, stdout)
        expected = cases[case][1] if case in cases else "ferry: 127.0.0.1:"
        assert stderr.startswith(expected), (case, command, stderr)
    assert results["unwritable", "serve"][1] == (
        f"ferry: FERRY_DATA_DIR: cannot write to {unwritable} (Not a directory)\n"
    )
    assert results["unwritable", "migrate"][1] == (
        f"ferry: FERRY_DATA_DIR: cannot create {unwritable} (Not a directory)\n"
    )
    assert results["unwritable", "keys"][1].startswith("ferry: no Ferry database at ")
    assert "is already in use" in results["busy port", "serve"][1]


def _start(command: list[str], directory: Path, variables: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [str(FERRY), *command],
        cwd=directory,
        env=_env(**variables),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _ferry(directory: Path, *arguments: str, **variables: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(FERRY), *arguments],
        cwd=directory,
        env=_env(**variables),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_keys_in_a_directory_without_ferry_data_refuse_and_name_the_typo(tmp_path: Path) -> None:
    served = tmp_path / "served"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    done = _ferry(elsewhere, "keys", "create", "--owner", "alice", FERRY_DATADIR=str(served))
    assert done.returncode == 1
    assert done.stdout == ""
    warning, error = done.stderr.splitlines()
    assert warning == (
        "ferry: warning: FERRY_DATADIR (in the environment) is not a Ferry setting and is "
        "ignored; did you mean FERRY_DATA_DIR?"
    )
    assert error.startswith(f"ferry: no Ferry database at {elsewhere / 'data' / 'ferry.db'} ")
    assert f"relative to {elsewhere}" in error
    assert "'ferry migrate'" in error
    assert list(elsewhere.iterdir()) == [], "nothing is created in the wrong directory"


def test_keys_migrate_an_existing_database_silently_and_revoke_the_listed_form(
    tmp_path: Path,
) -> None:
    from alembic import command

    from app.db.engine import alembic_config

    # A database ferry serve made with an older Ferry: keys are there, later migrations not.
    settings = load_settings({"FERRY_DATA_DIR": str(tmp_path / "data")}, env_file=None)
    command.upgrade(alembic_config(settings), "0003_auth_ops")
    created = _ferry(tmp_path, "keys", "create", "--owner", "alice")
    assert created.returncode == 0, created.stderr
    assert created.stderr == "", "no migration noise"
    assert re.fullmatch(r"ferry_[0-9a-f]{8}_\S+\n", created.stdout)
    listed = _ferry(tmp_path, "keys", "list")
    assert listed.stderr == ""
    identifier, shown, owner, *_ = listed.stdout.split()
    assert owner == "alice"
    assert shown == f"{created.stdout[:14]}_…"
    revoked = _ferry(tmp_path, "keys", "revoke", shown)
    assert (revoked.returncode, revoked.stderr) == (0, "revoked 1 key(s)\n")
    after = _ferry(tmp_path, "keys", "list").stdout.split()
    assert after[0] == identifier and after[-2] == "revoked"
