"""Whole-file SHA-256 computed while bytes stream in, kept per upload between PATCHes.

hashlib state cannot be saved, so the running hash lives in memory; after a restart (or
when another node wrote the previous chunk) the hash is recomputed from the stored bytes at
completion instead, which is slower but always right.
"""

from __future__ import annotations

import hashlib
import uuid
from collections import OrderedDict
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from hashlib import _Hash


class RunningHashes:
    """A bounded map upload id → (bytes hashed, SHA-256 state)."""

    def __init__(self, capacity: int = 4096) -> None:
        self._capacity = capacity
        self._entries: OrderedDict[uuid.UUID, tuple[int, _Hash]] = OrderedDict()

    def resume_at(self, upload_id: uuid.UUID, offset: int) -> _Hash | None:
        """A copy of the hash of ``[0, offset)``, or ``None`` if it is not known here."""
        if offset == 0:
            return hashlib.sha256()
        entry = self._entries.get(upload_id)
        if entry is None or entry[0] != offset:
            return None
        self._entries.move_to_end(upload_id)
        return entry[1].copy()

    def record(self, upload_id: uuid.UUID, offset: int, state: _Hash) -> None:
        """Remember the hash of ``[0, offset)``."""
        self._entries[upload_id] = (offset, state)
        self._entries.move_to_end(upload_id)
        while len(self._entries) > self._capacity:
            self._entries.popitem(last=False)

    def digest_at(self, upload_id: uuid.UUID, offset: int) -> str | None:
        """The hex SHA-256 of ``[0, offset)`` if known."""
        state = self.resume_at(upload_id, offset)
        return None if state is None else state.hexdigest()

    def forget(self, upload_id: uuid.UUID) -> None:
        """Drop an upload's state (finished, terminated or expired)."""
        self._entries.pop(upload_id, None)
