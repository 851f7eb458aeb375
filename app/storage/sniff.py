"""Content type and category from magic bytes, never from the client's word."""

from __future__ import annotations

import enum

import puremagic

#: Bytes read from the start of a file to identify it.
SNIFF_SIZE = 8192

TEXT_APPLICATION_TYPES = frozenset(
    {"application/json", "application/xml", "application/javascript", "application/x-sh"}
)


#: puremagic names a few types outside the IANA registry; browsers know the standard ones.
NONSTANDARD_TYPES = {"text/ascii": "text/plain", "text/utf-8": "text/plain"}


class Category(enum.StrEnum):
    """Folders of the original service: where a completed file is filed."""

    IMAGES = "images"
    MEDIA = "media"
    TEXT = "text"
    OTHER = "other"


def sniff_content_type(head: bytes) -> str:
    """Identify content from its first bytes; unknown binary is ``application/octet-stream``."""
    if not head:
        return "application/octet-stream"
    try:
        mime = puremagic.from_string(head, mime=True)
    except (puremagic.PureError, ValueError):
        mime = ""
    if mime:
        return NONSTANDARD_TYPES.get(str(mime), str(mime))
    return "text/plain" if _looks_like_text(head) else "application/octet-stream"


def _looks_like_text(head: bytes) -> bool:
    if b"\x00" in head:
        return False
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as exc:
        # A multi-byte character cut at the end of the sample is still text.
        return exc.start >= len(head) - 3
    return True


def category_for(content_type: str) -> Category:
    """Map a content type to its category folder."""
    major = content_type.split("/", 1)[0]
    if major == "image":
        return Category.IMAGES
    if major in ("video", "audio"):
        return Category.MEDIA
    if major == "text" or content_type in TEXT_APPLICATION_TYPES:
        return Category.TEXT
    return Category.OTHER
