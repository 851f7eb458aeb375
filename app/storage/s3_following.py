"""Parts sent to S3 while the PATCH body that completes them is still arriving.

Acknowledged means in S3, and a tus client sends one PATCH at a time, so a PATCH that only
starts its UploadPart once its body is staged pays for the body twice: once from the
client, once to S3 (1 GiB in 8 MiB PATCHes on SeaweedFS: ~18 ms receiving and ~70 ms
sending per PATCH, one after the other). A :class:`BodyFollower` overlaps them: for each
whole part a body of known length will complete (and the upload's last part, when the body
ends the upload), it starts the PUT as the writer reaches the part and streams the staging
file right behind the writer (:meth:`PartUploader.put_following`), up to
``FERRY_S3_PART_CONCURRENCY`` parts at once.

Nothing here is recorded or acknowledged: the shipper records the parts the follower sent
(:meth:`PartShipper.ship`) only after the body was received, synced and verified, under
the lease fence, and sends any part the follower could not (a body that stopped early, a
PUT that failed) the usual way. A part sent here for a body that was then refused stays
unrecorded in S3 until the same part number is sent again or the multipart upload is
aborted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import urllib.parse
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio.to_thread
from botocore.awsrequest import AWSRequest

from app.db.uploads import LeaseFence
from app.storage.part_upload import (
    CHECKSUM_TRAILER,
    BodyEnded,
    PartUploader,
    WrittenSoFar,
    aws_chunked_length,
)
from app.storage.parts import PartSpan
from app.storage.s3_collaborator import TRANSIENT_ERRORS, S3Collaborator
from app.storage.s3_ledger import Multipart, PartRecord
from app.storage.s3_shipping import (
    PRESIGNED_PART_SECONDS,
    Ledger,
    PartShipper,
    spans_completed,
)
from app.storage.sniff import SNIFF_SIZE

if TYPE_CHECKING:
    from app.storage.s3 import S3Backend

logger = logging.getLogger(__name__)

#: How long one wait for the writer lasts before looking at cancellation again.
_WAIT_SLICE = 0.5
#: Failures that only mean the parts are sent after the body, the usual way.
_LEFT_TO_THE_SHIPPER: tuple[type[BaseException], ...] = (*TRANSIENT_ERRORS, TimeoutError)


class BodyFollower:
    """The parts one body sends on while it arrives; the writer reports to :attr:`written`."""

    def __init__(self, written: WrittenSoFar) -> None:
        self.written = written
        self._task: asyncio.Task[dict[int, PartRecord]] | None = None

    @property
    def observer(self) -> WrittenSoFar:
        """What the staging writer reports its progress to."""
        return self.written

    def start(self, follow: Callable[[BodyFollower], Any]) -> None:
        self._task = asyncio.get_running_loop().create_task(follow(self))

    async def sent(self) -> dict[int, PartRecord]:
        """The parts that reached S3 whole, by number (once the writer has finished).

        Whatever went wrong here only means those parts are sent the usual way.
        """
        if self._task is None:
            return {}
        try:
            return await self._task
        except Exception as exc:
            logger.info("parts sent while the body arrived failed (%r); sent after it", exc)
            return {}

    async def abandon(self) -> None:
        """Stop sending (the body is refused or failed): in-flight PUTs are cut."""
        self.written.finished()
        if self._task is not None and not self._task.done():
            self._task.cancel()
        if self._task is not None:
            with contextlib.suppress(BaseException):
                await self._task


@dataclass(frozen=True, slots=True)
class _FollowedBody:
    """The body a follower sends parts of: it will stage ``[offset, end)``."""

    upload_id: uuid.UUID
    staged_path: Path
    offset: int
    end: int
    length: int | None
    partial: bool
    fence: LeaseFence


class PartFollower(S3Collaborator):
    """Starts :class:`BodyFollower` s for the shipper's uploads."""

    def __init__(self, backend: S3Backend, shipper: PartShipper) -> None:
        super().__init__(backend)
        self._shipper = shipper

    def follow(
        self,
        upload_id: uuid.UUID,
        staged_path: Path,
        offset: int,
        body_end: int,
        length: int | None,
        *,
        partial: bool,
        fence: LeaseFence,
    ) -> BodyFollower | None:
        """A follower for a body that will stage ``[offset, body_end)``, or ``None`` when
        it completes no part (or parts cannot be streamed to this endpoint)."""
        uploader = self._backend.part_uploader
        if uploader is None or body_end <= offset:
            return None
        if self._shipper.is_single(Ledger(), length):
            return None  # one PutObject, once the whole body is here
        plan = self._shipper.plan_for(Ledger(), length)
        if not spans_completed(plan, plan.whole_parts_within(offset), body_end, length):
            return None
        body = _FollowedBody(upload_id, staged_path, offset, body_end, length, partial, fence)
        follower = BodyFollower(WrittenSoFar(offset))
        follower.start(lambda follower: self._send_following(uploader, follower.written, body))
        return follower

    async def _send_following(
        self, uploader: PartUploader, written: WrittenSoFar, body: _FollowedBody
    ) -> dict[int, PartRecord]:
        upload_id, staged_path, length = body.upload_id, body.staged_path, body.length
        ledger = await self._shipper.load(upload_id)
        held, _chain = ledger.acknowledged(body.offset)
        if self._shipper.is_single(ledger, length):
            return {}
        plan = self._shipper.plan_for(ledger, length)
        spans = spans_completed(plan, len(held), body.end, length)
        if not spans:
            return {}
        if ledger.multipart is None:
            # The object's key follows its sniffed type: the head must be staged first.
            if not await _reached(written, min(SNIFF_SIZE, body.end)):
                return {}
            ledger.multipart = await self._shipper.begin_multipart(
                upload_id, staged_path, plan, body.partial, body.fence
            )
        multipart = ledger.multipart
        sent: dict[int, PartRecord] = {}
        slots = asyncio.Semaphore(self.settings.s3_part_concurrency)

        async def send(span: PartSpan) -> None:
            async with slots, self._backend.part_slots:
                url, headers = await self._signed_request(multipart, span)
                etag, crc = await uploader.put_following(
                    url, headers, staged_path, span.start, span.size, written
                )
            sent[span.number] = PartRecord(span.number, span.size, etag, crc)

        async with asyncio.TaskGroup() as group:
            for span in spans:
                if not await _reached(written, span.start + 1):
                    break
                group.create_task(_quietly(send(span), span.number))
        return sent

    async def _signed_request(
        self, multipart: Multipart, span: PartSpan
    ) -> tuple[str, dict[str, str]]:
        """The URL and headers of an UploadPart with an ``aws-chunked`` body and the CRC32C
        in its trailer, signed by botocore (``STREAMING-UNSIGNED-PAYLOAD-TRAILER``)."""
        presigned = await self.client.generate_presigned_url(
            "upload_part",
            Params={
                "Bucket": self.bucket,
                "Key": multipart.key,
                "UploadId": multipart.s3_upload_id,
                "PartNumber": span.number,
            },
            ExpiresIn=PRESIGNED_PART_SECONDS,
        )
        # botocore resolved endpoint, addressing style and key quoting; the query
        # signature goes, the request is signed in its headers instead.
        url = _without_query_signature(presigned)
        request = AWSRequest(
            method="PUT",
            url=url,
            headers={
                "Content-Encoding": "aws-chunked",
                "Content-Length": str(aws_chunked_length(span.size)),
                "X-Amz-Decoded-Content-Length": str(span.size),
                "X-Amz-Trailer": CHECKSUM_TRAILER,
            },
        )
        request.context["checksum"] = {
            "request_algorithm": {"in": "trailer", "algorithm": "crc32c", "name": CHECKSUM_TRAILER}
        }
        # The client's own signer: its credentials (refreshed as they expire) and region.
        signer: Any = self.client._request_signer  # type: ignore[attr-defined]
        await signer.sign("UploadPart", request)
        headers = {
            name: value
            for name, value in request.headers.items()
            if name.lower() not in ("content-length", "host")
        }
        return url, headers


async def _reached(written: WrittenSoFar, target: int) -> bool:
    """Wait until the writer reached ``target``; ``False`` when the body ended before."""
    try:
        while not await anyio.to_thread.run_sync(
            written.wait_until, target, _WAIT_SLICE, abandon_on_cancel=True
        ):
            pass
    except BodyEnded:
        return False
    return True


async def _quietly(sending: Any, number: int) -> None:
    """One followed part; a failure leaves the part to the shipper."""
    try:
        await sending
    except BodyEnded:
        pass
    except _LEFT_TO_THE_SHIPPER as exc:
        logger.info("part %d could not go to S3 while it arrived (%r); sent after it", number, exc)


def _without_query_signature(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    kept = [
        (name, value)
        for name, value in urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
        if not name.lower().startswith("x-amz-")
    ]
    query = urllib.parse.urlencode(kept, quote_via=urllib.parse.quote)
    return urllib.parse.urlunsplit(parts._replace(query=query))
