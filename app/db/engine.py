"""One database engine and session factory for the process's lifetime, plus migrations."""

from __future__ import annotations

import os
import sys
import threading
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import event, make_url, text
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from app.settings import Settings

if TYPE_CHECKING:
    from alembic.config import Config as AlembicConfig

PROJECT_ROOT = Path(__file__).resolve().parent.parent.parent
MIGRATIONS_DIR = PROJECT_ROOT / "migrations"


def _enable_sqlite_durability(dbapi_connection: Any, _record: Any) -> None:
    """WAL lets readers run beside the writer.

    ``synchronous=NORMAL`` in WAL mode keeps every commit across a process crash
    (``kill -9``) without an fsync per commit; after a power loss the last commits may be
    lost, which start-up reconciliation handles by cutting staging back to the recorded
    offset (the client then re-sends those bytes; nothing is ever corrupted).
    """
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def create_engine(url: str) -> AsyncEngine:
    """Create the async engine for a SQLite or PostgreSQL URL."""
    if url.startswith("sqlite"):
        database = make_url(url).database
        if database and database != ":memory:":
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        # One connection: SQLite has one writer at a time anyway, and queueing in the pool
        # is far cheaper than SQLite's sleeping busy handler (1, 2, 5, 10… ms per retry)
        # when many requests commit at once. A session must never be opened while another
        # is held by the same task; the pool timeout turns such a bug into a clear 503.
        engine = create_async_engine(
            url, connect_args={"timeout": 30}, pool_size=1, max_overflow=0, pool_timeout=30
        )
        event.listen(engine.sync_engine, "connect", _enable_sqlite_durability)
        return engine
    # No pre-ping: it costs a round trip per checkout. A connection broken by a database
    # restart fails its request with 503 and is dropped from the pool.
    return create_async_engine(url, pool_size=10, max_overflow=20, pool_recycle=1800)


def create_session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    """Sessions that keep loaded attributes after commit (we read rows after writing)."""
    return async_sessionmaker(engine, expire_on_commit=False)


async def database_is_usable(engine: AsyncEngine) -> bool:
    """Health check: one round trip to the database."""
    try:
        async with engine.connect() as connection:
            await connection.execute(text("SELECT 1"))
    except Exception:
        return False
    return True


def alembic_config(settings: Settings) -> AlembicConfig:
    """Alembic configuration pointing at our migrations and the configured database."""
    # Alembic is imported on use: a serving process never needs it (see migrate_apart).
    from alembic.config import Config as AlembicConfig

    config = AlembicConfig(str(PROJECT_ROOT / "alembic.ini"))
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["database_url"] = settings.resolved_database_url
    return config


def migrate(settings: Settings) -> None:
    """Apply every pending migration (blocking; call it before serving or in a thread)."""
    from alembic import command

    command.upgrade(alembic_config(settings), "heads")


class MigrationFailed(RuntimeError):
    """The migrations run apart from the server did not complete."""


def migrate_apart(settings: Settings) -> None:
    """:func:`migrate` in a forked child process, so the server never holds Alembic.

    Alembic, Mako and the SQL dialects Alembic loads stay ~7 MiB of the serving process's
    memory for its whole life once imported; a child that exits gives them back. Where
    ``fork`` is missing or unsafe (threads already run), the migrations run here.
    """
    if not hasattr(os, "fork") or threading.active_count() > 1:
        migrate(settings)
        return
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # the child: migrate, report, and leave without running the parent's exits
        code = 0
        try:
            migrate(settings)
        except BaseException:
            traceback.print_exc()
            code = 1
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise MigrationFailed(f"database migrations failed (exit status {code}); see above")
