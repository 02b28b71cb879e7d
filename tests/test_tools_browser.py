"""Tickets in a real Chromium against a real daphne, with the builtin model: a verified customer lists
their tickets, opens one after confirming the card (by keyboard), comments on it and reads the reply a
staff member typed on the ticket's admin page; a "No" on the card, even after a reload, runs nothing.
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
from tests.support.page import agent_messages, open_chat, say, status_lines

pytestmark = pytest.mark.browser

TIMEOUT_MS = 10_000
expect.set_options(timeout=TIMEOUT_MS)


@pytest.fixture
def desk(chat_server: ChatServer) -> ChatServer:
    """The server with the roles and a support staff member who can log in there (PBKDF2: the server
    knows only the default hashers)."""
    roles_ensure()
    server_logins("staff")
    return chat_server


@pytest.fixture
def browser(desk: ChatServer) -> Iterator[Browser]:
    """Started after the data is ready: sync Playwright's loop would make Django refuse the ORM."""
    with chromium() as browser:
        yield browser


def new_page(browser: Browser, desk: ChatServer, problems: list[str]) -> Page:
    context = browser.new_context(viewport={"width": 1280, "height": 900}, base_url=desk.url)
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    page.on("pageerror", lambda error: problems.append(str(error)))
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" and "favicon" not in m.text else None)
    return page


def ask_for_a_change(page: Page, text: str):
    """Send ``text`` and wait for the confirmation card it brings."""
    composer = page.get_by_label("Your message")
    composer.fill(text)
    composer.press("Enter")
    card = page.locator('#chat-log .confirm-card[data-state="pending"]')
    expect(card).to_have_count(1)
    expect(page.locator("#chat-typing")).to_be_hidden()  # waiting for the customer, not typing
    return card


def verified(page: Page) -> None:
    open_chat(page)
    say(page, "username john_doe, api key key")
    expect(agent_messages(page).last).to_contain_text("you're verified")


def test_list_open_comment_and_read_the_staff_reply(browser: Browser, desk: ChatServer) -> None:
    problems: list[str] = []
    customer = new_page(browser, desk, problems)
    verified(customer)

    say(customer, "can you list my tickets?")
    expect(agent_messages(customer).last).to_contain_text("12345 (Open): Billing Query")
    expect(agent_messages(customer).last).to_contain_text("67890 (Closed): Technical Support")

    card = ask_for_a_change(customer, "open a new ticket: my invoice is wrong")
    expect(card.locator(".confirm-summary")).to_have_text("Open a new support ticket: \u201cMy invoice is wrong\u201d")
    expect(card.locator(".confirm-args")).to_contain_text("my invoice is wrong")
    ARTIFACTS.mkdir(exist_ok=True)
    customer.screenshot(path=str(ARTIFACTS / "chat-confirm-card.png"))
    replies = agent_messages(customer).count()
    yes = card.get_by_role("button", name="Yes, do it")
    yes.focus()  # the keyboard's way: focus, then Enter
    yes.press("Enter")
    expect(agent_messages(customer)).to_have_count(replies + 1)
    expect(customer.locator("#chat-log .confirm-card")).to_have_attribute("data-state", "approved")
    expect(customer.locator(".confirm-card .confirm-status")).to_have_text("Approved: doing it now.")
    opened = agent_messages(customer).last.text_content() or ""
    ticket_id = re.search(r"opened ticket ([0-9]{6})", opened).group(1)
    expect(status_lines(customer).last).to_have_text(f"Opened ticket {ticket_id}")

    card = ask_for_a_change(customer, f"add to {ticket_id} that I was charged twice")
    card.get_by_role("button", name="Yes, do it").click()
    expect(agent_messages(customer).last).to_contain_text(f"added your comment to ticket {ticket_id}")

    staff = new_page(browser, desk, problems)
    staff.goto("/admin/")
    staff.get_by_label("Username").fill("staff")
    staff.get_by_label("Password").fill(STAFF_PASSWORD)
    staff.get_by_role("button", name="Log in").click()
    staff.goto(f"/admin/tickets/ticket/?q={ticket_id}")
    staff.get_by_role("link", name=ticket_id, exact=True).click()
    expect(staff.locator("body")).to_contain_text("I was charged twice")
    staff.locator("#id_comments-2-0-text").fill("We refunded the second charge.")
    staff.locator('input[name="_save"]').click()
    expect(staff.locator(".messagelist")).to_contain_text("was changed successfully")
    staff.goto(f"/admin/tickets/ticket/?q={ticket_id}")
    staff.get_by_role("link", name=ticket_id, exact=True).click()
    conversation = staff.locator(".looked-up-in a").first  # the conversation that opened it, one click away
    expect(staff.locator(".looked-up-in")).to_contain_text("created")
    conversation.click()
    expect(staff.locator("body")).to_contain_text("open a new ticket: my invoice is wrong")  # its turns

    say(customer, f"what's the status of {ticket_id}?")
    expect(agent_messages(customer).last).to_contain_text("We refunded the second charge.")
    assert problems == []


def test_no_on_the_card_runs_nothing_even_after_a_reload(browser: Browser, desk: ChatServer) -> None:
    problems: list[str] = []
    customer = new_page(browser, desk, problems)
    verified(customer)
    card = ask_for_a_change(customer, "open a ticket saying the printer is on fire")
    expect(card.locator(".confirm-summary")).to_contain_text("The printer is on fire")

    customer.reload()  # the card survives it, still waiting
    card = customer.locator('#chat-log .confirm-card[data-state="pending"]')
    expect(card).to_have_count(1)
    replies = agent_messages(customer).count()
    card.get_by_role("button", name="No").click()
    expect(agent_messages(customer)).to_have_count(replies + 1)
    expect(agent_messages(customer).last).to_have_text("All right, I haven't opened the ticket.")
    expect(customer.locator(".confirm-card")).to_have_attribute("data-state", "refused")
    expect(status_lines(customer).last).to_have_text("Not done: you said no")

    say(customer, "list my tickets")
    expect(agent_messages(customer).last).to_contain_text("Billing Query")
    expect(agent_messages(customer).last).not_to_contain_text("printer")
    assert problems == []
