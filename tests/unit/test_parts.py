"""Property tests of the part planner: limits hold for any length and any PATCH pattern."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.storage.parts import (
    MIB,
    S3_MAX_PART_SIZE,
    PartPlan,
    PartSpan,
    PartTooLarge,
    check_upload_length,
    plan_for_deferred,
    plan_for_length,
)

GIB = 1024 * MIB
MIN_PART = 5 * MIB


def ship_like_the_backend(
    plan: PartPlan, patch_sizes: list[int], total: int, length_known: bool
) -> list[PartSpan]:
    """Cut parts the way the S3 backend does: whole parts after each PATCH, rest at the end."""
    shipped: dict[int, PartSpan] = {}
    offset = 0
    for size in patch_sizes:
        offset = min(total, offset + size)
        for number in range(1, plan.whole_parts_within(offset) + 1):
            span = plan.span(number)
            if length_known and span.end > total:
                span = PartSpan(number=number, start=span.start, size=total - span.start)
            shipped.setdefault(number, span)
        if offset == total:
            break
    for span in plan.parts_for(total):
        shipped.setdefault(span.number, span)
    return [shipped[n] for n in sorted(shipped)]


def assert_valid_parts(parts: list[PartSpan], total: int, max_parts: int, minimum: int) -> None:
    assert len(parts) <= max_parts
    assert [p.number for p in parts] == list(range(1, len(parts) + 1))
    position = 0
    for part in parts:
        assert part.start == position, "contiguous"
        assert 0 < part.size <= S3_MAX_PART_SIZE
        position = part.end
    assert position == total, "never truncated"
    for part in parts[:-1]:
        assert part.size >= minimum


lengths = st.integers(min_value=1, max_value=10_000 * S3_MAX_PART_SIZE)
max_parts_values = st.sampled_from([1, 2, 3, 10, 100, 1000, 10_000])


@given(length=lengths, max_parts=max_parts_values, minimum=st.sampled_from([MIN_PART, 8 * MIB]))
def test_known_length_plan_fits_max_parts_with_equal_parts(
    length: int, max_parts: int, minimum: int
) -> None:
    if length > max_parts * S3_MAX_PART_SIZE:
        with pytest.raises(PartTooLarge):
            plan_for_length(length, minimum, max_parts)
        return
    plan = plan_for_length(length, minimum, max_parts)
    parts = plan.parts_for(length)
    assert_valid_parts(parts, length, max_parts, minimum)
    assert len({p.size for p in parts[:-1]}) <= 1, "equal parts but the last"


@settings(max_examples=200)
@given(
    total=st.integers(min_value=1, max_value=400 * MIB),
    patch_sizes=st.lists(st.integers(min_value=1, max_value=64 * MIB), min_size=1, max_size=60),
    max_parts=st.sampled_from([3, 10, 50, 10_000]),
)
def test_interrupted_patches_never_change_the_parts_of_a_known_length_upload(
    total: int, patch_sizes: list[int], max_parts: int
) -> None:
    plan = plan_for_length(total, MIN_PART, max_parts)
    parts = ship_like_the_backend(plan, patch_sizes, total, length_known=True)
    assert_valid_parts(parts, total, max_parts, MIN_PART)
    assert parts == plan.parts_for(total)


@settings(max_examples=200)
@given(
    total=st.integers(min_value=1, max_value=400 * MIB),
    patch_sizes=st.lists(st.integers(min_value=1, max_value=64 * MIB), min_size=1, max_size=60),
    max_parts=st.sampled_from([5, 10, 50, 10_000]),
)
def test_deferred_length_parts_grow_and_stay_within_limits(
    total: int, patch_sizes: list[int], max_parts: int
) -> None:
    plan = plan_for_deferred(MIN_PART, max_parts, max_size=400 * MIB)
    parts = ship_like_the_backend(plan, patch_sizes, total, length_known=False)
    assert_valid_parts(parts, total, max_parts, MIN_PART)
    sizes = [p.size for p in parts[:-1]]
    assert sizes == sorted(sizes), "part sizes never shrink"


@given(max_parts=st.sampled_from([1, 2, 10, 1000, 10_000]), max_size=st.integers(1, 2**42))
def test_deferred_plan_holds_the_server_maximum(max_parts: int, max_size: int) -> None:
    plan = plan_for_deferred(MIN_PART, max_parts, max_size)
    assert plan.capacity >= min(max_size, max_parts * S3_MAX_PART_SIZE)


def test_default_deferred_plan_holds_a_terabyte_in_10000_parts_starting_small() -> None:
    plan = plan_for_deferred(8 * MIB, 10_000, 1024**4)
    assert plan.size_of(1) == 8 * MIB
    assert plan.capacity >= 1024**4


def test_five_gib_upload_uses_minimum_parts_and_fits() -> None:
    plan = plan_for_length(5 * GIB, 8 * MIB, 10_000)
    assert plan.base_size == 8 * MIB
    assert len(plan.parts_for(5 * GIB)) == 640


def test_length_above_max_parts_times_5_gib_is_refused() -> None:
    check_upload_length(10_000 * S3_MAX_PART_SIZE, 10_000)
    with pytest.raises(PartTooLarge):
        check_upload_length(10_000 * S3_MAX_PART_SIZE + 1, 10_000)
