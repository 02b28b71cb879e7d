"""The Evaluations page in a real Chromium against a real daphne: two stored runs side by side, a failed
run's transcript one click away, and nothing for a visitor who is not an operator."""

from __future__ import annotations

import io
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.core.management import call_command
from playwright.sync_api import Browser, expect

from chat.operators.access import roles_ensure
from tests.support.browser import (
    ARTIFACTS,
    STAFF_PASSWORD,
    ChatServer,
    chromium,
    server_logins,
)

pytestmark = pytest.mark.browser

TIMEOUT_MS = 10_000
expect.set_options(timeout=TIMEOUT_MS)

# The second run's suite breaks one expectation on purpose, so that run has a failed scenario.
FAILING_SUITE = """
scenarios:
  - name: seed-flow
    customer:
      messages: ["my username is john_doe and my api key is key", "12345"]
    expect: {final_reply_contains: ["Billing Query"]}
  - name: hello-only
    customer: {messages: ["hello"]}
    expect: {final_reply_contains: ["a phrase the builtin model never says"]}
"""


def log_in(page, username: str) -> None:
    page.goto("/operators/evaluations/")
    expect(page).to_have_url(re.compile(r"/admin/login/\?next=/operators/evaluations/"))
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(STAFF_PASSWORD)
    page.get_by_role("button", name="Log in").click()


@pytest.fixture
def two_stored_runs(chat_server: ChatServer, tmp_path: Path) -> ChatServer:
    """The server, an operator and a staff member (no review permission) who can log in, two runs."""
    roles_ensure()
    server_logins("operator", "staff")
    call_command("evaluate", "--only", "seed-flow", "--only", "hello-only", stdout=io.StringIO(), stderr=io.StringIO())
    suite = tmp_path / "failing.yaml"
    suite.write_text(FAILING_SUITE, encoding="utf-8")
    call_command("evaluate", "--suite", str(suite), "--k", "2", stdout=io.StringIO(), stderr=io.StringIO())
    return chat_server


@pytest.fixture
def browser(two_stored_runs) -> Iterator[Browser]:
    with chromium() as browser:
        yield browser


def test_operator_compares_runs_and_opens_a_failed_transcript(browser: Browser, two_stored_runs) -> None:
    context = browser.new_context(viewport={"width": 1280, "height": 900}, base_url=two_stored_runs.url)
    page = context.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda error: problems.append(str(error)))
    log_in(page, "operator")
    expect(page.get_by_role("heading", name="Evaluations")).to_be_visible()
    expect(page.locator("table.evaluations thead th.run")).to_have_count(2)
    seed_row = page.locator('tr[data-scenario="seed-flow"]')
    expect(seed_row.locator("td")).to_have_text(["2/2", "1/1", "100%"])
    hello_row = page.locator('tr[data-scenario="hello-only"]')
    expect(hello_row.locator("td")).to_have_text(["0/2", "1/1", "33%"])
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "operators-evaluations.png"), full_page=True)

    hello_row.get_by_role("link", name="0/2").click()
    expect(page.get_by_role("heading", name="hello-only: 0/2 passed")).to_be_visible()
    expect(page.locator(".failed-attempt")).to_have_count(2)
    first = page.locator(".failed-attempt").first
    expect(first).to_contain_text("does not say 'a phrase the builtin model never says'")
    expect(first.locator(".entry--customer")).to_have_text(re.compile("hello"))
    expect(first.locator(".entry--agent").last).to_contain_text("status of your support tickets")
    page.screenshot(path=str(ARTIFACTS / "operators-evaluation-failed.png"), full_page=True)
    assert problems == []
    context.close()


def test_staff_without_the_review_permission_get_nothing(browser: Browser, two_stored_runs) -> None:
    context = browser.new_context(base_url=two_stored_runs.url)
    page = context.new_page()
    log_in(page, "staff")
    expect(page.locator("body")).to_contain_text(re.compile("403|Forbidden", re.I))
    expect(page.locator("table.evaluations")).to_have_count(0)
    response = page.goto("/operators/evaluations/")
    assert response is not None and response.status == 403
    context.close()
