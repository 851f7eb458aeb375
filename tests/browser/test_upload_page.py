"""The upload page in Chromium, against a real ``ferry serve`` that needs an API key.

What a person sees is asserted on the page's visible text (sizes use no-break spaces, which
``\\s`` in the patterns matches), at desktop width and at 375 px; every test saves a
screenshot in ``tests/browser/screenshots/``. Slow links are Chromium's own network emulation,
so progress is real progress of real requests.
"""

from __future__ import annotations

import hashlib
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from playwright.sync_api import expect

from tests.support.browser import (
    DESKTOP,
    PHONE,
    SERVER_START_SECONDS,
    WIDTHS,
    KeyedFerry,
    full_speed,
    open_page,
    screenshot,
    throttle_uploads,
    width_name,
)
from tests.support.faulty_proxy import faulty_proxy

SIZE = r"[\d.]+\s(?:bytes?|KiB|MiB)"
SPEED = SIZE + "/s"
LEFT = r"\d+\s(?:s|min)(?: \d+\s(?:s|min))? left"


def random_file(directory: Path, name: str, size: int) -> Path:
    path = directory / name
    path.write_bytes(os.urandom(size))
    return path


def assert_stored(ferry: KeyedFerry, page: Any, path: Path) -> None:
    """The finished list links ``path``'s file, and the server holds exactly its bytes."""
    item = page.locator("#finished .finished-item", has_text=path.name)
    uid = item.get_attribute("data-file-id")
    info = httpx.get(f"{ferry.url}/files/{uid}/info", headers=ferry.auth(), timeout=10).json()
    assert info["name"] == path.name
    assert info["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()


def acknowledged_offset(ferry: KeyedFerry, upload_url: str, timeout: float = 10.0) -> int:
    """The upload's offset once the server has committed some bytes of it (a request cut
    off midway is committed when the server notices the disconnect)."""
    deadline = time.monotonic() + timeout
    while True:
        head = httpx.head(upload_url, headers={**ferry.auth(), "Tus-Resumable": "1.0.0"})
        offset = int(head.headers["Upload-Offset"])
        if offset > 0 or time.monotonic() > deadline:
            assert offset > 0, "the server kept nothing of the cut-off request"
            return offset
        time.sleep(0.1)


def record_row_texts(page: Any) -> None:
    """Keep every status and detail text the upload rows show, however briefly."""
    page.evaluate(
        """() => {
          window.rowTexts = [];
          new MutationObserver(() => {
            for (const node of document.querySelectorAll('#uploads .status, #uploads .detail')) {
              const text = node.textContent.replace(/\\u00a0/g, ' ');
              if (text && !window.rowTexts.includes(text)) window.rowTexts.push(text);
            }
          }).observe(document.body, { subtree: true, childList: true, characterData: true });
        }"""
    )


def is_creation(request: Any) -> bool:
    """Whether ``request`` is a tus creation (``POST /files/``)."""
    return request.method == "POST" and request.url.endswith("/files/")


def created_upload_urls(page: Any) -> list[str]:
    """The Location of every tus creation the page makes from now on."""
    urls: list[str] = []

    def remember(response: Any) -> None:
        if is_creation(response.request) and response.status == 201:
            urls.append(response.header_value("location"))

    page.on("response", remember)
    return urls


@dataclass
class SlowUpload:
    """A page uploading one file over a slow link."""

    page: Any
    created: list[str]
    """URLs of the uploads the page created."""
    link: Any
    """The DevTools session that slows the link (:func:`full_speed` ends it)."""


def start_slow_upload(
    chromium: Any, ferry: KeyedFerry, path: Path, viewport: dict[str, int], percent: int
) -> SlowUpload:
    """A page uploading ``path`` over a 200 KiB/s link, once past ``percent`` %."""
    page = open_page(chromium, viewport, ferry.url + "/", ferry.key)
    created = created_upload_urls(page)
    link = throttle_uploads(page, 200 * 1024)
    page.set_input_files("#file-input", str(path))
    page.wait_for_function(
        f"() => document.querySelector('#uploads progress').value > {percent}", timeout=15_000
    )
    return SlowUpload(page, created, link)


@WIDTHS
def test_progress_shows_bytes_sent_speed_and_time_left_per_file_and_overall(
    chromium: Any, keyed_ferry: KeyedFerry, tmp_path: Path, viewport: dict[str, int]
) -> None:
    first = random_file(tmp_path, "first.bin", 1_500_000)
    second = random_file(tmp_path, "second.bin", 1_000_000)
    page = open_page(chromium, viewport, keyed_ferry.url + "/", keyed_ferry.key)
    throttle_uploads(page, 400 * 1024)

    page.set_input_files("#file-input", [str(first), str(second)])
    rows = page.locator("#uploads .upload-item")
    expect(rows.nth(0).locator(".status")).to_have_text(
        re.compile(rf"^{SIZE} of 1\.4\sMiB · {SPEED} · {LEFT}$"), timeout=10_000
    )
    expect(rows.nth(1).locator(".status")).to_have_text(
        re.compile(rf"^{SIZE} of 977\sKiB · {SPEED} · {LEFT}$")
    )
    expect(page.locator("#overall-status")).to_have_text(
        re.compile(rf"^Uploading 2 files: {SIZE} of 2\.4\sMiB · {SPEED} · {LEFT}$")
    )
    expect(rows.nth(0).get_by_role("button")).to_have_text(["Pause", "Cancel"])
    screenshot(page, f"upload-progress-{width_name(viewport)}")

    expect(page.locator("#finished .finished-item")).to_have_count(2, timeout=30_000)
    expect(page.locator("#overall-status")).to_have_text(re.compile(r"^Done: 2 files, 2\.4\sMiB$"))
    expect(rows).to_have_count(0)
    assert_stored(keyed_ferry, page, first)
    assert_stored(keyed_ferry, page, second)
    screenshot(page, f"upload-done-{width_name(viewport)}")
    page.context.close()


@WIDTHS
def test_a_file_over_the_servers_limit_is_refused_in_words_before_any_byte_is_sent(
    chromium: Any, keyed_ferry: KeyedFerry, tmp_path: Path, viewport: dict[str, int]
) -> None:
    huge = tmp_path / "huge.bin"
    with huge.open("wb") as sparse:
        sparse.truncate(25_000_000)
    page = open_page(chromium, viewport, keyed_ferry.url + "/", keyed_ferry.key)
    expect(page.locator("#size-limit")).to_have_text(re.compile(r"^Up to 19\.1\sMiB per file$"))
    writes: list[str] = []
    page.on("request", lambda r: writes.append(r.method) if r.method in ("POST", "PATCH") else None)

    page.set_input_files("#file-input", str(huge))
    row = page.locator("#uploads .upload-item")
    expect(row.locator(".status")).to_have_text(
        re.compile(r"^too large: 23\.8\sMiB, the limit is 19\.1\sMiB$")
    )
    expect(row.get_by_role("button")).to_have_text(["Remove"])  # no Resume: it cannot succeed
    expect(page.locator("#overall-status")).to_contain_text("1 refused")
    screenshot(page, f"upload-too-large-{width_name(viewport)}")
    assert writes == []

    row.get_by_role("button", name="Remove huge.bin").click()
    expect(row).to_have_count(0)
    page.context.close()


def test_a_file_the_server_refuses_midway_says_why_and_offers_only_remove(
    chromium: Any, keyed_ferry: KeyedFerry, tmp_path: Path
) -> None:
    report = tmp_path / "report.pdf"
    report.write_bytes(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n" + os.urandom(200_000))
    page = open_page(chromium, DESKTOP, keyed_ferry.url + "/", keyed_ferry.key)
    created = created_upload_urls(page)
    page.set_input_files("#file-input", str(report))
    row = page.locator("#uploads .upload-item")
    expect(row.locator(".status")).to_have_text("this type of file is not accepted here")
    expect(row.locator(".detail")).to_have_text(
        "content type application/pdf is refused by the deny-list (FERRY_DENIED_TYPES)"
    )
    expect(row.get_by_role("button")).to_have_text(["Remove"])  # retrying cannot help
    expect(page.locator("#overall-status")).to_have_text("Nothing uploaded · 1 refused")
    screenshot(page, "upload-refused-by-server-desktop")

    row.get_by_role("button", name="Remove report.pdf").click()
    expect(row).to_have_count(0)
    head = httpx.head(created[0], headers={**keyed_ferry.auth(), "Tus-Resumable": "1.0.0"})
    assert head.status_code in (404, 410)  # the server kept nothing of it
    page.context.close()


def test_an_upload_reconnects_while_the_server_is_down_and_completes_when_it_is_back(
    chromium: Any, keyed_ferry: KeyedFerry, tmp_path: Path
) -> None:
    trip = random_file(tmp_path, "trip.bin", 2_000_000)
    slow = start_slow_upload(chromium, keyed_ferry, trip, PHONE, percent=10)
    page = slow.page
    row = page.locator("#uploads .upload-item")

    keyed_ferry.server.kill()
    try:
        reconnecting = re.compile(r"^Reconnecting… \(attempt (\d+), next try in \d+\ss\)$")
        expect(row.locator(".status")).to_have_text(reconnecting, timeout=15_000)
        expect(row.locator(".detail")).to_have_text("the server could not be reached")
        expect(row.get_by_role("button")).to_have_text(["Retry now", "Cancel"])
        screenshot(page, "upload-reconnecting-phone")
        match = reconnecting.match(row.locator(".status").inner_text())
        assert match is not None
        row.get_by_role("button", name="Retry now trip.bin").click()  # tries at once, and fails
        next_attempt = rf"^Reconnecting… \(attempt {int(match[1]) + 1}, next try in \d+\ss\)$"
        expect(row.locator(".status")).to_have_text(re.compile(next_attempt), timeout=5_000)
    finally:
        keyed_ferry.server.start(timeout=SERVER_START_SECONDS)
    full_speed(slow.link)

    # Back: the next try (or a click on Retry now, if it is still waiting) finishes the upload.
    page.evaluate("() => document.querySelector('#uploads .action-retryNow')?.click()")
    expect(page.locator("#finished .finished-item")).to_have_count(1, timeout=30_000)
    assert_stored(keyed_ferry, page, trip)
    page.context.close()


def test_an_upload_whose_connection_stalls_is_cut_and_retried_and_completes(
    chromium: Any, keyed_ferry: KeyedFerry, tmp_path: Path
) -> None:
    """A connection that stops moving (a dropped Wi-Fi, a dead middlebox) sends no error:
    without a timeout the row would wait for TCP to give up, many minutes later."""
    video = random_file(tmp_path, "video.bin", 19_000_000)  # more than socket buffers hold
    with faulty_proxy(keyed_ferry.url) as proxy:
        proxy.stall("PATCH", seconds=120)  # reads the head, never the body
        page = open_page(chromium, DESKTOP, proxy.url + "/", keyed_ferry.key)
        record_row_texts(page)
        page.set_input_files("#file-input", str(video))
        expect(page.locator("#finished .finished-item")).to_have_count(1, timeout=60_000)
        shown = page.evaluate("() => window.rowTexts")
        assert "the connection stalled (nothing moved for 15 s)" in shown
        assert "Reconnecting… (attempt 1, trying now)" in shown
        assert proxy.count("PATCH") == 2
        screenshot(page, "upload-after-stall-desktop")
        assert_stored(keyed_ferry, page, video)
        page.context.close()


def test_an_unfinished_upload_is_listed_after_a_reload_and_resumes_with_the_same_file(
    chromium: Any, keyed_ferry: KeyedFerry, tmp_path: Path
) -> None:
    # Large enough that the pause lands long before the end at 200 KiB/s, even on a loaded
    # machine (with 2 MB, paused at 30 %, CI once saw the whole file arrive first).
    holiday = random_file(tmp_path, "holiday.bin", 6_000_000)
    other = random_file(tmp_path, "other.bin", 300_000)
    slow = start_slow_upload(chromium, keyed_ferry, holiday, DESKTOP, percent=10)
    page, created = slow.page, slow.created
    page.get_by_role("button", name="Pause holiday.bin").click()
    full_speed(slow.link)
    upload_url = created[0]
    offset = acknowledged_offset(keyed_ferry, upload_url)  # kept what arrived before the pause
    assert offset < holiday.stat().st_size

    page.reload()
    item = page.locator("#unfinished .upload-item")
    expect(item.locator(".file-name")).to_have_text("holiday.bin")
    expect(item.locator(".status")).to_have_text(
        re.compile(rf"^{SIZE} of 5\.7\sMiB sent · started .+$")
    )
    picker = item.locator("input[type=file]")
    picker.set_input_files(str(other))
    expect(item.locator(".detail")).to_contain_text("That is not the same file")
    screenshot(page, "upload-unfinished-desktop")

    offsets: list[str] = []
    page.on(
        "request",
        lambda r: offsets.append(r.headers["upload-offset"]) if r.method == "PATCH" else None,
    )
    picker.set_input_files(str(holiday))
    expect(page.locator("#finished .finished-item")).to_have_count(1, timeout=30_000)
    expect(page.locator("#unfinished-section")).to_be_hidden()
    assert int(offsets[0]) >= offset  # went on from the server's offset, not from 0
    assert created == [upload_url]  # no second upload was created
    assert_stored(keyed_ferry, page, holiday)
    page.context.close()


def test_at_most_three_files_upload_at_once_and_the_others_wait_in_the_queue(
    chromium: Any, keyed_ferry: KeyedFerry, tmp_path: Path
) -> None:
    files = [random_file(tmp_path, f"part-{n}.bin", 200_000) for n in range(5)]
    page = open_page(chromium, PHONE, keyed_ferry.url + "/", keyed_ferry.key)
    creations: list[str] = []
    page.on("request", lambda r: creations.append(r.url) if is_creation(r) else None)
    # The most rows the page ever had taking a slot (starting, uploading, reconnecting).
    page.evaluate(
        """() => {
          window.mostRunning = 0;
          const running = '#uploads .upload-item:is([data-state=starting],'
            + '[data-state=uploading],[data-state=reconnecting])';
          new MutationObserver(() => {
            const now = document.querySelectorAll(running).length;
            window.mostRunning = Math.max(window.mostRunning, now);
          }).observe(document.body, { subtree: true, attributes: true, childList: true });
        }"""
    )
    throttle_uploads(page, 150 * 1024)

    page.set_input_files("#file-input", [str(path) for path in files])
    uploading = page.locator('#uploads .upload-item[data-state="uploading"]')
    queued = page.locator('#uploads .upload-item[data-state="queued"]')
    expect(uploading).to_have_count(3, timeout=10_000)
    expect(queued).to_have_count(2)
    expect(queued.nth(0).locator(".status")).to_have_text("Queued: 3 files upload at a time")
    expect(page.locator("#overall-status")).to_contain_text("· 2 queued")
    screenshot(page, "upload-queue-phone")
    assert len(creations) == 3  # the queued files have not been sent at all

    expect(page.locator("#finished .finished-item")).to_have_count(5, timeout=30_000)
    assert len(creations) == 5
    assert page.evaluate("() => window.mostRunning") == 3
    page.context.close()


def test_cancel_stops_the_upload_and_deletes_it_on_the_server(
    chromium: Any, keyed_ferry: KeyedFerry, tmp_path: Path
) -> None:
    notes = random_file(tmp_path, "notes.bin", 2_000_000)
    slow = start_slow_upload(chromium, keyed_ferry, notes, DESKTOP, percent=10)
    page, created = slow.page, slow.created

    page.get_by_role("button", name="Cancel notes.bin").click()
    expect(page.locator("#uploads .upload-item")).to_have_count(0, timeout=10_000)
    head = httpx.head(created[0], headers={**keyed_ferry.auth(), "Tus-Resumable": "1.0.0"})
    assert head.status_code in (404, 410)
    remembered = page.evaluate(
        "() => Object.keys(localStorage).filter((key) => key.startsWith('tus::'))"
    )
    assert remembered == []
    screenshot(page, "upload-cancelled-desktop")
    page.context.close()


def test_a_missing_and_a_wrong_key_are_told_apart_and_open_the_key_field(
    chromium: Any, keyed_ferry: KeyedFerry, tmp_path: Path
) -> None:
    memo = random_file(tmp_path, "memo.bin", 100_000)
    page = open_page(chromium, PHONE, keyed_ferry.url + "/", key=None)
    access = page.locator("#access")
    expect(access).not_to_have_attribute("open", "")

    page.set_input_files("#file-input", str(memo))
    row = page.locator("#uploads .upload-item")
    expect(row.locator(".status")).to_have_text("this server needs an access key")
    expect(access).to_have_attribute("open", "")
    expect(page.locator("#key-problem")).to_have_text(
        "This server needs an access key: enter it below."
    )
    expect(page.locator("#api-key")).to_be_focused()
    screenshot(page, "upload-key-missing-phone")

    page.fill("#api-key", "ferry_00000000_not-a-real-key")
    page.get_by_role("button", name="Use this key").click()
    expect(row.locator(".status")).to_have_text("the access key was refused")
    expect(page.locator("#key-problem")).to_have_text(
        "The access key was refused: enter a valid one below."
    )
    screenshot(page, "upload-key-refused-phone")

    page.fill("#api-key", keyed_ferry.key)
    page.get_by_role("button", name="Use this key").click()
    expect(page.locator("#finished .finished-item")).to_have_count(1, timeout=15_000)
    expect(page.locator("#key-problem")).to_be_hidden()
    assert_stored(keyed_ferry, page, memo)
    page.context.close()
