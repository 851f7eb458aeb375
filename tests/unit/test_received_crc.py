"""CRC32C of ranges of a body as it was received, combined from block CRCs."""

from __future__ import annotations

import itertools
import os
import random

import google_crc32c
from hypothesis import given, settings
from hypothesis import strategies as st

from app.core.received_crc import BLOCK, ReceivedCrc32c, crc32c_combine
from app.storage.s3_ledger import ReceivedRanges, Segment
from app.storage.staged_parts import crc32c_base64


def crc(data: bytes) -> int:
    return int(google_crc32c.value(data))


@given(st.binary(max_size=300), st.binary(max_size=300))
def test_combining_two_crcs_gives_the_crc_of_the_concatenation(first: bytes, second: bytes) -> None:
    assert crc32c_combine(crc(first), crc(second), len(second)) == crc(first + second)


def test_combining_crcs_of_mebibytes_gives_the_crc_of_the_whole() -> None:
    data = os.urandom(3 * BLOCK + 12345)
    cut = BLOCK + 777
    assert crc32c_combine(crc(data[:cut]), crc(data[cut:]), len(data) - cut) == crc(data)


@settings(max_examples=40, deadline=None)
@given(
    start=st.integers(min_value=0, max_value=3 * BLOCK),
    length=st.integers(min_value=0, max_value=3 * BLOCK),
    seed=st.integers(min_value=0, max_value=2**32),
)
def test_any_range_between_block_edges_and_body_ends_has_the_crc_of_its_bytes(
    start: int, length: int, seed: int
) -> None:
    generator = random.Random(seed)
    body = generator.randbytes(length)
    received = ReceivedCrc32c(start)
    at = 0
    while at < len(body):  # in pieces of any size, as the staging writer feeds them
        size = generator.randint(1, 300_000)
        received.update(body[at : at + size])
        at += size
    end = start + length
    assert received.end == end
    edges = sorted({start, end, *range((start // BLOCK + 1) * BLOCK, end, BLOCK)})
    for low in edges:
        for high in edges:
            if low <= high:
                assert received.crc_of(low, high) == crc(body[low - start : high - start])


def test_a_range_not_received_or_ending_inside_a_block_has_no_crc() -> None:
    received = ReceivedCrc32c(BLOCK // 2)
    received.update(os.urandom(2 * BLOCK))
    assert received.crc_of(0, BLOCK) is None, "begins before the body"
    assert received.crc_of(BLOCK, 2 * BLOCK + BLOCK // 2 + 1) is None, "ends after it"
    assert received.crc_of(BLOCK, BLOCK + 5) is None, "ends inside a block"
    assert received.crc_of(BLOCK, 2 * BLOCK + BLOCK // 2) is not None


def test_segments_alone_give_the_crc_of_the_bytes_they_recorded_and_none_past_a_gap() -> None:
    """Without a body (a completion that puts restored bytes), the recorded segments' CRCs
    as received still make the checksum S3 checks the staged bytes against."""
    data = os.urandom(2 * BLOCK + 99)
    cuts = [0, 1000, BLOCK + 5, len(data)]
    chain = [
        Segment(low, high, f"segment-{low}", crc32c_base64(crc(data[low:high])))
        for low, high in itertools.pairwise(cuts)
    ]
    ranges = ReceivedRanges(chain, None)
    assert ranges.crc_of(0, len(data)) == crc32c_base64(crc(data))
    assert ranges.crc_of(1000, len(data)) == crc32c_base64(crc(data[1000:]))
    assert ranges.crc_of(0, 0) == crc32c_base64(0)
    assert ranges.crc_of(500, len(data)) is None, "starts inside a segment"
    assert ReceivedRanges([chain[0], chain[2]], None).crc_of(0, len(data)) is None, "a gap"
