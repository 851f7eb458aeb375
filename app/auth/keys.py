"""Creating, revoking, listing and checking API keys.

A key is ``ferry_<prefix>_<secret>`` with 256 random bits. Only its SHA-256 is stored: the
secret is random and long, so a slow password hash would add latency to every request and
no protection (nobody brute-forces 2^256). Lookup is by that hash, one indexed query.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.auth.models import ApiKey
from app.core.clock import utcnow
from app.core.identity import Principal
from app.db.row_reads import AsyncSessionReads, RowReads

KEY_PREFIX = "ferry_"


def hash_key(secret: str) -> str:
    """The stored form of a key."""
    return hashlib.sha256(secret.encode()).hexdigest()


def new_key_text() -> tuple[str, str]:
    """A fresh key and its public prefix."""
    prefix = secrets.token_hex(4)
    return f"{KEY_PREFIX}{prefix}_{secrets.token_urlsafe(32)}", prefix


@dataclass(frozen=True, slots=True)
class KeyInfo:
    """What ``ferry keys list`` shows about a key (never the secret)."""

    id: uuid.UUID
    owner: str
    prefix: str
    is_admin: bool
    created_at: datetime
    revoked_at: datetime | None


class ApiKeyStore:
    """API keys in the database."""

    def __init__(
        self, sessions: async_sessionmaker[AsyncSession], reads: RowReads | None = None
    ) -> None:
        self._sessions = sessions
        self._reads = reads or AsyncSessionReads(sessions)
        """Where a request's key is looked up: every authenticated request reads it (no
        cache, so a revocation holds at once on every node)."""

    async def create(self, owner: str, *, is_admin: bool = False) -> str:
        """Store a new key for ``owner`` and return its secret (shown once, never stored)."""
        owner = owner.strip()
        if not owner or len(owner) > 200:
            raise ValueError("the owner name must have 1 to 200 characters")
        text, prefix = new_key_text()
        async with self._sessions() as session, session.begin():
            session.add(
                ApiKey(owner=owner, is_admin=is_admin, prefix=prefix, key_hash=hash_key(text))
            )
        return text

    async def revoke(self, key_or_prefix: str) -> int:
        """Revoke a key given by its secret, its prefix or its id; return how many were revoked."""
        conditions = [ApiKey.key_hash == hash_key(key_or_prefix), ApiKey.prefix == key_or_prefix]
        with contextlib.suppress(ValueError):
            conditions.append(ApiKey.id == uuid.UUID(key_or_prefix))
        async with self._sessions() as session, session.begin():
            result = await session.execute(
                update(ApiKey)
                .where(or_(*conditions), ApiKey.revoked_at.is_(None))
                .values(revoked_at=utcnow())
                .execution_options(synchronize_session=False)
            )
        return int(result.rowcount)  # type: ignore[attr-defined]

    async def list(self) -> list[KeyInfo]:
        """Every key, oldest first."""
        async with self._sessions() as session:
            rows = (await session.scalars(select(ApiKey).order_by(ApiKey.created_at))).all()
        return [
            KeyInfo(row.id, row.owner, row.prefix, row.is_admin, row.created_at, row.revoked_at)
            for row in rows
        ]

    async def authenticate(self, presented: str) -> Principal | None:
        """The principal of a valid, unrevoked key; ``None`` for anything else."""
        if not presented.startswith(KEY_PREFIX):
            return None
        digest = hash_key(presented)
        matching = select(ApiKey).where(ApiKey.key_hash == digest)
        row = await self._reads.run(lambda session: session.scalar(matching))
        # The lookup already matched the hash; compare again in constant time for good measure.
        if (
            row is None
            or row.revoked_at is not None
            or not hmac.compare_digest(row.key_hash, digest)
        ):
            return None
        return Principal(row.owner, row.is_admin)
