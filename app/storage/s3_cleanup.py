"""Nothing left behind in S3 or in the ledger: discards, deletes and orphan sweeps.

An upload that is terminated, expires or is assembled again has its multipart upload
aborted and its ledger rows dropped; a partial upload's object is deleted when the
partial goes. What a crash or an unreachable S3 left behind is found by the sweeps
(:class:`~app.uploads.maintenance.UploadMaintenance` runs them): multipart uploads and
partial objects no live upload owns. Something younger than :data:`ORPHAN_GRACE` is
spared, since its upload may be too new to be in the live set the sweep was given.
"""

from __future__ import annotations

import logging
import uuid
from datetime import UTC, datetime, timedelta

from botocore.exceptions import ClientError
from sqlalchemy import delete, select

from app.storage.s3_collaborator import (
    PARTIALS_FOLDER,
    TRANSIENT_ERRORS,
    S3Collaborator,
    error_code,
)
from app.storage.s3_ledger import multipart_uploads, parts, segments
from app.storage.s3_shipping import SEGMENTS_FOLDER

logger = logging.getLogger(__name__)

ORPHAN_GRACE = timedelta(minutes=10)
"""A multipart upload no ledger row names is aborted only when older than this (it may be
one whose ledger row is being written right now)."""


class ObjectCleaner(S3Collaborator):
    """Aborts, deletes and forgets what no live upload needs any more."""

    async def forget(self, upload_id: uuid.UUID) -> None:
        """Drop the upload's multipart and parts ledger rows."""
        async with self.sessions() as session, session.begin():
            await session.execute(delete(parts).where(parts.c.upload_id == upload_id))
            await session.execute(
                delete(multipart_uploads).where(multipart_uploads.c.upload_id == upload_id)
            )

    async def discard_upload(self, upload_id: uuid.UUID) -> None:
        """Abort the upload's multipart upload (if any) and forget its parts."""
        async with self.sessions() as session:
            row = (
                await session.execute(
                    select(multipart_uploads).where(multipart_uploads.c.upload_id == upload_id)
                )
            ).first()
        if row is not None:
            try:
                await self._abort(row.object_key, row.s3_upload_id)
            except TRANSIENT_ERRORS as exc:
                # the orphan sweep aborts it later: no live upload owns it any more
                logger.warning("upload %s: abort failed (%r); the sweep retries", upload_id, exc)
                return
        await self.forget(upload_id)

    async def _abort(self, key: str, s3_upload_id: str) -> None:
        try:
            await self.client.abort_multipart_upload(
                Bucket=self.bucket, Key=key, UploadId=s3_upload_id
            )
        except ClientError as exc:
            if error_code(exc) not in {"NoSuchUpload", "404"}:
                raise

    async def abort_orphaned_uploads(self, live_upload_ids: set[uuid.UUID]) -> int:
        """Abort multipart uploads under the prefix that no live upload owns.

        Owned means: the upload is live and the ledger names this very ``UploadId``. One
        without a ledger row is left alone for :data:`ORPHAN_GRACE` (its row may be on the
        way). Ledger rows of uploads that are no longer live are removed too.
        """
        async with self.sessions() as session:
            owned = {
                (row.object_key, row.s3_upload_id): row.upload_id
                for row in (await session.execute(select(multipart_uploads))).all()
            }
        aborted = 0
        now = datetime.now(UTC)
        paginator = self.client.get_paginator("list_multipart_uploads")
        async for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix):
            for item in page.get("Uploads", []):
                key, s3_upload_id = item["Key"], item["UploadId"]
                owner = self._upload_id_of_key(key)
                if owner is not None and owner in live_upload_ids:
                    if (key, s3_upload_id) in owned:
                        continue
                    initiated = item.get("Initiated")
                    if initiated is not None and now - initiated < ORPHAN_GRACE:
                        continue
                await self._abort(key, s3_upload_id)
                aborted += 1
        for (_key, _mp), upload_id in owned.items():
            if upload_id not in live_upload_ids:
                await self.forget(upload_id)
        if aborted:
            logger.info("aborted %d orphaned multipart uploads", aborted)
        await self._delete_orphaned_segments(live_upload_ids)
        return aborted

    async def _delete_orphaned_segments(self, live_upload_ids: set[uuid.UUID]) -> None:
        """Delete segment objects (``{prefix}segments/{uid}/…``) of uploads no longer live,
        and their ledger rows."""
        now = datetime.now(UTC)
        gone: set[uuid.UUID] = set()
        paginator = self.client.get_paginator("list_objects_v2")
        prefix = f"{self.prefix}{SEGMENTS_FOLDER}/"
        async for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
            for item in page.get("Contents", []):
                try:
                    owner = uuid.UUID(item["Key"][len(prefix) :].split("/", 1)[0])
                except ValueError:
                    continue
                modified = item.get("LastModified")
                if owner in live_upload_ids or (modified and now - modified < ORPHAN_GRACE):
                    continue
                await self.delete(item["Key"])
                gone.add(owner)
        if gone:
            async with self.sessions() as session, session.begin():
                await session.execute(delete(segments).where(segments.c.upload_id.in_(gone)))

    async def delete(self, key: str) -> None:
        """Delete a stored object; a missing one is not an error."""
        await self.client.delete_object(Bucket=self.bucket, Key=key)

    async def discard_partial(self, upload_id: uuid.UUID) -> None:
        """Delete a partial upload's object (the orphan sweep retries if S3 is down)."""
        try:
            await self.delete(self._backend.partial_key(upload_id))
        except TRANSIENT_ERRORS as exc:
            logger.warning(
                "partial upload %s: delete failed (%r); the sweep retries", upload_id, exc
            )

    async def delete_orphaned_partials(self, live_partial_ids: set[uuid.UUID]) -> int:
        """Delete partial objects whose partial upload is no longer live."""
        deleted = 0
        now = datetime.now(UTC)
        paginator = self.client.get_paginator("list_objects_v2")
        prefix = f"{self.prefix}{PARTIALS_FOLDER}/"
        async for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
            for item in page.get("Contents", []):
                owner = self._upload_id_of_key(item["Key"])
                if owner is not None and owner in live_partial_ids:
                    continue
                modified = item.get("LastModified")
                if modified is not None and now - modified < ORPHAN_GRACE:
                    continue  # its upload may have been created after the live set was read
                await self.delete(item["Key"])
                deleted += 1
        return deleted

    def _upload_id_of_key(self, key: str) -> uuid.UUID | None:
        if not key.startswith(self.prefix):
            return None
        try:
            return uuid.UUID(key.rsplit("/", 1)[-1])
        except ValueError:
            return None
