"""Crossings from async code to the database (``chat.db``): side by side on PostgreSQL's database threads,
kept on one thread where a transaction must stay on it, and a kept connection checked once a while
rather than once a crossing, and at once when the database dropped it."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import psycopg
import pytest
from asgiref.sync import SyncToAsync, ThreadSensitiveContext, async_to_sync
from django.db import connection, connections

from chat import db
from chat.db import database_sync_to_async
from tests.support.driver import Chat
from tests.support.models import calls, say_text
from tests.support.sockets import attached, new_session_key, say, until_idle

ROOT = Path(__file__).resolve().parent.parent
on_postgresql = pytest.mark.skipif(connection.vendor != "postgresql", reason="needs a PostgreSQL server")


def slow_ident() -> int:
    time.sleep(0.05)  # long enough that crossings started together overlap
    return threading.get_ident()


@pytest.mark.django_db  # a crossing checks its thread's connection (connections_ready), which may be open
async def test_crossings_run_side_by_side_on_the_database_threads(settings):
    settings.DATABASE_THREADS = 3
    meeting = threading.Barrier(3, timeout=5)  # passed only by three crossings running at once

    def meet() -> str:
        meeting.wait()
        return threading.current_thread().name

    names = await asyncio.gather(*(database_sync_to_async(meet)() for _ in range(3)))
    assert len(set(names)) == 3
    assert all(name.startswith("database") for name in names), names


@pytest.mark.django_db  # a crossing checks its thread's connection (connections_ready), which may be open
async def test_with_one_database_thread_crossings_take_turns_on_it(settings):
    settings.DATABASE_THREADS = 1
    idents = await asyncio.gather(*(database_sync_to_async(slow_ident)() for _ in range(4)))
    assert len(set(idents)) == 1


@pytest.mark.django_db  # a crossing checks its thread's connection (connections_ready), which may be open
async def test_a_thread_sensitive_context_keeps_its_crossings_on_its_own_thread(settings):
    """What an evaluation run needs: its transaction lives on one connection, so on one thread."""
    settings.DATABASE_THREADS = 4
    async with ThreadSensitiveContext():
        inside = await asyncio.gather(*(database_sync_to_async(slow_ident)() for _ in range(6)))
    outside = await asyncio.gather(*(database_sync_to_async(slow_ident)() for _ in range(6)))
    assert len(set(inside)) == 1
    assert len(set(outside)) > 1


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("chat_model")
async def test_a_sockets_messages_cross_to_a_thread_only_for_the_database_work_they_do(monkeypatch):
    """Channels' dispatch ran ``close_old_connections`` on the database thread before every message of a
    socket (connect, each frame, disconnect), and its ``AuthMiddleware`` looked the user up at every
    handshake: a crossing each, queued behind the turns'. A customer's socket is anonymous; its only
    crossings are the database work itself, which tidies the connection around itself."""
    crossed: list[str] = []
    original = SyncToAsync.__call__

    def recording(self, *args, **kwargs):
        crossed.append(getattr(self.func, "__name__", repr(self.func)))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(SyncToAsync, "__call__", recording)
    communicator = await attached(await new_session_key())
    await say(communicator, "Hello there")
    await communicator.disconnect()
    assert crossed, "the socket did no database work at all"
    assert "close_old_connections" not in crossed, str(crossed)
    assert "get_user" not in crossed, str(crossed)


@pytest.mark.django_db(transaction=True)
async def test_a_tool_call_crosses_to_ask_first_only_when_the_tool_changes_data(chat_model, monkeypatch):
    """A call of a tool that only reads has nothing to prepare: it crosses once, to run."""
    crossed: list[str] = []
    original = SyncToAsync.__call__

    def recording(self, *args, **kwargs):
        crossed.append(getattr(self.func, "__name__", repr(self.func)))
        return original(self, *args, **kwargs)

    chat = await Chat.start()
    monkeypatch.setattr(SyncToAsync, "__call__", recording)
    chat_model.queue(calls(("get_ticket_status", {"ticket_id": "12345"})), say_text("Please verify first."))
    await chat.say("Where is ticket 12345?")
    assert crossed.count("run") == 1 and "prepare" not in crossed, crossed
    crossed.clear()
    chat_model.queue(calls(("create_ticket", {"issue": "Refund", "description": "Twice charged."})), say_text("No."))
    await chat.say("Open a ticket for me.")
    assert "prepare" in crossed, crossed  # asked first (and refused: nobody is verified)


@pytest.mark.django_db(transaction=True)
async def test_a_message_to_a_free_conversation_is_stored_by_its_turns_first_crossing(chat_model, monkeypatch):
    """No turn runs: the message is counted, queued, taken and stored as the customer's turn in one crossing
    (one transaction). A turn runs: the next message is stored at once, before it waits behind it."""
    from chat.models import Turn, WaitingMessage

    crossed: list[str] = []
    original = SyncToAsync.__call__

    def recording(self, *args, **kwargs):
        crossed.append(getattr(self.func, "__name__", "?"))  # a repr could query, here in async code
        return original(self, *args, **kwargs)

    communicator = await attached(await new_session_key())
    monkeypatch.setattr(SyncToAsync, "__call__", recording)
    chat_model.queue(say_text("Hello!"), say_text("First answer."), say_text("Second answer."))
    await say(communicator, "Hello there")
    assert crossed[0] == "turn_start_arriving" and "customer_message_arrive" not in crossed, crossed

    crossed.clear()
    chat_model.hold()
    await communicator.send_json_to({"type": "message", "text": "first"})
    await asyncio.wait_for(chat_model.entered.wait(), 10)  # its turn is at the model, holding the conversation
    await communicator.send_json_to({"type": "message", "text": "second"})
    for _ in range(500):
        if await WaitingMessage.objects.filter(text="second").aexists():
            break
        await asyncio.sleep(0.01)
    else:
        pytest.fail("the message that must wait was not stored before waiting")
    assert crossed.count("customer_message_arrive") == 1, crossed
    chat_model.release()
    frames = await until_idle(communicator)
    frames += await until_idle(communicator)
    texts = [f["text"] for f in frames if f["type"] == "message" and f["role"] == "assistant"]
    assert texts == ["First answer.", "Second answer."]
    users = [t.content async for t in Turn.objects.filter(role="user").order_by("seq")]
    assert users == ["Hello there", "first", "second"]
    assert not await WaitingMessage.objects.aexists()


@pytest.mark.django_db(transaction=True)
async def test_a_message_whose_turn_fails_to_start_is_kept_for_the_next_turn(chat_model, monkeypatch):
    """The turn's first step, which would have stored it, fails: the customer is told, and the message is
    stored to wait instead, so the next turn answers it first."""
    from django.db import OperationalError

    from chat import services
    from chat.models import Turn, WaitingMessage

    communicator = await attached(await new_session_key())
    original = services.turn_take

    def failing_once(*args, **kwargs):
        monkeypatch.setattr(services, "turn_take", original)
        raise OperationalError("could not serialize access")

    monkeypatch.setattr(services, "turn_take", failing_once)
    frames = await say(communicator, "Where is my parcel?")
    assert [f["code"] for f in frames if f["type"] == "error"] == ["internal_error"]
    assert [w.text async for w in WaitingMessage.objects.all()] == ["Where is my parcel?"]
    chat_model.queue(say_text("About your parcel."), say_text("And hello."))
    await say(communicator, "Hello?")
    users = [t.content async for t in Turn.objects.filter(role="user").order_by("seq")]
    assert users[0] == "Where is my parcel?"  # the kept one, answered first


# A TOOL STEP'S WRITE, BEHIND: the next model call does not wait for it; everything after it in the turn does.


@pytest.fixture
def tool_steps_stored(monkeypatch) -> list[str]:
    """What the database steps of a turn did, in order (a tool step's append, tool runs), as they ended."""
    from chat import services
    from chat.toolbox import Toolbox

    done: list[str] = []
    append, run = services.turns_append, Toolbox.run

    def recorded_append(**kwargs):
        stored = append(**kwargs)
        done.append("tool step stored" if kwargs.get("tool_results") else kwargs["messages"][0]["role"])
        return stored

    def recorded_run(self, call, context, **kwargs):
        done.append(f"ran {call.name}")
        return run(self, call, context, **kwargs)

    monkeypatch.setattr(services, "turns_append", recorded_append)
    monkeypatch.setattr(Toolbox, "run", recorded_run)
    return done


@pytest.mark.django_db(transaction=True)
async def test_a_tool_steps_write_goes_on_while_the_model_is_called_again(chat_model, monkeypatch, tool_steps_stored):
    """The tool step's store waits here until the model has been called again: the turn does not wait for
    it to call the model, and its answer is stored after it, in order."""
    from chat import services

    second_call = threading.Event()
    complete = chat_model.complete

    async def entering(messages, tools, on_delta):
        if chat_model.calls == 1:
            second_call.set()
        return await complete(messages, tools, on_delta)

    append = services.turns_append

    def held_until_the_model_is_called(**kwargs):
        if kwargs.get("tool_results"):
            assert second_call.wait(10), "the turn waited for the tool step's write to call the model"
        return append(**kwargs)

    monkeypatch.setattr(chat_model, "complete", entering)
    monkeypatch.setattr(services, "turns_append", held_until_the_model_is_called)
    chat = await Chat.start()
    chat_model.queue(calls(("get_ticket_status", {"ticket_id": "12345"})), say_text("Please verify first."))
    frames = await chat.say("Where is ticket 12345?")
    assert [f["text"] for f in frames if f["type"] == "message"][-1] == "Please verify first."
    assert [(t.role, t.is_error) for t in await chat.turns()][-4:] == [
        ("user", False), ("assistant", False), ("tool", True), ("assistant", False)
    ]
    assert tool_steps_stored == ["ran get_ticket_status", "tool step stored", "assistant"]


@pytest.mark.django_db(transaction=True)
async def test_a_tool_runs_only_once_the_write_before_it_is_done(chat_model, monkeypatch, tool_steps_stored):
    from chat import services

    append = services.turns_append

    def slow(**kwargs):
        if kwargs.get("tool_results"):
            time.sleep(0.3)  # far longer than the scripted model takes to call the next tool
        return append(**kwargs)

    monkeypatch.setattr(services, "turns_append", slow)
    chat = await Chat.start()
    chat_model.queue(
        calls(("get_ticket_status", {"ticket_id": "12345"})),
        calls(("get_ticket_status", {"ticket_id": "67890"})),
        say_text("Please verify first."),
    )
    await chat.say("Where are tickets 12345 and 67890?")
    assert tool_steps_stored == [
        "ran get_ticket_status", "tool step stored", "ran get_ticket_status", "tool step stored", "assistant"
    ]


@pytest.mark.django_db(transaction=True)
async def test_a_tool_steps_write_that_fails_fails_the_turn_and_the_next_message_works(chat_model, monkeypatch):
    """The failure surfaces at the turn's next step: the customer is told, nothing after it is stored, the
    conversation stays usable."""
    from django.db import OperationalError

    from chat import services

    append = services.turns_append

    def failing_once(**kwargs):
        if kwargs.get("tool_results"):
            monkeypatch.setattr(services, "turns_append", append)
            raise OperationalError("the database went away")
        return append(**kwargs)

    monkeypatch.setattr(services, "turns_append", failing_once)
    chat = await Chat.start()
    chat_model.queue(calls(("get_ticket_status", {"ticket_id": "12345"})), say_text("Please verify first."))
    frames = await chat.respond("Where is ticket 12345?")
    assert [f["code"] for f in frames if f["type"] == "error"] == ["internal_error"]
    assert "Please verify first." not in [f.get("text") for f in frames if f["type"] == "message"]
    turns = await chat.turns()
    assert [(t.role, t.error_code) for t in turns][-2:] == [("user", ""), ("error", "internal_error")]
    chat_model.replies.clear()  # whatever the failed turn left unsaid
    chat_model.queue(say_text("Here again."))
    assert [f["text"] for f in await chat.say("Hello?") if f["type"] == "message"][-1] == "Here again."


@pytest.mark.parametrize(
    ("database_url", "threads"),
    [("sqlite:////tmp/threads.sqlite3", "1"), ("postgres://postgres@127.0.0.1:5432/test", "4")],
)
def test_postgresql_gets_four_database_threads_and_sqlite_one(database_url, threads):
    environment = {key: value for key, value in os.environ.items() if key != "DATABASE_THREADS"}
    environment.update(DATABASE_URL=database_url, DJANGO_SETTINGS_MODULE="supportsite.settings")
    shown = subprocess.run(
        [sys.executable, "-c", "from django.conf import settings; print(settings.DATABASE_THREADS)"],
        cwd=ROOT, env=environment, capture_output=True, text=True, check=True,
    )
    assert shown.stdout.strip() == threads


# THE KEPT CONNECTION'S HEALTH CHECK


@pytest.fixture
def kept_connections(monkeypatch):
    """Connections kept between crossings and health-checked, as in production; closed after the test."""
    monkeypatch.setitem(connection.settings_dict, "CONN_MAX_AGE", 600)
    monkeypatch.setitem(connection.settings_dict, "CONN_HEALTH_CHECKS", True)
    connection.close()  # the test's own connection reopens with these settings
    checks: list[int] = []
    wrapper = type(connections["default"])  # the backend's DatabaseWrapper, every thread's connection
    usable = wrapper.is_usable
    monkeypatch.setattr(wrapper, "is_usable", lambda self: checks.append(1) or usable(self))
    yield checks
    connection.close()


def backend_pid() -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()" if connection.vendor == "postgresql" else "SELECT 1")
        return cursor.fetchone()[0]


@pytest.mark.django_db(transaction=True)
def test_a_kept_connection_is_checked_once_a_while_not_once_a_crossing(kept_connections, monkeypatch):
    crossing = async_to_sync(database_sync_to_async(backend_pid))
    for _ in range(5):
        crossing()
    assert len(kept_connections) == 1  # the first crossing opened it; the second checked it; then trusted
    monkeypatch.setattr(db, "CHECK_EVERY_SECONDS", 0.0)
    crossing()
    crossing()
    assert len(kept_connections) == 3


def drop(pid: int) -> None:
    """The database ends the connection, as a restart or a failover would."""
    params = connection.get_connection_params()
    with psycopg.connect(
        dbname=params["dbname"], user=params.get("user"), host=params.get("host"), port=params.get("port"),
        autocommit=True,
    ) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", [pid])
        while admin.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s", [pid]).fetchone():
            time.sleep(0.01)


@on_postgresql
@pytest.mark.django_db(transaction=True)
def test_a_connection_the_database_dropped_is_replaced(kept_connections, monkeypatch):
    crossing = async_to_sync(database_sync_to_async(backend_pid))
    first = crossing()
    drop(first)
    monkeypatch.setattr(db, "CHECK_EVERY_SECONDS", 0.0)  # its check is due: it fails and is replaced
    second = crossing()
    assert second != first

    checks = len(kept_connections)
    monkeypatch.setattr(db, "CHECK_EVERY_SECONDS", 3600.0)
    assert crossing() == second
    assert len(kept_connections) == checks, "checked a moment ago and quiet since: no check"
    drop(second)
    # Checked a moment ago, but the server's goodbye waits on the socket: the poll sees it, the check runs.
    third = crossing()
    assert third not in {first, second}
    assert len(kept_connections) == checks + 1
