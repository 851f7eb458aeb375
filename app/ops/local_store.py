"""Several machines with ``FERRY_STORAGE=local`` must share one data directory.

With local storage a file's bytes are on the disk of the data directory, and its row in the
shared database. Two machines with disks of their own behind one PostgreSQL database would
each list, serve and expire files whose bytes are on the other disk. So the data directory
carries an id (``{data_dir}/store-id``) and the database records the id of the directory its
files live in (``ferry_meta``): a server whose data directory holds another id, or none
while the database already names one, refuses to start with one line. Every machine that
mounts the one shared directory reads the same id and passes. (With S3 storage the data
directory is only a buffer, and SQLite is one process: neither is checked.)
"""

from __future__ import annotations

import uuid
from pathlib import Path

import anyio
from advanced_alchemy.base import orm_registry
from sqlalchemy import Column, String, Table, insert, select
from sqlalchemy.exc import IntegrityError

from app.db.engine import create_engine
from app.settings import Settings

STORE_ID_FILE = "store-id"
_KEY = "local_store_id"

ferry_meta = Table(
    "ferry_meta",
    orm_registry.metadata,
    Column("key", String(64), primary_key=True),
    Column("value", String(255), nullable=False),
)


async def local_store_problem(settings: Settings) -> str | None:
    """Why this server must not start on its data directory, or ``None``."""
    if settings.storage != "local" or settings.resolved_database_url.startswith("sqlite"):
        return None
    id_file = anyio.Path(settings.data_dir / STORE_ID_FILE)
    here = (await id_file.read_text()).strip() if await id_file.exists() else None
    candidate = here or str(uuid.uuid4())
    recorded = await _recorded_id(settings, candidate)
    if here is None and recorded == candidate:
        # The first server of this database (or of an earlier version's deployment).
        await id_file.write_text(f"{recorded}\n")
        return None
    if here != recorded:
        return _refusal(settings.data_dir, recorded)
    return None


async def _recorded_id(settings: Settings, candidate: str) -> str:
    """The id the database records (``candidate`` becomes it if none is recorded yet)."""
    engine = create_engine(settings.resolved_database_url)
    try:
        try:
            async with engine.begin() as connection:
                await connection.execute(insert(ferry_meta).values(key=_KEY, value=candidate))
        except IntegrityError:
            pass  # recorded before (or by another server at this very moment)
        async with engine.connect() as connection:
            recorded = await connection.scalar(
                select(ferry_meta.c.value).where(ferry_meta.c.key == _KEY)
            )
        return str(recorded)
    finally:
        await engine.dispose()


def _refusal(data_dir: Path, recorded: str) -> str:
    return (
        f"FERRY_DATA_DIR: the database's files live in another data directory (store "
        f"{recorded}), not in {data_dir.resolve()}; several machines with FERRY_STORAGE=local "
        "must all mount that one directory (or use FERRY_STORAGE=s3)"
    )
