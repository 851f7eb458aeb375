"""aiotus against a live ``ferry serve``: an upload dies midway and is resumed."""

from __future__ import annotations

import io
from pathlib import Path
from types import SimpleNamespace

import aiohttp
import aiotus
import pytest
import yarl
from aiotus import core, creation

from tests.e2e.support import MIB, download_sha256, make_file, sha256_file, tus_offset
from tests.support.services import FerryProcess

CHUNK = 1 * MIB


class FailingReader(io.BufferedReader):
    """A file that stops being readable after ``fail_after`` bytes (a dying disk or app)."""

    def __init__(self, path: Path, fail_after: int) -> None:
        super().__init__(io.FileIO(path, "rb"))
        self.fail_after = fail_after

    def read(self, size: int | None = -1, /) -> bytes:
        if self.tell() >= self.fail_after:
            raise OSError("simulated failure while reading the source")
        return super().read(size)


async def test_aiotus_upload_failing_midway_resumes_at_the_server_offset(
    tmp_path: Path, live_ferry: FerryProcess
) -> None:
    source = make_file(tmp_path / "source.bin", 6 * MIB + 4321)
    size = source.stat().st_size
    patch_offsets: list[int] = []

    async def on_request_start(
        _session: aiohttp.ClientSession,
        _ctx: SimpleNamespace,
        params: aiohttp.TraceRequestStartParams,
    ) -> None:
        if params.method == "PATCH":
            patch_offsets.append(int(params.headers["Upload-Offset"]))

    trace = aiohttp.TraceConfig()
    trace.on_request_start.append(on_request_start)

    endpoint = yarl.URL(f"{live_ferry.url}/files/")
    async with aiohttp.ClientSession(trace_configs=[trace]) as session:
        with FailingReader(source, fail_after=3 * CHUNK) as broken:
            location = await creation.create(session, endpoint, broken, {"filename": b"aiotus.bin"})
            if not location.is_absolute():
                location = endpoint.join(location)
            with pytest.raises(OSError, match="simulated failure"):
                await core.upload_buffer(session, location, broken, chunksize=CHUNK)
        acknowledged = tus_offset(str(location))
        assert acknowledged == 3 * CHUNK
        assert patch_offsets == [0, CHUNK, 2 * CHUNK]

        patch_offsets.clear()
        with source.open("rb") as healthy:
            await core.upload_buffer(session, location, healthy, chunksize=CHUNK)
        assert patch_offsets == list(range(acknowledged, size, CHUNK))
        assert await core.offset(session, location) == size

        # The high-level helper works end to end as well.
        with source.open("rb") as again:
            second = await aiotus.upload(endpoint, again, client_session=session)
        assert second is not None

    for url in (str(location), str(second)):
        received, digest = download_sha256(url)
        assert received == size
        assert digest == sha256_file(source)
