"""Checksums shared by every layer: the tus ``Upload-Checksum`` algorithms and the
incremental digests the staging writer feeds while a body streams."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Protocol

import google_crc32c

from app.errors import BadRequest, ChecksumMismatch, ClientDisconnected, FerryError


class ChunkDigest(Protocol):
    """The incremental hash interface shared by hashlib objects and the CRC32C wrapper."""

    def update(self, data: bytes, /) -> None: ...

    def digest(self) -> bytes: ...


class _Crc32c:
    """CRC32C (Castagnoli) with the hashlib interface; the digest is 4 big-endian bytes."""

    def __init__(self) -> None:
        self._value = 0

    def update(self, data: bytes, /) -> None:
        self._value = int(google_crc32c.extend(self._value, data))

    def digest(self) -> bytes:
        return self._value.to_bytes(4, "big")


CHECKSUM_ALGORITHMS: dict[str, Callable[[], ChunkDigest]] = {
    "sha1": hashlib.sha1,
    "sha256": hashlib.sha256,
    "md5": hashlib.md5,
    "crc32c": _Crc32c,
}


class ChecksumSpec:
    """A parsed ``Upload-Checksum``: the algorithm name and the expected digest bytes."""

    __slots__ = ("algorithm", "expected")

    def __init__(self, algorithm: str, expected: bytes) -> None:
        self.algorithm = algorithm
        self.expected = expected

    def new_digest(self) -> ChunkDigest:
        """A fresh incremental hash for this algorithm."""
        return CHECKSUM_ALGORITHMS[self.algorithm]()


class ChunkVerifier:
    """checksum / checksum-trailer: verifies one PATCH body against ``Upload-Checksum``.

    With the header, only its algorithm is computed. With a trailer the algorithm is known
    only after the body, so every supported digest is computed while the body streams;
    ``read_trailer`` parses it then (raising :class:`BadRequest` for a malformed one).
    """

    def __init__(
        self,
        declared: ChecksumSpec | None,
        read_trailer: Callable[[], ChecksumSpec | None] | None,
    ) -> None:
        self._declared = declared
        self._read_trailer = read_trailer if declared is None else None
        self._by_algorithm: dict[str, ChunkDigest] = {}
        if declared is not None:
            self._by_algorithm[declared.algorithm] = declared.new_digest()
        elif read_trailer is not None:
            self._by_algorithm = {name: make() for name, make in CHECKSUM_ALGORITHMS.items()}

    @property
    def active(self) -> bool:
        """Whether the client promised a checksum for this chunk."""
        return bool(self._by_algorithm)

    @property
    def digests(self) -> list[ChunkDigest]:
        """The digests to feed with every byte of the body."""
        return list(self._by_algorithm.values())

    def failure(self, *, disconnected: bool) -> FerryError | None:
        """Why the chunk must be discarded, or ``None`` when it verified."""
        if disconnected:
            return ClientDisconnected("the body was cut off before its checksum could be checked")
        spec = self._declared
        if spec is None and self._read_trailer is not None:
            try:
                spec = self._read_trailer()
            except BadRequest as error:
                return error
            if spec is None:
                return BadRequest("the announced Upload-Checksum trailer did not arrive")
        if spec is None:
            return None
        if self._by_algorithm[spec.algorithm].digest() != spec.expected:
            return ChecksumMismatch(f"the chunk's {spec.algorithm} does not match Upload-Checksum")
        return None
