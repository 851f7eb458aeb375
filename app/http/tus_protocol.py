"""tus 1.0.0 header rules in one place: parsing, validation and formatting.

Everything here is pure: it turns header strings into typed values or raises an error from
:mod:`app.errors`. The controller calls these; the upload service never sees raw headers.
"""

from __future__ import annotations

import base64
import binascii
import re
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Protocol
from urllib.parse import urlsplit

from app.core.checksums import CHECKSUM_ALGORITHMS, ChecksumSpec
from app.errors import (
    BadRequest,
    HeaderTooLarge,
    NotFound,
    PreconditionFailed,
)

TUS_VERSION = "1.0.0"
SUPPORTED_VERSIONS = (TUS_VERSION,)
OFFSET_CONTENT_TYPE = "application/offset+octet-stream"
EXTENSIONS = (
    "creation",
    "creation-with-upload",
    "creation-defer-length",
    "termination",
    "checksum",
    "checksum-trailer",
    "concatenation",
    "concatenation-unfinished",
    "expiration",
)

#: Headers browsers may read from a cross-origin tus response (tus-js-client needs them).
EXPOSED_HEADERS = (
    "Location",
    "Tus-Resumable",
    "Tus-Version",
    "Tus-Extension",
    "Tus-Max-Size",
    "Tus-Checksum-Algorithm",
    "Upload-Offset",
    "Upload-Length",
    "Upload-Metadata",
    "Upload-Defer-Length",
    "Upload-Concat",
    "Upload-Expires",
    "Content-Range",
    "Content-Length",
    "Content-Disposition",
    "Accept-Ranges",
    "ETag",
)

#: RFC 9110 §8.6 style: digits only, no sign; 19 digits keeps every value inside 63 bits.
_INTEGER = re.compile(r"[0-9]{1,19}")
_MAX_INT63 = 2**63 - 1
_METADATA_KEY = re.compile(r"[\x21-\x2b\x2d-\x7e]+")  # visible ASCII except comma


#: tus core §X-HTTP-Method-Override: the methods a client tunnels through POST.
OVERRIDABLE_METHODS = frozenset({"PATCH", "DELETE"})


class HeaderValues(Protocol):
    """Every value of a request header by name (Litestar's ``Headers`` is one)."""

    def getall(self, key: str, default: list[str], /) -> list[str]: ...


def tus_header(headers: HeaderValues, name: str) -> str | None:
    """The value of a tus header, or ``None`` when absent.

    Every tus header is a singleton (RFC 9110 §5.3 allows repeating only list-valued
    fields): two different values are 400 rather than a silent pick of one. An identical
    repeat (a proxy that duplicated it) is harmless and accepted.
    """
    values = headers.getall(name, [])
    if not values:
        return None
    if len({value.strip() for value in values}) > 1:
        raise BadRequest(f"{name} is sent {len(values)} times with different values")
    return values[0]


def parse_method_override(values: Iterable[bytes]) -> str | None:
    """tus core §X-HTTP-Method-Override on a POST: the method to act as, or ``None``.

    Only PATCH and DELETE are tunnelled (the methods the spec names); anything else, or two
    different values, is 400 — never a method routing has not been told about.
    """
    methods = {value.decode("latin-1").strip().upper() for value in values}
    if not methods:
        return None
    method = methods.pop()
    if methods or method not in OVERRIDABLE_METHODS:
        raise BadRequest("X-HTTP-Method-Override must be PATCH or DELETE")
    return method


def server_description_headers(max_size: int) -> list[tuple[bytes, bytes]]:
    """tus core §OPTIONS: version, extensions, size limit and checksum algorithms."""
    values = {
        "tus-resumable": TUS_VERSION,
        "tus-version": ",".join(SUPPORTED_VERSIONS),
        "tus-extension": ",".join(EXTENSIONS),
        "tus-max-size": str(max_size),
        "tus-checksum-algorithm": ",".join(CHECKSUM_ALGORITHMS),
    }
    return [(name.encode(), value.encode()) for name, value in values.items()]


def require_tus_version(value: str | None) -> None:
    """tus core §Tus-Resumable: a missing or unsupported version is 412, unprocessed.

    The 412 MUST carry ``Tus-Version`` so the client learns which versions it may use.
    """
    versions = {"Tus-Version": ",".join(SUPPORTED_VERSIONS)}
    if value is None:
        raise PreconditionFailed("Tus-Resumable header is required", headers=versions)
    if value.strip() not in SUPPORTED_VERSIONS:
        raise PreconditionFailed(
            f"Tus-Resumable {value.strip()!r} is not supported", headers=versions
        )


def parse_integer(name: str, value: str) -> int:
    """Parse a non-negative decimal header value strictly (no sign, spaces or exponent)."""
    text = value.strip()
    if not _INTEGER.fullmatch(text):
        raise BadRequest(f"{name} must be a non-negative integer, got {value[:40]!r}")
    number = int(text)
    if number > _MAX_INT63:
        raise BadRequest(f"{name} {text} does not fit in 63 bits")
    return number


def parse_optional_integer(name: str, value: str | None) -> int | None:
    """Like :func:`parse_integer`, for a header that may be absent."""
    return None if value is None else parse_integer(name, value)


def parse_upload_id(text: str) -> uuid.UUID:
    """Accept only a canonical lower-case UUID, so no id ever reaches the disk unchecked."""
    try:
        parsed = uuid.UUID(text)
    except ValueError:
        raise NotFound("no such upload") from None
    if str(parsed) != text:
        raise NotFound("no such upload")
    return parsed


def parse_upload_metadata(
    value: str | None, *, max_bytes: int, max_keys: int
) -> dict[str, str | None]:
    """Parse ``Upload-Metadata`` (creation §Upload-Metadata) into key → base64 value.

    Values stay base64-encoded (they may be binary); each is checked to decode strictly.
    An empty header means no metadata.
    """
    if value is None:
        return {}
    if len(value) > max_bytes:
        raise HeaderTooLarge(f"Upload-Metadata is larger than {max_bytes} bytes")
    text = value.strip()
    if not text:
        return {}
    pairs = text.split(",")
    if len(pairs) > max_keys:
        raise BadRequest(f"Upload-Metadata has more than {max_keys} keys")
    metadata: dict[str, str | None] = {}
    for pair in pairs:
        parts = pair.strip().split(" ")
        if len(parts) > 2 or not parts[0]:
            raise BadRequest(f"Upload-Metadata pair {pair.strip()[:40]!r} is malformed")
        key = parts[0]
        if not _METADATA_KEY.fullmatch(key):
            raise BadRequest(f"Upload-Metadata key {key[:40]!r} has invalid characters")
        if key in metadata:
            raise BadRequest(f"Upload-Metadata key {key!r} appears twice")
        encoded = parts[1] if len(parts) == 2 else None
        if encoded:
            try:
                base64.b64decode(encoded, validate=True)
            except (binascii.Error, ValueError):
                raise BadRequest(f"Upload-Metadata value of {key!r} is not base64") from None
        metadata[key] = encoded or None
    return metadata


def encode_upload_metadata(metadata: dict[str, str | None]) -> str:
    """Format metadata back into the header, exactly as the client sent its pairs."""
    return ",".join(key if value is None else f"{key} {value}" for key, value in metadata.items())


def parse_defer_length(value: str | None) -> bool:
    """creation-defer-length: the only allowed value is ``1``; anything else is 400."""
    if value is None:
        return False
    if value.strip() != "1":
        raise BadRequest("Upload-Defer-Length must be 1")
    return True


def parse_upload_checksum(value: str | None) -> ChecksumSpec | None:
    """checksum §Upload-Checksum: ``<algorithm> <base64 digest>``; unknown algorithm → 400."""
    if value is None:
        return None
    parts = value.strip().split(" ")
    if len(parts) != 2:
        raise BadRequest("Upload-Checksum must be '<algorithm> <base64 digest>'")
    algorithm, encoded = parts
    if algorithm not in CHECKSUM_ALGORITHMS:
        supported = ",".join(CHECKSUM_ALGORITHMS)
        raise BadRequest(f"checksum algorithm {algorithm[:20]!r} is not supported ({supported})")
    try:
        expected = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest("Upload-Checksum digest is not base64") from None
    return ChecksumSpec(algorithm, expected)


def announces_checksum_trailer(trailer_header: str | None) -> bool:
    """checksum-trailer: the request declares ``Trailer: Upload-Checksum`` (RFC 9110 §6.6.2)."""
    if not trailer_header:
        return False
    return "upload-checksum" in {name.strip().lower() for name in trailer_header.split(",")}


def trailer_value(raw_headers: list[tuple[bytes, bytes]], name: bytes) -> str | None:
    """The last value of a field, read after the body: a trailer if one was sent.

    uvicorn's httptools protocol appends trailer fields to the request's header list when
    the chunked body ends. Whether they arrive before or after the handler starts depends
    on packet timing, so the last occurrence is taken rather than a slice.
    """
    for key, value in reversed(raw_headers):
        if key == name:
            return value.decode("latin-1")
    return None


def parse_upload_concat(value: str | None, files_path: str) -> tuple[bool, list[uuid.UUID]]:
    """concatenation §Upload-Concat → (is_partial, partial ids of a final upload).

    The partial URLs may be absolute or relative; only their path counts, and it must name
    an upload under ``files_path``.
    """
    if value is None:
        return False, []
    text = value.strip()
    if text == "partial":
        return True, []
    if not text.startswith("final;"):
        raise BadRequest("Upload-Concat must be 'partial' or 'final;<urls>'")
    urls = text.removeprefix("final;").split()
    if not urls:
        raise BadRequest("Upload-Concat final lists no partial uploads")
    prefix = files_path.rstrip("/") + "/"
    ids: list[uuid.UUID] = []
    for url in urls:
        try:
            path = urlsplit(url).path
        except ValueError:  # e.g. an unclosed IPv6 bracket: "http://[::1/files/x"
            raise BadRequest(f"Upload-Concat names {url[:80]!r}, which is not a URL") from None
        if not path.startswith(prefix) or "/" in path[len(prefix) :].strip("/"):
            raise BadRequest(f"Upload-Concat names {url[:80]!r}, which is not an upload URL")
        try:
            ids.append(parse_upload_id(path[len(prefix) :].strip("/")))
        except NotFound:
            raise BadRequest(f"Upload-Concat names unknown upload {url[:80]!r}") from None
    return False, ids


def format_http_date(moment: datetime) -> str:
    """RFC 9110 §5.6.7 IMF-fixdate, as ``Upload-Expires`` requires."""
    return format_datetime(moment.astimezone(UTC), usegmt=True)
