"""Work the CLI runs outside the web server, against the same services."""

from __future__ import annotations

from app.db.engine import create_engine, create_session_factory
from app.main import build_backend
from app.settings import Settings
from app.storage.staging import StagingArea
from app.uploads.service import UploadService


async def run_cleanup(settings: Settings) -> int:
    """Expire every due upload (all batches) and return how many were removed."""
    engine = create_engine(settings.resolved_database_url)
    backend = build_backend(settings)
    await backend.start()
    try:
        staging = StagingArea(settings.staging_dir)
        staging.prepare()
        uploads = UploadService(
            sessions=create_session_factory(engine),
            staging=staging,
            backend=backend,
            settings=settings,
        )
        total = 0
        while (expired := await uploads.expire_due()) > 0:
            total += expired
        return total
    finally:
        await backend.close()
        await engine.dispose()
