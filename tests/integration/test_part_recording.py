"""S3's parts ledger is written by the transaction that commits the offset it holds: a part
is recorded exactly when its bytes are acknowledged, and a writer whose lease was taken
over records nothing (one transaction per PATCH instead of two; issue 12)."""

from __future__ import annotations

import anyio.to_thread
from sqlalchemy import select, update

from app.db.engine import create_engine, create_session_factory, migrate
from app.db.models import Upload
from app.db.uploads import UploadRepository
from app.storage.s3_ledger import PartRecord, parts
from app.storage.s3_shipping import PartRecording
from tests.conftest import MakeSettings

PART = 5 * 1024 * 1024


async def test_parts_are_recorded_with_their_offset_and_not_at_all_after_a_lost_lease(
    make_settings: MakeSettings,
) -> None:
    settings = make_settings()
    await anyio.to_thread.run_sync(migrate, settings)
    engine = create_engine(settings.resolved_database_url)
    try:
        sessions = create_session_factory(engine)
        repository = UploadRepository(sessions, node_id="a", lease_seconds=30, ttl_seconds=60)
        upload = repository.new_upload(
            owner=None,
            length=3 * PART,
            metadata={},
            is_partial=False,
            concat_parts=None,
            storage="s3",
        )
        await repository.create(upload)

        async def recorded() -> list[tuple[int, str]]:
            async with sessions() as session:
                rows = await session.execute(
                    select(parts.c.part_number, parts.c.etag).where(parts.c.upload_id == upload.id)
                )
                return sorted((row.part_number, row.etag) for row in rows)

        stale = await repository.claim_and_load(upload.id)
        assert stale is not None
        async with sessions() as session, session.begin():
            # Its lease lapsed and another node took the upload over.
            await session.execute(
                update(Upload).where(Upload.id == upload.id).values(lock_token="another node")
            )
        first_part = PartRecording(upload.id, [PartRecord(1, PART, "stale", "AAAAAA==")])
        assert not await repository.commit_offset(stale, PART, release=True, recording=first_part)
        assert await recorded() == []

        async with sessions() as session, session.begin():
            await session.execute(
                update(Upload).where(Upload.id == upload.id).values(lock_token=None)
            )
        claim = await repository.claim_and_load(upload.id)
        assert claim is not None
        two_parts = PartRecording(
            upload.id,
            [PartRecord(1, PART, "one", "AAAAAA=="), PartRecord(2, PART, "two", "AAAAAA==")],
        )
        assert await repository.commit_offset(claim, 2 * PART, release=True, recording=two_parts)
        assert await recorded() == [(1, "one"), (2, "two")]
        reloaded = await repository.claim_and_load(upload.id)
        assert reloaded is not None and reloaded.upload.offset == 2 * PART
    finally:
        await engine.dispose()
