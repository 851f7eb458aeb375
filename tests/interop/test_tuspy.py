"""tuspy against a live ``ferry serve``: interrupted twice, resumed, identical download."""

from __future__ import annotations

from pathlib import Path

from tusclient import client
from tusclient.storage.filestorage import FileStorage

from tests.e2e.support import (
    MIB,
    download_sha256,
    make_file,
    read_staging,
    send_partial_patch,
    sha256_file,
    wait_for_offset,
)
from tests.support.services import FerryProcess

CHUNK = 4 * MIB


def test_tuspy_upload_interrupted_midway_resumes_from_stored_url_without_resending(
    tmp_path: Path, live_ferry: FerryProcess
) -> None:
    source = make_file(tmp_path / "source.bin", 30 * MIB + 777)
    size = source.stat().st_size
    content = source.read_bytes()
    tus = client.TusClient(f"{live_ferry.url}/files/")
    storage = FileStorage(str(tmp_path / "tuspy-urls.json"))

    # 1. The application stops after three chunks (closed laptop, killed process).
    first = tus.uploader(
        str(source),
        chunk_size=CHUNK,
        store_url=True,
        url_storage=storage,
        metadata={"filename": "tuspy.bin"},
    )
    first.upload(stop_at=3 * CHUNK)
    acknowledged = first.offset
    assert acknowledged == 3 * CHUNK
    assert first.url is not None

    # 2. The next chunk is cut off in the middle by a dropped connection: the bytes
    #    that reached the server are kept.
    half = CHUNK // 2
    send_partial_patch(first.url, acknowledged, CHUNK, content[acknowledged : acknowledged + half])
    kept = wait_for_offset(first.url, acknowledged + half)
    assert kept == acknowledged + half
    assert read_staging(live_ferry.data_dir, first.url) == content[:kept]

    # 3. A new uploader finds the upload by fingerprint and continues where the server is.
    resumed = tus.uploader(str(source), chunk_size=CHUNK, store_url=True, url_storage=storage)
    assert resumed.url == first.url
    assert resumed.offset == kept
    starts: list[int] = []
    while resumed.offset < size:
        starts.append(resumed.offset)
        resumed.upload_chunk()
    assert starts == list(range(kept, size, CHUNK))
    assert resumed.offset == size

    received, digest = download_sha256(first.url)
    assert received == size
    assert digest == sha256_file(source)
