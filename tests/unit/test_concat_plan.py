"""Property tests of the concatenation planner: every byte once, in order, within S3's rules."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.storage.concat_plan import (
    COPY_RANGE_MIN_SOURCE,
    ConcatPart,
    SourceRange,
    part_floor,
    plan_concatenation,
)
from app.storage.parts import MIB, S3_MAX_PART_SIZE, PartTooLarge

GIB = 1024 * MIB
MIN_PART = 5 * MIB


def covered_bytes(parts: list[ConcatPart]) -> list[SourceRange]:
    """The ranges of all parts in order, adjacent ranges of one source merged."""
    merged: list[SourceRange] = []
    for part in parts:
        for piece in part.ranges:
            assert piece.size > 0, "no empty range"
            last = merged[-1] if merged else None
            if last is not None and last.source == piece.source and last.end == piece.start:
                merged[-1] = SourceRange(last.source, last.start, last.size + piece.size)
            else:
                merged.append(piece)
    return merged


def assert_valid_plan(parts: list[ConcatPart], sizes: list[int], minimum: int, max_parts: int):  # type: ignore[no-untyped-def]
    expected = [SourceRange(i, 0, size) for i, size in enumerate(sizes) if size > 0]
    assert covered_bytes(parts) == expected, "every byte exactly once, in order"
    assert [p.number for p in parts] == list(range(1, len(parts) + 1))
    assert len(parts) <= max_parts
    floor = part_floor(sum(sizes), minimum, max_parts)
    for part in parts:
        assert 0 < part.size <= S3_MAX_PART_SIZE
    for part in parts[:-1]:
        assert part.size >= minimum, "every part but the last is at least the minimum"
        assert part.size >= floor
    for part in parts:
        if part.copy:
            (piece,) = part.ranges
            whole = piece.start == 0 and piece.size == sizes[piece.source]
            assert whole or sizes[piece.source] >= COPY_RANGE_MIN_SOURCE, "S3's ranged-copy rule"
        else:
            assert part.size <= floor, "the spool never holds more than one part floor"


source_sizes = st.lists(
    st.one_of(
        st.just(0),
        st.integers(1, 64 * 1024),
        st.integers(1, 12 * MIB),
        st.integers(4 * MIB, 6 * MIB),
        st.integers(1, 40 * GIB),
    ),
    min_size=1,
    max_size=30,
)


@settings(max_examples=500)
@given(
    sizes=source_sizes,
    minimum=st.sampled_from([MIN_PART, 8 * MIB, 64 * MIB]),
    max_parts=st.sampled_from([1, 2, 3, 10, 100, 10_000]),
)
def test_plan_covers_every_byte_once_in_order_and_obeys_the_part_rules(
    sizes: list[int], minimum: int, max_parts: int
) -> None:
    if sum(sizes) > max_parts * S3_MAX_PART_SIZE:
        with pytest.raises(PartTooLarge):
            plan_concatenation(sizes, minimum, max_parts)
        return
    parts = plan_concatenation(sizes, minimum, max_parts)
    assert_valid_plan(parts, sizes, minimum, max_parts)


@settings(max_examples=300)
@given(sizes=source_sizes, minimum=st.sampled_from([MIN_PART, 8 * MIB]))
def test_with_enough_parts_at_most_two_floors_per_partial_pass_through_ferry(
    sizes: list[int], minimum: int
) -> None:
    """Large partials are copied inside S3; only small pieces are uploaded again."""
    parts = plan_concatenation(sizes, minimum, 10_000)
    uploaded = sum(p.size for p in parts if not p.copy)
    floor = part_floor(sum(sizes), minimum, 10_000)
    assert uploaded < 2 * floor * max(1, sum(1 for s in sizes if s > 0))


def test_partials_of_at_least_the_minimum_are_copied_whole() -> None:
    sizes = [5 * MIB, 7 * MIB, 6 * MIB + 1]
    parts = plan_concatenation(sizes, MIN_PART, 10_000)
    assert [p.copy for p in parts] == [True, True, True]
    assert [p.ranges for p in parts] == [(SourceRange(i, 0, s),) for i, s in enumerate(sizes)]


def test_tiny_partials_are_gathered_into_one_uploaded_part() -> None:
    parts = plan_concatenation([3, 0, 5, 1], MIN_PART, 10_000)
    assert parts == [
        ConcatPart(
            number=1,
            ranges=(SourceRange(0, 0, 3), SourceRange(2, 0, 5), SourceRange(3, 0, 1)),
            copy=False,
        )
    ]


def test_large_partial_after_pending_bytes_tops_them_up_and_the_rest_is_copied() -> None:
    parts = plan_concatenation([MIB, 20 * MIB], MIN_PART, 10_000)
    assert parts == [
        ConcatPart(1, (SourceRange(0, 0, MIB), SourceRange(1, 0, 4 * MIB)), copy=False),
        ConcatPart(2, (SourceRange(1, 4 * MIB, 16 * MIB),), copy=True),
    ]


def test_tiny_last_partial_after_a_large_one_is_its_own_uploaded_last_part() -> None:
    parts = plan_concatenation([6 * MIB, 10], MIN_PART, 10_000)
    assert parts == [
        ConcatPart(1, (SourceRange(0, 0, 6 * MIB),), copy=True),
        ConcatPart(2, (SourceRange(1, 0, 10),), copy=True),
    ]


def test_rest_of_a_small_source_is_never_copied_by_range() -> None:
    """A 5 MiB source after pending bytes: its tail cannot be a ranged copy on AWS."""
    parts = plan_concatenation([MIB, 5 * MIB], MIN_PART, 10_000)
    assert all(not p.copy for p in parts)
    assert [p.size for p in parts] == [5 * MIB, MIB]


def test_partial_above_5_gib_is_copied_in_several_ranges() -> None:
    parts = plan_concatenation([12 * GIB], MIN_PART, 10_000)
    assert [p.copy for p in parts] == [True, True, True]
    assert sum(p.size for p in parts) == 12 * GIB
    assert all(p.size <= S3_MAX_PART_SIZE for p in parts)


def test_empty_partials_make_an_empty_plan() -> None:
    assert plan_concatenation([0, 0], MIN_PART, 10_000) == []
    assert plan_concatenation([], MIN_PART, 10_000) == []


def test_too_many_bytes_for_the_part_limit_are_refused() -> None:
    with pytest.raises(PartTooLarge):
        plan_concatenation([S3_MAX_PART_SIZE, 1], MIN_PART, 1)
