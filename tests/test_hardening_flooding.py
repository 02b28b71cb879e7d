"""Flooding: messages per minute, open sockets and new conversations per browser session and per client
address; a conversation length cap; the history sent to the model trimmed to a token budget; long tool
results cut. Over a limit the customer gets a clear ``error`` frame and the model is not called."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from typing import Any

import pytest
from channels.testing import WebsocketCommunicator
from django.conf import settings as django_settings

from chat import consumers, limits
from chat.agent import ModelReply, ToolCall
from chat.history import CUT_NOTE, estimate_tokens, trim_history
from chat.prompts import SYSTEM_PROMPT
from tests.support.browser import database_url
from tests.support.driver import Chat
from tests.support.history import assert_valid_api_history, stored_messages, stored_turns
from tests.support.models import ScriptedModel, calls, say_text
from tests.support.sockets import (
    TIMEOUT,
    an_address,
    attached,
    connect,
    new_session_key,
    of_type,
    open_chat,
    say,
    until_idle,
)

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("no_turn_left_running")]



@pytest.fixture
def model(chat_model) -> ScriptedModel:
    return chat_model


async def socket(session_key: str | None, *, address: str | None = None, new: bool = False) -> WebsocketCommunicator:
    communicator, connected, detail = await connect(session_key, address=address, new=new)
    assert connected, detail
    return communicator


async def refused_socket(session_key: str | None, code: str, **kwargs: Any) -> dict[str, Any]:
    """The socket is accepted, told why, then closed with 4429."""
    communicator = await socket(session_key, **kwargs)
    frame = await communicator.receive_json_from(timeout=TIMEOUT)
    assert frame["type"] == "error" and frame["code"] == code and frame["refused"] is True, frame
    closed = await communicator.receive_output(timeout=TIMEOUT)
    assert closed == {"type": "websocket.close", "code": limits.CLOSE_CODE}
    return frame


# MESSAGES


async def test_messages_over_the_per_session_minute_limit_are_refused_without_a_model_call(model, settings):
    settings.CHAT_MESSAGES_PER_MINUTE = 3
    communicator = await attached(await new_session_key())
    for n in range(3):
        assert not of_type(await say(communicator, f"hello {n}"), "error")
    calls_before = model.calls
    frames = await say(communicator, "one too many")
    assert frames == [{"type": "error", "code": "rate_limited", "message": limits.RATE_LIMITED, "refused": True},
                      {"type": "idle"}]
    assert model.calls == calls_before
    await communicator.disconnect()


async def test_messages_over_the_per_address_limit_are_refused_across_sessions(model, settings):
    settings.CHAT_MESSAGES_PER_MINUTE_PER_ADDRESS = 2
    address = an_address()
    first = await attached(await new_session_key(), address=address)
    second = await attached(await new_session_key(), address=address)
    other = await attached(await new_session_key(), address=an_address())
    assert not of_type(await say(first, "one"), "error")
    assert not of_type(await say(second, "two"), "error")
    assert of_type(await say(second, "three"), "error")[0]["code"] == "rate_limited"
    assert not of_type(await say(other, "another address is not affected"), "error")
    for communicator in (first, second, other):
        await communicator.disconnect()


async def test_a_refusal_during_a_running_turn_keeps_the_turn_going(demo_data, model, settings):
    settings.CHAT_MESSAGES_PER_MINUTE = 1
    communicator = await attached(await new_session_key())
    model.hold()
    await communicator.send_json_to({"type": "message", "text": "first"})
    await asyncio.wait_for(model.entered.wait(), timeout=TIMEOUT)
    await communicator.send_json_to({"type": "message", "text": "second"})
    before = []
    while (frame := await communicator.receive_json_from(timeout=TIMEOUT))["type"] != "error":
        before.append(frame["type"])
    assert "idle" not in before
    assert frame["code"] == "rate_limited" and frame["refused"] is True
    while not await communicator.receive_nothing(timeout=0.05):
        assert (await communicator.receive_json_from())["type"] != "idle", "no idle: the first turn is still running"
    model.release()
    rest = await until_idle(communicator)
    assert [f["role"] for f in rest if f["type"] == "message"] == ["assistant"]
    await communicator.disconnect()


async def test_a_conversation_holds_at_most_five_turns_and_others_are_not_held_back(demo_data, model, settings):
    """A client sending faster than its turns run is refused past five running or waiting turns of its own
    conversation, counted per conversation: another conversation's message still goes through meanwhile,
    and the refused messages are neither stored nor answered."""
    settings.CHAT_MESSAGES_PER_MINUTE = 100
    flooder, conversation_id = await open_chat(await new_session_key())
    await until_idle(flooder)
    other = await attached(await new_session_key())
    model.hold()
    for n in range(7):
        await flooder.send_json_to({"type": "message", "text": f"message {n}"})
        if n == 0:
            await asyncio.wait_for(model.entered.wait(), timeout=TIMEOUT)
    refused = []
    while len(refused) < 2:
        frame = await flooder.receive_json_from(timeout=TIMEOUT)
        if frame["type"] == "error":
            refused.append(frame)
    assert [f["code"] for f in refused] == ["too_many_messages"] * 2, "messages 5 and 6: five turns already queued"
    assert all(f["refused"] is True and f["message"] == consumers.TOO_MANY for f in refused)
    assert consumers._turns_queued(conversation_id) == 5
    await other.send_json_to({"type": "message", "text": "another customer"})  # not held back by the flood
    model.release()
    assert not of_type(await until_idle(other), "error")
    await asyncio.wait_for(asyncio.gather(*consumers.running_turns), timeout=TIMEOUT)
    assert consumers._turns_queued(conversation_id) == 0, "a finished turn no longer counts"
    customer_texts = [text for role, text in await stored_turns(conversation_id) if role == "user"]
    assert customer_texts == [f"message {n}" for n in range(5)]
    for communicator in (flooder, other):
        await communicator.disconnect()


def admit_in_another_process(session_key: str, count: int) -> None:
    code = (
        "import sys, django; django.setup(); from chat import limits\n"
        f"[limits.message_admit(session_key={session_key!r}, client_address=None) for _ in range({count})]"
    )
    environment = os.environ | {"DATABASE_URL": database_url()}
    environment.pop("DATABASE_TEST_NAME", None)
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=django_settings.BASE_DIR, env=environment, capture_output=True,
        text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr[-3000:]


async def test_message_counters_hold_across_server_processes(model, settings):
    settings.CHAT_MESSAGES_PER_MINUTE = 20  # the other process reads its own settings: the default, 20
    session_key = await new_session_key()
    communicator = await attached(session_key)
    await asyncio.to_thread(admit_in_another_process, session_key, 20)
    frames = await say(communicator, "hello")
    assert of_type(frames, "error")[0]["code"] == "rate_limited", "the other process's messages counted here"
    await communicator.disconnect()


# SOCKETS AND CONVERSATIONS


async def test_open_sockets_per_session_are_capped_and_given_back_on_close(model, settings):
    settings.CHAT_SOCKETS_PER_SESSION = 2
    session_key = await new_session_key()
    first = await attached(session_key)
    second = await attached(session_key)
    frame = await refused_socket(session_key, "too_many_connections")
    assert frame["message"] == limits.TOO_MANY_CONNECTIONS
    await second.disconnect()
    third = await attached(session_key)  # the closed socket was given back
    await first.disconnect()
    await third.disconnect()


async def test_open_sockets_per_address_are_capped_whatever_the_session(model, settings):
    settings.CHAT_SOCKETS_PER_ADDRESS = 2
    address = an_address()
    sockets = [await attached(None, address=address), await attached(None, address=address)]
    await refused_socket(None, "too_many_connections", address=address)
    sockets.append(await attached(None, address=an_address()))
    for communicator in sockets:
        await communicator.disconnect()


async def test_new_conversations_per_hour_are_capped_per_session_and_per_address(model, settings):
    settings.CHAT_CONVERSATIONS_PER_HOUR = 2
    settings.CHAT_CONVERSATIONS_PER_HOUR_PER_ADDRESS = 3
    session_key, address = await new_session_key(), an_address()
    for _ in range(2):
        await (await attached(session_key, new=True)).disconnect()
    calls_before = model.calls
    frame = await refused_socket(session_key, "rate_limited", new=True)
    assert frame["message"] == limits.TOO_MANY_CONVERSATIONS
    assert model.calls == calls_before, "no greeting for a refused conversation"
    await (await attached(session_key)).disconnect()  # resuming the current one is still fine

    await (await attached(None, address=address)).disconnect()
    await (await attached(None, address=address)).disconnect()
    await (await attached(None, address=address)).disconnect()
    await refused_socket(None, "rate_limited", address=address)


# LENGTH


async def test_a_conversation_over_its_length_cap_asks_for_a_new_one(model, settings):
    settings.CHAT_MAX_CUSTOMER_MESSAGES = 2
    session_key = await new_session_key()
    communicator = await attached(session_key)
    await say(communicator, "one")
    await say(communicator, "two")
    calls_before = model.calls
    frames = await say(communicator, "three")
    assert frames[0]["code"] == "conversation_too_long" and "start a new conversation" in frames[0]["message"]
    assert frames[-1] == {"type": "idle"} and model.calls == calls_before
    await communicator.disconnect()
    fresh = await attached(session_key, new=True)
    assert not of_type(await say(fresh, "hello again"), "error")
    await fresh.disconnect()


# WHAT THE MODEL RECEIVES


def history_of(turns: int, size: int = 400) -> list[dict[str, Any]]:
    history: list[dict[str, Any]] = [{"role": "system", "content": SYSTEM_PROMPT}]
    for n in range(turns):
        history.append({"role": "user", "content": f"{n} " + "u" * size})
        call = ToolCall(f"call_{n}", "get_ticket_status", json.dumps({"ticket_id": "1" * (n % 5 + 3)}))
        history.append({"role": "assistant", "content": None, "tool_calls": [call.as_api()]})
        history.append({"role": "tool", "tool_call_id": f"call_{n}", "content": "t" * size})
        history.append({"role": "assistant", "content": "a" * size})
    return history


@pytest.mark.parametrize("budget", [0, 50, 150, 333, 700, 2000, 10**6])
def test_trimming_keeps_the_system_prompt_the_newest_messages_and_whole_tool_steps(budget):
    history = history_of(12)
    trimmed = trim_history(history, budget)
    assert trimmed[0] == history[0]
    assert trimmed[1:] == history[len(history) - len(trimmed) + 1 :], "a suffix: the newest messages"
    assert trimmed[1]["role"] != "tool"
    assert_valid_api_history(trimmed)
    if len(trimmed) > 2:
        assert sum(map(estimate_tokens, trimmed)) <= max(budget, estimate_tokens(history[0]) + 200)
    if budget >= sum(map(estimate_tokens, history)):
        assert trimmed == history


async def test_the_model_receives_the_trimmed_history_and_the_whole_one_is_stored(chat_model, demo_data, settings):
    settings.CHAT_HISTORY_TOKEN_BUDGET = 1500
    settings.CHAT_MESSAGES_PER_MINUTE = 100
    model = chat_model.script()
    chat = await Chat.start(greet=True)
    for n in range(12):
        model.queue(calls(("get_ticket_status", {"ticket_id": "12345"})), say_text("x" * 1200))
        await chat.respond(f"message {n} " + "y" * 1200)
    last = model.requests[-1]
    assert last[0]["role"] == "system" and last[1]["role"] != "tool"
    assert_valid_api_history(last)
    assert sum(map(estimate_tokens, last)) <= 1500
    stored = await stored_messages(chat.id)
    assert len(stored) > len(last) + 20, "the whole conversation is stored"
    assert stored[-len(last) : -1] == last[1:], "the newest messages, as stored (the answer came after)"


async def test_an_oversized_tool_result_is_cut_with_a_note(chat_model, demo_data, settings):
    settings.CHAT_MAX_TOOL_RESULT_CHARS = 20
    model = chat_model.script(calls(("get_ticket_status", {"ticket_id": "12345"})), ModelReply("ok"))
    chat = await Chat.start()
    await chat.respond("hi")
    result = model.requests[-1][-1]
    full = '{"error": "The customer is not verified yet.'
    assert result["role"] == "tool"
    head, note = result["content"][:20], result["content"][20:]
    assert head == full[:20]
    assert note.startswith("\n[cut: this result was ")
    assert note.endswith(" characters long; only the first 20 are shown]")
    assert note == CUT_NOTE.format(total=int(note.split("was ")[1].split(" ")[0]), kept=20)
    stored = await stored_messages(chat.id)
    assert stored[-2]["content"] == result["content"], "stored as the model saw it"
