"""The ``ferry`` command line (also ``python -m app``)."""

from __future__ import annotations

import asyncio
import logging
import sys

import click

from app import __version__
from app.settings import Settings, SettingsError, load_settings


def _settings() -> Settings:
    try:
        return load_settings()
    except SettingsError as exc:
        click.echo(f"ferry: invalid configuration: {exc}", err=True)
        sys.exit(2)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="ferry")
def main() -> None:
    """Ferry: resumable uploads (tus 1.0), local or S3 storage, range downloads."""


@main.command()
@click.option("--host", default=None, help="Address to bind (default FERRY_HOST, 127.0.0.1).")
@click.option("--port", default=None, type=int, help="Port to listen on (default FERRY_PORT, 8000).")
def serve(host: str | None, port: int | None) -> None:
    """Apply pending migrations (unless FERRY_AUTO_MIGRATE=false) and serve HTTP."""
    import uvicorn

    from app.db.engine import migrate
    from app.main import create_app

    settings = _settings()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    if settings.auto_migrate:
        migrate(settings)
    uvicorn.run(
        create_app(settings),
        host=host or settings.host,
        port=port if port is not None else settings.port,
        log_level="info",
        timeout_graceful_shutdown=30,
        proxy_headers=False,
    )


@main.command()
def migrate() -> None:
    """Apply every pending database migration."""
    from app.db.engine import migrate as run_migrations

    run_migrations(_settings())
    click.echo("database is up to date")


@main.command()
def cleanup() -> None:
    """Expire abandoned uploads now and remove their staging files and S3 leftovers."""
    from app.cli_tasks import run_cleanup

    removed = asyncio.run(run_cleanup(_settings()))
    click.echo(f"expired {removed} uploads")


from app.ingest.cli import ingest  # noqa: E402 - registered after ``main``

main.add_command(ingest)

if __name__ == "__main__":
    main()
