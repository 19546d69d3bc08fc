"""The chat page at GET /, driven in headless Chromium against a real server."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.web.conftest import LiveFactory

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


async def test_page_is_served(live: LiveFactory) -> None:
    """GET / is the console page; its script, served by the app itself, talks to /ws."""
    async with live() as server, httpx.AsyncClient(base_url=server.url) as http:
        page = await http.get("/")
        assert page.headers["content-type"].startswith("text/html")
        assert '<script src="/static/console.js">' in page.text
        script = await http.get("/static/console.js")
        assert script.headers["content-type"].startswith("text/javascript")
        assert "/ws?" in script.text
        assert (await http.get("/static/nothing.js")).status_code == 404


@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium")
async def test_page_chats_in_a_browser(live: LiveFactory) -> None:
    """In Chromium the page connects, sends a message, shows the streamed reply, stores it."""
    async_api = pytest.importorskip("playwright.async_api")
    async with live() as server, async_api.async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        try:
            page = await browser.new_page()
            await page.goto(server.url + "/")
            await page.fill("#identity", "alice")
            await page.click("#connect-button")
            await page.wait_for_selector("#message:not([disabled])")
            await page.fill("#message", "hello from the browser")
            await page.click("#send-button")
            reply = page.locator("#log .assistant")
            await async_api.expect(reply).to_have_text(
                "echo: hello from the browser", timeout=20_000
            )
            await page.close()
        finally:
            await browser.close()
        archives = await server.wait_for_archives("alice")
        assert [(a.end_reason, a.message_count) for a in archives] == [("disconnect", 2)]
