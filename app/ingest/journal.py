"""The ingest state file: what was uploaded where, so a rerun resumes instead of repeating.

It is a JSON Lines journal (one JSON object per line, appended and flushed as things
happen). A record is keyed by the file's absolute path, size and mtime: a file that
changed is a new file. The upload URL is journaled *before* any byte is sent, so after
Ctrl-C or ``kill -9`` a rerun resumes that upload from the server's offset (tus HEAD)
instead of creating a second one, and a verified file is skipped. A small file goes in
one creation-with-upload request whose URL arrives only with the answer; if the process
dies before it, the rerun finds the stored file by name, size and SHA-256 (see
:mod:`app.ingest.plan`). A torn last line (the process died mid-write) is ignored.
Opening compacts the journal to one line per file; ``--dry-run`` only loads it.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any

from app.ingest.walk import LocalFile

DEFAULT_STATE_FILE = ".ferry-ingest-state.json"


def temporary_of(path: Path) -> Path:
    """Where the compacted journal is written before it replaces ``path``."""
    return path.with_name(path.name + ".tmp")


def journal_files(path: Path) -> frozenset[Path]:
    """The state file and its temporary file (resolved): an ingest never uploads them,
    even when it runs inside the tree it walks (``ferry ingest .``)."""
    return frozenset({path.resolve(), temporary_of(path).resolve()})


@dataclass(slots=True)
class Entry:
    """What is known about one local file on one server."""

    path: str
    size: int
    mtime_ns: int
    url: str | None = None
    """tus upload URL; its last segment is the file UID once complete."""
    verified_sha256: str | None = None
    """Set once the server's SHA-256 matched the local file: the file is done."""

    def matches(self, local: LocalFile) -> bool:
        """Same file as last time (same size and mtime)?"""
        return self.size == local.size and self.mtime_ns == local.mtime_ns


class Journal:
    """Load, query and append to the state file of one server."""

    def __init__(self, path: Path, server: str) -> None:
        self.path = path
        self.server = server.rstrip("/")
        self.entries: dict[str, Entry] = {}
        self._handle: IO[str] | None = None

    def open(self) -> None:
        """Read what earlier runs recorded (for this server) and start a compacted journal."""
        others = self.load()
        temporary = temporary_of(self.path)
        with temporary.open("w", encoding="utf-8") as handle:
            handle.writelines(others)
            for entry in self.entries.values():
                handle.write(self._line(entry))
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, self.path)
        self._handle = self.path.open("a", encoding="utf-8")

    def load(self) -> list[str]:
        """Read what earlier runs recorded for this server, changing nothing on disk
        (``--dry-run``: :meth:`record` then changes only what is in memory).

        Returns the other servers' lines, which :meth:`open` keeps as they are.
        """
        others: list[str] = []
        if self.path.exists():
            with self.path.open(encoding="utf-8") as handle:
                for line in handle:
                    record = _parse(line)
                    if record is None:
                        continue
                    if record.get("server") != self.server:
                        others.append(line if line.endswith("\n") else line + "\n")
                        continue
                    fields = {k: record[k] for k in Entry.__slots__ if k in record}
                    try:
                        entry = Entry(**fields)
                    except TypeError:
                        continue
                    self.entries[entry.path] = entry
        return others

    def close(self) -> None:
        """Flush to disk and close."""
        if self._handle is not None:
            with contextlib.suppress(OSError):
                self._handle.flush()
                os.fsync(self._handle.fileno())
            self._handle.close()
            self._handle = None

    def lookup(self, local: LocalFile) -> Entry | None:
        """The record of this exact file version, if any."""
        entry = self.entries.get(str(local.path))
        return entry if entry is not None and entry.matches(local) else None

    def record(self, entry: Entry) -> None:
        """Append the entry's new state; flushed to the OS at once (survives ``kill -9``)."""
        self.entries[entry.path] = entry
        if self._handle is not None:
            self._handle.write(self._line(entry))
            self._handle.flush()

    def _line(self, entry: Entry) -> str:
        return json.dumps({"server": self.server, **asdict(entry)}, ensure_ascii=False) + "\n"


def _parse(line: str) -> dict[str, Any] | None:
    try:
        record = json.loads(line)
    except ValueError:
        return None
    return record if isinstance(record, dict) else None
