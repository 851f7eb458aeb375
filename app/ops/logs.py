"""Logs: JSON lines in ``FERRY_LOG_DIR`` always, one readable line per event on a terminal.

Every JSON line is one object with a ``request_id`` when it was written while serving a
request (the id is also sent back as ``X-Request-Id``), so one request can be followed
through the access line, warnings and errors. ``ferry.log`` gets everything, ``error.log``
ERROR and above only, as the original service did. Standard output gets the same JSON
lines when it is a pipe or a file (a log collector reads them), and short readable lines
when a person watches it on a terminal (``make run``); the last start-up line is the URL
to open.
"""

from __future__ import annotations

import contextvars
import io
import ipaddress
import json
import logging
import logging.handlers
import os
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from app.settings import Settings

REQUEST_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "ferry_request_id", default=None
)

#: ``LogRecord`` attributes that are not extra fields.
_STANDARD_ATTRIBUTES = frozenset(
    vars(logging.LogRecord("", 0, "", 0, "", None, None)).keys() | {"message", "asctime"}
)
#: Extras no log line carries: uvicorn's copy of its message with terminal colour codes.
_DROPPED_EXTRAS = frozenset({"color_message"})
#: Access-line extras the console shows in its own words (the message has method, path
#: and status already).
_ACCESS_EXTRAS = frozenset({"method", "path", "status", "duration_ms", "bytes_in", "owner"})


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    """The fields a caller added with ``extra=``."""
    return {
        key: value
        for key, value in vars(record).items()
        if key not in _STANDARD_ATTRIBUTES
        and key not in _DROPPED_EXTRAS
        and key != "request_id"
        and not key.startswith("_")
    }


def _request_id(record: logging.LogRecord) -> str | None:
    return getattr(record, "request_id", None) or REQUEST_ID.get()


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, request id, extras.

    A record goes to two or three JSON handlers (stdout, ``ferry.log``, ``error.log``): it
    is rendered once and the line kept on the record for the others.
    """

    def format(self, record: logging.LogRecord) -> str:
        """Render ``record`` as a JSON line."""
        rendered: str | None = getattr(record, _RENDERED, None)
        if rendered is None:
            rendered = self._render(record)
            setattr(record, _RENDERED, rendered)
        return rendered

    def _render(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id = _request_id(record)
        if request_id:
            line["request_id"] = request_id
        line.update(_extras(record))
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str, ensure_ascii=False)


_RENDERED = "_ferry_json_line"
"""Where a record keeps its JSON line (a ``_`` name: never an extra field)."""


class LogFile(logging.handlers.RotatingFileHandler):
    """A rotating log file that counts what it writes.

    The standard handler decides on rotation by rendering each record a second time and
    asking the file system (two ``stat`` calls and a seek) on every line; with an access
    line per request that was a visible share of a small upload's CPU. This one keeps the
    file's size itself (read once when the file is opened; one writer per file, see
    :func:`configure_logging`) and rotates once it reached ``maxBytes``.
    """

    def _open(self) -> io.TextIOWrapper[Any]:
        stream = super()._open()
        self._size = os.fstat(stream.fileno()).st_size
        return stream

    def shouldRollover(self, record: logging.LogRecord) -> bool:  # noqa: N802 - stdlib name
        """Whether the file already holds ``maxBytes`` or more."""
        if self.stream is None:
            self.stream = self._open()
        return 0 < self.maxBytes <= self._size

    def format(self, record: logging.LogRecord) -> str:
        """The line to write, counted (in characters: close enough to bytes here)."""
        text = super().format(record)
        self._size += len(text) + 1
        return text


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _human_bytes(count: int) -> str:
    size = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"


class ConsoleFormatter(logging.Formatter):
    """One short line per record for a person at a terminal: local time, level, message.

    An access line reads ``PATCH /files/… 204  12.3 ms  5.0 MiB in  alice``; other extras
    follow as ``key=value``. A traceback shrinks to its last line, with a pointer to the
    JSON logs that keep it whole.
    """

    def __init__(self, log_dir: Path | None = None) -> None:
        super().__init__()
        self.log_dir = log_dir

    def format(self, record: logging.LogRecord) -> str:
        """Render ``record`` as one line without colour codes."""
        clock = datetime.fromtimestamp(record.created).strftime("%H:%M:%S")
        parts = [f"{clock} {record.levelname:<7} {_one_line(record.getMessage())}"]
        extras = _extras(record)
        if record.name == "ferry.access":
            parts.extend(self._access_details(extras))
            extras = {k: v for k, v in extras.items() if k not in _ACCESS_EXTRAS}
        parts.extend(f"{key}={value}" for key, value in extras.items() if value is not None)
        request_id = _request_id(record)
        if request_id and record.levelno >= logging.WARNING:
            parts.append(f"request_id={request_id}")
        if record.exc_info and record.exc_info[1] is not None:
            error = record.exc_info[1]
            where = f"; traceback in {self.log_dir / 'error.log'}" if self.log_dir else ""
            parts.append(f"({type(error).__name__}: {_one_line(str(error))}{where})")
        return "  ".join(parts)

    @staticmethod
    def _access_details(extras: dict[str, Any]) -> list[str]:
        details = []
        if isinstance(extras.get("duration_ms"), int | float):
            details.append(f"{extras['duration_ms']:.1f} ms")
        if isinstance(extras.get("bytes_in"), int) and extras["bytes_in"] > 0:
            details.append(f"{_human_bytes(extras['bytes_in'])} in")
        if extras.get("owner"):
            details.append(str(extras["owner"]))
        return details


def _is_unspecified(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")).is_unspecified
    except ValueError:
        return False


def serving_url(scheme: str, host: str, port: int) -> str:
    """The URL a person opens to reach a server bound to ``host``: loopback for "any"."""
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return f"{scheme}://{host}:{port}/"
    if address.is_unspecified:
        address = ipaddress.ip_address("::1" if address.version == 6 else "127.0.0.1")
    shown = f"[{address}]" if address.version == 6 else str(address)
    return f"{scheme}://{shown}:{port}/"


class ServingAnnouncement(logging.Filter):
    """Turns uvicorn's "Uvicorn running on http://h:p (Press CTRL+C to quit)" into Ferry's
    last start-up line, the URL to open (also in JSON, as ``url``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Rewrite the one record; let every record through."""
        args = record.args
        if (
            isinstance(record.msg, str)
            and record.msg.startswith("Uvicorn running on ")
            and isinstance(args, tuple)
            and len(args) == 3
        ):
            scheme, host, port = (str(arg) for arg in args)
            url = serving_url(scheme, host, int(port))
            everywhere = _is_unspecified(host)
            record.msg = "Ferry is serving on %s%s — open it to upload"
            record.args = (url, " (and on every address of this machine)" if everywhere else "")
        return True


class MigrationPreamble(logging.Filter):
    """Drops Alembic's two lines on every run ("Context impl SQLiteImpl.", "Will assume
    non-transactional DDL."): a start with nothing to migrate says nothing about it."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Keep every record but those two."""
        return not (
            isinstance(record.msg, str) and record.msg.startswith(("Context impl ", "Will assume "))
        )


def _watch_third_party_loggers() -> None:
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "litestar"):
        # uvicorn's and Litestar's loggers propagate to the root (Litestar's default set-up
        # gives its own a handler of its own); uvicorn's access log is replaced by ours.
        logging.getLogger(name).handlers.clear()
        logging.getLogger(name).propagate = True
    logging.getLogger("uvicorn.access").disabled = True
    # "setup plugin alembic.autogenerate.…" on every migration run says nothing to anyone.
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)
    for name, kind in (
        ("uvicorn.error", ServingAnnouncement),
        ("alembic.runtime.migration", MigrationPreamble),
    ):
        logger = logging.getLogger(name)
        if not any(isinstance(existing, kind) for existing in logger.filters):
            logger.addFilter(kind())


def _replace_root_handlers(handlers: list[logging.Handler], level: str) -> None:
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)
    _watch_third_party_loggers()


def configure_logging(
    settings: Settings, worker: int | None = None, *, stdout: TextIO | None = None
) -> None:
    """Send every log record to stdout and ``ferry.log``, and errors also to ``error.log``.

    Standard output gets readable lines on a terminal, JSON otherwise. A worker process
    among several (``FERRY_WORKERS``) writes ``ferry-worker-N.log`` and
    ``error-worker-N.log`` instead: a rotating file has one writer, or a rotation in one
    process leaves the others writing into the renamed file. Raises :class:`OSError` when
    ``FERRY_LOG_DIR`` cannot be created or written.
    """
    stream = sys.stdout if stdout is None else stdout
    settings.log_dir.mkdir(parents=True, exist_ok=True)
    suffix = "" if worker is None else f"-worker-{worker}"
    files: list[logging.Handler] = [
        LogFile(
            settings.log_dir / f"{name}{suffix}.log",
            maxBytes=settings.log_max_bytes,
            backupCount=settings.log_backups,
            encoding="utf-8",
        )
        for name in ("ferry", "error")
    ]
    files[1].setLevel(logging.ERROR)
    for handler in files:
        handler.setFormatter(JsonFormatter())
    console = logging.StreamHandler(stream)
    console.setFormatter(ConsoleFormatter(settings.log_dir) if stream.isatty() else JsonFormatter())
    _replace_root_handlers([console, *files], settings.log_level)


def configure_command_logging(level: str = "INFO") -> None:
    """Readable lines on stderr and no log files, for one-shot commands (``ferry migrate``)."""
    console = logging.StreamHandler(sys.stderr)
    console.setFormatter(ConsoleFormatter())
    _replace_root_handlers([console], level)
