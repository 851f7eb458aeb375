"""Client-supplied file names: made safe to show, store and put in headers.

A name never becomes a path: files are stored under their UID. Names are still cleaned
because they are echoed in ``Content-Disposition`` (RFC 6266) and in listings.
"""

from __future__ import annotations

import re
import unicodedata
from urllib.parse import quote

from app.errors import InvalidParameter

MAX_NAME_LENGTH = 255
_UNSAFE = re.compile(r'[\x00-\x1f\x7f"\\/]')
#: Unicode bidi controls (embeddings, overrides, isolates, marks): a right-to-left override
#: shows ``invoice\u202efdp.exe`` as ``invoiceexe.pdf`` (Trojan Source, CVE-2021-42574).
BIDI_CONTROLS = re.compile("[\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def safe_display_name(name: str | None, fallback: str) -> str:
    """The last path component of ``name`` without control characters, bidi controls,
    quotes or slashes; the one cleaning every stored or shown name goes through."""
    if not name:
        return fallback
    base = re.split(r"[\\/]", name)[-1]
    # Bidi controls go before NFC: removing one may let its neighbours compose.
    cleaned = _UNSAFE.sub("_", unicodedata.normalize("NFC", BIDI_CONTROLS.sub("", base)))
    # Stripped again after the cut, so cleaning a cleaned name changes nothing.
    cleaned = cleaned.strip(" .")[:MAX_NAME_LENGTH].rstrip(" .")
    return cleaned or fallback


def validate_name(name: str) -> str:
    """Refuse a client-chosen name that tries to traverse or hide (``PUT`` paths, renames);
    return it as :func:`safe_display_name` cleans it (bidi controls dropped). Both places
    call it ``name``: a refusal names that parameter."""
    if (
        not name
        or name in {".", ".."}
        or "/" in name
        or "\\" in name
        or _UNSAFE.search(name.replace('"', ""))
        or len(name) > MAX_NAME_LENGTH
    ):
        raise InvalidParameter("name", f"file name {name[:60]!r} is not allowed")
    cleaned = safe_display_name(name, "")
    if not cleaned:
        raise InvalidParameter("name", f"file name {name[:60]!r} is not allowed")
    return cleaned


def content_disposition(disposition: str, name: str) -> str:
    """RFC 6266 header: an ASCII fallback plus the name as ``filename*`` (RFC 8187).

    The name is cleaned once more (:func:`safe_display_name`): rows stored before bidi
    controls were dropped must not carry them into a browser's save dialog.
    """
    name = safe_display_name(name, "file")
    ascii_name = (
        unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode("ascii") or "file"
    )
    ascii_name = _UNSAFE.sub("_", ascii_name).replace("%", "_").strip(" .") or "file"
    encoded = quote(name, safe="")
    return f"{disposition}; filename=\"{ascii_name}\"; filename*=UTF-8''{encoded}"
