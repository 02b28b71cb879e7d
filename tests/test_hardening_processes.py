"""Process faults: daphne stopped with SIGTERM in the middle of a turn and started again, the database
dropping every connection while sockets are open, and many sockets dropped at once mid-turn."""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from channels import DEFAULT_CHANNEL_LAYER
from channels.db import database_sync_to_async
from channels.layers import channel_layers
from django.conf import settings as django_settings
from django.core.management import call_command
from django.db import connection
from pytest_django import DjangoDbBlocker

from chat import consumers, selectors
from chat.builtin import GREETING
from chat.models import Turn
from tests.support.browser import ARTIFACTS, STAFF_PASSWORD, ChatServer, daphne_environment, free_port
from tests.support.history import assert_valid_api_history
from tests.support.live import TIMEOUT, frames_until, greeted_conversation, resumed, say, socket
from tests.support.seed import SEED_MESSAGES
from tests.support.sockets import new_session_key, open_chat


@pytest.fixture(scope="module")
def slow_daphne(django_db_setup: None, django_db_blocker: DjangoDbBlocker) -> Iterator[ChatServer]:
    """daphne on the test database; its builtin model streams a word every 150 ms (a turn to interrupt),
    and its database connections persist (so a database restart would meet stale ones)."""
    ARTIFACTS.mkdir(exist_ok=True)
    port = free_port()
    log = ARTIFACTS / f"hardening-daphne-{port}.log"
    log.write_bytes(b"")
    with django_db_blocker.unblock():
        environment = daphne_environment() | {"CHAT_BUILTIN_DELAY_MS": "150", "DATABASE_CONN_MAX_AGE": "600"}
    server = ChatServer(port=port, environment=environment, log=log)
    server.start()
    yield server
    server.stop()
    log.unlink(missing_ok=True)


@pytest.fixture
def server(slow_daphne: ChatServer, transactional_db: None, settings) -> ChatServer:
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    if slow_daphne.process is None:
        slow_daphne.start()
    with open(os.devnull, "w") as quiet:
        call_command("seed_demo", password=STAFF_PASSWORD, stdout=quiet)
    return slow_daphne


def stored_history(conversation_id: uuid.UUID) -> list[dict[str, Any]]:
    turns = Turn.objects.filter(conversation_id=conversation_id, role__in=selectors.API_ROLES).order_by("seq")
    return [selectors.turn_as_message(turn) for turn in turns]


def test_daphne_stopped_mid_turn_leaves_a_valid_history_and_the_conversation_goes_on(server):
    session_key, conversation_id = greeted_conversation()
    with socket(server, session_key) as ws:
        resumed(ws)
        ws.send(json.dumps({"type": "message", "text": SEED_MESSAGES[1]}))
        # The verify_user step is stored; the spoken answer after it is streaming when the server stops.
        frames_until(ws, lambda frame: frame["type"] == "delta")
        server.stop()  # SIGTERM, then waits for the process to end

    raw = stored_history(conversation_id)
    assert_valid_api_history(raw)
    assert selectors.conversation_history(conversation_id=conversation_id) == raw, "nothing needed mending"
    roles = [message["role"] for message in raw]
    assert roles[:5] == ["system", "assistant", "user", "assistant", "tool"], roles
    assert "verified" not in (raw[-1].get("content") or ""), "the interrupted answer was not stored as complete"

    server.start()
    with socket(server, session_key) as ws:
        # With Redis, the dead process's turn lease expires on its own (runtime.LEASE_SECONDS): then idle.
        resumed(ws)
        frames = say(ws, SEED_MESSAGES[2])
        answer = [f["text"] for f in frames if f["type"] == "message" and f.get("role") == "assistant"]
        assert answer and "Open" in answer[-1], "still verified, over a new socket, on a new process"
    assert_valid_api_history(stored_history(conversation_id))


@pytest.mark.skipif(
    "postgresql" not in django_settings.DATABASES["default"]["ENGINE"],
    reason="SQLite has no server to restart; this runs in the PostgreSQL pass (DATABASE_URL=postgres://…)",
)
def test_the_next_message_works_after_the_database_drops_every_connection(server):
    session_key, conversation_id = greeted_conversation()
    with socket(server, session_key) as ws:
        resumed(ws)
        say(ws, SEED_MESSAGES[1])
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
            assert cursor.fetchone()[0] >= 1, "the server held a connection to drop"
        frames = say(ws, SEED_MESSAGES[2])
    assert not [f for f in frames if f["type"] == "error"], frames
    answer = [f["text"] for f in frames if f["type"] == "message" and f.get("role") == "assistant"]
    assert "Open" in answer[-1]
    assert_valid_api_history(stored_history(conversation_id))


# MANY SOCKETS AT ONCE (in process)


@pytest.mark.django_db(transaction=True)
async def test_fifty_sockets_dropped_mid_turn_leave_no_task_behind(chat_model):
    channel_layers.backends.clear()
    model = chat_model
    await asyncio.sleep(0)
    baseline = len(asyncio.all_tasks())
    running_before = len(consumers.running_turns)

    model.hold()
    sockets = [await open_chat(await new_session_key()) for _ in range(50)]
    await asyncio.wait_for(model.entered.wait(), timeout=TIMEOUT)
    assert len(consumers.running_turns) == running_before + 50, "every greeting is mid-turn"
    await asyncio.gather(*(communicator.disconnect() for communicator, _ in sockets))
    model.release()
    await asyncio.wait_for(asyncio.gather(*consumers.running_turns), timeout=TIMEOUT)

    for _ in range(200):  # bounded polling: the communicators' own tasks wind down
        if len(asyncio.all_tasks()) <= baseline:
            break
        await asyncio.sleep(0.01)
    assert len(asyncio.all_tasks()) <= baseline, [t.get_name() for t in asyncio.all_tasks()]
    assert len(consumers.running_turns) == running_before
    greeted = await database_sync_to_async(
        lambda: Turn.objects.filter(role="assistant", content=GREETING).values("conversation").distinct().count()
    )()
    assert greeted == 50, "every turn finished and was stored after its socket closed"
    layer = channel_layers.backends.pop(DEFAULT_CHANNEL_LAYER, None)
    if hasattr(layer, "close_pools"):
        await layer.close_pools()
