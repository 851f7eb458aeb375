"""The ``ferry`` command line (also ``python -m app``)."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from collections.abc import Callable
from typing import Any

import click

from app import __version__
from app.cli_tasks import (
    database_or_exit,
    directory_problem,
    fail,
    fail_on,
    port_problem,
    settings_or_exit,
)
from app.settings import Settings


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="ferry")
def main() -> None:
    """Ferry: resumable uploads (tus 1.0), local or S3 storage, range downloads.

    Configuration comes from FERRY_* environment variables or a .env file in the working
    directory (FERRY_DATA_DIR, FERRY_DATABASE_URL, FERRY_STORAGE, FERRY_AUTH, ...; see the
    README). Run 'ferry COMMAND --help' for each command.
    """


@main.command()
@click.option("--host", default=None, help="Address to bind (default FERRY_HOST, 127.0.0.1).")
@click.option(
    "--port", default=None, type=int, help="Port to listen on (default FERRY_PORT, 8000)."
)
@click.option(
    "--insecure-no-auth",
    is_flag=True,
    help="Allow FERRY_AUTH=none on a non-loopback address (same as FERRY_ALLOW_NO_AUTH=true).",
)
@click.option(
    "--default-auth",
    default=None,
    metavar="METHODS",
    help="FERRY_AUTH when neither the environment nor .env sets it ('make run' passes "
    "'none'; none is still refused off loopback).",
)
def serve(
    host: str | None, port: int | None, insecure_no_auth: bool, default_auth: str | None
) -> None:
    """Apply pending migrations (unless FERRY_AUTO_MIGRATE=false) and serve HTTP.

    FERRY_WORKERS=N (PostgreSQL and local storage) serves from N processes.
    """
    settings = settings_or_exit(None if default_auth is None else {"FERRY_AUTH": default_auth})
    bind = host or settings.host
    _check_before_serving(settings, bind, forced=insecure_no_auth)
    _prepare_data(settings, bind, settings.port if port is None else port)
    if settings.workers > 1:
        sys.exit(_serve_in_workers(settings, bind, port))
    from app.main import create_app, settle_the_heap
    from app.ops.logs import configure_logging
    from app.ops.shutdown import FerryServer

    app = create_app(settings, on_started=settle_the_heap)
    # Again: Litestar's logging set-up replaces the handlers.
    configure_logging(settings)
    FerryServer(_uvicorn_config(app, settings, bind, port)).run()


def _check_before_serving(settings: Settings, bind: str, *, forced: bool) -> None:
    """Refuse, changing nothing, what must not be served: auth off on a public address, S3
    settings S3 rejects."""
    from app.ops.shutdown import auth_refusal_for_serving

    fail_on(auth_refusal_for_serving(settings, bind, forced=forced), 2)
    if settings.storage == "s3":
        from app.storage.s3_client import s3_configuration_problem

        # A wrong secret or bucket would otherwise look like an outage: 503 on every upload.
        fail_on(asyncio.run(s3_configuration_problem(settings)), 2)


def _prepare_data(settings: Settings, bind: str, port: int) -> None:
    """Lock the data directory, check the port, start the logs, check the database and
    migrate it; any failure is one line on stderr and exit status 1."""
    from app.db.engine import MigrationFailed, migrate_apart
    from app.ops.data_dir_lock import DataDirInUse, hold_data_dir, hold_sqlite_database
    from app.ops.local_store import local_store_problem
    from app.ops.logs import configure_logging

    fail_on(directory_problem(settings.data_dir, "FERRY_DATA_DIR"))
    try:
        # Before migrations and reconciliation: a second server must change nothing.
        hold_data_dir(settings.data_dir, settings.resolved_node_id)
        hold_sqlite_database(settings.resolved_database_url)
    except DataDirInUse as exc:
        fail(str(exc))
    except OSError as exc:  # FERRY_DATABASE_URL names a SQLite file where none can be
        fail(f"FERRY_DATABASE_URL: cannot create {exc.filename} ({exc.strerror})")
    # After the lock: a second ferry serve on this data directory is named as such.
    fail_on(port_problem(bind, port))
    fail_on(directory_problem(settings.log_dir, "FERRY_LOG_DIR"))
    # Before migrations: Alembic's lines are start-up events like the others.
    configure_logging(settings)
    database_or_exit(settings)
    if settings.auto_migrate:
        try:
            migrate_apart(settings)
        except MigrationFailed as exc:
            fail(str(exc))
    # Local storage on several machines: only if they all mount one data directory.
    fail_on(asyncio.run(local_store_problem(settings)), 2)


def _uvicorn_config(app: Any, settings: Settings, bind: str, port: int | None) -> Any:
    import uvicorn

    from app.ops.http_protocol import http_protocol_for

    return uvicorn.Config(
        app,
        host=bind,
        port=port if port is not None else settings.port,
        log_level=settings.log_level.lower(),
        log_config=None,
        access_log=False,
        # httptools, with caps on head size and time, connections and stalled readers.
        http=http_protocol_for(settings),
        timeout_keep_alive=settings.keep_alive_seconds,
        timeout_graceful_shutdown=settings.shutdown_timeout_seconds,
        proxy_headers=False,
    )


def _serve_in_workers(settings: Settings, bind: str, port: int | None) -> int:
    """``FERRY_WORKERS`` processes on one socket (see :mod:`app.ops.workers`)."""
    import secrets
    import shutil
    import tempfile

    import msgspec

    # Before prometheus_client is first imported (by app.main): every worker records its
    # metrics into this directory, and any of them can add them all up for a scrape.
    metrics_dir = tempfile.mkdtemp(prefix="ferry-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    from prometheus_client import multiprocess

    from app.main import create_app, settle_the_heap
    from app.ops.logs import configure_logging
    from app.ops.shutdown import FerryServer
    from app.ops.workers import WorkerSupervisor

    configure_logging(settings)
    if not settings.signing_key:
        # One key for all workers, or a link signed by one fails on the others.
        logging.getLogger(__name__).warning(
            "FERRY_SIGNING_KEY is empty: the workers share a random key, and signed links "
            "stop working when ferry serve restarts; set FERRY_SIGNING_KEY in production"
        )
        settings = msgspec.structs.replace(settings, signing_key=secrets.token_hex(32))
    sock = _uvicorn_config(None, settings, bind, port).bind_socket()

    def run_worker(index: int, reconcile: bool, on_started: Callable[[], None]) -> None:
        def started() -> None:
            settle_the_heap()
            on_started()

        app = create_app(settings, reconcile=reconcile, on_started=started)
        configure_logging(settings, worker=index)  # after Litestar's own logging set-up
        FerryServer(_uvicorn_config(app, settings, bind, port)).run(sockets=[sock])

    supervisor = WorkerSupervisor(
        settings.workers, run_worker, on_worker_exit=multiprocess.mark_process_dead
    )
    try:
        return supervisor.run()
    finally:
        sock.close()
        shutil.rmtree(metrics_dir, ignore_errors=True)


@main.command()
def migrate() -> None:
    """Apply every pending database migration (alembic upgrade heads).

    Uses FERRY_DATABASE_URL (default: a SQLite file under FERRY_DATA_DIR). Safe to run
    again: an up-to-date database is left as it is.
    """
    from app.db.engine import migrate as run_migrations
    from app.ops.logs import configure_command_logging

    settings = settings_or_exit()
    configure_command_logging(settings.log_level)
    database_or_exit(settings)
    run_migrations(settings)
    click.echo("database is up to date")


@main.command()
def cleanup() -> None:
    """Expire abandoned uploads now and remove their staging files and S3 leftovers.

    An unfinished upload expires FERRY_UPLOAD_TTL_SECONDS after its last activity; the
    running server does this every FERRY_REAPER_INTERVAL_SECONDS, this command does it at
    once (e.g. from cron). Completed files are never touched.
    """
    from app.cli_tasks import run_cleanup
    from app.db.models import Upload

    settings = settings_or_exit()
    database_or_exit(settings, needs_table=Upload.__tablename__)
    removed = asyncio.run(run_cleanup(settings))
    click.echo(f"expired {removed} uploads")


from app.cli_keys import keys  # noqa: E402 - the group is defined after ``main``
from app.ops.healthcheck import healthcheck  # noqa: E402

main.add_command(keys)
main.add_command(healthcheck)

from app.ingest.cli import ingest  # noqa: E402 - registered after ``main``

main.add_command(ingest)

if __name__ == "__main__":
    main()
