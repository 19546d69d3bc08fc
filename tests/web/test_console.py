"""The console at GET /, driven in Debian's Chromium through Playwright against a real server.

Screenshots of the main views go to ``test-artifacts/`` for a person to look at.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.web.conftest import Live, LiveFactory
from tests.web.test_page import CHROMIUM, CHROMIUM_ARGS

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium"
)
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
WAIT = 15_000  # ms: a busy shared machine may be slow to run the page


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    async_api = pytest.importorskip("playwright.async_api")
    async with async_api.async_playwright() as playwright:
        chromium = await playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        try:
            yield chromium
        finally:
            await chromium.close()


def expect(locator: Any) -> Any:
    from playwright.async_api import expect as playwright_expect

    return playwright_expect(locator)


async def open_console(
    browser: Any, server: Live, user: str, *, admin: bool = False, hold: bool = True
) -> Any:
    page = await browser.new_page(viewport={"width": 1200, "height": 900}, accept_downloads=True)
    page.on("dialog", lambda dialog: dialog.accept())  # the delete confirmation
    await page.goto(server.url + "/")
    await page.fill("#identity", user)
    if admin:
        await page.check("#admin-role")
    if not hold:
        await page.uncheck("#hold-session")
    await page.click("#connect-button")
    await page.wait_for_selector("#message:not([disabled])", timeout=WAIT)
    return page


async def say(page: Any, text: str) -> None:
    await page.fill("#message", text)
    await page.press("#message", "Enter")


async def shoot(page: Any, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


async def make_archives(server: Live, user: str, texts: list[str]) -> None:
    async with httpx.AsyncClient(base_url=server.url) as http:
        for text in texts:
            headers = {"x-user-id": user}
            await http.post("/chat", headers=headers, json={"message": text})
            await http.delete("/session", headers=headers)
            await server.wait_for_archives(user, texts.index(text) + 1)


async def test_chat_streams_and_stop_stores_the_partial_reply(
    live: LiveFactory, browser: Any
) -> None:
    """A reply streams in; Stop cuts it, keeps the session, and the reply is stored interrupted."""
    long_text = " ".join(f"word{i}" for i in range(60))
    async with live(chat_model="echo?delay=0.1") as server:
        page = await open_console(browser, server, "alice")
        await say(page, long_text)
        reply = page.locator("#log .assistant").first
        await expect(reply).to_contain_text("echo: word0", timeout=WAIT)
        await page.click("#stop-button")
        await expect(reply).to_have_class("assistant interrupted")
        dialog = await server.wait_for_reply("alice")
        assert dialog.messages[-1].interrupted
        assert f"echo: {long_text}".startswith(dialog.messages[-1].content)
        assert await server.archives("alice") == []  # the session was held throughout
        await say(page, "after the stop")
        await expect(page.locator("#log .assistant").nth(1)).to_have_text(
            "echo: after the stop", timeout=WAIT
        )
        await shoot(page, "chat")


async def test_model_html_is_shown_as_text(live: LiveFactory, browser: Any) -> None:
    """A reply holding <script> and <img onerror> is rendered as text, never run."""
    async with live() as server:
        page = await open_console(browser, server, "mallory")
        attack = "<script>window.pwned=1</script> <img src=x onerror=window.pwned=2> **bold**"
        await say(page, attack)
        reply = page.locator("#log .assistant").first
        await expect(reply).to_contain_text("<script>window.pwned=1</script>", timeout=WAIT)
        assert await page.locator("#log script, #log img").count() == 0
        assert await page.evaluate("window.pwned") is None
        assert await reply.locator("strong").inner_text() == "bold"


async def test_json_replies_are_formatted_and_reasoning_folded(
    live: LiveFactory, browser: Any
) -> None:
    """A JSON reply is pretty-printed; the model's reasoning sits folded in <details>."""
    async with live() as server:
        page = await open_console(browser, server, "jo")
        await page.check("#json-output")
        await page.check("#reasoning")
        await say(page, "hi")
        pre = page.locator("#log .assistant pre.json")
        await expect(pre).to_have_text(json.dumps({"echo": "hi"}, indent=2), timeout=WAIT)
        details = page.locator("#log details")
        await expect(details).to_have_count(1)
        assert await details.get_attribute("open") is None


async def test_two_tabs_show_two_connections_and_closing_one_keeps_the_session(
    live: LiveFactory, browser: Any
) -> None:
    """A second tab shows up as connections 2; closing it keeps the session in the first."""
    async with live() as server:
        first = await open_console(browser, server, "tabby")
        session_id = await first.locator("#session-id").inner_text()
        second = await open_console(browser, server, "tabby")
        await expect(first.locator("#session-connections")).to_have_text("2", timeout=WAIT)
        await expect(second.locator("#session-id")).to_have_text(session_id)
        await shoot(first, "session-two-tabs")
        await second.close()
        await expect(first.locator("#session-connections")).to_have_text("1", timeout=WAIT)
        await expect(first.locator("#session-id")).to_have_text(session_id)
        assert await server.archives("tabby") == []


async def test_countdown_reaches_zero_and_the_archive_appears(
    live: LiveFactory, browser: Any
) -> None:
    """Unconnected, the countdown runs down; at timeout the page says why, the archive shows."""
    async with live(session_timeout=3, session_check_interval=0.25) as server:
        page = await open_console(browser, server, "tim", hold=False)
        await say(page, "time me")
        await expect(page.locator("#log .assistant")).to_have_text("echo: time me", timeout=WAIT)
        await expect(page.locator("#session-countdown")).to_contain_text("in 0:0", timeout=WAIT)
        await shoot(page, "session-countdown")
        notice = page.locator("#session-ended")
        await expect(notice).to_contain_text("Session ended: timeout", timeout=WAIT)
        [archive] = await server.archives("tim")
        await expect(notice).to_contain_text(archive.archive_id)
        item = page.locator(f'#archives li[data-archive-id="{archive.archive_id}"]')
        await expect(item).to_contain_text("time me", timeout=WAIT)
        await expect(page.locator("#session-id")).to_have_text("none")


async def test_end_session_button_archives_at_once(live: LiveFactory, browser: Any) -> None:
    """End session says why it ended, and the new archive is listed at once."""
    async with live() as server:
        page = await open_console(browser, server, "eve")
        await say(page, "keep this")
        await expect(page.locator("#log .assistant")).to_have_text("echo: keep this", timeout=WAIT)
        await page.click("#end-session")
        await expect(page.locator("#session-ended")).to_contain_text(
            "Session ended: manual", timeout=WAIT
        )
        await expect(page.locator("#archives li").first).to_contain_text("keep this")
        await say(page, "a **new** session, with `code`")
        await expect(page.locator("#log .assistant strong")).to_have_text("new", timeout=WAIT)
        await expect(page.locator("#session-connections")).to_have_text("1", timeout=WAIT)
        await shoot(page, "overview")


async def test_archives_open_search_export_and_delete(live: LiveFactory, browser: Any) -> None:
    """Archives list newest first, open read-only, search, export as a file, and delete."""
    async with live() as server:
        await make_archives(server, "ann", ["apples first", "bananas second"])
        page = await open_console(browser, server, "ann")
        items = page.locator("#archives li")
        await expect(items).to_have_count(2, timeout=WAIT)
        await expect(items.first).to_contain_text("bananas second")
        await items.first.get_by_role("button", name="Open").click()
        view = page.locator("#archive-messages")
        await expect(view.locator(".assistant")).to_have_text("echo: bananas second")
        assert await page.locator("#archive-view input, #archive-view textarea").count() == 0
        await shoot(page, "archives")
        await page.fill("#search-input", "APPLES")
        await page.click("#search-button")
        await expect(items).to_have_count(1)
        await expect(items.first).to_contain_text("apples first")
        await page.select_option("#export-format", "markdown")
        async with page.expect_download() as download_info:
            await items.first.get_by_role("button", name="Export").click()
        download = await download_info.value
        exported = Path(await download.path()).read_text()
        assert download.suggested_filename.endswith(".md")
        assert "echo: apples first" in exported
        await items.first.get_by_role("button", name="Delete").click()
        await expect(items).to_have_count(1)  # "no archive matches"
        await expect(items.first).to_have_text("No archive matches.")
        archives = await server.archives("ann")
        assert [a.first_words for a in archives] == ["bananas second"]


async def test_erase_me_behind_a_confirmation(live: LiveFactory, browser: Any) -> None:
    """Erase me asks first; cancel keeps everything, confirm removes dialog and archives."""
    async with live() as server:
        await make_archives(server, "zed", ["old news"])
        await make_archives(server, "other", ["not mine"])
        page = await open_console(browser, server, "zed")
        await say(page, "current words")
        await expect(page.locator("#log .assistant")).to_have_text(
            "echo: current words", timeout=WAIT
        )
        await page.click("#erase-me")
        await expect(page.locator("#erase-dialog")).to_be_visible()
        await page.click("#erase-cancel")
        assert len(await server.archives("zed")) == 1
        await page.click("#erase-me")
        await shoot(page, "erase-confirmation")
        await page.click("#erase-confirm")
        await expect(page.locator("#erase-result")).to_contain_text("Erased: 2 archives")
        assert await server.archives("zed") == []
        assert await server.store().load_current("zed") is None
        assert len(await server.archives("other")) == 1


async def test_admin_sees_another_user_s_live_session_and_ends_it(
    live: LiveFactory, browser: Any
) -> None:
    """The admin view lists another user's live session with its connections, and ends it."""
    async with live() as server:
        user = await open_console(browser, server, "carol")
        await say(user, "hello admin")
        await expect(user.locator("#log .assistant")).to_have_text("echo: hello admin")
        admin = await open_console(browser, server, "root", admin=True)
        row = admin.locator('#admin-sessions tr[data-user-id="carol"]')
        await expect(row).to_contain_text("carol", timeout=WAIT)
        await expect(row.locator("td").nth(3)).to_have_text("1")
        await admin.evaluate("refreshStats()")
        await expect(admin.locator("#chart-sessions svg rect").first).to_be_visible()
        await shoot(admin, "admin")
        assert await user.locator("#admin").is_hidden()
        await row.get_by_role("button", name="End the session of carol").click()
        await expect(row).to_have_count(0, timeout=WAIT)
        await expect(user.locator("#session-ended")).to_contain_text("Session ended: manual")


async def test_console_is_readable_at_phone_width(live: LiveFactory, browser: Any) -> None:
    """At 375 px nothing overflows sideways and the controls are labelled."""
    async with live() as server:
        page = await open_console(browser, server, "phone")
        await page.set_viewport_size({"width": 375, "height": 800})
        width = await page.evaluate("document.documentElement.scrollWidth")
        assert width <= 375
        unlabelled = await page.evaluate(
            """[...document.querySelectorAll('input, select')].filter(
                 (e) => !(e.labels && e.labels.length) && !e.getAttribute('aria-label')
               ).map((e) => e.id)"""
        )
        assert unlabelled == []
        await shoot(page, "phone")


async def test_console_works_with_a_jwt(live: LiveFactory, browser: Any) -> None:
    """With JWT authentication, a pasted token chats over /ws and reads the API as its user."""
    import time

    import jwt

    secret = "a-test-secret-that-is-long-enough-for-hs256"
    token = jwt.encode({"sub": "jay", "exp": int(time.time()) + 600}, secret, algorithm="HS256")
    async with live(jwt_secret=secret) as server:
        await make_archives_jwt(server, token)
        page = await open_console(browser, server, token)
        await say(page, "signed in")
        await expect(page.locator("#log .assistant")).to_have_text("echo: signed in", timeout=WAIT)
        await expect(page.locator("#archives li").first).to_contain_text("from the token")
        assert await page.locator("#admin").is_hidden()
        assert len(await server.archives("jay")) == 1


async def make_archives_jwt(server: Live, token: str) -> None:
    headers = {"authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=server.url, headers=headers) as http:
        await http.post("/chat", json={"message": "from the token"})
        await http.delete("/session")
    await server.wait_for_archives("jay")
