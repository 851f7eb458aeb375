"""Helpers of the browser tests: Debian's Chromium, page widths, a keyed server's API, slow
links and screenshots (the fixtures are in ``tests/browser/conftest.py``).

Playwright drives ``/usr/bin/chromium`` (installed by ``scripts/install-test-deps.sh``)
through ``executable_path``: it never downloads a browser. Screenshots land in
``tests/browser/screenshots/`` (git-ignored), named after the test and the width, so that a
person can judge the layout.
"""

from __future__ import annotations

import base64
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.services import FERRY, PROJECT_ROOT, FerryProcess

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--autoplay-policy=no-user-gesture-required",
]
DESKTOP = {"width": 1100, "height": 800}
PHONE = {"width": 375, "height": 740}
WIDTHS = pytest.mark.parametrize("viewport", [DESKTOP, PHONE], ids=["desktop", "phone-375px"])
SCREENSHOTS = PROJECT_ROOT / "tests" / "browser" / "screenshots"
SERVER_START_SECONDS = 120.0
"""Starting ``ferry serve`` takes a few seconds, many more on a loaded two-core machine."""
MAX_SIZE = 20_000_000
"""``FERRY_MAX_SIZE`` of the shared server: 19.1 MiB."""


def create_api_key(env: dict[str, str], owner: str) -> str:
    """``ferry keys create`` against the running server's database."""
    created = subprocess.run(
        [str(FERRY), "keys", "create", "--owner", owner],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return created.stdout.strip().splitlines()[-1]


@dataclass
class KeyedFerry:
    """A ``ferry serve`` that needs an API key, and a key it accepts."""

    server: FerryProcess
    key: str

    @property
    def url(self) -> str:
        return self.server.url

    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}

    def create_upload(self, data: bytes, name: str, *, send: bool = True) -> str:
        """A tus upload of ``data`` (sent with the creation, or not at all); its id."""
        headers = {
            **self.auth(),
            "Tus-Resumable": "1.0.0",
            "Upload-Length": str(len(data)),
            "Upload-Metadata": "filename " + base64.b64encode(name.encode()).decode(),
        }
        if send:
            headers["Content-Type"] = "application/offset+octet-stream"
        response = httpx.post(
            f"{self.url}/files/", headers=headers, content=data if send else b"", timeout=30
        )
        assert response.status_code == 201, response.text
        return response.headers["Location"].rstrip("/").rsplit("/", 1)[-1]


def open_page(chromium: Any, viewport: dict[str, int], url: str, key: str | None) -> Any:
    """A page of its own context at ``url``, with ``key`` stored as the page's access key."""
    context = chromium.new_context(viewport=viewport)
    page = context.new_page()
    if key is not None:
        # Before any script of the page runs, as if the person had entered it earlier.
        context.add_init_script(
            "if (!localStorage.getItem('ferry.apiKey')) "
            f"localStorage.setItem('ferry.apiKey', {key!r});"
        )
    page.goto(url)
    return page


def throttle_uploads(page: Any, bytes_per_second: int) -> Any:
    """Slow what the page sends (Chromium's own network emulation), as on a slow link; the
    DevTools session, to give the link its full speed back (:func:`full_speed`)."""
    session = page.context.new_cdp_session(page)
    session.send("Network.enable")
    _emulate(session, bytes_per_second)
    return session


def full_speed(session: Any) -> None:
    """End :func:`throttle_uploads` (the page keeps it across reloads otherwise)."""
    _emulate(session, -1)


def _emulate(session: Any, upload_bytes_per_second: int) -> None:
    conditions = {
        "offline": False,
        "latency": 0,
        "downloadThroughput": -1,
        "uploadThroughput": upload_bytes_per_second,
    }
    session.send("Network.emulateNetworkConditions", conditions)


def screenshot(page: Any, name: str) -> Path:
    """Save a full-page screenshot for a person to look at; check nothing overflows sideways."""
    SCREENSHOTS.mkdir(exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    width = page.viewport_size["width"]
    scroll_width = page.evaluate("() => document.documentElement.scrollWidth")
    assert scroll_width <= width, f"{name}: the page is {scroll_width}px wide at {width}px"
    return path


def width_name(viewport: dict[str, int]) -> str:
    return "phone" if viewport["width"] < 600 else "desktop"
