"""A deployer adds their own tool without touching the project's code: ``CHAT_EXTRA_TOOLS`` (or
``CHAT_TOOLS`` in a local settings module) names it, ``manage.py check`` fails on a path that does not
import or a function the toolbox cannot describe, and the README's example (``tests/deployer_shop``) works."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from django.conf import settings as django_settings

from chat import toolbox
from chat.checks import check_tools
from tests.deployer_shop.tools import NOT_VERIFIED
from tests.support.driver import Chat
from tests.support.models import calls, say_text

EXAMPLE = "tests.deployer_shop.tools.get_order_status"
ROOT = Path(django_settings.BASE_DIR)


def manage_check(extra_tools: str) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, "CHAT_EXTRA_TOOLS": extra_tools}
    return subprocess.run(
        [sys.executable, "manage.py", "check"], cwd=ROOT, env=environment, capture_output=True, text=True, timeout=120
    )


def test_the_environment_variable_adds_a_tool_and_check_passes():
    result = manage_check(EXAMPLE)
    assert result.returncode == 0, result.stderr
    code = "import django; django.setup(); from django.conf import settings; print(settings.CHAT_TOOLS[-1])"
    shown = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                           env={**os.environ, "CHAT_EXTRA_TOOLS": f" {EXAMPLE} ,", "DJANGO_SETTINGS_MODULE":
                                "supportsite.settings"})
    assert shown.stdout.strip() == EXAMPLE


def test_a_misspelt_extra_tool_fails_check_before_any_customer():
    result = manage_check("tests.deployer_shop.tools.get_order_stats")
    assert result.returncode != 0
    assert "chat.E001" in result.stderr and "get_order_stats" in result.stderr


def test_a_function_the_toolbox_cannot_describe_fails_check():
    result = manage_check("tests.test_checks.undescribable")
    assert result.returncode != 0 and "chat.E002" in result.stderr


def bad_summary(context, ticket_id: str) -> dict:
    """A write tool whose summary names a parameter it does not have."""
    return {}


bad_summary.changes_data = toolbox.ChangesData("Close ticket {ticket}")


def test_a_write_tool_whose_summary_names_no_parameter_fails_check(settings):
    settings.CHAT_TOOLS = [*settings.CHAT_TOOLS, "tests.test_deployer_tools.bad_summary"]
    errors = check_tools()
    assert [error.id for error in errors] == ["chat.E002"] and "ticket" in errors[0].msg


@pytest.fixture
def shop(settings):
    settings.CHAT_TOOLS = [*settings.CHAT_TOOLS, EXAMPLE]
    toolbox.get_toolbox.cache_clear()
    yield
    toolbox.get_toolbox.cache_clear()


def test_the_model_is_given_the_deployers_tool(shop):
    schemas = {schema["function"]["name"]: schema["function"] for schema in toolbox.get_toolbox().schemas}
    assert schemas["get_order_status"]["description"] == (
        "Get the status of one of the verified customer's orders by its order number."
    )
    assert schemas["get_order_status"]["parameters"]["required"] == ["order_id"]
    assert check_tools() == []


@pytest.mark.django_db(transaction=True)
async def test_a_verified_customer_gets_their_order_and_nobody_else_does(shop, demo_data, chat_model):
    chat_model.script(
        calls(("get_order_status", {"order_id": "A-1001"})), say_text("Please verify first."),
        calls(("verify_user", {"username": "jane_roe", "api_key": "jane-key"})), say_text("Verified."),
        calls(("get_order_status", {"order_id": "a-1001"}), ("get_order_status", {"order_id": "A-2002"})),
        say_text("Here it is."),
    )
    chat = await Chat.start()
    results = []
    for text in ("order A-1001?", "jane_roe / jane-key", "and my orders?"):
        frames = await chat.respond(text)
        results += [(f["status"], f["result"]) for f in frames if f["type"] == "tool" and f["status"] != "started"]
    assert results == [
        ("error", {"error": NOT_VERIFIED}),
        ("done", {"success": True}),
        ("error", {"error": "No order a-1001 was found for this customer."}),  # john's order, for jane
        ("done", {"order_id": "A-2002", "status": "Packing", "carrier": None, "expected": "2026-11-27"}),
    ]


def test_the_readme_shows_the_tested_example():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    example = (ROOT / "tests" / "deployer_shop" / "tools.py").read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", readme, re.S)
    body = example.split('"""', 2)[2].lstrip("\n")  # the code after the module docstring
    assert any(body.strip() in block for block in blocks), "README's get_order_status differs from the tested one"
    assert json.dumps("CHAT_EXTRA_TOOLS")[1:-1] in readme
