"""The wiring every collaborator of :class:`~app.uploads.service.UploadService` shares.

The service delegates appending, filing, concatenation and maintenance to one object each;
they all work on the service's database sessions, staging area, hashes and locks.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sqlalchemy import inspect

if TYPE_CHECKING:
    from app.db.models import Upload
    from app.storage.backend import StorageBackend
    from app.uploads.service import UploadService


def not_yet_inserted(upload: Upload) -> bool:
    """A creation-with-upload whose row waits for its body's outcome (see
    ``UploadService._born_with_its_body``): SQLAlchemy calls such an object *transient*."""
    return bool(inspect(upload).transient)


class ServiceCollaborator:
    """Sees the service's pieces; the backend is read through the service each time."""

    def __init__(self, uploads: UploadService) -> None:
        self._uploads = uploads
        self._sessions = uploads._sessions
        self.staging = uploads.staging
        self.settings = uploads.settings
        self.hashes = uploads.hashes
        self.locks = uploads.locks
        self.ttl = uploads.ttl
        self.partials = uploads.partials
        self.policy = uploads.policy

    @property
    def backend(self) -> StorageBackend:
        """The service's backend (the ops layer wraps it after construction)."""
        return self._uploads.backend
