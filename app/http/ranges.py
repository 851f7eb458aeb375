"""RFC 9110 §14 byte ranges: parsing ``Range`` and deciding ``If-Range``, pure logic.

The rules follow what nginx and Apache settled on after the "Apache Killer" (CVE-2011-3192):
overlapping and adjacent ranges are coalesced, a request for more than a configured number
of ranges or for more bytes than the file holds is answered with the whole file instead,
and anything malformed is ignored rather than guessed at.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from email.utils import parsedate_to_datetime

#: Longest Range header parsed at all; longer ones are ignored as abuse.
MAX_RANGE_HEADER = 8192
_SPEC = re.compile(r"\s*([0-9]{0,20})\s*-\s*([0-9]{0,20})\s*")  # ASCII digits only


@dataclass(frozen=True, slots=True)
class ByteRange:
    """An inclusive byte range ``[start, end]`` inside a file."""

    start: int
    end: int

    @property
    def length(self) -> int:
        """Number of bytes in the range."""
        return self.end - self.start + 1

    def content_range(self, size: int) -> str:
        """The ``Content-Range`` value for this range."""
        return f"bytes {self.start}-{self.end}/{size}"


class Unsatisfiable(Exception):
    """Every requested range lies outside the file: answer 416."""


def parse_range(header: str | None, size: int, max_ranges: int) -> list[ByteRange] | None:
    """The ranges to serve, or ``None`` to serve the whole file with 200.

    Raises :class:`Unsatisfiable` when the header is valid but no range overlaps the file.
    """
    if header is None or len(header) > MAX_RANGE_HEADER:
        return None
    unit, _, specs = header.partition("=")
    if unit.strip().lower() != "bytes" or not specs.strip():
        return None  # unknown unit or malformed: ignore the header (RFC 9110 §14.2)
    # RFC 9110 §5.6.1: empty list elements ("0-1,,5-9") are legal and mean nothing.
    parts = [part for part in specs.split(",") if part.strip()]
    if not parts or len(parts) > max_ranges:
        return None  # too many ranges: serve the whole file once rather than thousands of parts
    ranges: list[ByteRange] = []
    for part in parts:
        match = _SPEC.fullmatch(part)
        if match is None:
            return None
        first, last = match.groups()
        if not first and not last:
            return None
        if not first:
            suffix = int(last)
            if suffix == 0 or size == 0:
                continue  # "-0" selects nothing
            ranges.append(ByteRange(max(0, size - suffix), size - 1))
            continue
        start = int(first)
        end = int(last) if last else size - 1
        if last and end < start:
            return None  # "5-3" makes the whole header invalid
        if start >= size:
            continue
        ranges.append(ByteRange(start, min(end, size - 1)))
    if not ranges:
        raise Unsatisfiable
    merged = _coalesce(ranges)
    if sum(r.length for r in merged) >= size and len(merged) > 1:
        return None  # asking for everything in pieces: the whole file is cheaper
    return merged


def _coalesce(ranges: list[ByteRange]) -> list[ByteRange]:
    ordered = sorted(ranges, key=lambda r: r.start)
    merged = [ordered[0]]
    for current in ordered[1:]:
        last = merged[-1]
        if current.start <= last.end + 1:
            merged[-1] = ByteRange(last.start, max(last.end, current.end))
        else:
            merged.append(current)
    return merged


def if_range_allows(if_range: str | None, etag: str, last_modified: datetime) -> bool:
    """RFC 9110 §13.1.5: serve ranges only if the validator still matches.

    A weak entity tag never matches; a date must equal ``Last-Modified`` exactly.
    """
    if if_range is None:
        return True
    value = if_range.strip()
    if value.startswith('"'):
        return value == etag
    if value.startswith("W/"):
        return False
    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return False
    if moment is None or moment.tzinfo is None:
        return False  # HTTP dates are GMT; a zone-less date cannot be compared exactly
    return int(moment.timestamp()) == int(last_modified.timestamp())


def match_strong(if_match: str, etag: str) -> bool:
    """RFC 9110 §13.1.1 strong comparison: does any listed tag (or ``*``) match?"""
    return any(tag.strip() in ("*", etag) for tag in if_match.split(","))


def modified_since(if_unmodified_since: str, last_modified: datetime) -> bool:
    """RFC 9110 §13.1.4: true when the file changed after the given (valid) date."""
    try:
        moment = parsedate_to_datetime(if_unmodified_since)
    except (TypeError, ValueError):
        return False  # an invalid date makes the precondition be ignored
    if moment is None or moment.tzinfo is None:
        return False
    return int(last_modified.timestamp()) > int(moment.timestamp())


def none_match(if_none_match: str, etag: str) -> bool:
    """RFC 9110 §13.1.2 weak comparison: does any listed tag (or ``*``) match?"""
    opaque = etag.removeprefix("W/")
    for candidate in if_none_match.split(","):
        tag = candidate.strip()
        if tag == "*" or tag.removeprefix("W/") == opaque:
            return True
    return False


def not_modified_since(if_modified_since: str, last_modified: datetime) -> bool:
    """RFC 9110 §13.1.3: true when the file has not changed since the given date."""
    try:
        moment = parsedate_to_datetime(if_modified_since)
    except (TypeError, ValueError):
        return False
    if moment is None or moment.tzinfo is None:
        return False
    return int(last_modified.timestamp()) <= int(moment.timestamp())
