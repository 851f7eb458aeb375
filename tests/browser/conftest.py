"""Fixtures of the browser tests: one headless Chromium and one ``ferry serve`` with API keys
and a small size limit, shared by the package (helpers: ``tests/support/browser.py``)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.support.browser import (
    CHROMIUM,
    CHROMIUM_ARGS,
    DESKTOP,
    MAX_SIZE,
    SERVER_START_SECONDS,
    KeyedFerry,
    create_api_key,
)
from tests.support.services import FerryProcess, ferry_env, require_service


@pytest.fixture(scope="package")
def chromium() -> Iterator[Any]:
    """One headless Chromium for every browser test (each test gets its own context)."""
    require_service(CHROMIUM.exists(), "Debian chromium is not installed (/usr/bin/chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True
        )
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def browser_page(chromium: Any) -> Iterator[Any]:
    """A fresh page at desktop width, in a context (cookies, storage) of its own."""
    context = chromium.new_context(viewport=DESKTOP)
    try:
        yield context.new_page()
    finally:
        context.close()


@pytest.fixture(scope="package")
def keyed_ferry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KeyedFerry]:
    """One server for the page tests: API keys on, ``FERRY_MAX_SIZE`` 19.1 MiB, PDFs refused
    (a refusal only the server can make, once it has seen the first bytes), signed links.

    A test may stop and start it again (same port, same data): it is still this server.
    """
    env = {
        "FERRY_AUTH": "keys",
        "FERRY_MAX_SIZE": str(MAX_SIZE),
        "FERRY_DENIED_TYPES": "application/pdf",
        "FERRY_SIGNING_KEY": "browser-test-signing-key-0123456789",
    }
    data_dir = tmp_path_factory.mktemp("browser-ferry") / "data"
    data_dir.mkdir()
    server = FerryProcess(data_dir=data_dir, env=ferry_env(data_dir, env))
    server.start(timeout=SERVER_START_SECONDS)
    try:
        yield KeyedFerry(server, create_api_key(server.env, "alice"))
    finally:
        server.stop()
