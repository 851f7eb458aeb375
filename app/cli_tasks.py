"""What the commands share: settings or one line, checks that turn the failures an operator
meets first (a bad setting, a database that cannot be reached or is not there, a directory
that cannot be written) into one line on stderr and a non-zero exit instead of a traceback,
and the work the CLI runs outside the web server."""

from __future__ import annotations

import asyncio
import errno
import socket
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import NoReturn

import click

from app.settings import Settings, SettingsError, load_settings, unknown_variable_warnings


def fail(message: str, status: int = 1) -> NoReturn:
    """Print ``ferry: message`` on stderr and exit with ``status``."""
    click.echo(f"ferry: {message}", err=True)
    sys.exit(status)


def fail_on(problem: str | None, status: int = 1) -> None:
    """:func:`fail` with ``problem`` when there is one."""
    if problem:
        fail(problem, status)


def settings_or_exit(defaults: Mapping[str, str] | None = None) -> Settings:
    """The settings, after a warning per ``FERRY_*`` name that is no setting; a bad value
    exits with status 2 and one line naming the variable."""
    for warning in unknown_variable_warnings():
        click.echo(f"ferry: warning: {warning}", err=True)
    try:
        return load_settings(defaults=defaults)
    except SettingsError as exc:
        fail(f"invalid configuration: {exc}", 2)


def directory_problem(path: Path, variable: str) -> str | None:
    """Why ``path`` cannot hold Ferry's files (created if missing), or ``None``.

    A file is really created and removed: permission bits say nothing about root, a
    read-only mount or a full disk.
    """
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as exc:
        return f"{variable}: cannot write to {path.absolute()} ({exc.strerror or exc})"
    return None


def port_problem(host: str, port: int) -> str | None:
    """Why ``ferry serve`` could not listen on ``host:port``, found before anything starts
    (uvicorn would find it after migrations and start-up, in the middle of its log)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
            probe.bind((host.strip("[]"), port))
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            return (
                f"{host}:{port} is already in use; stop what listens there, or choose "
                "another port with --port or FERRY_PORT"
            )
        return f"cannot listen on {host}:{port} ({exc.strerror or exc})"
    return None


def shown_database_url(settings: Settings) -> str:
    """The database URL as it may be printed: without its password."""
    from sqlalchemy import make_url

    return make_url(settings.resolved_database_url).render_as_string(hide_password=True)


def _database_variable(settings: Settings) -> str:
    return "FERRY_DATABASE_URL" if settings.database_url else "FERRY_DATA_DIR"


def _root_cause(exc: BaseException) -> str:
    while exc.__cause__ is not None:
        exc = exc.__cause__
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _missing_sqlite_file(settings: Settings) -> str | None:
    """For commands that use an existing database: the SQLite file that is not there."""
    from sqlalchemy import make_url

    database = make_url(settings.resolved_database_url).database
    if not settings.resolved_database_url.startswith("sqlite") or not database:
        return None
    if database == ":memory:" or Path(database).exists():
        return None
    where = (
        f"FERRY_DATA_DIR={settings.data_dir} is relative to {Path.cwd()}"
        if not settings.data_dir.is_absolute() and not settings.database_url
        else "from " + _database_variable(settings)
    )
    return (
        f"no Ferry database at {database} ({where}); run this where ferry serve runs, set "
        "FERRY_DATA_DIR or FERRY_DATABASE_URL, or create a new database with 'ferry migrate'"
    )


async def database_problem(settings: Settings, *, needs_table: str | None = None) -> str | None:
    """Why the configured database cannot be used, in one line; ``None`` when it answers.

    With ``needs_table`` the database must already exist and hold that table (created by
    ``ferry serve`` or ``ferry migrate``): a command run from the wrong directory must not
    create an empty SQLite database there and act on it.
    """
    from sqlalchemy import inspect, text

    from app.db.engine import CONNECT_TIMEOUT_SECONDS, DATABASE_ERRORS, create_engine

    if needs_table and (missing := _missing_sqlite_file(settings)):
        return missing
    try:
        engine = create_engine(settings.resolved_database_url)  # SQLite: creates the folder
    except OSError as exc:
        return f"{_database_variable(settings)}: cannot create {exc.filename} ({exc.strerror})"
    shown = shown_database_url(settings)
    try:
        async with asyncio.timeout(CONNECT_TIMEOUT_SECONDS + 5), engine.connect() as connection:
            await connection.execute(text("SELECT 1"))
            if needs_table and not await connection.run_sync(
                lambda sync: inspect(sync).has_table(needs_table)
            ):
                return (
                    f"the database {shown} has no Ferry tables yet; create them with "
                    "'ferry migrate' (or start ferry serve)"
                )
    except TimeoutError:
        return f"cannot use the database {shown}: no answer within {CONNECT_TIMEOUT_SECONDS} s"
    except DATABASE_ERRORS as exc:
        return f"cannot use the database {shown}: {_root_cause(exc)}"
    finally:
        await engine.dispose()
    return None


def database_or_exit(settings: Settings, *, needs_table: str | None = None) -> None:
    """:func:`database_problem`, or exit with status 1 and its line."""
    fail_on(asyncio.run(database_problem(settings, needs_table=needs_table)))


def migrate_quietly(settings: Settings) -> None:
    """Apply pending migrations, printing nothing (Alembic's lines are for ``ferry migrate``
    and ``ferry serve``): what a command on an existing database needs first."""
    from app.db.engine import migrate

    if settings.auto_migrate:
        migrate(settings)


async def run_cleanup(settings: Settings) -> int:
    """Expire every due upload (all batches) and return how many were removed."""
    from app.composition import open_ferry

    async with open_ferry(settings) as ferry:
        total = 0
        while (expired := await ferry.uploads.expire_due()) > 0:
            total += expired
        return total
