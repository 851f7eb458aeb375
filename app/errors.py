"""The one table of client-visible failures.

Every failure a client can see is a :class:`FerryError` subclass with its HTTP status and a
plain message; the exception handlers in :mod:`app.main` turn them into responses. Nothing
else decides a status code, so the same failure always looks the same on the wire.
"""

from __future__ import annotations

import errno
from typing import ClassVar

DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
"""What the OS says when a filesystem, or a quota on it, has no room left."""
RETRY_AFTER_DISK_FULL = "30"
"""``Retry-After`` of a 507: space is freed by an operator or the reaper, not in seconds."""


class FerryError(Exception):
    """Base of every client-visible error: an HTTP status and a plain message."""

    status_code: ClassVar[int] = 500
    default_message: ClassVar[str] = "internal error"

    def __init__(self, message: str | None = None, *, headers: dict[str, str] | None = None):
        self.message = message or self.default_message
        self.headers = headers or {}
        super().__init__(self.message)


class BadRequest(FerryError):
    """A header or body does not follow the protocol."""

    status_code = 400
    default_message = "bad request"


class Unauthorized(FerryError):
    """No credentials, or credentials that do not check out."""

    status_code = 401
    default_message = "authentication required"


class Forbidden(FerryError):
    """The request is understood but not allowed (tus: PATCH against a final upload)."""

    status_code = 403
    default_message = "forbidden"


class NotFound(FerryError):
    """No such upload or file (also answered for another owner's, to leak nothing)."""

    status_code = 404
    default_message = "not found"


class OffsetMismatch(FerryError):
    """tus core: the client's ``Upload-Offset`` is not the upload's current offset."""

    status_code = 409
    default_message = "Upload-Offset does not match the current offset"


class UploadConflict(FerryError):
    """The upload is in a state that forbids the request (e.g. length already set)."""

    status_code = 409
    default_message = "conflict"


class Gone(FerryError):
    """The upload existed but was terminated or expired (tus: SHOULD answer 410)."""

    status_code = 410
    default_message = "upload is gone"


class PreconditionFailed(FerryError):
    """tus core: missing or unsupported ``Tus-Resumable`` version."""

    status_code = 412
    default_message = "unsupported tus version"


class PayloadTooLarge(FerryError):
    """The upload or body exceeds ``Tus-Max-Size``, ``Upload-Length`` or a quota."""

    status_code = 413
    default_message = "upload exceeds the maximum size"


class UnsupportedMediaType(FerryError):
    """tus core: PATCH without ``Content-Type: application/offset+octet-stream``."""

    status_code = 415
    default_message = "PATCH requires Content-Type: application/offset+octet-stream"


class RangeNotSatisfiable(FerryError):
    """No requested byte range overlaps the file."""

    status_code = 416
    default_message = "range not satisfiable"


class Unprocessable(FerryError):
    """The request is well-formed but a validation rule refuses it."""

    status_code = 422
    default_message = "unprocessable"


class UploadLocked(FerryError):
    """One writer per upload: another request holds the upload's lock."""

    status_code = 423
    default_message = "upload is locked by another request"


class TooManyRequests(FerryError):
    """A rate limit or concurrency quota was exceeded."""

    status_code = 429
    default_message = "too many requests"


class HeaderTooLarge(FerryError):
    """A request header (``Upload-Metadata``) exceeds its cap."""

    status_code = 431
    default_message = "request header too large"


class ChecksumMismatch(FerryError):
    """tus checksum: the chunk does not match ``Upload-Checksum``; it was discarded."""

    status_code = 460
    default_message = "checksum mismatch"


class StorageMisconfigured(FerryError):
    """Object storage refuses Ferry's credentials or bucket: retrying cannot help."""

    status_code = 500
    default_message = (
        "object storage refuses the server's S3 configuration; an operator must fix it"
    )


class InsufficientStorage(FerryError):
    """The server's disk is full (ENOSPC, EDQUOT): nothing more fits until space is freed.

    What was stored before the disk filled up is kept; the answer carries ``Retry-After``.
    """

    status_code = 507
    default_message = "the server's storage is full; retry later"

    def __init__(self, message: str | None = None, *, headers: dict[str, str] | None = None):
        super().__init__(message, headers={"Retry-After": RETRY_AFTER_DISK_FULL, **(headers or {})})


class ServiceUnavailable(FerryError):
    """A dependency (database, storage) is unavailable; nothing was acknowledged."""

    status_code = 503
    default_message = "service unavailable"


class ClientDisconnected(FerryError):
    """The body stopped arriving (disconnect or stall); what reached the disk is kept.

    The client has usually gone and never reads the answer; a stalled one gets 408.
    """

    status_code = 408
    default_message = "the request body was cut off or stalled"


def is_disk_full(error: BaseException) -> bool:
    """Whether ``error`` is the OS saying a filesystem (or a quota on it) is full."""
    return isinstance(error, OSError) and error.errno in DISK_FULL_ERRNOS


def storage_refusal(error: OSError, message: str) -> FerryError:
    """What a failed storage operation answers: 507 for a full disk, else 503 ``message``."""
    if is_disk_full(error):
        return InsufficientStorage()
    return ServiceUnavailable(message, headers={"Retry-After": "5"})
