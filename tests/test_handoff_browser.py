"""Handing over to a person in a real Chromium against a real daphne, with two browser contexts: a customer
on the chat page and a support staff member in the inbox. The builtin model plays the assistant."""

from __future__ import annotations

import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from django.contrib.auth.models import User
from django.db import connection
from playwright.sync_api import Browser, Page, expect

from chat.models import Turn
from chat.operators.access import roles_ensure
from tests.support.browser import (
    ARTIFACTS,
    STAFF_PASSWORD,
    ChatServer,
    chromium,
    server_logins,
)
from tests.support.page import new_page, open_chat
from tests.support.seed import SEED_MESSAGES

pytestmark = pytest.mark.browser

TIMEOUT_MS = 10_000
expect.set_options(timeout=TIMEOUT_MS)


@pytest.fixture
def support_server(chat_server: ChatServer) -> ChatServer:
    """The server with the roles, "staff" (first name Alice) and "operator" able to log in there."""
    roles_ensure()
    User.objects.filter(username="staff").update(first_name="Alice")
    server_logins("staff", "operator")
    return chat_server


@pytest.fixture
def browser(support_server: ChatServer) -> Iterator[Browser]:
    with chromium() as browser:
        yield browser


def say(page: Page, text: str) -> None:
    composer = page.get_by_label("Your message")
    composer.fill(text)
    composer.press("Enter")


def log_in_to_the_inbox(page: Page) -> None:
    page.goto("/operators/inbox/")
    expect(page).to_have_url(re.compile(r"/admin/login/\?next=/operators/inbox/"))
    page.get_by_label("Username").fill("staff")
    page.get_by_label("Password").fill(STAFF_PASSWORD)
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("heading", name="Inbox")).to_be_visible()
    expect(page.locator("#inbox")).to_have_attribute("data-live", "open")


def model_turns(conversation_id: str) -> int:
    """The model calls stored for the conversation (each stores its reply with its latency). Read in a thread:
    sync Playwright runs an event loop in this one, where Django refuses the ORM."""

    def count() -> int:
        try:
            return Turn.objects.filter(conversation_id=conversation_id, latency_ms__isnull=False).count()
        finally:
            connection.close()

    with ThreadPoolExecutor(1) as pool:
        return pool.submit(count).result()


def test_a_person_takes_over_answers_and_hands_back(browser: Browser, support_server: ChatServer) -> None:
    problems: list[str] = []
    staff_context, staff = new_page(browser, support_server.url, problems)
    log_in_to_the_inbox(staff)
    expect(staff.locator("#waiting-list .queue-item")).to_have_count(0)

    customer_context, customer = new_page(browser, support_server.url, problems)
    open_chat(customer)  # a page view starts nothing: starting to write starts the conversation
    chat = customer.locator("#chat")
    say(customer, SEED_MESSAGES[1])
    expect(customer.locator("#chat-log .message--assistant").last).to_contain_text("verified")
    expect(chat).to_have_attribute("data-turn", "idle")
    conversation_id = chat.get_attribute("data-conversation-id")

    # The customer asks for a person: told at once, truthfully (Alice has the console open).
    say(customer, "I'd like to talk to a human please")
    banner = customer.locator("#chat-handoff")
    expect(banner).to_be_visible()
    expect(banner).to_contain_text("You're number 1 in the queue")
    expect(banner).to_contain_text("Someone will be with you shortly")
    expect(customer.locator('.status-line[data-tool="request_human"]')).to_contain_text("Asked for a person")
    expect(customer.get_by_role("button", name="Talk to a person")).to_be_disabled()
    calls_when_queued = model_turns(conversation_id)

    # It arrives in the inbox, live, with its reason and wait time; the tab's title counts it.
    item = staff.locator("#waiting-list .queue-item")
    expect(item).to_have_count(1)
    expect(item).to_contain_text("john_doe")
    expect(item).to_contain_text("The customer asked to talk to a person.")
    expect(item.locator("[data-wait]")).to_contain_text("waiting")
    expect(staff).to_have_title(re.compile(r"^\(1\) Inbox"))
    ARTIFACTS.mkdir(exist_ok=True)
    staff.screenshot(path=str(ARTIFACTS / "handoff-inbox.png"), full_page=True)

    item.get_by_role("button", name="Claim").click()
    expect(staff).to_have_url(re.compile(rf"/operators/inbox/{conversation_id}/$"))
    expect(staff.locator("#handoff-state")).to_contain_text("You hold this conversation")
    expect(staff.locator("#timeline .tool-call").first).to_contain_text("verify_user")  # the whole history
    expect(staff.locator(".summary")).to_contain_text("john_doe")
    expect(customer.locator(".handoff-event").last).to_have_text("Alice joined the conversation.")

    reply = staff.get_by_label("Reply to the customer")
    reply.fill("Hi, I'm Alice from support. <b>How</b> can I help?")
    reply.press("Enter")
    staff_bubble = customer.locator(".message--staff").last
    expect(staff_bubble).to_contain_text("Alice (Support)")
    expect(staff_bubble).to_contain_text("Hi, I'm Alice from support. <b>How</b> can I help?")  # as text
    expect(staff.locator("#timeline .entry--staff").last).to_contain_text("Alice (Support)")

    say(customer, "I was charged twice for ticket 12345")
    expect(staff.locator("#timeline .entry--customer").last).to_contain_text("I was charged twice for ticket 12345")
    expect(chat).to_have_attribute("data-turn", "idle")
    expect(staff.locator("#timeline .entry--customer").last).to_be_in_viewport()  # the newest, beside the composer
    staff.screenshot(path=str(ARTIFACTS / "handoff-claimed-conversation.png"))
    customer.screenshot(path=str(ARTIFACTS / "handoff-customer.png"), full_page=True)
    assert model_turns(conversation_id) == calls_when_queued, "the assistant was never called while Alice held it"

    # A reload shows the same story and the same holder.
    customer.reload()
    expect(customer.locator(".message--staff")).to_have_count(1)
    expect(customer.locator(".handoff-event")).to_have_count(2)
    expect(banner).to_contain_text("Alice joined")

    staff.get_by_role("button", name="Return to assistant").click()
    expect(customer.locator(".handoff-event").last).to_have_text("Alice left \u2014 you're back with the assistant.")
    expect(banner).to_be_hidden()
    expect(staff.locator("#staff-composer")).to_be_hidden()
    expect(customer.get_by_role("button", name="Talk to a person")).to_be_enabled()

    say(customer, SEED_MESSAGES[2])
    answer = customer.locator("#chat-log .message--assistant:not(.message--staff):not(.is-streaming)").last
    expect(answer).to_contain_text("12345 is currently Open")
    assert model_turns(conversation_id) > calls_when_queued

    customer_context.close()
    staff_context.close()
    assert problems == []


def test_the_page_button_and_an_operator_without_the_right(browser: Browser, support_server: ChatServer) -> None:
    problems: list[str] = []
    customer_context, customer = new_page(browser, support_server.url, problems)
    customer.goto("/")  # the first thing this customer does is ask for a person: that starts the conversation
    customer.get_by_role("button", name="Talk to a person").click()
    banner = customer.locator("#chat-handoff")
    expect(banner).to_contain_text("You're number 1 in the queue")
    expect(banner).to_contain_text("No one from our support team is online right now")  # nobody has the console open
    expect(customer.locator(".handoff-event")).to_have_count(1)

    operator_context, page = new_page(browser, support_server.url, [])
    page.goto("/admin/login/?next=/operators/")
    page.get_by_label("Username").fill("operator")
    page.get_by_label("Password").fill(STAFF_PASSWORD)
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("link", name="Inbox")).to_have_count(0)
    response = page.goto("/operators/inbox/")
    assert response is not None and response.status == 403
    operator_context.close()
    customer_context.close()
    assert problems == []
