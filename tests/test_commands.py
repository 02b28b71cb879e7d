"""The management commands: ``seed_demo`` and ``chat --replay``."""

from __future__ import annotations

import io
import re

import pytest
from django.contrib.auth import authenticate
from django.contrib.auth.models import Group, User
from django.core.management import CommandError, call_command

from chat import builtin
from chat.models import Conversation, Turn
from tests.support.seed import SEED_MESSAGES
from tickets.models import ApiKey, Ticket
from tickets.services import customer_authenticate


def seed(*args: str) -> str:
    out = io.StringIO()
    call_command("seed_demo", *args, stdout=out)
    return out.getvalue()


def counts() -> dict[str, int]:
    return {
        "users": User.objects.count(),
        "staff": User.objects.filter(is_staff=True).count(),
        "superusers": User.objects.filter(is_superuser=True).count(),
        "keys": ApiKey.objects.count(),
        "tickets": Ticket.objects.count(),
        "groups": Group.objects.count(),
    }


@pytest.mark.django_db
def test_seed_demo_is_idempotent_and_its_passwords_and_keys_work():
    seed("--password", "pw-one-1")
    first = counts()
    assert first == {"users": 5, "staff": 3, "superusers": 1, "keys": 2, "tickets": 3, "groups": 2}
    seed("--password", "pw-two-2")
    assert counts() == first
    for username in ("admin", "staff", "operator"):
        assert authenticate(username=username, password="pw-two-2") is not None
        assert authenticate(username=username, password="pw-one-1") is None
    assert customer_authenticate(username="john_doe", raw_key="key") == User.objects.get(username="john_doe")
    assert customer_authenticate(username="jane_roe", raw_key="jane-key") == User.objects.get(username="jane_roe")
    tickets = {t.public_id: (t.customer.username, t.status, t.issue) for t in Ticket.objects.select_related("customer")}
    assert tickets == {
        "12345": ("john_doe", "Open", "Billing Query"),
        "67890": ("john_doe", "Closed", "Technical Support"),
        "24680": ("jane_roe", "In progress", "Password reset"),
    }
    assert User.objects.get(username="staff").groups.get().name == "Support staff"
    assert User.objects.get(username="operator").groups.get().name == "Operators"


@pytest.mark.django_db
def test_seed_demo_prints_random_passwords_once_and_keeps_them():
    output = seed()
    passwords = dict(re.findall(r"Staff account '(\w+)': password (\S+)", output))
    assert set(passwords) == {"admin", "staff", "operator"}
    again = seed()
    assert "password unchanged" in again or "its password is unchanged" in again
    assert not re.search(r"Staff account '\w+': password ", again)
    for username, password in passwords.items():
        assert authenticate(username=username, password=password) is not None


@pytest.mark.django_db(transaction=True)
def test_chat_replay_prints_the_seed_like_transcript(demo_data, tmp_path):
    script = tmp_path / "seed.txt"
    script.write_text("\n".join(SEED_MESSAGES) + "\n\n", encoding="utf-8")
    out, err = io.StringIO(), io.StringIO()
    call_command("chat", replay=str(script), stdout=out, stderr=err)
    lines = out.getvalue().splitlines()

    assert lines == [
        f"assistant: {builtin.GREETING}",
        f"user: {SEED_MESSAGES[0]}",
        f"assistant: {builtin.ASK_KEY.format(username='john_doe')}",
        f"user: {SEED_MESSAGES[1]}",
        "assistant: call function verify_user, with arguments {'username': 'john_doe', 'api_key': '****'}",
        'function response: {"success": true}',
        f"assistant: {builtin.VERIFIED.format(username='john_doe')}",
        f"user: {SEED_MESSAGES[2]}",
        "assistant: call function get_ticket_status, with arguments {'ticket_id': '12345'}",
        'function response: {"ticket_id": "12345", "status": "Open", "issue": "Billing Query"}',
        "assistant: Your ticket 12345 is currently Open; the issue is: Billing Query. "
        "Is there anything else I can help you with?",
        f"user: {SEED_MESSAGES[3]}",
        f"assistant: {builtin.GOODBYE}",
    ]
    conversation = Conversation.objects.get()
    assert f"Conversation {conversation.id} is stored" in err.getvalue()
    assert conversation.customer.username == "john_doe"
    assert Turn.objects.filter(conversation=conversation, role="user").count() == 4


@pytest.mark.django_db(transaction=True)
def test_chat_replay_reads_stdin(demo_data, monkeypatch):
    monkeypatch.setattr("sys.stdin", io.StringIO("hello\n"))
    out = io.StringIO()
    call_command("chat", replay="-", stdout=out, stderr=io.StringIO())
    lines = out.getvalue().splitlines()
    assert lines[:2] == [f"assistant: {builtin.GREETING}", "user: hello"]
    assert lines[2].startswith(f"assistant: {builtin.CAPABILITIES}")


@pytest.mark.django_db
def test_chat_replay_of_a_missing_file_is_a_command_error(tmp_path):
    with pytest.raises(CommandError, match=r"Cannot read .*missing\.txt: No such file or directory"):
        call_command("chat", replay=str(tmp_path / "missing.txt"), stdout=io.StringIO())
    assert not Conversation.objects.exists()


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("when", ["waiting for the customer", "mid-reply"])
def test_ctrl_c_in_the_terminal_chat_ends_cleanly_and_says_where_the_conversation_is(when: str) -> None:
    """SIGINT (Ctrl-C) while the command waits for input, or while the agent streams: no traceback, exit 0,
    and the conversation's id and home are printed."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from tests.support.browser import database_url

    environment = {**os.environ, "DATABASE_URL": database_url(), "PYTHONUNBUFFERED": "1", "CHAT_BACKEND": "builtin",
                   "CHAT_BUILTIN_DELAY_MS": "400" if when == "mid-reply" else "0"}
    environment.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
    chat = subprocess.Popen(
        [sys.executable, "manage.py", "chat"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, env=environment, text=True,
    )
    try:
        assert chat.stdout is not None
        if when == "waiting for the customer":
            assert chat.stdout.readline().startswith("assistant: Hello")  # the greeting is done: input() waits
            time.sleep(0.3)  # into input(): there is no event to wait on for that
        else:
            deadline = time.monotonic() + 20
            while not Conversation.objects.exists() and time.monotonic() < deadline:
                time.sleep(0.05)  # the greeting streams, one word each 400 ms
        chat.send_signal(signal.SIGINT)
        _, err = chat.communicate(timeout=20)
    finally:
        chat.kill()
    assert chat.returncode == 0, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    assert "Ctrl-C quits" in err
    conversation = Conversation.objects.get()
    assert f"Conversation {conversation.id} is stored in the" in err
    assert f"/operators/conversations/{conversation.id}/" in err
