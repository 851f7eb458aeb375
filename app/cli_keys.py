"""``ferry keys create|revoke|list``: API key management for operators.

The commands work on the database ``ferry serve`` uses and never create one: run from a
directory without Ferry's data (or with a wrong ``FERRY_DATABASE_URL``) they stop with one
line saying where they looked, instead of creating an empty database there and handing
out a key no server will ever see.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, TypeVar

import click

from app.cli_tasks import database_or_exit, fail, migrate_quietly, settings_or_exit

if TYPE_CHECKING:
    from app.auth.keys import ApiKeyStore

T = TypeVar("T")

#: A key as ``ferry keys list`` prints it: ``ferry_1a2b3c4d_…`` (or ``...``, or cut short).
_LISTED_KEY = re.compile(r"ferry_([0-9a-f]{8})(?:_(?:…|\.\.\.)?)?")


def _with_store(action: Callable[[ApiKeyStore], Awaitable[T]]) -> T:
    """Run ``action`` against the configured, existing database (pending migrations first)."""
    # Imported here so that ``ferry --help`` stays fast.
    from app.auth.keys import ApiKeyStore
    from app.auth.models import ApiKey
    from app.db.engine import create_engine, create_session_factory

    settings = settings_or_exit()
    database_or_exit(settings, needs_table=ApiKey.__tablename__)
    migrate_quietly(settings)

    async def run() -> T:
        engine = create_engine(settings.resolved_database_url)
        try:
            return await action(ApiKeyStore(create_session_factory(engine)))
        finally:
            await engine.dispose()

    return asyncio.run(run())


def key_reference(text: str) -> str:
    """What ``ApiKeyStore.revoke`` matches: the key, its id, or its prefix, also when
    given in the listed form ``ferry_1a2b3c4d_…``."""
    text = text.strip()
    listed = _LISTED_KEY.fullmatch(text)
    return listed.group(1) if listed else text


@click.group()
def keys() -> None:
    """Create, revoke and list API keys (stored hashed; a key is shown only once).

    They use the database ferry serve uses (FERRY_DATABASE_URL, or FERRY_DATA_DIR's SQLite
    file) and need it to exist: run them where ferry serve runs, or after 'ferry migrate'.
    """


@keys.command("create")
@click.option("--owner", required=True, help="Owner name: the key sees only this owner's files.")
@click.option("--admin", is_flag=True, help="The key sees every owner's uploads and files.")
def create_key(owner: str, admin: bool) -> None:
    """Print a new key, alone on stdout, so scripts can capture it."""
    try:
        secret = _with_store(lambda store: store.create(owner, is_admin=admin))
    except ValueError as exc:
        fail(str(exc), 2)
    click.echo(secret)


@keys.command("revoke")
@click.argument("key")
def revoke_key(key: str) -> None:
    """Revoke KEY: the key itself, its id, or its prefix as listed (ferry_1a2b3c4d_…)."""
    revoked = _with_store(lambda store: store.revoke(key_reference(key)))
    if not revoked:
        fail("no such active key")
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
