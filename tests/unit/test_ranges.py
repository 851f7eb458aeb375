"""RFC 9110 byte ranges and conditional requests, as pure decisions."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.http.ranges import (
    MAX_RANGE_HEADER,
    ByteRange,
    Unsatisfiable,
    if_range_allows,
    none_match,
    not_modified_since,
    parse_range,
)
from app.http.tus_protocol import format_http_date

SIZE = 1000
MAX_RANGES = 10


def ranges(
    header: str | None, size: int = SIZE, max_ranges: int = MAX_RANGES
) -> list[tuple[int, int]] | None:
    parsed = parse_range(header, size, max_ranges)
    return None if parsed is None else [(r.start, r.end) for r in parsed]


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("bytes=0-0", [(0, 0)]),
        ("bytes=0-499", [(0, 499)]),
        ("bytes=500-999", [(500, 999)]),
        ("bytes=500-", [(500, 999)]),
        ("bytes=-1", [(999, 999)]),
        ("bytes=-500", [(500, 999)]),
        ("bytes=0-", [(0, 999)]),
        ("BYTES=1-2", [(1, 2)]),
        ("bytes = 1 - 2", [(1, 2)]),
    ],
)
def test_single_range_forms(header: str, expected: list[tuple[int, int]]) -> None:
    assert ranges(header) == expected


def test_last_byte_past_the_end_is_clamped() -> None:
    assert ranges("bytes=900-5000") == [(900, 999)]
    assert ranges("bytes=0-18446744073709551615") == [(0, 999)]


def test_suffix_longer_than_the_file_is_the_whole_file_as_a_range() -> None:
    assert ranges("bytes=-5000") == [(0, 999)]


def test_suffix_of_zero_selects_nothing_and_is_unsatisfiable() -> None:
    with pytest.raises(Unsatisfiable):
        ranges("bytes=-0")


def test_first_byte_at_or_past_the_end_is_unsatisfiable() -> None:
    with pytest.raises(Unsatisfiable):
        ranges("bytes=1000-")
    with pytest.raises(Unsatisfiable):
        ranges("bytes=1000-2000,5000-")


def test_any_range_on_an_empty_file_is_unsatisfiable() -> None:
    with pytest.raises(Unsatisfiable):
        ranges("bytes=0-", size=0)
    with pytest.raises(Unsatisfiable):
        ranges("bytes=-5", size=0)


def test_unsatisfiable_parts_are_dropped_when_another_part_fits() -> None:
    assert ranges("bytes=5000-6000,10-19") == [(10, 19)]


@pytest.mark.parametrize(
    "header",
    [
        None,
        "bytes=5-3",  # last before first invalidates the header
        "bytes=0-1,5-3",
        "items=0-5",  # unknown unit
        "bytes=",
        "bytes",
        "bytes=-",
        "bytes=a-b",
        "bytes=1-2-3",
        "bytes=+1-2",
        "bytes=0x10-20",
        "bytes=123456789012345678901-",  # beyond 20 digits
        "bytes=1-2;foo",
    ],
)
def test_invalid_or_unknown_range_header_is_ignored(header: str | None) -> None:
    assert ranges(header) is None


def test_overlong_header_is_ignored() -> None:
    header = "bytes=" + ",".join("1-2" for _ in range(MAX_RANGE_HEADER))
    assert ranges(header, max_ranges=10**6) is None


def test_more_ranges_than_allowed_is_ignored() -> None:
    header = "bytes=" + ",".join(f"{i * 10}-{i * 10 + 1}" for i in range(MAX_RANGES + 1))
    assert ranges(header) is None
    assert (
        ranges("bytes=" + ",".join(f"{i * 10}-{i * 10 + 1}" for i in range(MAX_RANGES))) is not None
    )


def test_overlapping_and_adjacent_ranges_are_coalesced_in_order() -> None:
    assert ranges("bytes=50-59,0-9,5-14,15-19,100-109") == [(0, 19), (50, 59), (100, 109)]


def test_pieces_covering_the_whole_file_coalesce_into_one_range() -> None:
    assert ranges("bytes=0-499,500-") == [(0, 999)]
    assert ranges("bytes=0-600,400-999,-10") == [(0, 999)]


def test_byte_range_length_and_content_range() -> None:
    byte_range = ByteRange(10, 19)
    assert byte_range.length == 10
    assert byte_range.content_range(SIZE) == "bytes 10-19/1000"


@given(
    size=st.integers(min_value=1, max_value=10_000),
    specs=st.lists(
        st.tuples(
            st.integers(min_value=0, max_value=12_000), st.integers(min_value=0, max_value=12_000)
        ),
        min_size=1,
        max_size=6,
    ),
)
def test_parsed_ranges_are_sorted_disjoint_and_inside_the_file(
    size: int, specs: list[tuple[int, int]]
) -> None:
    header = "bytes=" + ",".join(f"{min(a, b)}-{max(a, b)}" for a, b in specs)
    try:
        parsed = parse_range(header, size, 10)
    except Unsatisfiable:
        assert all(min(a, b) >= size for a, b in specs)
        return
    if parsed is None:
        return  # whole file instead
    for byte_range in parsed:
        assert 0 <= byte_range.start <= byte_range.end < size
    for before, after in itertools.pairwise(parsed):
        assert before.end + 1 < after.start
    # every requested, satisfiable byte is covered
    for a, b in specs:
        first, last = min(a, b), min(max(a, b), size - 1)
        for point in {first, last}:
            if first < size:
                assert any(r.start <= point <= r.end for r in parsed)


# ---------------------------------------------------------------- conditionals

ETAG = '"abc123"'
MODIFIED = datetime(2026, 3, 4, 5, 6, 7, tzinfo=UTC)


def test_if_range_absent_allows_ranges() -> None:
    assert if_range_allows(None, ETAG, MODIFIED)


def test_if_range_with_matching_strong_etag_allows_ranges() -> None:
    assert if_range_allows('"abc123"', ETAG, MODIFIED)
    assert not if_range_allows('"other"', ETAG, MODIFIED)


def test_if_range_with_weak_etag_never_allows_ranges() -> None:
    assert not if_range_allows('W/"abc123"', ETAG, MODIFIED)


def test_if_range_with_exact_last_modified_date_allows_ranges() -> None:
    assert if_range_allows(format_http_date(MODIFIED), ETAG, MODIFIED)
    later = format_http_date(MODIFIED + timedelta(seconds=1))
    assert not if_range_allows(later, ETAG, MODIFIED)
    assert not if_range_allows("not a date", ETAG, MODIFIED)


def test_if_none_match_uses_weak_comparison_and_star() -> None:
    assert none_match('"abc123"', ETAG)
    assert none_match('W/"abc123"', ETAG)
    assert none_match('"x", "abc123"', ETAG)
    assert none_match("*", ETAG)
    assert not none_match('"x", "y"', ETAG)


def test_if_modified_since_is_true_only_when_unchanged_since() -> None:
    assert not_modified_since(format_http_date(MODIFIED), MODIFIED)
    assert not_modified_since(format_http_date(MODIFIED + timedelta(days=1)), MODIFIED)
    assert not not_modified_since(format_http_date(MODIFIED - timedelta(seconds=1)), MODIFIED)
    assert not not_modified_since("yesterday", MODIFIED)


@pytest.mark.parametrize("header", ["bytes=\u0660-\u0665", "bytes=1\u00b2-", "bytes=-\uff15"])
def test_range_with_non_ascii_digits_is_ignored(header: str) -> None:
    assert parse_range(header, 100, 10) is None
