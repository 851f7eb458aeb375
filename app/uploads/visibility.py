"""Which uploads a caller may see: another owner's upload answers like a missing one."""

from __future__ import annotations

from app.core.clock import utcnow
from app.db.models import Upload, UploadState
from app.errors import Gone, NotFound


def visible(upload: Upload | None, owner: str | None) -> Upload:
    """``upload`` if it is live and visible to ``owner`` (``None``: any), else 404 or 410."""
    # Another owner's upload answers exactly like a missing one: no existence oracle.
    if upload is None or (owner is not None and upload.owner != owner):
        raise NotFound("no such upload")
    if upload.state in (UploadState.TERMINATED, UploadState.EXPIRED) or upload.is_past_expiry(
        utcnow()
    ):
        raise Gone("upload was terminated or has expired")
    return upload
