"""The one table of client-visible failures.

Every failure a client can see is a :class:`FerryError` subclass with its HTTP status, a
stable :class:`ErrorCode` and a plain message; the exception handlers in :mod:`app.main`
turn them into responses (JSON ``{"error", "detail", "parameter"}`` under ``/api``, plain
text on the tus routes). Nothing else decides a status code or a code, so the same failure
always looks the same on the wire. Failures Litestar itself raises (no such route, a
parameter that does not parse) get their code from :data:`CODE_BY_STATUS`.
"""

from __future__ import annotations

import enum
import errno
from collections.abc import Iterator
from typing import ClassVar

DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
"""What the OS says when a filesystem, or a quota on it, has no room left."""
RETRY_AFTER_DISK_FULL = "30"
"""``Retry-After`` of a 507: space is freed by an operator or the reaper, not in seconds."""


class ErrorCode(enum.StrEnum):
    """The stable, machine-readable name of a failure (the ``error`` of a JSON error body).

    Clients branch on these, never on the wording of a message; a code keeps its meaning
    for good (like tusd's ``ERR_*`` codes).
    """

    INVALID_PARAMETER = "invalid_parameter"
    BAD_REQUEST = "bad_request"
    UNAUTHORIZED = "unauthorized"
    FORBIDDEN = "forbidden"
    NOT_FOUND = "not_found"
    METHOD_NOT_ALLOWED = "method_not_allowed"
    REQUEST_TIMEOUT = "request_timeout"
    CONFLICT = "conflict"
    OFFSET_MISMATCH = "offset_mismatch"
    GONE = "gone"
    PRECONDITION_FAILED = "precondition_failed"
    TOO_LARGE = "too_large"
    QUOTA_EXCEEDED = "quota_exceeded"
    UNSUPPORTED_MEDIA_TYPE = "unsupported_media_type"
    RANGE_NOT_SATISFIABLE = "range_not_satisfiable"
    DIGEST_MISMATCH = "digest_mismatch"
    UNPROCESSABLE = "unprocessable"
    LOCKED = "locked"
    RATE_LIMITED = "rate_limited"
    HEADER_TOO_LARGE = "header_too_large"
    CHECKSUM_MISMATCH = "checksum_mismatch"
    INTERNAL = "internal"
    STORAGE_MISCONFIGURED = "storage_misconfigured"
    UNAVAILABLE = "unavailable"
    INSUFFICIENT_STORAGE = "insufficient_storage"


class FerryError(Exception):
    """Base of every client-visible error: an HTTP status, a stable code and a plain message.

    ``parameter`` names the query parameter, path segment, header or body field at fault,
    when there is one.
    """

    status_code: ClassVar[int] = 500
    code: ClassVar[ErrorCode] = ErrorCode.INTERNAL
    default_message: ClassVar[str] = "internal error"

    def __init__(
        self,
        message: str | None = None,
        *,
        headers: dict[str, str] | None = None,
        parameter: str | None = None,
    ):
        self.message = message or self.default_message
        self.headers = headers or {}
        self.parameter = parameter
        super().__init__(self.message)


class BadRequest(FerryError):
    """A header or body does not follow the protocol."""

    status_code = 400
    code = ErrorCode.BAD_REQUEST
    default_message = "bad request"


class InvalidParameter(BadRequest):
    """One named parameter (query, path, header or body field) has a value Ferry refuses."""

    code = ErrorCode.INVALID_PARAMETER

    def __init__(self, parameter: str, message: str, *, headers: dict[str, str] | None = None):
        super().__init__(message, headers=headers, parameter=parameter)


class Unauthorized(FerryError):
    """No credentials, or credentials that do not check out."""

    status_code = 401
    code = ErrorCode.UNAUTHORIZED
    default_message = "authentication required"


class Forbidden(FerryError):
    """The request is understood but not allowed (tus: PATCH against a final upload)."""

    status_code = 403
    code = ErrorCode.FORBIDDEN
    default_message = "forbidden"


class NotFound(FerryError):
    """No such upload or file (also answered for another owner's, to leak nothing)."""

    status_code = 404
    code = ErrorCode.NOT_FOUND
    default_message = "not found"


class OffsetMismatch(FerryError):
    """tus core: the client's ``Upload-Offset`` is not the upload's current offset."""

    status_code = 409
    code = ErrorCode.OFFSET_MISMATCH
    default_message = "Upload-Offset does not match the current offset"


class UploadConflict(FerryError):
    """The upload is in a state that forbids the request (e.g. length already set)."""

    status_code = 409
    code = ErrorCode.CONFLICT
    default_message = "conflict"


class Gone(FerryError):
    """The upload existed but was terminated or expired (tus: SHOULD answer 410)."""

    status_code = 410
    code = ErrorCode.GONE
    default_message = "upload is gone"


class PreconditionFailed(FerryError):
    """tus core: missing or unsupported ``Tus-Resumable`` version."""

    status_code = 412
    code = ErrorCode.PRECONDITION_FAILED
    default_message = "unsupported tus version"


class PayloadTooLarge(FerryError):
    """The upload or body exceeds ``Tus-Max-Size``, ``Upload-Length`` or a quota."""

    status_code = 413
    code = ErrorCode.TOO_LARGE
    default_message = "upload exceeds the maximum size"


class QuotaExceeded(PayloadTooLarge):
    """The owner's byte quota (``FERRY_QUOTA_BYTES``) has no room for the upload."""

    code = ErrorCode.QUOTA_EXCEEDED


class UnfinishedUploadsQuotaExceeded(FerryError):
    """The owner already has as many unfinished uploads as its quota allows."""

    status_code = 429
    code = ErrorCode.QUOTA_EXCEEDED
    default_message = "too many unfinished uploads"


class UnsupportedMediaType(FerryError):
    """tus core: PATCH without ``Content-Type: application/offset+octet-stream``."""

    status_code = 415
    code = ErrorCode.UNSUPPORTED_MEDIA_TYPE
    default_message = "PATCH requires Content-Type: application/offset+octet-stream"


class RangeNotSatisfiable(FerryError):
    """No requested byte range overlaps the file."""

    status_code = 416
    code = ErrorCode.RANGE_NOT_SATISFIABLE
    default_message = "range not satisfiable"


class Unprocessable(FerryError):
    """The request is well-formed but a validation rule refuses it."""

    status_code = 422
    code = ErrorCode.UNPROCESSABLE
    default_message = "unprocessable"


class DigestMismatch(Unprocessable):
    """A simple upload's body does not match the digest its client declared."""

    code = ErrorCode.DIGEST_MISMATCH


class UploadLocked(FerryError):
    """One writer per upload: another request holds the upload's lock."""

    status_code = 423
    code = ErrorCode.LOCKED
    default_message = "upload is locked by another request"


class TooManyRequests(FerryError):
    """A rate limit or concurrency quota was exceeded."""

    status_code = 429
    code = ErrorCode.RATE_LIMITED
    default_message = "too many requests"


class HeaderTooLarge(FerryError):
    """A request header (``Upload-Metadata``) exceeds its cap."""

    status_code = 431
    code = ErrorCode.HEADER_TOO_LARGE
    default_message = "request header too large"


class ChecksumMismatch(FerryError):
    """tus checksum: the chunk does not match ``Upload-Checksum``; it was discarded."""

    status_code = 460
    code = ErrorCode.CHECKSUM_MISMATCH
    default_message = "checksum mismatch"


class StorageMisconfigured(FerryError):
    """Object storage refuses Ferry's credentials or bucket: retrying cannot help."""

    status_code = 500
    code = ErrorCode.STORAGE_MISCONFIGURED
    default_message = (
        "object storage refuses the server's S3 configuration; an operator must fix it"
    )


class InsufficientStorage(FerryError):
    """The server's disk is full (ENOSPC, EDQUOT): nothing more fits until space is freed.

    What was stored before the disk filled up is kept; the answer carries ``Retry-After``.
    """

    status_code = 507
    code = ErrorCode.INSUFFICIENT_STORAGE
    default_message = "the server's storage is full; retry later"

    def __init__(self, message: str | None = None, *, headers: dict[str, str] | None = None):
        super().__init__(message, headers={"Retry-After": RETRY_AFTER_DISK_FULL, **(headers or {})})


class ServiceUnavailable(FerryError):
    """A dependency (database, storage) is unavailable; nothing was acknowledged."""

    status_code = 503
    code = ErrorCode.UNAVAILABLE
    default_message = "service unavailable"


class ClientDisconnected(FerryError):
    """The body stopped arriving (disconnect or stall); what reached the disk is kept.

    The client has usually gone and never reads the answer; a stalled one gets 408.
    """

    status_code = 408
    code = ErrorCode.REQUEST_TIMEOUT
    default_message = "the request body was cut off or stalled"


CODE_BY_STATUS: dict[int, ErrorCode] = {
    400: ErrorCode.BAD_REQUEST,
    401: ErrorCode.UNAUTHORIZED,
    403: ErrorCode.FORBIDDEN,
    404: ErrorCode.NOT_FOUND,
    405: ErrorCode.METHOD_NOT_ALLOWED,
    408: ErrorCode.REQUEST_TIMEOUT,
    409: ErrorCode.CONFLICT,
    410: ErrorCode.GONE,
    412: ErrorCode.PRECONDITION_FAILED,
    413: ErrorCode.TOO_LARGE,
    415: ErrorCode.UNSUPPORTED_MEDIA_TYPE,
    416: ErrorCode.RANGE_NOT_SATISFIABLE,
    422: ErrorCode.UNPROCESSABLE,
    423: ErrorCode.LOCKED,
    429: ErrorCode.RATE_LIMITED,
    431: ErrorCode.HEADER_TOO_LARGE,
    503: ErrorCode.UNAVAILABLE,
    507: ErrorCode.INSUFFICIENT_STORAGE,
}
"""The code of a failure raised outside this table (by Litestar), by its status."""


def code_for_status(status: int) -> ErrorCode:
    """The code of an HTTP status that no :class:`FerryError` named (``internal`` for 5xx)."""
    return CODE_BY_STATUS.get(
        status, ErrorCode.INTERNAL if status >= 500 else ErrorCode.BAD_REQUEST
    )


def error_classes(base: type[FerryError] = FerryError) -> Iterator[type[FerryError]]:
    """Every class of the table below ``base`` (what the schema describes a status with)."""
    for subclass in base.__subclasses__():
        yield subclass
        yield from error_classes(subclass)


def is_disk_full(error: BaseException) -> bool:
    """Whether ``error`` is the OS saying a filesystem (or a quota on it) is full."""
    return isinstance(error, OSError) and error.errno in DISK_FULL_ERRNOS


def storage_refusal(error: OSError, message: str) -> FerryError:
    """What a failed storage operation answers: 507 for a full disk, else 503 ``message``."""
    if is_disk_full(error):
        return InsufficientStorage()
    return ServiceUnavailable(message, headers={"Retry-After": "5"})
