"""The widget on another site, in a real Chromium: host pages served from a second local origin.

The chat runs on ``http://127.0.0.1:<port>`` (daphne, as in browser_server.py); the company's pages are a
tiny ``http.server`` on ``http://localhost:<other port>`` (a different site, so the frame is a third-party
one, with SameSite=None cookies) and, unlisted, on a third port. Chromium treats http://localhost and
127.0.0.1 as potentially trustworthy, so the Secure cookies work without TLS.
"""

from __future__ import annotations

import functools
import os
import re
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TypeVar

import pytest
from django.core.management import call_command
from playwright.sync_api import Browser, ConsoleMessage, FrameLocator, Page, expect
from pytest_django import DjangoDbBlocker, Settings

from tests.support.browser import (
    ARTIFACTS,
    STAFF_PASSWORD,
    ChatServer,
    chromium,
    daphne_environment,
    free_port,
)
from tests.support.seed import SEED_MESSAGES

pytestmark = pytest.mark.browser

T = TypeVar("T")
SECRET = "widget-test-shared-secret"
TURN_TIMEOUT_MS = 10_000
expect.set_options(timeout=TURN_TIMEOUT_MS)


class QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


def host_page(chat_url: str, *, user: str = "", signature: str = "") -> str:
    signed = f' data-user="{user}" data-signature="{signature}"' if user else ""
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>Example shop</title><link rel="icon" href="data:,"></head>
<body style="font-family: sans-serif; margin: 40px"><h1>Example shop</h1><p>Our products, your account…</p>
<script src="{chat_url}/static/chat/widget.js"{signed} defer></script></body></html>"""


class HostSite:
    """The company's site: static pages on its own port, reached as http://localhost:<port>."""

    def __init__(self, root: Path) -> None:
        self.port = free_port()
        self.origin = f"http://localhost:{self.port}"
        handler = functools.partial(QuietHandler, directory=str(root))
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def sites(
    django_db_setup: None, django_db_blocker: DjangoDbBlocker, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[ChatServer, HostSite, HostSite]]:
    """daphne allowing one host origin to frame it, that host, and an unlisted one."""
    from tickets.signatures import signature_for

    root = tmp_path_factory.mktemp("host-site")
    listed, unlisted = HostSite(root), HostSite(root)
    ARTIFACTS.mkdir(exist_ok=True)
    port = free_port()
    log = ARTIFACTS / f"widget-daphne-{port}.log"
    log.write_bytes(b"")
    with django_db_blocker.unblock():
        environment = daphne_environment()
    environment.update(CHAT_WIDGET_ORIGINS=listed.origin, CHAT_IDENTITY_SECRET=SECRET)
    server = ChatServer(port=port, environment=environment, log=log)
    pages = {
        "shop.html": host_page(server.url),
        "signed.html": host_page(server.url, user="john_doe", signature=signature_for("john_doe", SECRET)),
        "forged.html": host_page(server.url, user="john_doe", signature=signature_for("john_doe", "guessed")),
        "replayed.html": host_page(server.url, user="john_doe", signature=signature_for("jane_roe", SECRET)),
    }
    for name, html in pages.items():
        (root / name).write_text(html)
    try:
        server.start()
        yield server, listed, unlisted
    finally:
        server.stop()
        listed.stop()
        unlisted.stop()
    log.unlink(missing_ok=True)


@pytest.fixture
def seeded(sites: tuple[ChatServer, HostSite, HostSite], transactional_db: None, settings: Settings) -> None:
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    with open(os.devnull, "w") as quiet:
        call_command("seed_demo", password=STAFF_PASSWORD, stdout=quiet)


@pytest.fixture
def browser(seeded: None) -> Iterator[Browser]:
    with chromium() as browser:
        yield browser


def new_page(browser: Browser, problems: list[str], **options: object) -> Page:
    context = browser.new_context(viewport={"width": 1280, "height": 800}, **options)
    context.set_default_timeout(TURN_TIMEOUT_MS)
    page = context.new_page()

    def on_console(message: ConsoleMessage) -> None:
        if message.type == "error":
            problems.append(message.text)

    page.on("console", on_console)
    page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
    return page


def chat_frame(page: Page) -> FrameLocator:
    return page.frame_locator("#support-chat-widget iframe")


def agent_messages(frame: FrameLocator):
    return frame.locator("#chat-log .message--assistant:not(.is-streaming) .bubble")


def say(frame: FrameLocator, text: str) -> None:
    replies = agent_messages(frame).count()
    composer = frame.get_by_label("Your message")
    composer.fill(text)
    composer.press("Enter")
    expect(frame.locator("#chat-log .message--user .bubble").last).to_have_text(text)
    expect(agent_messages(frame)).to_have_count(replies + 1)
    expect(frame.locator("#chat")).to_have_attribute("data-turn", "idle")


def outside_the_browser_loop(query: Callable[[], T]) -> T:
    """Run an ORM read in a thread of its own: Playwright's sync API keeps an event loop running here."""
    from django.db import connection

    def run() -> T:
        try:
            return query()
        finally:
            connection.close()

    with ThreadPoolExecutor(1) as pool:
        return pool.submit(run).result()


def launcher(page: Page):
    return page.locator("#support-chat-widget .launcher")


def test_the_seed_conversation_inside_the_widget_on_another_site(browser: Browser, sites) -> None:
    _server, listed, _ = sites
    problems: list[str] = []
    page = new_page(browser, problems)
    page.goto(f"{listed.origin}/shop.html")
    expect(launcher(page)).to_have_attribute("aria-label", "Open support chat")
    expect(page.locator("#support-chat-widget iframe")).to_have_count(0)  # closed: nothing loaded, nothing started
    page.screenshot(path=str(ARTIFACTS / "widget-closed.png"))

    launcher(page).click()
    frame = chat_frame(page)
    expect(frame.locator("#chat")).to_have_attribute("data-connection", "online")
    expect(agent_messages(frame)).to_have_count(1)
    expect(agent_messages(frame).first).to_contain_text("welcome to customer support")
    for text in SEED_MESSAGES:
        say(frame, text)
    expect(agent_messages(frame).nth(3)).to_contain_text("Billing Query")
    expect(frame.locator("#chat-log .status-line")).to_have_text(["Identity verified", "Found ticket 12345"])
    page.screenshot(path=str(ARTIFACTS / "widget-open.png"))

    # Open survives the host's next page load: the same conversation comes back, with no second greeting.
    conversation_id = frame.locator("#chat").get_attribute("data-conversation-id")
    page.reload()
    expect(page.locator("#support-chat-widget")).to_have_attribute("data-state", "open")
    expect(chat_frame(page).locator("#chat")).to_have_attribute("data-conversation-id", conversation_id or "")
    expect(agent_messages(chat_frame(page))).to_have_count(5)

    # Closed, then a reply arrives: the badge counts it (postMessage from the frame, origin-checked).
    launcher(page).click()
    expect(page.locator("#support-chat-widget")).to_have_attribute("data-state", "closed")
    chat_frame(page).locator("#chat-input").evaluate(
        """(box) => { box.value = "Hi, my username is john_doe";
                     box.dispatchEvent(new KeyboardEvent("keydown", {key: "Enter", bubbles: true})); }"""
    )
    expect(page.locator("#support-chat-widget")).to_have_attribute("data-unread", "1")
    expect(launcher(page)).to_have_attribute("aria-label", "Open support chat (1 unread)")
    page.screenshot(path=str(ARTIFACTS / "widget-unread.png"))
    page.reload()
    expect(page.locator("#support-chat-widget")).to_have_attribute("data-state", "closed")
    assert problems == []


def test_the_widget_on_a_phone(browser: Browser, sites) -> None:
    _, listed, _ = sites
    problems: list[str] = []
    page = new_page(browser, problems)
    page.set_viewport_size({"width": 375, "height": 740})
    page.goto(f"{listed.origin}/shop.html")
    launcher(page).click()
    frame = chat_frame(page)
    expect(agent_messages(frame)).to_have_count(1)
    say(frame, SEED_MESSAGES[0])
    box = page.locator("#support-chat-widget iframe").bounding_box()
    assert box and box["width"] == 375 and box["x"] == 0 and box["y"] == 0 and box["height"] == 740 - 76
    expect(frame.get_by_label("Your message")).to_be_in_viewport()
    expect(launcher(page)).to_be_in_viewport()  # the way to close it stays on screen
    assert frame.locator("html").evaluate("(html) => html.scrollWidth") <= 375
    page.screenshot(path=str(ARTIFACTS / "widget-phone.png"))
    assert problems == []


def test_a_signed_in_customer_gets_their_ticket_without_a_key(browser: Browser, sites) -> None:
    _, listed, _ = sites
    problems: list[str] = []
    page = new_page(browser, problems)
    page.goto(f"{listed.origin}/signed.html")
    launcher(page).click()
    frame = chat_frame(page)
    expect(agent_messages(frame)).to_have_count(1)
    expect(agent_messages(frame).first).to_contain_text("Hello john_doe")
    # The signature left the frame's address at once (a fragment: no server ever received it).
    assert "signature" not in frame.locator("html").evaluate("() => window.location.href")
    say(frame, "What is the status of ticket 12345?")
    expect(agent_messages(frame).last).to_contain_text("Open")
    expect(agent_messages(frame).last).to_contain_text("Billing Query")
    expect(frame.locator("#chat-log")).not_to_contain_text(re.compile("API key", re.I))
    assert problems == []


@pytest.mark.parametrize("page_name", ["forged.html", "replayed.html"])
def test_a_forged_or_replayed_signature_verifies_nobody(browser: Browser, sites, page_name: str) -> None:
    from tickets.models import Verification

    _, listed, _ = sites
    problems: list[str] = []
    page = new_page(browser, problems)
    page.goto(f"{listed.origin}/{page_name}")
    launcher(page).click()
    frame = chat_frame(page)
    expect(agent_messages(frame)).to_have_count(1)
    expect(agent_messages(frame).first).to_contain_text("username and API key")
    say(frame, "What is the status of ticket 12345?")
    expect(agent_messages(frame).last).not_to_contain_text("Billing Query")
    expect(agent_messages(frame).last).to_contain_text("verify your identity")
    assert not outside_the_browser_loop(Verification.objects.exists)
    assert problems == []


def test_framing_from_an_unlisted_origin_is_refused(browser: Browser, sites) -> None:
    _, _, unlisted = sites
    problems: list[str] = []
    page = new_page(browser, problems)
    page.goto(f"{unlisted.origin}/shop.html")
    launcher(page).click()
    page.wait_for_timeout(1500)  # the refusal is a console message, with no event to wait on
    assert any("frame-ancestors" in problem for problem in problems), problems
    assert chat_frame(page).locator("#chat").count() == 0


def test_the_chat_page_in_dark_mode(browser: Browser, sites) -> None:
    server, _, _ = sites
    problems: list[str] = []
    page = new_page(browser, problems, color_scheme="dark")
    page.goto(f"{server.url}/")
    composer = page.get_by_label("Your message")
    composer.press("H")
    composer.press("Backspace")
    expect(page.locator("#chat-log .message--assistant:not(.is-streaming)")).to_have_count(1)
    composer.fill(SEED_MESSAGES[1])
    composer.press("Enter")
    expect(page.locator("#chat-log .status-line")).to_have_text(["Identity verified"])
    expect(page.locator("#chat")).to_have_attribute("data-turn", "idle")
    background = page.locator(".chat").evaluate("(node) => getComputedStyle(node).backgroundColor")
    assert background != "rgb(255, 255, 255)"
    page.screenshot(path=str(ARTIFACTS / "chat-dark.png"))
    page.set_viewport_size({"width": 375, "height": 740})
    page.screenshot(path=str(ARTIFACTS / "chat-dark-phone.png"))
    assert problems == []
