"""The pages in a real browser: upload an MP4 through the upload page, play and seek it.

Headless Debian Chromium (see ``tests/support/browser.py``); the MP4 is made by ffmpeg in the
test. The server is a real ``ferry serve`` process, storing on local disk or in S3
(SeaweedFS).
"""

from __future__ import annotations

import shutil
import subprocess
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.browser import create_api_key
from tests.support.services import require_service, running_ferry

DURATION_SECONDS = 6


def make_mp4(path: Path) -> None:
    """A 6 s H.264 + AAC test pattern, ``moov`` first so playback starts at once."""
    subprocess.run(
        [
            "ffmpeg", "-loglevel", "error", "-y",
            "-f", "lavfi", "-i", f"testsrc=size=320x240:rate=25:duration={DURATION_SECONDS}",
            "-f", "lavfi", "-i", f"sine=frequency=440:duration={DURATION_SECONDS}",
            "-c:v", "libx264", "-pix_fmt", "yuv420p", "-preset", "ultrafast",
            "-c:a", "aac", "-shortest", "-movflags", "+faststart", str(path),
        ],
        check=True,
        timeout=120,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("storage", "auth"),
    [("local", "none"), ("s3", "keys")],
    ids=["local-disk-no-auth", "s3-with-api-key"],
)
def test_mp4_uploaded_through_the_page_plays_and_seeks_with_206s(
    tmp_path: Path, browser_page: Any, storage: str, auth: str, request: pytest.FixtureRequest
) -> None:
    """With auth on, the page sends the key for tus and the JSON calls, and the
    ``<video>`` (which cannot send it) plays through the signed link."""
    require_service(shutil.which("ffmpeg") is not None, "ffmpeg is not installed")
    env: dict[str, str] = {
        "FERRY_AUTH": auth,
        "FERRY_SIGNING_KEY": "browser-test-signing-key-0123456789",
    }
    if storage == "s3":
        seaweed = request.getfixturevalue("seaweed")
        env.update(seaweed.env(f"t-{uuid.uuid4().hex[:12]}/"))
    video = tmp_path / "clip.mp4"
    make_mp4(video)
    page = browser_page
    statuses: list[tuple[int, str]] = []
    page.on("response", lambda response: statuses.append((response.status, response.url)))

    with running_ferry(tmp_path, env) as ferry:
        page.goto(f"{ferry.url}/")
        if auth != "none":
            key = create_api_key(ferry.env, "alice")
            page.click(".access summary")
            page.fill("#api-key", key)
            page.press("#api-key", "Tab")  # "change" stores it for this browser
        page.set_input_files("#file-input", str(video))
        player_link = page.locator(".finished-item a.player-link")
        player_link.wait_for(timeout=30_000)
        page.wait_for_function(
            "() => document.querySelector('.finished-item a.download-link').href.includes('sig=')",
            timeout=10_000,
        )  # the finished list links a signed download
        page.screenshot(path=str(tmp_path / "upload-page.png"), full_page=True)

        player_link.click()
        page.wait_for_url(f"{ferry.url}/player/**")
        page.wait_for_function(
            "() => { const v = document.getElementById('media'); return v && v.readyState >= 1; }",
            timeout=30_000,
        )
        assert page.locator("#file-sha256").inner_text().strip() != ""
        signed_link = page.locator("#signed-link").input_value()
        assert "sig=" in signed_link
        assert "expires=" in signed_link
        assert page.eval_on_selector("#media", "v => v.currentSrc") == signed_link

        page.eval_on_selector("#media", "v => { v.muted = true; return v.play(); }")
        page.wait_for_function(
            "() => document.getElementById('media').currentTime > 0.5", timeout=30_000
        )
        middle = DURATION_SECONDS / 2
        page.eval_on_selector("#media", f"v => {{ v.currentTime = {middle}; }}")
        page.wait_for_function(
            f"() => document.getElementById('media').currentTime > {middle + 0.5}",
            timeout=30_000,
        )
        assert page.eval_on_selector("#media", "v => v.paused") is False
        assert page.eval_on_selector("#media", "v => v.error") is None
        page.screenshot(path=str(tmp_path / "player-page.png"), full_page=True)
        if auth != "none":
            unsigned = httpx.get(signed_link.split("?", 1)[0], timeout=10)
            assert unsigned.status_code == 401  # only the signature let the video in

    media_responses = [status for status, url in statuses if "/files/" in url and "sig=" in url]
    assert 206 in media_responses, statuses
    assert all(status in (200, 206) for status in media_responses), statuses
