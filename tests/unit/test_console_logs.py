"""Log lines: JSON for machines (never uvicorn's colour codes), one readable line per event
for a person at a terminal, and the serving URL as the last start-up line."""

from __future__ import annotations

import io
import json
import logging
import sys
from pathlib import Path

import pytest

from app.ops.logs import (
    ConsoleFormatter,
    JsonFormatter,
    MigrationPreamble,
    ServingAnnouncement,
    configure_logging,
    serving_url,
)
from app.settings import load_settings

COLOURED = "Uvicorn running on \x1b[1m%s://%s:%d\x1b[0m (Press CTRL+C to quit)"


def _record(name: str, message: str, *args: object, **extra: object) -> logging.LogRecord:
    record = logging.LogRecord(name, logging.INFO, __file__, 1, message, args, None)
    record.__dict__.update(extra)
    return record


def _uvicorn_running(host: str = "127.0.0.1", port: int = 8000) -> logging.LogRecord:
    record = _record(
        "uvicorn.error",
        "Uvicorn running on %s://%s:%d (Press CTRL+C to quit)",
        "http",
        host,
        port,
        color_message=COLOURED,
    )
    assert ServingAnnouncement().filter(record)
    return record


def test_uvicorn_running_line_becomes_the_url_to_open_without_colour_codes() -> None:
    record = _uvicorn_running()
    expected = "Ferry is serving on http://127.0.0.1:8000/ — open it to upload"
    line = json.loads(JsonFormatter().format(record))
    assert line["message"] == expected
    assert "color_message" not in line
    assert "\x1b" not in JsonFormatter().format(record)
    assert ConsoleFormatter().format(record).endswith(f"INFO    {expected}")


@pytest.mark.parametrize(
    ("host", "url"),
    [
        ("0.0.0.0", "http://127.0.0.1:8000/"),
        ("::", "http://[::1]:8000/"),
        ("::1", "http://[::1]:8000/"),
        ("ferry.example", "http://ferry.example:8000/"),
    ],
)
def test_the_serving_url_is_one_a_browser_can_open(host: str, url: str) -> None:
    assert serving_url("http", host, 8000) == url
    message = _uvicorn_running(host).getMessage()
    assert message.startswith(f"Ferry is serving on {url}")
    assert ("every address" in message) == (host in {"0.0.0.0", "::"})


def test_an_access_line_on_the_console_reads_as_a_sentence() -> None:
    record = _record(
        "ferry.access",
        "%s %s %d",
        "PATCH",
        "/files/abc",
        204,
        method="PATCH",
        path="/files/abc",
        status=204,
        duration_ms=12.345,
        bytes_in=5 * 1024 * 1024,
        owner="alice",
    )
    line = ConsoleFormatter().format(record)
    assert line.split(" ", 1)[1] == "INFO    PATCH /files/abc 204  12.3 ms  5.0 MiB in  alice"


def test_an_error_with_a_traceback_is_one_console_line_pointing_at_the_json_log() -> None:
    try:
        raise ValueError("the disk\nis gone")
    except ValueError:
        record = logging.LogRecord("app", logging.ERROR, __file__, 1, "boom", (), sys.exc_info())
    record.request_id = "req-12345678"
    line = ConsoleFormatter(Path("logs")).format(record)
    assert "\n" not in line
    assert "ERROR   boom" in line
    assert "request_id=req-12345678" in line
    assert "(ValueError: the disk is gone; traceback in logs/error.log)" in line
    assert "Traceback" in json.loads(JsonFormatter().format(record))["exception"]


def test_alembic_preamble_is_dropped_and_its_migrations_kept() -> None:
    preamble = MigrationPreamble()
    assert not preamble.filter(_record("alembic.runtime.migration", "Context impl SQLiteImpl."))
    assert not preamble.filter(
        _record("alembic.runtime.migration", "Will assume non-transactional DDL.")
    )
    assert preamble.filter(_record("alembic.runtime.migration", "Running upgrade  -> 0001"))


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("terminal", [True, False])
def test_stdout_is_readable_on_a_terminal_and_json_otherwise_while_files_stay_json(
    tmp_path: Path, terminal: bool
) -> None:
    settings = load_settings({"FERRY_LOG_DIR": str(tmp_path / "logs")}, env_file=None)
    stdout = _Terminal() if terminal else io.StringIO()
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    try:
        configure_logging(settings, stdout=stdout)
        logging.getLogger("uvicorn.error").info(
            "Uvicorn running on %s://%s:%d (Press CTRL+C to quit)",
            "http",
            "127.0.0.1",
            8123,
            extra={"color_message": COLOURED},
        )
    finally:
        for handler in root.handlers:
            handler.close()
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
    printed = stdout.getvalue().splitlines()
    assert len(printed) == 1
    assert printed[0].startswith("{") is not terminal
    assert "Ferry is serving on http://127.0.0.1:8123/" in printed[0]
    written = (tmp_path / "logs" / "ferry.log").read_text().splitlines()
    assert [json.loads(line)["message"] for line in written] == [
        "Ferry is serving on http://127.0.0.1:8123/ — open it to upload"
    ]
    assert "color_message" not in written[0]
