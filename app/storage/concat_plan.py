"""The concatenation planner: how partial objects become the parts of a final object.

A final upload (tus concatenation) is assembled inside S3 as one multipart upload whose
parts are either *copied* from a partial object (UploadPartCopy with a byte range: no byte
passes through Ferry) or *uploaded* from a spool file that gathers the bytes of partials
too small to be a part of their own. The plan depends only on the partials' sizes and the
limits, never on timing, so an assembly redone after a crash cuts the same parts.

S3's rules, which every plan keeps:

* every part but the last is at least the minimum part size (5 MiB on AWS);
* a part is at most 5 GiB and there are at most ``max_parts`` parts;
* a byte range can only be copied from a source larger than 5 MiB (a whole source can
  always be copied).

To stay within ``max_parts`` every part but the last is at least the *part floor*,
``max(min_part_size, ceil(total / max_parts))``. Pending (uploaded) bytes are cut into
parts of exactly the floor, so the spool never holds more than one floor; a large partial
that follows pending bytes first tops the pending part up to the floor and then has the
rest copied.
"""

from __future__ import annotations

from collections.abc import Sequence

import msgspec

from app.storage.parts import S3_MAX_PART_SIZE, S3_MIN_PART_SIZE, PartTooLarge

COPY_RANGE_MIN_SOURCE = S3_MIN_PART_SIZE + 1
"""S3 copies a byte range only out of a source object larger than 5 MiB."""


class SourceRange(msgspec.Struct, frozen=True):
    """Bytes ``[start, start + size)`` of source (partial) number ``source``."""

    source: int
    start: int
    size: int

    @property
    def end(self) -> int:
        """First byte after the range."""
        return self.start + self.size


class ConcatPart(msgspec.Struct, frozen=True):
    """One part of the final object: copied from one range, or uploaded from several."""

    number: int
    ranges: tuple[SourceRange, ...]
    copy: bool
    """``True``: UploadPartCopy of ``ranges[0]``; ``False``: spool the ranges, UploadPart."""

    @property
    def size(self) -> int:
        """Bytes in the part."""
        return sum(r.size for r in self.ranges)


def part_floor(total: int, min_part_size: int, max_parts: int) -> int:
    """Smallest size of every part but the last, so ``max_parts`` parts hold ``total``."""
    return max(min_part_size, -(-total // max_parts))


def plan_concatenation(
    sizes: Sequence[int], min_part_size: int, max_parts: int
) -> list[ConcatPart]:
    """The parts of a final object made of sources of ``sizes`` bytes, in order.

    An empty list means an empty object. Raises :class:`PartTooLarge` when the total does
    not fit in ``max_parts`` parts of 5 GiB.
    """
    total = sum(sizes)
    if total > max_parts * S3_MAX_PART_SIZE:
        raise PartTooLarge(f"{total} bytes do not fit in {max_parts} parts of 5 GiB")
    floor = part_floor(total, min_part_size, max_parts)
    last_source = max((i for i, size in enumerate(sizes) if size > 0), default=-1)
    parts: list[ConcatPart] = []
    pending: list[SourceRange] = []
    pending_size = 0

    def add_part(ranges: Sequence[SourceRange], *, copy: bool) -> None:
        parts.append(ConcatPart(number=len(parts) + 1, ranges=tuple(ranges), copy=copy))

    def spool(source: int, start: int, size: int) -> None:
        """Add bytes to the pending part, cutting an uploaded part at every floor."""
        nonlocal pending_size
        while size > 0:
            take = min(size, floor - pending_size)
            pending.append(SourceRange(source=source, start=start, size=take))
            start, size, pending_size = start + take, size - take, pending_size + take
            if pending_size == floor:
                add_part(pending, copy=False)
                pending.clear()
                pending_size = 0

    for source, size in enumerate(sizes):
        start = 0
        if pending:
            # The pending part is completed from this source's first bytes.
            start = min(size, floor - pending_size)
            spool(source, 0, start)
        rest = size - start
        if rest == 0:
            continue
        chunks = _copy_chunks(rest, floor, ends_object=source == last_source)
        whole_source = start == 0 and chunks is not None and len(chunks) == 1
        if chunks is None or not (whole_source or size >= COPY_RANGE_MIN_SOURCE):
            spool(source, start, rest)
            continue
        for chunk in chunks:
            add_part([SourceRange(source=source, start=start, size=chunk)], copy=True)
            start += chunk
    if pending:
        add_part(pending, copy=False)
    return parts


def _copy_chunks(size: int, floor: int, *, ends_object: bool) -> list[int] | None:
    """Near-equal copy parts for ``size`` bytes (each in ``[floor, 5 GiB]``), or ``None``.

    Bytes that end the object may form one part smaller than the floor (S3's last part).
    """
    count = -(-size // S3_MAX_PART_SIZE)
    if count == 1 and ends_object:
        return [size]
    if count > size // floor:
        return None  # too few bytes for parts of at least the floor: spool them instead
    base, extra = divmod(size, count)
    return [base + 1] * extra + [base] * (count - extra)
