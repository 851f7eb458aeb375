"""Log files rotate at their size limit, counting what they write, and a record headed for
several JSON handlers is rendered once."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from unittest import mock

from app.ops.logs import JsonFormatter, LogFile


def _logger(name: str, *handlers: logging.Handler) -> logging.Logger:
    logger = logging.getLogger(name)
    logger.handlers[:] = list(handlers)
    logger.propagate = False
    logger.setLevel(logging.INFO)
    return logger


def test_a_log_file_rotates_once_it_holds_max_bytes_and_keeps_its_backups(tmp_path: Path) -> None:
    path = tmp_path / "ferry.log"
    handler = LogFile(path, maxBytes=2000, backupCount=2, encoding="utf-8")
    handler.setFormatter(JsonFormatter())
    logger = _logger("test.rotation", handler)
    for number in range(100):
        logger.info("line %d %s", number, "x" * 40)
    handler.close()
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["ferry.log", "ferry.log.1", "ferry.log.2"]
    for name in files:
        size = (tmp_path / name).stat().st_size
        assert 0 < size <= 2000 + 200, (name, size)  # at most one line past the limit
    last = (tmp_path / "ferry.log").read_text().splitlines()[-1]
    assert json.loads(last)["message"].startswith("line 99 ")


def test_a_log_file_reopened_counts_what_it_already_holds(tmp_path: Path) -> None:
    path = tmp_path / "ferry.log"
    path.write_text("x" * 1990 + "\n")
    handler = LogFile(path, maxBytes=2000, backupCount=1, encoding="utf-8")
    handler.setFormatter(JsonFormatter())
    logger = _logger("test.reopened", handler)
    logger.info("one")
    logger.info("two")
    handler.close()
    assert (tmp_path / "ferry.log.1").read_text().startswith("x" * 1990)
    assert json.loads((tmp_path / "ferry.log").read_text().splitlines()[-1])["message"] == "two"


def test_a_record_for_two_json_handlers_is_rendered_once(tmp_path: Path) -> None:
    files = [LogFile(tmp_path / f"{name}.log", encoding="utf-8") for name in ("a", "b")]
    for handler in files:
        handler.setFormatter(JsonFormatter())
    logger = _logger("test.once", *files)
    with mock.patch("app.ops.logs.json.dumps", wraps=json.dumps) as dumps:
        logger.info("hello", extra={"path": "/files"})
    for handler in files:
        handler.close()
    assert dumps.call_count == 1
    lines = [json.loads((tmp_path / f"{name}.log").read_text()) for name in ("a", "b")]
    assert lines[0] == lines[1]
    assert lines[0]["path"] == "/files" and "_ferry_json_line" not in lines[0]
