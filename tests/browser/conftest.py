"""A real browser against a real gateway: headless Chromium (the system's), driven by Playwright.

The gateway runs as a ``jobgate serve`` process that allows one console origin; the console page
(``console.html``) is served from that origin and, for the refusal test, from a second origin the
gateway does not list. Chromium is found at ``JOBGATE_TEST_CHROMIUM`` or on the ``PATH``
(``./scripts/test`` installs Debian's ``chromium`` when it can); when there is none the browser
tests fail and say how to provide one.
"""

from __future__ import annotations

import functools
import os
import shutil
import threading
from collections.abc import AsyncIterator, Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import pytest_asyncio
from playwright.async_api import Browser, Page, async_playwright

from tests.conftest import GatewayProcess, free_port

PAGES = Path(__file__).parent
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
HOW_TO_PROVIDE = (
    "The browser tests need Chromium. Install Debian's package (apt-get install chromium), put a "
    "chromium or google-chrome binary on the PATH, or set JOBGATE_TEST_CHROMIUM=/path/to/chrome."
)
# Chromium as root in a sandbox-less container, with no calls home (the network is closed).
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
RATE_LIMIT = 30  # per tenant and minute in the browser gateway: each test uses its own tenants


def find_chromium() -> str:
    configured = os.environ.get("JOBGATE_TEST_CHROMIUM")
    if configured:
        if not os.access(configured, os.X_OK):
            pytest.fail(f"JOBGATE_TEST_CHROMIUM={configured} is not an executable. {HOW_TO_PROVIDE}")
        return configured
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    pytest.fail(f"No Chromium found. {HOW_TO_PROVIDE}")


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(scope="session")
def page_origins() -> Iterator[tuple[str, str]]:
    """Two origins serving the console page: the allowed one and a foreign one."""
    servers = []
    for _ in range(2):
        server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(PAGES)))
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
    try:
        yield tuple(f"http://127.0.0.1:{s.server_address[1]}" for s in servers)  # type: ignore[misc]
    finally:
        for server in servers:
            server.shutdown()
            server.server_close()


@pytest.fixture(scope="session")
def browser_gateway(gateway_env: dict[str, str], page_origins: tuple[str, str]) -> Iterator[GatewayProcess]:
    allowed, _ = page_origins
    gateway = GatewayProcess(
        gateway_env, free_port(), JOBGATE_CORS_ORIGINS=allowed, JOBGATE_RATE_LIMIT=f"{RATE_LIMIT}/minute"
    )
    try:
        gateway.wait_ready()
        yield gateway
    finally:
        gateway.stop()


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def browser() -> AsyncIterator[Browser]:
    executable = find_chromium()
    async with async_playwright() as playwright:
        chromium = await playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            await chromium.close()


async def open_console(browser: Browser, origin: str, gateway: GatewayProcess, token: str) -> Page:
    """The console page in a fresh browser context (an empty HTTP cache), holding ``token``."""
    context = await browser.new_context()
    page = await context.new_page()
    await page.goto(f"{origin}/console.html?gateway={gateway.url}")
    await page.evaluate("t => { token = t; }", token)
    return page
