"""``ferry healthcheck``: the container's health check, without curl or wget in the image."""

from __future__ import annotations

import sys
import urllib.error
import urllib.request

import click


@click.command()
@click.option(
    "--url",
    default=None,
    help="Readiness URL (default http://127.0.0.1:$FERRY_PORT/health/ready).",
)
@click.option("--timeout", default=5.0, show_default=True, help="Seconds to wait for the answer.")
def healthcheck(url: str | None, timeout: float) -> None:
    """Exit 0 when Ferry answers /health/ready with 200, 1 otherwise."""
    if url is None:
        from app.settings import SettingsError, load_settings

        try:
            port = load_settings().port
        except SettingsError as exc:
            click.echo(f"ferry: invalid configuration: {exc}", err=True)
            sys.exit(1)
        url = f"http://127.0.0.1:{port}/health/ready"
    if not url.startswith(("http://", "https://")):
        click.echo("ferry: --url must be an http(s) URL", err=True)
        sys.exit(2)
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - checked above
            ok = response.status == 200
    except (urllib.error.URLError, OSError) as exc:
        click.echo(f"ferry: not ready: {exc}", err=True)
        sys.exit(1)
    if not ok:
        sys.exit(1)
    click.echo("ready")
