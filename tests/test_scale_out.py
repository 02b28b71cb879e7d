"""Several server processes: the seed conversation through two daphne processes (a reconnect landing on
the other process resumes it, its turns stay in order), and a customer message stored when it arrives,
answered by another process after the one that received it was killed."""

from __future__ import annotations

import json
import os
import signal
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from django.contrib.sessions.backends.db import SessionStore
from django.core.management import call_command
from pytest_django import DjangoDbBlocker

from chat import builtin, selectors
from chat.models import Conversation, Turn, WaitingMessage
from tests.support.browser import ARTIFACTS, STAFF_PASSWORD, ChatServer, daphne_environment, free_port
from tests.support.history import assert_valid_api_history
from tests.support.live import TIMEOUT, frames_until, say, socket, until_idle
from tests.support.seed import SEED_MESSAGES

# The demo key is the word "key": every place it stands as a word is masked.
MASKED_CREDENTIALS = 'Sure, my username is "john_doe" and my API **** is: "****"'


def start_daphne(name: str, **environment: str) -> ChatServer:
    port = free_port()
    log = ARTIFACTS / f"scale-out-{name}-{port}.log"
    log.write_bytes(b"")
    server = ChatServer(port=port, environment=daphne_environment() | environment, log=log)
    server.start()
    return server


@pytest.fixture(scope="module")
def two_daphnes(django_db_setup: None, django_db_blocker: DjangoDbBlocker) -> Iterator[list[ChatServer]]:
    """Two daphne processes on the test database (and the same Redis, when ``REDIS_URL`` is set)."""
    ARTIFACTS.mkdir(exist_ok=True)
    with django_db_blocker.unblock():
        servers = [start_daphne("a"), start_daphne("b")]
    yield servers
    for server in servers:
        server.stop()
        server.log.unlink(missing_ok=True)


@pytest.fixture
def servers(two_daphnes: list[ChatServer], transactional_db: None, settings: Any) -> list[ChatServer]:
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    for server in two_daphnes:
        if server.process is None:
            server.start()
    with open(os.devnull, "w") as quiet:
        call_command("seed_demo", password=STAFF_PASSWORD, stdout=quiet)
    return two_daphnes


def new_session() -> str:
    session = SessionStore()
    session.create()
    return session.session_key


def answers(frames: list[dict[str, Any]]) -> list[str]:
    return [f["text"] for f in frames if f["type"] == "message" and f.get("role") == "assistant"]


def stored(conversation_id: uuid.UUID) -> list[dict[str, Any]]:
    turns = Turn.objects.filter(conversation_id=conversation_id, role__in=selectors.API_ROLES).order_by("seq")
    return [selectors.turn_as_message(turn) for turn in turns]


def test_the_seed_conversation_moves_between_two_processes_and_stays_in_order(servers):
    first, second = servers
    session_key = new_session()
    with socket(first, session_key) as ws:
        opened = until_idle(ws)
        assert opened[0]["type"] == "conversation" and opened[0]["resumed"] is False
        assert answers(opened) == [builtin.GREETING]
        assert builtin.ASK_KEY.format(username="john_doe") in answers(say(ws, SEED_MESSAGES[0]))
    with socket(second, session_key) as ws:  # the reconnect lands on the other process
        resumed = until_idle(ws)
        assert resumed[0] == {"type": "conversation", "id": opened[0]["id"], "resumed": True}
        assert [f["text"] for f in resumed if f["type"] == "message"][:2] == [builtin.GREETING, SEED_MESSAGES[0]]
        assert answers(say(ws, SEED_MESSAGES[1])) == [builtin.VERIFIED.format(username="john_doe")]
    with socket(first, session_key) as ws:
        until_idle(ws)
        (answer,) = answers(say(ws, SEED_MESSAGES[2]))
        assert "12345" in answer and "Open" in answer

    conversation = Conversation.objects.get(id=opened[0]["id"])
    assert conversation.customer.username == "john_doe"
    history = stored(conversation.id)
    assert_valid_api_history(history)
    users = [m["content"] for m in history if m["role"] == "user"]
    assert users == [SEED_MESSAGES[0], MASKED_CREDENTIALS, SEED_MESSAGES[2]]
    assert not WaitingMessage.objects.exists()


def test_two_tabs_on_two_processes_take_turns_one_at_a_time(servers):
    """Messages sent at once from tabs on both processes are each answered once, their turns never overlap
    (the Redis turn lease), and every tab ends up seeing the stored order."""
    if not os.environ.get("REDIS_URL"):
        if os.environ.get("CI", "").lower() == "true" and os.environ.get("DATABASE_URL", "").startswith("postgres"):
            pytest.fail("the PostgreSQL + Redis pass must run the two-process test")
        pytest.skip("turns of one conversation are exclusive across processes only through Redis")
    first, second = servers
    session_key = new_session()
    with socket(first, session_key) as tab_a:
        until_idle(tab_a)  # the greeting
        with socket(second, session_key) as tab_b:
            until_idle(tab_b)
            for tab, text in ((tab_a, "My username is john_doe."), (tab_b, "I need help with a ticket."),
                              (tab_a, "What can you do?")):
                tab.send(json.dumps({"type": "message", "text": text}))
            seen = [frames_until(tab, counting_idles(3)) for tab in (tab_a, tab_b)]
    conversation_id = Conversation.objects.get(session_key=session_key).id
    history = stored(conversation_id)
    assert_valid_api_history(history)
    roles = [m["role"] for m in history if m["role"] != "system"]
    assert roles == ["assistant", "user", "assistant", "user", "assistant", "user", "assistant"], roles
    assert sorted(m["content"] for m in history if m["role"] == "user") == sorted(
        ["My username is john_doe.", "I need help with a ticket.", "What can you do?"]
    )
    stored_answers = [m["content"] for m in history if m["role"] == "assistant"][1:]
    assert [answers(frames) for frames in seen] == [stored_answers, stored_answers]  # the stored order
    assert not WaitingMessage.objects.exists()


def counting_idles(wanted: int) -> Any:
    count = 0

    def done(frame: dict[str, Any]) -> bool:
        nonlocal count
        count += frame["type"] == "idle"
        return count == wanted

    return done


def test_a_message_waiting_when_its_process_is_killed_is_answered_by_the_other(servers):
    first, second = servers
    slow = start_daphne("slow", CHAT_BUILTIN_DELAY_MS="150")
    try:
        session_key = new_session()
        with socket(second, session_key) as ws:
            until_idle(ws)  # the greeting, on a fast process
        with socket(slow, session_key) as ws:
            until_idle(ws)
            ws.send(json.dumps({"type": "message", "text": SEED_MESSAGES[0]}))
            frames_until(ws, lambda frame: frame["type"] == "delta")  # its answer is streaming
            ws.send(json.dumps({"type": "message", "text": SEED_MESSAGES[1]}))
            deadline = time.monotonic() + TIMEOUT
            while not WaitingMessage.objects.exists():  # stored on arrival, waiting behind the turn
                assert time.monotonic() < deadline, "the second message was never stored"
                time.sleep(0.02)
            os.kill(slow.process.pid, signal.SIGKILL)
            slow.process.wait()
            slow.process = None
        with socket(first, session_key) as ws:
            frames = frames_until(ws, lambda frame: frame.get("role") == "assistant" and frame["type"] == "message"
                                  and frame["text"] == builtin.VERIFIED.format(username="john_doe"))
            assert frames[0]["resumed"] is True
            until_idle(ws)
    finally:
        slow.stop()
        slow.log.unlink(missing_ok=True)
    conversation = Conversation.objects.get(session_key=session_key)
    assert conversation.customer.username == "john_doe"
    history = stored(conversation.id)
    assert_valid_api_history(history)
    users = [m["content"] for m in history if m["role"] == "user"]
    assert users == [SEED_MESSAGES[0], MASKED_CREDENTIALS]  # each once, in order
    assert not WaitingMessage.objects.exists()
