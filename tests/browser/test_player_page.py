"""The player page in Chromium, against the shared ``ferry serve`` that needs an API key.

The file's facts (size, type, SHA-256) appear only once they are known: never as empty
labels while loading or after an error. A missing or refused key opens a key field on the
page itself; a link that names no finished file is an HTML 404 page.
"""

from __future__ import annotations

import hashlib
import os
import re
import uuid
from typing import Any

from playwright.sync_api import expect

from tests.support.browser import DESKTOP, WIDTHS, KeyedFerry, screenshot, width_name


def held_requests(page: Any, pattern: str) -> list[Any]:
    """Requests matching ``pattern`` are held (not sent) until the test continues them."""
    held: list[Any] = []

    def hold(route: Any) -> None:  # Playwright cannot take a built-in method as a handler
        held.append(route)

    page.route(pattern, hold)
    return held


@WIDTHS
def test_player_shows_the_facts_only_once_a_valid_key_lets_it_read_them(
    chromium: Any, keyed_ferry: KeyedFerry, viewport: dict[str, int]
) -> None:
    data = os.urandom(50_000)
    uid = keyed_ferry.create_upload(data, "notes.bin")
    page = chromium.new_context(viewport=viewport).new_page()
    held = held_requests(page, "**/info")
    page.goto(f"{keyed_ferry.url}/player/{uid}")
    expect(page.locator("#file-name")).to_have_text("Loading…")
    page.wait_for_function("() => document.readyState === 'complete'")
    for _ in range(100):
        if held:
            break
        page.wait_for_timeout(50)
    assert held, "the page never asked for the file's facts"
    expect(page.locator("#facts")).to_be_hidden()  # not empty Size/Type/SHA-256 labels
    held[0].continue_()
    page.unroute("**/info")

    expect(page.locator("#error")).to_have_text(
        "This server needs an access key: enter it to see this file."
    )
    expect(page.locator("#facts")).to_be_hidden()
    expect(page.locator("#share")).to_be_hidden()
    expect(page.locator("#key-form")).to_be_visible()
    expect(page.locator("#player-key")).to_be_focused()
    screenshot(page, f"player-key-missing-{width_name(viewport)}")

    page.fill("#player-key", "ferry_00000000_not-a-real-key")
    page.get_by_role("button", name="Use this key").click()
    expect(page.locator("#error")).to_have_text(
        "The access key was refused: enter a valid one to see this file."
    )
    expect(page.locator("#facts")).to_be_hidden()

    page.fill("#player-key", keyed_ferry.key)
    page.get_by_role("button", name="Use this key").click()
    expect(page.locator("#file-sha256")).to_have_text(hashlib.sha256(data).hexdigest())
    expect(page.locator("#facts")).to_be_visible()
    expect(page.locator("#file-name")).to_have_text("notes.bin")
    expect(page.locator("#file-size")).to_contain_text("50,000 bytes")
    expect(page.locator("#key-form")).to_be_hidden()
    expect(page.locator("#error")).to_be_hidden()
    expect(page.locator("#signed-link")).to_have_value(
        re.compile(rf"/files/{uid}\?expires=\d+&sig=")
    )
    screenshot(page, f"player-file-{width_name(viewport)}")
    page.context.close()


def test_player_link_that_names_no_finished_file_is_an_html_404_page(
    chromium: Any, keyed_ferry: KeyedFerry
) -> None:
    unfinished = keyed_ferry.create_upload(b"half of it", "half.bin", send=False)
    page = chromium.new_context(viewport=DESKTOP).new_page()
    for path in (f"/player/{uuid.uuid4()}", "/player/not-an-id", f"/player/{unfinished}"):
        response = page.goto(keyed_ferry.url + path)
        assert response is not None
        assert response.status == 404, path
        assert response.headers["content-type"].startswith("text/html"), path
        expect(page.get_by_role("heading", name="No such file")).to_be_visible()
        expect(page.get_by_role("link", name="Go to the upload page")).to_be_visible()
    screenshot(page, "player-not-found-desktop")
    page.context.close()
