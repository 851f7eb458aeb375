"""The part planner: how an upload's byte stream is cut into S3 multipart parts.

Parts are cut from the *staged byte stream* at boundaries that depend only on the plan,
never on how the client split its PATCHes, so small or interrupted PATCHes never create
small parts and a restart cuts exactly the same parts again.

* Known length: every part has the same size, at least the minimum part size and large
  enough that ``ceil(length / size) <= max_parts``; the last part takes the remainder.
* Deferred length: parts start at the minimum size and double every ``growth_step`` parts
  (capped at S3's 5 GiB), with the step chosen so that ``max_parts`` parts hold the
  server's maximum upload size; the upload is never truncated.

S3 itself requires every part but the last to be at least 5 MiB and allows at most
10,000 parts of at most 5 GiB each.
"""

from __future__ import annotations

import msgspec

MIB = 1024 * 1024
S3_MIN_PART_SIZE = 5 * MIB
S3_MAX_PART_SIZE = 5 * 1024 * MIB
S3_MAX_PARTS = 10_000


class PartTooLarge(ValueError):
    """An upload cannot be cut into parts within the part-count and part-size limits."""


class PartSpan(msgspec.Struct, frozen=True):
    """One part: its 1-based number and the byte range ``[start, start + size)``."""

    number: int
    start: int
    size: int

    @property
    def end(self) -> int:
        """First byte after the part."""
        return self.start + self.size


class PartPlan(msgspec.Struct, frozen=True):
    """Where every part of one upload starts and ends.

    ``growth_step == 0`` means every part is ``base_size`` (known length); otherwise the
    part size doubles after every ``growth_step`` parts, capped at 5 GiB.
    """

    base_size: int
    max_parts: int
    growth_step: int = 0

    def size_of(self, number: int) -> int:
        """Planned size of part ``number`` (the last part of an upload may be shorter)."""
        if self.growth_step == 0:
            return self.base_size
        doublings = (number - 1) // self.growth_step
        if doublings >= 40:  # far past the 5 GiB cap; avoid huge shifts
            return S3_MAX_PART_SIZE
        return min(self.base_size << doublings, S3_MAX_PART_SIZE)

    def start_of(self, number: int) -> int:
        """Offset of the first byte of part ``number``."""
        if self.growth_step == 0:
            return (number - 1) * self.base_size
        full_groups, inside = divmod(number - 1, self.growth_step)
        start = 0
        for group in range(full_groups):
            start += self.growth_step * self.size_of(group * self.growth_step + 1)
        return start + inside * self.size_of(number)

    def span(self, number: int) -> PartSpan:
        """Part ``number`` at its full planned size."""
        return PartSpan(number=number, start=self.start_of(number), size=self.size_of(number))

    @property
    def capacity(self) -> int:
        """Most bytes ``max_parts`` parts of this plan can hold."""
        return self.start_of(self.max_parts + 1)

    def whole_parts_within(self, offset: int) -> int:
        """How many full-size parts lie entirely inside ``[0, offset)``."""
        if self.growth_step == 0:
            return min(offset // self.base_size, self.max_parts)
        count = 0
        start = 0
        group = 0
        while count < self.max_parts:
            size = self.size_of(group * self.growth_step + 1)
            fitting = min((offset - start) // size, self.growth_step, self.max_parts - count)
            count += fitting
            start += fitting * size
            if fitting < self.growth_step:
                break
            group += 1
        return count

    def parts_for(self, length: int) -> list[PartSpan]:
        """Every part of a complete upload of ``length`` bytes; the last may be short.

        Raises :class:`PartTooLarge` when the bytes do not fit in ``max_parts`` parts.
        """
        if length > self.capacity:
            raise PartTooLarge(f"{length} bytes do not fit in {self.max_parts} parts")
        whole = self.whole_parts_within(length)
        parts = [self.span(number) for number in range(1, whole + 1)]
        covered = parts[-1].end if parts else 0
        if covered < length:
            parts.append(PartSpan(number=whole + 1, start=covered, size=length - covered))
        return parts


def largest_supported_length(max_parts: int) -> int:
    """The largest upload any plan can hold: ``max_parts`` parts of 5 GiB."""
    return max_parts * S3_MAX_PART_SIZE


def plan_for_length(length: int, min_part_size: int, max_parts: int) -> PartPlan:
    """Equal parts for an upload of known ``length``; :class:`PartTooLarge` if impossible."""
    if length > largest_supported_length(max_parts):
        raise PartTooLarge(
            f"Upload-Length {length} exceeds what {max_parts} parts of 5 GiB can hold"
        )
    needed = -(-length // max_parts)
    # Whole MiB sizes keep parts page aligned (staging space is reclaimed per part).
    size = max(min_part_size, -(-needed // MIB) * MIB)
    return PartPlan(base_size=min(size, S3_MAX_PART_SIZE), max_parts=max_parts)


def plan_for_deferred(min_part_size: int, max_parts: int, max_size: int) -> PartPlan:
    """Growing parts for a deferred-length upload that can reach ``max_size`` bytes.

    The slowest growth (largest step) that still holds ``max_size`` keeps early parts
    small; when even doubling every part cannot hold it, parts are equal and large enough.
    """
    target = min(max_size, largest_supported_length(max_parts))
    best = PartPlan(base_size=min_part_size, max_parts=max_parts, growth_step=1)
    if best.capacity < target:
        # Too few parts for doubling to catch up (tiny max_parts): equal parts that hold
        # the maximum from the first part on.
        return plan_for_length(target, min_part_size, max_parts)
    low, high = 1, max_parts
    while low <= high:  # capacity shrinks as the step grows: find the largest step that fits
        step = (low + high) // 2
        plan = PartPlan(base_size=min_part_size, max_parts=max_parts, growth_step=step)
        if plan.capacity >= target:
            best = plan
            low = step + 1
        else:
            high = step - 1
    return best


def check_upload_length(length: int, max_parts: int) -> None:
    """Refuse (``PartTooLarge``) an upload length no multipart upload could hold."""
    if length > largest_supported_length(max_parts):
        raise PartTooLarge(
            f"Upload-Length {length} exceeds what {max_parts} parts of 5 GiB can hold"
        )
