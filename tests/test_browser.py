"""The customer chat page in a real headless Chromium, served by a real daphne (see support/browser.py).

Each test gets a fresh browser context (so a fresh session and conversation) and freshly seeded demo
data. Waits are Playwright's auto-retrying ``expect``: nothing sleeps for a fixed time.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from playwright.sync_api import Browser, ConsoleMessage, Page, expect

from tests.support.browser import (
    ARTIFACTS,
    ChatServer,
    chromium,
)
from tests.support.page import GREETING, agent_messages, open_chat, say, status_lines, user_messages
from tests.support.seed import SEED_MESSAGES

pytestmark = pytest.mark.browser

TURN_TIMEOUT_MS = 10_000  # one agent turn; the builtin model answers in well under a second
HOSTILE = '<img src=x onerror="window.__xss=1"><b>bold</b>'
expect.set_options(timeout=TURN_TIMEOUT_MS)


@pytest.fixture
def browser(chat_server: ChatServer) -> Iterator[Browser]:
    """Chromium, started per test and after the data is seeded, stopped before the tables are flushed.

    The sync Playwright API keeps an event loop marked as running in this thread; Django then refuses
    the ORM work of seeding and flushing (SynchronousOnlyOperation). Launching takes well under a second.
    """
    with chromium() as browser:
        yield browser


@pytest.fixture
def expected_console_errors() -> list[re.Pattern[str]]:
    """Console errors a test provokes on purpose; append patterns to let them through."""
    return []


@pytest.fixture
def page(
    browser: Browser, chat_server: ChatServer, expected_console_errors: list[re.Pattern[str]]
) -> Iterator[Page]:
    """A page in a fresh context (its own session) at 1280x800; fails the test on any console error
    it did not expect, so a Content-Security-Policy violation or a script error cannot pass unnoticed."""
    context = browser.new_context(viewport={"width": 1280, "height": 800}, base_url=chat_server.url)
    context.set_default_timeout(TURN_TIMEOUT_MS)
    page = context.new_page()
    problems: list[str] = []

    def on_console(message: ConsoleMessage) -> None:
        if message.type == "error" and not any(p.search(message.text) for p in expected_console_errors):
            problems.append(f"console: {message.text}")

    page.on("console", on_console)
    page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
    yield page
    context.close()
    assert problems == []


# HELPERS


def record_status_texts(page: Page) -> None:
    """Log every text any status line shows, in ``window.__statusTexts``: the "started" wording is
    replaced in place as soon as the tool is done, too quickly to assert on the screen."""
    page.evaluate(
        """() => {
            window.__statusTexts = [];
            new MutationObserver(() => {
                for (const line of document.querySelectorAll('#chat-log .status-line')) {
                    window.__statusTexts.push(line.textContent.trim());
                }
            }).observe(document.getElementById('chat-log'),
                       {subtree: true, childList: true, characterData: true});
        }"""
    )


# TESTS


def test_seed_conversation_through_the_page(page: Page) -> None:
    open_chat(page)
    record_status_texts(page)
    for text in SEED_MESSAGES:
        say(page, text)

    expect(user_messages(page)).to_have_text(SEED_MESSAGES)
    replies = agent_messages(page)
    expect(replies).to_have_count(5)
    expect(replies.nth(1)).to_contain_text("API key")
    expect(replies.nth(2)).to_contain_text("verified")
    expect(replies.nth(3)).to_contain_text("Open")
    expect(replies.nth(3)).to_contain_text("Billing Query")
    expect(replies.nth(4)).to_contain_text(re.compile(r"welcome|great day", re.I))
    # Tool steps are status lines, updated in place from "started" to "done": one line per call.
    expect(status_lines(page)).to_have_text(["Identity verified", "Found ticket 12345"])
    expect(page.locator('#chat-log .status-line[data-status="done"]')).to_have_count(2)
    seen = page.evaluate("() => window.__statusTexts")
    assert seen.index("Verifying your identity…") < seen.index("Identity verified")
    assert seen.index("Looking up ticket 12345…") < seen.index("Found ticket 12345")
    expect(page.locator("#chat-log .notice")).to_have_count(0)

    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "chat-desktop.png"))
    page.set_viewport_size({"width": 375, "height": 740})
    expect(page.get_by_label("Your message")).to_be_in_viewport()
    page.screenshot(path=str(ARTIFACTS / "chat-phone.png"))


def test_reload_keeps_the_conversation(page: Page) -> None:
    open_chat(page)
    say(page, SEED_MESSAGES[0])
    say(page, SEED_MESSAGES[1])
    conversation_id = page.locator("#chat").get_attribute("data-conversation-id")
    assert conversation_id

    page.reload()

    expect(page.locator("#chat")).to_have_attribute("data-conversation-id", conversation_id)
    expect(page.locator("#chat")).to_have_attribute("data-turn", "idle")
    # The stored history masks the API key the customer typed, wherever it stands as a word (the demo key
    # is the word "key"): the replay shows the mask, not the key.
    masked = SEED_MESSAGES[1].replace('"key"', '"****"').replace("API key", "API ****")
    expect(user_messages(page)).to_have_text([SEED_MESSAGES[0], masked])
    expect(agent_messages(page)).to_have_count(3)
    expect(agent_messages(page).filter(has_text=GREETING)).to_have_count(1)
    expect(status_lines(page)).to_have_text(["Identity verified"])
    # The conversation goes on where it stopped.
    say(page, SEED_MESSAGES[2])
    expect(agent_messages(page).last).to_contain_text("Billing Query")


def test_html_in_a_message_is_shown_as_text(page: Page) -> None:
    open_chat(page)
    say(page, HOSTILE)

    expect(user_messages(page).last).to_have_text(HOSTILE)
    expect(page.locator("#chat-log img, #chat-log b")).to_have_count(0)
    assert page.evaluate("() => typeof window.__xss") == "undefined"

    page.reload()  # the replayed history takes the same care
    expect(user_messages(page)).to_have_text([HOSTILE])
    expect(page.locator("#chat-log img, #chat-log b")).to_have_count(0)
    assert page.evaluate("() => typeof window.__xss") == "undefined"


def test_new_conversation_starts_fresh(page: Page) -> None:
    open_chat(page)
    say(page, SEED_MESSAGES[0])
    first_id = page.locator("#chat").get_attribute("data-conversation-id")
    announced: list[str] = []
    page.expose_function("recordConversation", lambda conversation_id: announced.append(conversation_id))
    page.evaluate(
        "() => document.addEventListener('chat:conversation', (e) => window.recordConversation(e.detail.id))"
    )

    page.get_by_role("button", name="New conversation").click()

    expect(page.locator("#chat")).not_to_have_attribute("data-conversation-id", first_id or "")
    expect(agent_messages(page)).to_have_count(1)
    expect(agent_messages(page).first).to_contain_text(GREETING)
    expect(user_messages(page)).to_have_count(0)
    new_id = page.locator("#chat").get_attribute("data-conversation-id")
    assert announced == [new_id]
    # A plain reconnect (reload) now resumes the newest conversation, without a second greeting.
    page.reload()
    expect(page.locator("#chat")).to_have_attribute("data-conversation-id", new_id or "")
    expect(page.locator("#chat")).to_have_attribute("data-turn", "idle")
    expect(agent_messages(page)).to_have_count(1)
    expect(user_messages(page)).to_have_count(0)


def test_phone_width_has_no_horizontal_scroll(page: Page) -> None:
    page.set_viewport_size({"width": 375, "height": 740})
    open_chat(page)
    say(page, "x" * 300)  # one unbreakable word must wrap, not widen the page

    assert page.evaluate("() => document.scrollingElement.scrollWidth") <= 375
    composer = page.get_by_label("Your message")
    expect(composer).to_be_visible()
    expect(composer).to_be_in_viewport()
    expect(page.get_by_role("button", name="Send message")).to_be_in_viewport()
    expect(page.get_by_role("button", name="New conversation")).to_be_in_viewport()


def test_keyboard_only_and_composer_rules(page: Page) -> None:
    open_chat(page)
    composer = page.get_by_label("Your message")
    expect(composer).to_be_focused()
    expect(page.get_by_role("log")).to_have_attribute("aria-live", "polite")

    composer.press("Enter")  # empty: refused
    composer.type("first line")
    composer.press("Shift+Enter")
    composer.type("second line")
    expect(composer).to_have_value("first line\nsecond line")
    limit = int(page.locator("#chat").get_attribute("data-max-chars") or 0)
    expect(page.locator("#chat-counter")).to_have_text(f"22 / {limit}")
    composer.press("Enter")
    expect(user_messages(page)).to_have_text(["first line\nsecond line"])
    expect(agent_messages(page)).to_have_count(2)

    composer.fill("y" * (limit + 1))
    expect(page.locator("#chat-counter")).to_have_class(re.compile(r"\bis-over\b"))
    composer.press("Enter")
    expect(page.locator("#chat-notice")).to_contain_text("1 character too long")
    expect(user_messages(page)).to_have_count(1)

    # A message the server refuses comes back as an error notice; the conversation stays usable.
    composer.fill("nul \x00 byte")
    composer.press("Enter")
    expect(page.locator("#chat-log .notice")).to_have_text("Your message contains characters we can't accept.")
    expect(page.locator("#chat")).to_have_attribute("data-turn", "idle")
    expect(page.locator("#chat-typing")).to_be_hidden()
    say(page, "Yea it's: 12345")


def test_reconnects_and_sends_what_was_typed_offline(
    page: Page, chat_server: ChatServer, expected_console_errors: list[re.Pattern[str]]
) -> None:
    """The server goes away mid-conversation: the page says so, keeps the typed message, and once the
    server is back it resumes the same conversation and delivers the message exactly once."""
    expected_console_errors.append(re.compile(r"WebSocket connection to .* failed"))
    open_chat(page)
    say(page, SEED_MESSAGES[0])
    conversation_id = page.locator("#chat").get_attribute("data-conversation-id")

    chat_server.stop()
    expect(page.locator("#chat")).to_have_attribute("data-connection", "reconnecting")
    expect(page.locator("#chat-status-text")).to_have_text("Reconnecting…")
    composer = page.get_by_label("Your message")
    composer.fill(SEED_MESSAGES[1])
    composer.press("Enter")
    expect(page.locator("#chat-log .message--user.is-queued .bubble")).to_contain_text(SEED_MESSAGES[1])

    chat_server.start()
    # The page's own backoff (0.5 s doubling, capped at 10 s) brings it back: allow for a few rounds.
    expect(page.locator("#chat")).to_have_attribute("data-connection", "online", timeout=25_000)
    expect(page.locator("#chat")).to_have_attribute("data-conversation-id", conversation_id or "")
    expect(agent_messages(page)).to_have_count(3)
    expect(agent_messages(page).last).to_contain_text("verified")
    expect(page.locator("#chat-log .is-queued")).to_have_count(0)
    expect(user_messages(page)).to_have_text([SEED_MESSAGES[0], SEED_MESSAGES[1]])
    expect(agent_messages(page).filter(has_text=GREETING)).to_have_count(1)


@pytest.fixture
def staff_password(chat_server: ChatServer) -> str:
    """Give ``staff`` a password the server's own (PBKDF2) hasher accepts, before the browser starts."""
    from tests.support.browser import STAFF_PASSWORD, server_logins

    server_logins("staff")
    return STAFF_PASSWORD


def test_staff_resolves_a_ticket_in_admin_and_the_chat_reports_it(staff_password: str, page: Page) -> None:
    """The issue's walk-through: staff change ticket 12345 to Resolved; a new conversation says so."""
    page.goto("/admin/")
    page.get_by_label("Username").fill("staff")
    page.get_by_label("Password").fill(staff_password)
    page.get_by_role("button", name="Log in").click()
    page.get_by_role("link", name="Tickets", exact=True).click()
    page.get_by_role("link", name="12345").click()
    page.get_by_label("Status").select_option("Resolved")
    page.get_by_role("button", name="Save", exact=True).click()
    expect(page.locator(".messagelist")).to_contain_text("was changed successfully")

    open_chat(page)
    page.get_by_role("button", name="New conversation").click()
    expect(agent_messages(page)).to_have_count(1)
    expect(page.locator("#chat")).to_have_attribute("data-turn", "idle")
    say(page, 'My username is "john_doe" and my API key is "key". How is ticket 12345?')
    expect(agent_messages(page).last).to_contain_text("Resolved")


def test_a_message_sent_during_a_reply_shows_after_that_reply(page: Page) -> None:
    """The page shows the stored order: the answer to the first message stays above the second."""
    open_chat(page)
    # Both typed and sent at once: the second goes while the first answer is still streaming in.
    page.get_by_label("Your message").evaluate(
        """(box) => {
            for (const text of ["my username is john_doe", "what can you do?"]) {
                box.value = text;
                box.dispatchEvent(new KeyboardEvent("keydown", {key: "Enter", bubbles: true}));
            }
        }"""
    )
    expect(agent_messages(page)).to_have_count(3)
    expect(page.locator("#chat")).to_have_attribute("data-turn", "idle")
    order = page.locator("#chat-log .message .bubble").all_inner_texts()
    assert order[1] == "my username is john_doe"
    assert "API key" in order[2]
    assert order[3] == "what can you do?"
    assert "API key" in order[4] and len(order) == 5
