"""Brute force on ``verify_user``: a lockout per username, conversation and client address that holds
across server processes (the counters are rows in the shared database), and that tells nothing about
whether a username exists."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid

import pytest
from channels.db import database_sync_to_async
from django.conf import settings as django_settings

from chat.agent import ToolCall
from chat.models import Conversation
from chat.toolbox import ToolContext, get_toolbox
from tests.support.browser import database_url
from tests.support.driver import Chat
from tickets.tools import LOCKED

pytestmark = pytest.mark.django_db(transaction=True)

# Runs in another Python process on the same database: five wrong keys for each username given.
OTHER_PROCESS = """
import json, sys, uuid, django
django.setup()
from chat.agent import ToolCall
from chat.toolbox import get_toolbox
from chat.toolbox import ToolContext
answers = []
for username in sys.argv[1:]:
    context = ToolContext(uuid.uuid4(), None, "203.0.113.50")
    for n in range(5):
        call = ToolCall("call_1", "verify_user", json.dumps({"username": username, "api_key": f"wrong-{n}"}))
        answers.append(json.loads(get_toolbox().run(call, context).content))
print(json.dumps(answers))
"""


def verify(username: str, api_key: str, *, address: str = "198.51.100.20") -> dict:
    context = ToolContext(uuid.uuid4(), None, address)
    call = ToolCall("call_1", "verify_user", json.dumps({"username": username, "api_key": api_key}))
    return json.loads(get_toolbox().run(call, context).content)


def fail_in_another_process(*usernames: str) -> list[dict]:
    environment = os.environ | {
        "DATABASE_URL": database_url(),
        "DJANGO_SETTINGS_MODULE": os.environ.get("DJANGO_SETTINGS_MODULE", "supportsite.settings"),
    }
    environment.pop("DATABASE_TEST_NAME", None)
    result = subprocess.run(
        [sys.executable, "-c", OTHER_PROCESS, *usernames],
        cwd=django_settings.BASE_DIR,
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.splitlines()[-1])


def test_failures_in_another_process_lock_the_username_from_that_address_even_for_the_right_key(demo_data, settings):
    settings.VERIFY_MAX_FAILURES = 5
    answers = fail_in_another_process("john_doe", "nobody_by_this_name")
    assert answers == [{"success": False}] * 10, "an unknown username answers exactly like a wrong key"

    # This process, another conversation, the attacker's address: the username is locked there.
    assert verify("john_doe", "key", address="203.0.113.50") == {"success": False, "error": LOCKED}
    assert verify("nobody_by_this_name", "key", address="203.0.113.50") == {"success": False, "error": LOCKED}, (
        "same answer: no oracle"
    )
    assert verify("jane_roe", "jane-key") == {"success": True}, "other customers are not locked out"
    assert not Conversation.objects.filter(customer__username="john_doe").exists()


def test_failures_from_one_address_in_another_process_lock_that_address_here(demo_data, settings):
    settings.VERIFY_MAX_FAILURES_PER_ADDRESS = 10
    fail_in_another_process("user_a", "user_b")  # 10 failures from 203.0.113.50, spread over usernames
    assert verify("jane_roe", "jane-key", address="203.0.113.50") == {"success": False, "error": LOCKED}
    assert verify("jane_roe", "jane-key", address="203.0.113.51") == {"success": True}


async def test_the_customer_hears_about_the_lockout_and_stays_unverified(demo_data, settings):
    settings.VERIFY_MAX_FAILURES = 3
    chat = await Chat.start(greet=True)
    for n in range(3):
        await chat.respond(f'my username is "john_doe" and my API key is "wrong-{n}"')
    frames = await chat.respond('my username is "john_doe" and my API key is "key"')
    reply = [f["text"] for f in frames if f["type"] == "message" and f.get("role") == "assistant"][-1]
    assert "too many attempts" in reply
    assert [f["result"] for f in frames if f["type"] == "tool" and f["status"] != "started"] == [
        {"success": False, "error": LOCKED}
    ]
    verified = await database_sync_to_async(lambda: Conversation.objects.get(id=chat.id).customer_id)()
    assert verified is None
