"""The owner's byte quota after creation, as the upload domain sees it.

An upload's bytes are reserved when it is created with a known length. Afterwards the
quota is asked again wherever an upload's size grows past what was reserved: a deferred
length declared by a PATCH (or a final upload's, once its partials' lengths are known), and
bytes that arrive while the length is still unknown. The rule itself (what counts, the
per-owner lock) lives with the creation check in :mod:`app.ops.limits`; the composition
root injects it, as it injects admission.
"""

from __future__ import annotations

from typing import Protocol

from app.db.uploads import Reservation


class ByteQuota(Protocol):
    """How many more bytes an owner may store, and the check that reserves them."""

    async def room(self, owner: str | None) -> int | None:
        """Bytes ``owner`` may still add now (``None``: no byte quota applies).

        A bound for a body of unknown length, read before it streams; only the check of
        :meth:`growth`, run where the bytes are recorded, is decisive.
        """
        ...

    def growth(self, owner: str | None, more: int) -> Reservation | None:
        """The check that ``owner`` may hold ``more`` bytes than now, to run inside the
        transaction that records them (raises 413); ``None``: nothing to check."""
        ...


class NoByteQuota:
    """No quota applies (tools and tests that build a service of their own)."""

    async def room(self, owner: str | None) -> int | None:
        """No limit."""
        return None

    def growth(self, owner: str | None, more: int) -> Reservation | None:
        """Nothing to check."""
        return None
