"""``ferry keys create|revoke|list``: API key management for operators."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, TypeVar

import click

from app.settings import SettingsError, load_settings

if TYPE_CHECKING:
    from app.auth.keys import ApiKeyStore

T = TypeVar("T")


def _with_store(action: Callable[[ApiKeyStore], Awaitable[T]]) -> T:
    """Run ``action`` against the configured database (migrated first, like ``serve``)."""
    # Imported here so that ``ferry --help`` stays fast.
    from app.auth.keys import ApiKeyStore
    from app.db.engine import create_engine, create_session_factory, migrate

    try:
        settings = load_settings()
    except SettingsError as exc:
        click.echo(f"ferry: invalid configuration: {exc}", err=True)
        sys.exit(2)
    if settings.auto_migrate:
        migrate(settings)

    async def run() -> T:
        engine = create_engine(settings.resolved_database_url)
        try:
            return await action(ApiKeyStore(create_session_factory(engine)))
        finally:
            await engine.dispose()

    return asyncio.run(run())


@click.group()
def keys() -> None:
    """Create, revoke and list API keys (stored hashed; a key is shown only once)."""


@keys.command("create")
@click.option("--owner", required=True, help="Owner name: the key sees only this owner's files.")
@click.option("--admin", is_flag=True, help="The key sees every owner's uploads and files.")
def create_key(owner: str, admin: bool) -> None:
    """Print a new key, alone on stdout, so scripts can capture it."""
    try:
        secret = _with_store(lambda store: store.create(owner, is_admin=admin))
    except ValueError as exc:
        click.echo(f"ferry: {exc}", err=True)
        sys.exit(2)
    click.echo(secret)


@keys.command("revoke")
@click.argument("key")
def revoke_key(key: str) -> None:
    """Revoke KEY (the key itself, its prefix as listed, or its id)."""
    revoked = _with_store(lambda store: store.revoke(key))
    if not revoked:
        click.echo("ferry: no such active key", err=True)
        sys.exit(1)
    click.echo(f"revoked {revoked} key(s)", err=True)


@keys.command("list")
def list_keys() -> None:
    """One line per key: id, prefix, owner, role, created, state."""
    for info in _with_store(lambda store: store.list()):
        role = "admin" if info.is_admin else "owner"
        state = f"revoked {info.revoked_at:%Y-%m-%d}" if info.revoked_at else "active"
        click.echo(
            f"{info.id}  ferry_{info.prefix}_…  {info.owner}  {role}  "
            f"{info.created_at:%Y-%m-%d %H:%M}  {state}"
        )
