"""What runs before an upload is created: rate limit and the pre-create hook, then the
quotas, inside the transaction that inserts the upload."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from app.ops.hooks import PreCreateHook
from app.ops.limits import CreationRateLimiter, OwnerQuotas

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from app.db.uploads import Reservation
    from app.uploads.service import NewUpload


class UploadAdmission:
    """Decides whether a creation may go ahead, and with which metadata."""

    def __init__(self, rate: CreationRateLimiter, quotas: OwnerQuotas, hook: PreCreateHook) -> None:
        self._rate = rate
        self._quotas = quotas
        self._hook = hook

    async def admit(self, request: NewUpload, length: int | None) -> NewUpload:
        """Raise 413/429/403/503 to refuse; return the request, maybe with new metadata.

        Limits apply to owners; with auth off (no owner) only the hook is asked.
        """
        if request.owner is not None:
            await self._rate.take(request.owner)
        if self._hook.enabled:
            metadata = await self._hook.review(
                owner=request.owner,
                length=length,
                is_partial=request.is_partial,
                is_final=request.partial_ids is not None,
                metadata=request.metadata,
            )
            request = dataclasses.replace(request, metadata=metadata)
        return request

    def reservation(self, request: NewUpload, length: int | None) -> Reservation | None:
        """The quota check to run in the inserting transaction (``None``: no quota applies)."""
        owner = request.owner
        if owner is None or not self._quotas.enabled:
            return None

        # A final upload's bytes count too: its partials keep theirs until they expire.
        def reserve(session: Session) -> None:
            self._quotas.check_in(session, owner, length)

        return reserve
