"""Client-supplied file names: made safe to show, store and put in headers.

A name never becomes a path: files are stored under their UID. Names are still cleaned
because they are echoed in ``Content-Disposition`` (RFC 6266) and in listings.
"""

from __future__ import annotations

import re
import unicodedata
from urllib.parse import quote

from app.errors import BadRequest

MAX_NAME_LENGTH = 255
_UNSAFE = re.compile(r'[\x00-\x1f\x7f"\\/]')


def safe_display_name(name: str | None, fallback: str) -> str:
    """The last path component of ``name`` without control characters, quotes or slashes."""
    if not name:
        return fallback
    base = re.split(r"[\\/]", name)[-1]
    cleaned = _UNSAFE.sub("_", unicodedata.normalize("NFC", base)).strip(" .")
    if not cleaned:
        return fallback
    return cleaned[:MAX_NAME_LENGTH]


def validate_name(name: str) -> str:
    """Refuse a client-chosen name that tries to traverse or hide (used by ``PUT`` paths)."""
    if (
        not name
        or name in {".", ".."}
        or "/" in name
        or "\\" in name
        or _UNSAFE.search(name.replace('"', ""))
        or len(name) > MAX_NAME_LENGTH
    ):
        raise BadRequest(f"file name {name[:60]!r} is not allowed")
    return name


def content_disposition(disposition: str, name: str) -> str:
    """RFC 6266 header: an ASCII fallback plus the exact name as ``filename*`` (RFC 8187)."""
    ascii_name = (
        unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode("ascii") or "file"
    )
    ascii_name = _UNSAFE.sub("_", ascii_name).replace("%", "_").strip(" .") or "file"
    encoded = quote(name, safe="")
    return f"{disposition}; filename=\"{ascii_name}\"; filename*=UTF-8''{encoded}"
