"""The operators' pages in a real Chromium against a real daphne: log in, list, search, timeline, live.

The live part uses two browser contexts: a customer chatting on ``/`` and an operator watching the same
conversation's timeline, which must grow without a reload.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from playwright.sync_api import Browser, Page, expect

from chat.operators.access import roles_ensure
from tests.support.browser import (
    ARTIFACTS,
    STAFF_PASSWORD,
    ChatServer,
    chromium,
    server_logins,
)
from tests.support.driver import run_conversation
from tests.support.page import new_page
from tests.support.seed import SEED_MESSAGES

pytestmark = pytest.mark.browser

TIMEOUT_MS = 10_000
expect.set_options(timeout=TIMEOUT_MS)


@pytest.fixture
def review_server(chat_server: ChatServer) -> tuple[ChatServer, str]:
    """The server with the roles, an operator who can log in there, and one finished seed conversation."""
    roles_ensure()  # the flush between transactional tests empties the groups the migration filled
    server_logins("operator")
    return chat_server, str(run_conversation())


@pytest.fixture
def browser(review_server) -> Iterator[Browser]:
    """Started after the data is ready: sync Playwright's loop would make Django refuse the ORM."""
    with chromium() as browser:
        yield browser


def log_in_as_operator(page: Page) -> None:
    page.goto("/operators/")
    expect(page).to_have_url(re.compile(r"/admin/login/\?next=/operators/"))
    page.get_by_label("Username").fill("operator")
    page.get_by_label("Password").fill(STAFF_PASSWORD)
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("heading", name="Conversations")).to_be_visible()


def test_operator_reviews_searches_and_watches_live(browser: Browser, review_server) -> None:
    server, seeded = review_server
    problems: list[str] = []
    operator_context, page = new_page(browser, server.url, problems)
    log_in_as_operator(page)
    rows = page.locator("table.conversations tbody tr")
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text("john_doe")
    expect(rows.first).to_contain_text("get_ticket_status")
    expect(rows.first).to_contain_text("answered")

    page.get_by_label("Search what was said").fill("12345")
    page.get_by_role("button", name="Apply").click()
    expect(page).to_have_url(re.compile(r"q=12345"))
    expect(rows).to_have_count(1)
    expect(page.get_by_role("link", name="Export JSONL")).to_have_attribute("href", re.compile(r"q=12345"))
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "operators-list.png"), full_page=True)

    rows.first.get_by_role("link").click()
    expect(page).to_have_url(re.compile(rf"/operators/conversations/{seeded}/"))
    calls = page.locator(".tool-call")
    expect(calls).to_have_count(2)
    expect(calls.nth(0)).to_contain_text('"api_key": "****"')
    expect(calls.nth(1)).to_contain_text('"status": "Open"')
    expect(page.get_by_role("link", name=re.compile("Ticket #12345"))).to_be_visible()
    expect(page.locator("#timeline")).to_have_attribute("data-live", "open")
    page.screenshot(path=str(ARTIFACTS / "operators-timeline.png"), full_page=True)

    # A customer starts a conversation; the operator opens it and watches it grow.
    customer_context, customer = new_page(browser, server.url, problems)
    customer.goto("/")
    customer.get_by_label("Your message").press("H")  # the customer starts writing: the conversation starts
    customer.get_by_label("Your message").press("Backspace")
    expect(customer.locator("#chat-log .message--assistant:not(.is-streaming) .bubble")).to_have_count(1)
    expect(customer.locator("#chat")).to_have_attribute("data-turn", "idle")
    conversation_id = customer.locator("#chat").get_attribute("data-conversation-id")
    with page.expect_websocket() as opened:
        page.goto(f"/operators/conversations/{conversation_id}/")
    expect(page.locator("#timeline")).to_have_attribute("data-live", "open")
    expect(page.locator("#timeline .entry--agent")).to_have_count(1)  # the greeting, rendered by the server
    # The socket says which rows the page shows: the server sends any stored since (chat.resume).
    shown_upto = page.locator("#timeline").get_attribute("data-last-seq")
    assert int(shown_upto) > 0 and opened.value.url.endswith(f"?after={shown_upto}"), opened.value.url

    composer = customer.get_by_label("Your message")
    composer.fill(SEED_MESSAGES[1])
    composer.press("Enter")
    live = page.locator("#timeline .entry--live")
    tool_calls = page.locator("#timeline .entry--live .tool-call")
    expect(tool_calls.first).to_contain_text("verify_user")
    expect(tool_calls.first).to_contain_text('"****"')
    expect(live.last).to_contain_text(re.compile("verified", re.I))
    # The customer's message arrives as typed; the operator sees it once stored, its key masked.
    expect(live.filter(has_text="john_doe").first).to_contain_text('API **** is: "****"')
    expect(page.locator("#timeline .entry--pending")).to_have_count(0)
    assert '"key"' not in page.locator("#timeline").inner_text()

    page.goto("/operators/dashboard/")
    expect(page.locator("svg.chart")).to_have_count(4)
    expect(page.locator("table.daily tbody tr").first).to_contain_text("2")  # today's two conversations
    page.screenshot(path=str(ARTIFACTS / "operators-dashboard.png"), full_page=True)

    customer_context.close()
    operator_context.close()
    assert problems == []


def test_the_live_timeline_shows_each_step_once_when_a_reconnect_sends_it_again(
    browser: Browser, review_server
) -> None:
    """The timeline's socket is played by the test. A reply's words and its tool step come live (twice, with
    the same call id, as from a model that gives none); then the socket's catch-up after a reconnect sends
    the first copy again, marked ``replay``: it is not shown twice, and the second live reply was not lost."""
    import json

    server, seeded = review_server
    problems: list[str] = []
    context, page = new_page(browser, server.url, problems)
    log_in_as_operator(page)
    sockets = []
    page.route_web_socket(re.compile(r"/ws/operators/conversations/"), lambda ws: sockets.append(ws))  # no server
    page.goto(f"/operators/conversations/{seeded}/")
    expect(page.locator("#timeline")).to_have_attribute("data-live", "open")
    words = {"type": "message", "role": "assistant", "text": "Let me look that up.", "calls": ["call_0"]}
    done = {"type": "tool", "name": "get_ticket_status", "id": "call_0", "status": "done", "result": {"ok": 1}}
    for frame in (words, done, words, done, {**words, "replay": True}, {**done, "replay": True}):
        sockets[0].send(json.dumps(frame))
    sockets[0].send(json.dumps({"type": "message", "role": "assistant", "text": "All done.", "seq": 999}))
    live = page.locator("#timeline .entry--live")
    expect(live.last).to_contain_text("All done.")
    expect(live.filter(has_text="Let me look that up.")).to_have_count(2)
    expect(page.locator("#timeline .entry--live .tool-call h3", has_text="Result")).to_have_count(2)
    context.close()
    assert problems == []


def test_the_operators_pages_fit_a_phone(browser: Browser, review_server) -> None:
    """At 375 px no operators' page scrolls sideways: wide tables scroll inside their own frame."""
    server, conversation_id = review_server
    problems: list[str] = []
    context, page = new_page(browser, server.url, problems)
    log_in_as_operator(page)
    page.set_viewport_size({"width": 375, "height": 740})
    pages = {
        "operators-list-phone": "/operators/",
        "operators-timeline-phone": f"/operators/conversations/{conversation_id}/",
        "operators-dashboard-phone": "/operators/dashboard/",
        "operators-evaluations-phone": "/operators/evaluations/",
    }
    for name, path in pages.items():
        page.goto(path)
        width = page.evaluate("() => document.scrollingElement.scrollWidth")
        page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)
        assert width <= 375, f"{path} is {width} px wide"
        if "dashboard" in path:  # 29 days without a conversation are one line, not 29
            expect(page.locator("tr.quiet-days")).to_have_count(1)
            expect(page.locator("tr.quiet-days")).to_contain_text("no conversations (29 days)")
    context.close()
    assert problems == []
