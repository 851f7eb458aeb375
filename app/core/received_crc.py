"""CRC32C of a body's bytes as they arrived, for any range an S3 part or segment needs.

A part's ``x-amz-checksum-crc32c`` used to be computed by reading the part back from the
staging file just before sending it: bytes that changed in staging in between (a bug, a
bad disk) went to S3 with a checksum that matched them, and were stored without an error.
Taken from the bytes as received, the checksum makes S3 refuse such a part.

:class:`ReceivedCrc32c` is fed like any other digest while the body is staged and keeps
one CRC per block of :data:`BLOCK` bytes (aligned to the upload's offsets), so the CRC of
any range whose ends are block edges, or the body's own ends, is a few
:func:`crc32c_combine` away: part boundaries are MiB multiples, segment boundaries are
request boundaries.
"""

from __future__ import annotations

import google_crc32c

BLOCK = 1024 * 1024
_POLY = 0x82F63B78  # CRC32C (Castagnoli), reflected


def _times(operator: list[int], vector: int) -> int:
    total = 0
    row = 0
    while vector:
        if vector & 1:
            total ^= operator[row]
        vector >>= 1
        row += 1
    return total


def _squared(operator: list[int]) -> list[int]:
    return [_times(operator, operator[row]) for row in range(32)]


def _zero_byte_operators(count: int) -> list[list[int]]:
    """``[k]``: the operator that appends ``2**k`` zero bytes to a CRC's register."""
    one_bit = [_POLY] + [1 << row for row in range(31)]
    operator = _squared(_squared(_squared(one_bit)))  # 8 zero bits: one zero byte
    operators = []
    for _ in range(count):
        operators.append(operator)
        operator = _squared(operator)
    return operators


_APPEND_ZEROS = _zero_byte_operators(64)


def crc32c_combine(first: int, second: int, second_length: int) -> int:
    """The CRC32C of ``A + B`` from ``crc(A)``, ``crc(B)`` and ``len(B)`` (zlib's
    ``crc32_combine``, with operators for each power of two computed once)."""
    power = 0
    while second_length:
        if second_length & 1:
            first = _times(_APPEND_ZEROS[power], first)
        second_length >>= 1
        power += 1
    return first ^ second


class ReceivedCrc32c:
    """Block CRCs of a body staged from ``start`` (a :class:`~app.core.checksums.ChunkDigest`).

    Fed in order by the staging writer's threads; read on the event loop only up to
    :attr:`end`, which moves once a block's CRC is stored.
    """

    def __init__(self, start: int) -> None:
        self.start = start
        self.end = start
        """Where the bytes fed so far end (the CRCs below it are final)."""
        self._blocks: dict[int, tuple[int, int]] = {}
        """Block start → (its end, its CRC), for every complete block."""
        self._open_start = start
        self._open_crc = 0

    def update(self, data: bytes, /) -> None:
        position = self.end
        taken = 0
        while taken < len(data):
            edge = (self._open_start // BLOCK + 1) * BLOCK
            take = min(len(data) - taken, edge - position)
            # (Only a piece that straddles a block edge is cut, i.e. copied.)
            piece = data if take == len(data) else data[taken : taken + take]
            self._open_crc = int(google_crc32c.extend(self._open_crc, piece))
            taken += take
            position += take
            if position == edge:
                self._blocks[self._open_start] = (edge, self._open_crc)
                self._open_start, self._open_crc = edge, 0
            self.end = position

    def digest(self) -> bytes:
        """(The digest interface; what counts is :meth:`crc_of`.)"""
        return (self.crc_of(self.start, self.end) or 0).to_bytes(4, "big")

    def crc_of(self, start: int, end: int) -> int | None:
        """The CRC32C of ``[start, end)`` as received; ``None`` when it is not (all) in
        this body, or an end falls inside a block."""
        if not self.start <= start <= end <= self.end:
            return None
        crc = 0
        at = start
        while at < end:
            if at == self._open_start and end == self.end:
                return crc32c_combine(crc, self._open_crc, end - at)
            block = self._blocks.get(at)
            if block is None or block[0] > end:
                return None
            crc = crc32c_combine(crc, block[1], block[0] - at)
            at = block[0]
        return crc
