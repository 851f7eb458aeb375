"""Reading stored objects back: ranged downloads through Ferry and presigned GET URLs.

Nothing here touches staging or the parts ledger; it only needs the client. A download
through Ferry streams one ranged GetObject in blocks of :data:`DOWNLOAD_BLOCK_SIZE`; a
presigned URL lets the client download straight from S3.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

from app.core.filenames import content_disposition
from app.errors import ServiceUnavailable
from app.storage.s3_collaborator import TRANSIENT_ERRORS, S3Collaborator, storage_failure

logger = logging.getLogger(__name__)

DOWNLOAD_BLOCK_SIZE = 1024 * 1024


class ObjectReader(S3Collaborator):
    """Streams byte ranges of stored objects and signs URLs that download them."""

    async def open_range(self, key: str, start: int, length: int) -> AsyncIterator[bytes]:
        """Stream ``length`` bytes from ``start`` with one ranged GetObject.

        S3 failing is a 503 (:class:`ServiceUnavailable`), or a 500 that says the S3
        settings are wrong (:func:`storage_failure`), never an unexplained 500.
        """
        if length <= 0:
            return
        try:
            response = await self.client.get_object(
                Bucket=self.bucket, Key=key, Range=f"bytes={start}-{start + length - 1}"
            )
            body = response["Body"]
        except TRANSIENT_ERRORS as exc:
            logger.warning("reading %s from S3 failed: %r", key, exc)
            raise storage_failure(exc) from exc
        try:
            remaining = length
            while remaining > 0:
                try:
                    block = await body.read(min(DOWNLOAD_BLOCK_SIZE, remaining))
                except TRANSIENT_ERRORS as exc:
                    raise ServiceUnavailable("object storage stopped answering") from exc
                if not block:
                    break
                remaining -= len(block)
                yield block
        finally:
            body.close()

    async def presigned_get_url(
        self, key: str, expires_seconds: int, filename: str | None, content_type: str | None
    ) -> str:
        """A time-limited URL that downloads ``key`` straight from S3."""
        params: dict[str, Any] = {"Bucket": self.bucket, "Key": key}
        if filename:
            params["ResponseContentDisposition"] = content_disposition("attachment", filename)
        if content_type:
            params["ResponseContentType"] = content_type
        return await self.client.generate_presigned_url(
            "get_object", Params=params, ExpiresIn=expires_seconds
        )
