"""tus-js-client (Node) against a live ``ferry serve``: abort midway, resume, compare."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import httpx
import pytest

from tests.e2e.support import MIB, download_sha256, make_file, sha256_file
from tests.support.services import FerryProcess, require_service

JS_DIR = Path(__file__).parent / "js"

pytestmark = pytest.mark.node


def node_or_skip() -> str:
    """The node binary, once node and the npm packages are known to be installed."""
    node = shutil.which("node")
    require_service(
        bool(node) and (JS_DIR / "node_modules" / "tus-js-client").is_dir(),
        "node and tests/interop/js/node_modules (run scripts/install-test-deps.sh)",
    )
    assert node is not None
    return node


def test_tus_js_client_aborted_upload_resumes_without_resending_and_downloads_identical(
    tmp_path: Path, live_ferry: FerryProcess
) -> None:
    node = node_or_skip()
    source = make_file(tmp_path / "source.bin", 24 * MIB + 12345)
    chunk = 4 * MIB
    result = subprocess.run(
        [
            node,
            str(JS_DIR / "upload.mjs"),
            f"{live_ferry.url}/files/",
            str(source),
            str(chunk),
            "3",
            str(tmp_path / "tus-url-storage.json"),
        ],
        cwd=JS_DIR,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    size, digest = download_sha256(report["resumed_url"])

    assert report["resumed_url"] == report["first_url"]
    assert report["acknowledged"] == 3 * chunk
    assert report["first_offsets"][:3] == [0, chunk, 2 * chunk]
    # The resumed client asked the server and started at the acknowledged offset or later,
    # then sent every remaining chunk exactly once.
    resumed = report["resumed_offsets"]
    assert resumed[0] >= report["acknowledged"]
    assert resumed == list(range(resumed[0], report["size"], chunk))
    assert size == source.stat().st_size
    assert digest == sha256_file(source)


def test_tus_js_client_stream_with_deferred_length_completes_and_records_the_length(
    tmp_path: Path, live_ferry: FerryProcess
) -> None:
    node = node_or_skip()
    chunk = MIB
    source = make_file(tmp_path / "stream.bin", 4 * chunk + 1234)
    result = subprocess.run(
        [node, str(JS_DIR / "deferred.mjs"), f"{live_ferry.url}/files/", str(source), str(chunk)],
        cwd=JS_DIR,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    status = httpx.head(report["url"], headers={"Tus-Resumable": "1.0.0"}, timeout=10)
    assert status.headers["upload-length"] == str(source.stat().st_size)
    size, digest = download_sha256(report["url"])
    assert size == source.stat().st_size
    assert digest == sha256_file(source)
