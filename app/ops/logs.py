"""Structured JSON logs: stdout plus rotating ``ferry.log`` and ``error.log`` in ``FERRY_LOG_DIR``.

Every line is one JSON object with a ``request_id`` when it was written while serving a
request (the id is also sent back as ``X-Request-Id``), so one request can be followed
through the access line, warnings and errors. ``error.log`` gets ERROR and above only,
as the original service did.
"""

from __future__ import annotations

import contextvars
import json
import logging
import logging.handlers
import sys
from datetime import UTC, datetime
from typing import Any

from app.settings import Settings

REQUEST_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "ferry_request_id", default=None
)

#: ``LogRecord`` attributes that are not extra fields.
_STANDARD_ATTRIBUTES = frozenset(
    vars(logging.LogRecord("", 0, "", 0, "", None, None)).keys() | {"message", "asctime"}
)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, request id, extras."""

    def format(self, record: logging.LogRecord) -> str:
        """Render ``record`` as a JSON line."""
        line: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id = getattr(record, "request_id", None) or REQUEST_ID.get()
        if request_id:
            line["request_id"] = request_id
        for key, value in vars(record).items():
            if key not in _STANDARD_ATTRIBUTES and key != "request_id" and not key.startswith("_"):
                line[key] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str, ensure_ascii=False)


def configure_logging(settings: Settings, worker: int | None = None) -> None:
    """Send every log record to stdout and ``ferry.log``, and errors also to ``error.log``.

    A worker process among several (``FERRY_WORKERS``) writes ``ferry-worker-N.log`` and
    ``error-worker-N.log`` instead: a rotating file has one writer, or a rotation in one
    process leaves the others writing into the renamed file.
    """
    settings.log_dir.mkdir(parents=True, exist_ok=True)
    suffix = "" if worker is None else f"-worker-{worker}"
    formatter = JsonFormatter()
    stdout = logging.StreamHandler(sys.stdout)
    main_file = logging.handlers.RotatingFileHandler(
        settings.log_dir / f"ferry{suffix}.log",
        maxBytes=settings.log_max_bytes,
        backupCount=settings.log_backups,
        encoding="utf-8",
    )
    error_file = logging.handlers.RotatingFileHandler(
        settings.log_dir / f"error{suffix}.log",
        maxBytes=settings.log_max_bytes,
        backupCount=settings.log_backups,
        encoding="utf-8",
    )
    error_file.setLevel(logging.ERROR)
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()
    for handler in (stdout, main_file, error_file):
        handler.setFormatter(formatter)
        root.addHandler(handler)
    root.setLevel(settings.log_level)
    # uvicorn's own loggers propagate to the root; its access log is replaced by ours.
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers.clear()
        logging.getLogger(name).propagate = True
    logging.getLogger("uvicorn.access").disabled = True
