"""One server per data directory: ``ferry serve`` holds an exclusive lock on it.

Start-up reconciliation truncates staging files past their committed offset and releases
this node's upload locks. Run by a second server on a live data directory (a second
``make run``), it would cut the first server's uploads short under it. So ``ferry serve``
takes ``{data_dir}/ferry.{node id}.lock`` with ``flock(LOCK_EX | LOCK_NB)`` before it
touches any state (migrations included) and keeps it for its whole life; the kernel drops
it when the process dies, ``kill -9`` included. With ``FERRY_WORKERS`` the supervisor takes
it and the workers inherit it: the directory stays held while any process that may write to
it runs.

The lock is per node id: machines that share one data directory (local storage on several
machines) each hold their own, and their start-up reconciliation leaves alone every upload
another node holds a live lease on.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
from pathlib import Path

from sqlalchemy import make_url

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


class DataDirInUse(RuntimeError):
    """Another ``ferry serve`` holds the data directory; the message says which."""


def lock_file_name(node_id: str) -> str:
    """The lock file of one node in a data directory."""
    return f"ferry.{_UNSAFE.sub('_', node_id)[:100]}.lock"


def hold_data_dir(data_dir: Path, node_id: str) -> int:
    """Lock ``data_dir`` for this node and process's life: the open descriptor (never
    close it).

    Refusing changes nothing: the directory and the lock file exist while they are held.
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / lock_file_name(node_id)
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = ""
        with contextlib.suppress(OSError, ValueError):
            holder = f" (pid {int(os.pread(descriptor, 32, 0).decode().strip())})"
        os.close(descriptor)
        raise DataDirInUse(
            f"data directory {data_dir.resolve()} is in use by another ferry serve{holder}; "
            "stop it first, or give this one its own FERRY_DATA_DIR"
        ) from None
    os.ftruncate(descriptor, 0)
    os.pwrite(descriptor, f"{os.getpid()}\n".encode(), 0)
    return descriptor


def hold_sqlite_database(database_url: str) -> int | None:
    """With SQLite, also lock the database file for this process's life: SQLite is the
    one-process embedded default, so a second server on the same file (from another data
    directory) refuses to start instead of sharing it. ``None`` for other databases."""
    url = make_url(database_url)
    if not url.drivername.startswith("sqlite") or url.database in (None, "", ":memory:"):
        return None
    database = Path(url.database)
    database.parent.mkdir(parents=True, exist_ok=True)
    path = database.with_name(database.name + ".serve.lock")
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(descriptor)
        raise DataDirInUse(
            f"FERRY_DATABASE_URL: the SQLite database {database.resolve()} is in use by another "
            "ferry serve; SQLite serves one process (use PostgreSQL for several)"
        ) from None
    return descriptor
