"""The customer's chat page as a person sees it in Chromium: its messages, status lines, and talking in it."""

from __future__ import annotations

from playwright.sync_api import Browser, BrowserContext, ConsoleMessage, Locator, Page, Response, expect

GREETING = "welcome to customer support"
TIMEOUT_MS = 10_000


def agent_messages(page: Page) -> Locator:
    """Finished assistant messages (a reply still streaming is not one yet)."""
    return page.locator("#chat-log .message--assistant:not(.is-streaming) .bubble")


def user_messages(page: Page) -> Locator:
    return page.locator("#chat-log .message--user .bubble")


def status_lines(page: Page) -> Locator:
    return page.locator("#chat-log .status-line")


def open_chat(page: Page) -> None:
    """Open the page (which starts nothing) and start writing: that starts the conversation, greeting first."""
    page.goto("/")
    expect(page.locator("#chat")).to_have_attribute("data-connection", "ready")
    expect(page.locator("#chat-status-text")).to_have_text("Online")
    composer = page.get_by_label("Your message")
    composer.press("H")
    composer.press("Backspace")
    expect(page.locator("#chat")).to_have_attribute("data-connection", "online")
    expect(agent_messages(page)).to_have_count(1)
    expect(agent_messages(page).first).to_contain_text(GREETING)
    expect(page.locator("#chat")).to_have_attribute("data-turn", "idle")


def say(page: Page, text: str) -> None:
    """Type ``text``, send it with Enter, and wait until the agent has answered and gone idle."""
    replies_before = agent_messages(page).count()
    composer = page.get_by_label("Your message")
    composer.fill(text)
    composer.press("Enter")
    expect(composer).to_have_value("")
    expect(user_messages(page).last).to_have_text(text)
    expect(agent_messages(page)).to_have_count(replies_before + 1)
    expect(page.locator("#chat")).to_have_attribute("data-turn", "idle")
    expect(page.locator("#chat-typing")).to_be_hidden()


def new_page(browser: Browser, url: str, problems: list[str]) -> tuple[BrowserContext, Page]:
    context = browser.new_context(viewport={"width": 1280, "height": 900}, base_url=url)
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    page.on("console", lambda message: record_console(message, problems))
    page.on("pageerror", lambda error: problems.append(str(error)))
    page.on("response", lambda response: record_response(response, problems))
    return context, page


def record_console(message: ConsoleMessage, problems: list[str]) -> None:
    # A failed load is reported with its URL by record_response; the one it cannot see is the
    # browser's own /favicon.ico request on the admin login page, which the site does not serve.
    if message.type == "error" and not message.text.startswith("Failed to load resource"):
        problems.append(f"console: {message.text}")


def record_response(response: Response, problems: list[str]) -> None:
    if response.status >= 400:
        problems.append(f"{response.status} {response.url}")
