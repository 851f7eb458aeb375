"""One body into the staging file, under a kept-alive lease; nothing is committed here.

:class:`BodyReceiver` is the "stream" step of an append: it writes the body's pieces at
the upload's offset, feeds the chunk checksums and the running SHA-256, stops at the
upload's end, when the lease is lost or when the disk is full, and fdatasyncs what arrived
(invariant 1: only synced bytes may be acknowledged). It reports how the body ended as a
:class:`Received` value; the upload service decides what to commit.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

from app.core.checksums import ChunkDigest
from app.db.uploads import Claim, UploadRepository
from app.errors import ClientDisconnected, InsufficientStorage, is_disk_full
from app.storage.backend import ShipmentAhead
from app.storage.sniff import SNIFF_SIZE
from app.storage.staging import StagingArea, StagingWriter


@dataclass(slots=True)
class Received:
    """How one body ended."""

    durable_end: int
    """The staging file's synced length: what may be acknowledged."""
    disconnected: bool = False
    too_large: bool = False
    lease_lost: bool = False
    disk_full: bool = False
    """The disk filled up: ``durable_end`` is what was written and synced before that."""
    head: bytes = b""
    """The upload's first bytes, when this body started at offset 0."""
    ahead: ShipmentAhead | None = None
    """What storage sent of the body while it streamed (settled), for the shipping of
    the rest."""


class BodyReceiver:
    """Streams request bodies into staging files."""

    def __init__(self, repository: UploadRepository, staging: StagingArea) -> None:
        self._repository = repository
        self._staging = staging

    async def receive(
        self,
        claim: Claim,
        body: AsyncIterator[bytes],
        room: int,
        digests: list[ChunkDigest],
        ahead: ShipmentAhead | None = None,
    ) -> Received:
        """Write ``body`` at the claimed upload's offset, at most ``room`` bytes, and sync.

        ``ahead`` learns how far the staging file holds the body as it grows (each time a
        buffer is written), and may hold the reading back while it sends."""
        upload = claim.upload
        writer = await self._staging.open_writer(upload.id, upload.offset, digests, SNIFF_SIZE)
        outcome = Received(durable_end=upload.offset)
        try:
            async with self._repository.kept_alive(claim) as lease:
                taken = told = 0
                try:
                    async for piece in body:
                        if lease.lost:
                            outcome.lease_lost = True
                            break
                        taken += len(piece)
                        if taken > room:
                            outcome.too_large = True
                            break
                        await writer.write(piece)
                        if ahead is not None and writer.written != told:
                            told = writer.written
                            await ahead.staged(writer.start_offset + told)
                except ClientDisconnected:
                    outcome.disconnected = True
                except InsufficientStorage:
                    outcome.disk_full = True  # the rest of the body is not read
                if not outcome.lease_lost:
                    outcome.durable_end = await self._synced_end(writer, outcome)
        finally:
            await writer.close()
        outcome.head = bytes(writer.head)
        return outcome

    @staticmethod
    async def _synced_end(writer: StagingWriter, outcome: Received) -> int:
        """Invariant 1: only fdatasync'ed bytes may be acknowledged.

        A full disk that fails the fdatasync itself leaves no byte of this body known to
        be on disk: the durable end stays where the body started.
        """
        try:
            end = await writer.sync()
        except OSError as error:
            if not is_disk_full(error):
                raise
            outcome.disk_full = True
            return writer.start_offset
        outcome.disk_full = outcome.disk_full or writer.disk_full
        return end
