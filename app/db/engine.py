"""One database engine and session factory for the process's lifetime, plus migrations."""

from __future__ import annotations

import asyncio
import os
import sys
import threading
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlalchemy
from sqlalchemy import event, make_url, text
from sqlalchemy.engine import Connection, Dialect, Engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
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

DATABASE_ERRORS: tuple[type[Exception], ...] = (DBAPIError, PoolTimeoutError)
"""What a database that fails or cannot be reached raises (connection failures included:
see :func:`_connect_failures_are_database_errors`); answered 503 with ``Retry-After``."""
CONNECT_TIMEOUT_SECONDS = 10
"""How long one PostgreSQL connection attempt may take (asyncpg's own default is 60 s)."""
HEALTH_CHECK_TIMEOUT_SECONDS = 5.0


def _enable_sqlite_durability(dbapi_connection: Any, _record: Any) -> None:
    """WAL lets readers run beside the writer.

    ``synchronous=NORMAL`` in WAL mode keeps every commit across a process crash
    (``kill -9``) without an fsync per commit. Upload state is written by the group-commit
    writer's own connection with ``synchronous=FULL`` (:func:`create_sqlite_writer_engine`),
    whose fsync of the log also makes every earlier commit of this connection durable.
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
    else:
        # No pre-ping: it costs a round trip per checkout. A connection broken by a database
        # restart fails its request with 503 and is dropped from the pool.
        engine = create_async_engine(
            url,
            pool_size=10,
            max_overflow=20,
            pool_recycle=1800,
            connect_args={"timeout": CONNECT_TIMEOUT_SECONDS},
        )
    event.listen(engine.sync_engine, "do_connect", _connect_failures_are_database_errors)
    return engine


def create_sqlite_writer_engine(url: str) -> Engine:
    """The group-commit writer's own synchronous connection to the SQLite file of ``url``
    (:class:`~app.db.group_commit.ThreadedSqliteWriter`): WAL like every connection, and
    ``synchronous=FULL``, so each commit of upload state is fsync'ed (once per group)."""
    engine = sqlalchemy.create_engine(
        make_url(url).set(drivername="sqlite"),
        connect_args={"timeout": 30, "check_same_thread": False},
        pool_size=1,
        max_overflow=0,
        pool_timeout=30,
    )
    event.listen(engine, "connect", _enable_sqlite_durability)
    event.listen(engine, "connect", _sync_every_commit_and_begin_explicitly)
    event.listen(engine, "begin", _begin_immediate)
    event.listen(engine, "do_connect", _connect_failures_are_database_errors)
    return engine


def create_sqlite_reader_engine(url: str, connections: int) -> Engine:
    """Synchronous read-only connections to the SQLite file of ``url`` for the row reads
    of :class:`~app.db.row_reads.ThreadedSqliteReads` (WAL: they read beside the writer)."""
    engine = sqlalchemy.create_engine(
        make_url(url).set(drivername="sqlite"),
        connect_args={"timeout": 30, "check_same_thread": False},
        pool_size=connections,
        max_overflow=0,
        pool_timeout=30,
    )
    event.listen(engine, "connect", _enable_sqlite_durability)
    event.listen(engine, "connect", _read_only)
    event.listen(engine, "do_connect", _connect_failures_are_database_errors)
    return engine


def _read_only(dbapi_connection: Any, _record: Any) -> None:
    """A reader's connection refuses every write (writes belong to the group commit), and
    caches at most 512 KiB of pages (reads by primary key touch a few; SQLite's default
    of 2 MiB per connection showed in the peak RSS)."""
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA query_only=ON")
    cursor.execute("PRAGMA cache_size=-512")
    cursor.close()


def _sync_every_commit_and_begin_explicitly(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.close()
    dbapi_connection.isolation_level = None  # the driver's implicit BEGIN off: see below


def _begin_immediate(connection: Connection) -> None:
    """Take SQLite's write lock when the transaction starts (waiting up to the busy
    timeout while another connection writes) rather than at its first write: a group
    that reads first could otherwise fail at once to upgrade its read snapshot."""
    connection.exec_driver_sql("BEGIN IMMEDIATE")


def _connect_failures_are_database_errors(
    dialect: Dialect, _record: Any, cargs: list[Any], cparams: dict[str, Any]
) -> Any:
    """Connect, turning any failure into the driver's ``OperationalError``.

    SQLAlchemy wraps only DBAPI errors raised while connecting; asyncpg raises
    ``ConnectionRefusedError`` (PostgreSQL down), ``CannotConnectNowError`` (PostgreSQL
    recovering), ``TimeoutError``... as they are. Wrapped, they reach every caller as
    :data:`DATABASE_ERRORS`, like a connection lost mid-statement.
    """
    dbapi = dialect.loaded_dbapi
    try:
        return dialect.connect(*cargs, **cparams)
    except dbapi.Error:
        raise
    except Exception as exc:
        raise dbapi.OperationalError(f"{type(exc).__name__}: {exc}") from exc


def create_session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    """Sessions that keep loaded attributes after commit (we read rows after writing)."""
    return async_sessionmaker(engine, expire_on_commit=False)


async def database_problem(engine: AsyncEngine) -> str | None:
    """Health check: one round trip to the database; ``None`` when it answered, else why not."""
    try:
        async with asyncio.timeout(HEALTH_CHECK_TIMEOUT_SECONDS):
            async with engine.connect() as connection:
                await connection.execute(text("SELECT 1"))
    except TimeoutError:
        return f"the database did not answer within {HEALTH_CHECK_TIMEOUT_SECONDS:g} s"
    except Exception as exc:
        return describe_database_failure(exc)
    return None


def describe_database_failure(exc: BaseException) -> str:
    """Why the database failed, in one line for health checks and logs.

    The first cause in the chain is named (``ConnectionRefusedError``,
    ``CannotConnectNowError: the database system is starting up``...). Socket errors give
    the text of their errno only: their own text names the database's address, and health
    checks are public.
    """
    root = exc
    while root.__cause__ is not None:
        root = root.__cause__
    if isinstance(root, OSError):
        detail = os.strerror(root.errno) if root.errno else ""
    else:
        detail = str(root).splitlines()[0] if str(root) else ""
    described = f"{type(root).__name__}: {detail}" if detail else type(root).__name__
    return f"database unavailable ({described})"[:300]


def alembic_config(settings: Settings) -> AlembicConfig:
    """Alembic configuration pointing at our migrations and the configured database."""
    # Alembic is imported on use: a serving process never needs it (see migrate_apart).
    from alembic.config import Config as AlembicConfig

    config = AlembicConfig(str(PROJECT_ROOT / "alembic.ini"))
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["database_url"] = settings.resolved_database_url
    # Ferry's own logging set-up decides where Alembic's lines go (migrations/env.py applies
    # alembic.ini's only for the alembic command).
    config.attributes["configure_logging"] = False
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
