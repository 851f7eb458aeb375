"""A client that drops the connection mid-PATCH keeps every byte that reached the server."""

from __future__ import annotations

from pathlib import Path

import httpx

from tests.e2e.support import (
    MIB,
    OCTETS,
    TUS,
    create_upload,
    download_sha256,
    make_file,
    read_staging,
    send_partial_patch,
    sha256_file,
    tus_offset,
    wait_for_offset,
)
from tests.support.services import running_ferry


def test_disconnect_mid_patch_keeps_received_bytes_and_upload_can_continue(
    tmp_path: Path,
) -> None:
    source = make_file(tmp_path / "source.bin", 3 * MIB + 5)
    content = source.read_bytes()
    announced = len(content)
    sent = announced // 2 + 12345  # not a multiple of any buffer size
    with running_ferry(tmp_path) as ferry:
        url = create_upload(ferry.url, len(content))
        send_partial_patch(url, 0, announced, content[:sent])
        offset = wait_for_offset(url, sent)
        assert offset == sent
        assert read_staging(ferry.data_dir, url) == content[:sent]

        # a second, smaller disconnect on top
        send_partial_patch(url, sent, announced - sent, content[sent : sent + 1000])
        offset = wait_for_offset(url, sent + 1000)
        assert offset == sent + 1000

        rest = httpx.patch(
            url,
            content=content[offset:],
            headers={**TUS, "Upload-Offset": str(offset), "Content-Type": OCTETS},
            timeout=60,
        )
        assert rest.status_code == 204
        assert tus_offset(url) == len(content)
        received, digest = download_sha256(url)
    assert received == len(content)
    assert digest == sha256_file(source)
