"""Content type and category from magic bytes, never from the client's word."""

from __future__ import annotations

import enum
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import puremagic.main as puremagic_tables

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
    mime = _SIGNATURES.mime_type(head)
    if mime:
        return NONSTANDARD_TYPES.get(str(mime), str(mime))
    return "text/plain" if _looks_like_text(head) else "application/octet-stream"


class _SignatureIndex:
    """puremagic's signatures, indexed by the byte each one starts with at its offset.

    ``puremagic.from_string`` compares all ~1,400 header signatures in a Python loop: about
    1 ms of CPU per file, the largest cost of a small upload. Looking up the one byte at each
    of the ~50 distinct offsets finds the same candidates in ~1/50 of the comparisons; the
    matches then go through puremagic's own ranking, so the answer is puremagic's answer
    (``tests/unit/test_sniff.py`` checks that against ``puremagic.from_string`` for every
    signature in its table).
    """

    def __init__(self) -> None:
        self._by_offset: dict[int, dict[int, list[tuple[int, Any]]]] = defaultdict(
            lambda: defaultdict(list)
        )
        for position, row in enumerate(puremagic_tables.magic_header_array):
            self._by_offset[row.offset][row.byte_match[0]].append((position, row))
        self._offsets = sorted(self._by_offset)
        self._head_size = puremagic_tables.max_head
        self._foot_size = puremagic_tables.max_foot

    def mime_type(self, data: bytes) -> str:
        """The MIME type puremagic names for ``data`` (``""``: none, or one without a type)."""
        header, footer = data[: self._head_size], data[-self._foot_size :]
        candidates: list[tuple[int, Any]] = []
        for offset in self._offsets:
            if offset >= len(header):
                break
            candidates.extend(self._by_offset[offset].get(header[offset], ()))
        candidates.sort(key=lambda item: item[0])
        matches = [
            row
            for _, row in candidates
            if header[row.offset : row.offset + len(row.byte_match)] == row.byte_match
        ]
        matches += [
            row
            for row in puremagic_tables.magic_footer_array
            if _footer_area(footer, row) == row.byte_match
        ]
        matches += _multi_part_matches(header, footer, matches)
        if not matches:
            return ""
        return str(puremagic_tables._confidence(matches)[0].mime_type)


def _footer_area(footer: bytes, row: Any) -> bytes:
    end = row.offset + len(row.byte_match)
    return footer[row.offset : end] if end != 0 else footer[row.offset :]


def _multi_part_matches(header: bytes, footer: bytes, matches: Sequence[Any]) -> list[Any]:
    """Signatures in two pieces (a JSON object's braces), as puremagic composes them."""
    composed = set()
    for matched in matches:
        for row in puremagic_tables.multi_part_dict.get(matched.byte_match, ()):
            end = row.offset + len(row.byte_match)
            if row.offset < 0:
                if _footer_area(footer, row) == row.byte_match:
                    composed.add(row._replace(byte_match=matched.byte_match + row.byte_match))
            elif end <= len(header) and header[row.offset : end] == row.byte_match:
                composed.add(row._replace(byte_match=header[matched.offset : end]))
    return list(composed)


_SIGNATURES = _SignatureIndex()


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
