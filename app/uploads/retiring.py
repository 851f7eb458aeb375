"""Retiring an upload: terminated or expired, and nothing of it left behind (invariant 5)."""

from __future__ import annotations

from app.db.models import UploadState
from app.db.uploads import Claim, UploadRepository
from app.storage.backend import Storage
from app.storage.staging import StagingArea


class UploadRetirer:
    """Takes an upload out of the live states, then frees its bytes everywhere."""

    def __init__(
        self,
        repository: UploadRepository,
        storage: Storage,
        staging: StagingArea,
    ) -> None:
        self._repository = repository
        self._storage = storage
        self._staging = staging

    async def retire(self, claim: Claim, state: UploadState, *, announce: bool = False) -> None:
        """Terminate or expire a claimed upload and free its staging file and objects.

        The row leaves the live states first, so no request can use the bytes while they
        are removed; a crash in between leaves only files the reconciler deletes.
        ``announce``: its owner terminated it (a post-terminate event).
        """
        upload = claim.upload
        stored = await self._repository.retire(claim, state, announce=announce)
        await self._staging.remove(upload.id)
        backend = self._storage.backend
        await backend.discard_upload(upload.id)
        if upload.is_partial and self._storage.partials is not None:
            await self._storage.partials.discard_partial(upload.id)
        if stored is not None:
            await backend.delete(stored.storage_key)
