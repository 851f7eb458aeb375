"""Whole parts sent to S3 while their request's body still streams.

Without this, a PATCH's parts leave only once its whole body is staged: a client that sends
a large file in one PATCH (tus-js-client's and Uppy's default) waits, after its last byte,
for every part to reach S3, minutes of silence for tens of GiB, which proxies with a read
timeout (nginx: 60 s) answer with a 504; and the staging disk holds the whole body. With
:class:`PartsAhead`, a part leaves as soon as its bytes are staged, and the body's reading
pauses while more than a few parts wait (TCP then slows the client to S3's pace), so
staging stays a bounded buffer and the answer follows the last part.

Nothing is recorded here: the parts sent ahead join the request's own in
:meth:`~app.storage.s3_shipping.PartShipper.ship`, which sends what is left and returns the
ledger rows for the transaction that commits the offset. A part sent ahead of a body that
ends badly (refused, cut off before it) is never recorded; whoever goes on sends it again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

from app.db.uploads import LeaseFence
from app.errors import FerryError
from app.storage.s3_collaborator import RETRYABLE_ERRORS
from app.storage.s3_ledger import PartRecord, ReceivedRanges

if TYPE_CHECKING:
    from app.core.received_crc import ReceivedCrc32c
    from app.storage.parts import PartPlan, PartSpan
    from app.storage.s3_shipping import Ledger, PartShipper

logger = logging.getLogger(__name__)

_STOPPING: tuple[type[BaseException], ...] = (*RETRYABLE_ERRORS, FerryError)
"""What ends the sending ahead without a trace beyond a log line: S3 or the database is
unwell, the lease was lost, the ledger lacks acknowledged bytes (ship answers for it)."""

HASHING_POLL_SECONDS = 0.002
"""How often a part whose bytes are written looks whether they are hashed too (a buffer's
hashing takes about a millisecond)."""
WAITING_PARTS = 2
"""Whole parts staged but not yet sent before the body's reading pauses (the parts in
flight come on top: at most ``FERRY_S3_PART_CONCURRENCY``)."""


class PartsAhead:
    """The parts one request sends while its body streams (see the module docstring)."""

    def __init__(
        self,
        shipper: PartShipper,
        upload_id: uuid.UUID,
        staged_path: Path,
        committed: int,
        length: int | None,
        *,
        partial: bool,
        fence: LeaseFence,
        received: ReceivedCrc32c | None = None,
    ) -> None:
        self._shipper = shipper
        self._received = received
        self._upload_id = upload_id
        self._staged_path = staged_path
        self._committed = committed
        self._length = length
        self._partial = partial
        self._fence = fence
        self.ledger: Ledger | None = None
        """The ledger as this request found it (and with the multipart upload it began):
        :meth:`~app.storage.s3_shipping.PartShipper.ship` goes on from it."""
        self.sent: list[PartRecord] = []
        """Parts S3 took, not recorded yet."""
        self._staged_end = committed
        self._next_start: int | None = None
        """Where the next part to send starts (``None`` until the ledger is read)."""
        self._part_size = 0
        self._done = False
        self._staged_more = asyncio.Event()
        self._moved_on = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def staged(self, end: int) -> None:
        """The staging file holds the body up to ``end``: parts that are whole now go.

        Returns at once, unless more than :data:`WAITING_PARTS` whole parts wait to be
        sent: then it waits for S3 (the caller stops reading the body meanwhile).
        """
        self._staged_end = end
        self._staged_more.set()
        while not self._done and self._waiting_bytes() > WAITING_PARTS * self._part_size:
            self._moved_on.clear()
            await self._moved_on.wait()

    def _waiting_bytes(self) -> int:
        if self._next_start is None or not self._part_size:
            return 0
        return self._staged_end - self._next_start

    async def settle(self) -> None:
        """Send nothing more; wait for the parts in flight (their failures are not raised:
        ship sends those parts again and answers for them)."""
        self._done = True
        self._staged_more.set()
        try:
            await asyncio.shield(self._task)
        except asyncio.CancelledError:
            self._task.cancel()
            raise

    async def _run(self) -> None:
        try:
            await self._send_whole_parts()
        except _STOPPING as exc:
            logger.info("upload %s: parts sent ahead stopped (%r)", self._upload_id, exc)
        except Exception:
            logger.exception("upload %s: parts sent ahead failed", self._upload_id)
        finally:
            self._done = True
            self._moved_on.set()

    async def _send_whole_parts(self) -> None:
        shipper = self._shipper
        self.ledger = ledger = await shipper.read_ledger(self._upload_id)
        if shipper.is_single(ledger, self._length):
            return
        held, chain = ledger.acknowledged(self._committed)
        crcs = ReceivedRanges(chain, self._received)
        plan = shipper.plan_for(ledger, self._length)
        number = len(held) + 1
        self._next_start = plan.start_of(number)
        self._part_size = plan.size_of(number)
        slots = asyncio.Semaphore(shipper.settings.s3_part_concurrency)
        in_flight: set[asyncio.Task[None]] = set()
        try:
            while (span := await self._next_whole_part(plan, number)) is not None:
                # A sent part's staged range is punched out, and it may begin before this
                # body (acknowledged bytes of earlier requests): should this body not be
                # acknowledged, the next request must restore staging from S3.
                shipper.forget_staged(self._upload_id)
                if ledger.multipart is None:
                    ledger.multipart = await shipper.begin_multipart(
                        self._upload_id, self._staged_path, plan, self._partial, self._fence
                    )
                await slots.acquire()
                crc = crcs.crc_of(span.start, span.end)
                sending = asyncio.get_running_loop().create_task(
                    self._send(ledger, span, crc, slots)
                )
                in_flight.add(sending)
                sending.add_done_callback(in_flight.discard)
                number += 1
                self._next_start = span.end
                self._part_size = plan.size_of(number)
                self._moved_on.set()
        finally:
            if in_flight:
                await asyncio.gather(*in_flight, return_exceptions=True)

    async def _next_whole_part(self, plan: PartPlan, number: int) -> PartSpan | None:
        """The next part once all its bytes are staged; ``None`` when the body is over or
        it is the upload's last, short part (ship sends those)."""
        span = plan.span(number)
        if self._length is not None and span.end > self._length:
            return None
        while self._staged_end < span.end or (
            self._received is not None and self._received.end < span.end
        ):
            if self._done:
                return None
            self._staged_more.clear()
            if self._staged_end < span.end:
                await self._staged_more.wait()
                continue
            # A part goes with the CRC32C of its bytes as received; hashing follows their
            # writing in the same worker thread, which tells nobody when it is done (and
            # the body's reading may be waiting for this very part).
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._staged_more.wait(), HASHING_POLL_SECONDS)
        return None if self._done else span

    async def _send(
        self, ledger: Ledger, span: PartSpan, crc: str | None, slots: asyncio.Semaphore
    ) -> None:
        assert ledger.multipart is not None
        try:
            self.sent.append(
                await self._shipper.send_part(self._staged_path, ledger.multipart, span, crc)
            )
        except RETRYABLE_ERRORS as exc:
            logger.info(
                "upload %s: part %d sent ahead failed (%r)", self._upload_id, span.number, exc
            )
        finally:
            slots.release()
            self._moved_on.set()
