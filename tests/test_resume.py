"""A socket attaching to a conversation while a turn stores and sends its steps shows each step once
(``chat.resume``): not lost between the replay it reads and the group it joins, not shown twice.

Each test plays the turn's side by hand, at the moment the race needs: it stores rows as the runtime does
(``services.turns_append``) and sends their frames as a turn does (``fanout.ConversationFanout``, which
hands them straight to this process's sockets or through the layer). Runs on the in-memory layer and on
Redis (``REDIS_URL``), through the whole ASGI stack.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from chat import fanout, protocol, services
from chat.consumers import ChatConsumer, conversation_group
from chat.db import database_sync_to_async
from chat.turnlock import conversation_lock
from tests.support.sockets import new_session_key, of_type, open_chat, say, until_idle

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("no_turn_left_running")]

CALL = {"id": "call_resume_1", "type": "function", "function": {"name": "get_ticket_status", "arguments": "{}"}}


async def conversation_with_history(session_key: str) -> uuid.UUID:
    """A conversation greeted and answered once, its socket gone."""
    first, conversation_id = await open_chat(session_key)
    await until_idle(first)
    await say(first, "Hello")
    await first.disconnect()
    return conversation_id


async def stored(conversation_id: uuid.UUID, *messages: dict[str, Any], tool_results=None) -> list[int]:
    turns = await database_sync_to_async(services.turns_append)(
        conversation_id=conversation_id, messages=list(messages), tool_results=tool_results
    )
    return [turn.seq for turn in turns]


async def sent(conversation_id: uuid.UUID, frame: dict[str, Any]) -> None:
    """The frame, sent the way a turn sends it (from "another socket")."""
    from channels.layers import get_channel_layer

    await fanout.ConversationFanout(get_channel_layer(), conversation_group(conversation_id), origin="a turn")(frame)


def texts(frames: list[dict[str, Any]], text: str) -> list[dict[str, Any]]:
    return [frame for frame in frames if frame.get("text") == text]


async def test_an_answer_stored_and_sent_before_the_socket_joined_is_caught_up(chat_model, monkeypatch):
    """The answer of a turn is stored and sent after the socket read its replay, before it joined the group:
    the frame reached nobody; the socket shows it from the rows stored since its replay, once."""
    session_key = await new_session_key()
    conversation_id = await conversation_with_history(session_key)
    join = fanout.group_join
    answer = "Your ticket 12345 is open."

    async def join_after_a_turn_answered(layer: Any, group: str, channel_name: str) -> None:
        (seq,) = await stored(conversation_id, {"role": "assistant", "content": answer})
        await sent(conversation_id, protocol.message("assistant", answer, seq=seq))
        await join(layer, group, channel_name)

    monkeypatch.setattr(fanout, "group_join", join_after_a_turn_answered)
    second, resumed_id = await open_chat(session_key)
    frames = await until_idle(second)
    await second.disconnect()
    assert resumed_id == conversation_id
    assert len(texts(frames, answer)) == 1, frames
    (caught,) = texts(frames, answer)
    assert caught["replay"] is True and caught["role"] == "assistant"
    assert frames[-1] == {"type": "idle"} and frames.index(caught) == len(frames) - 2, frames


async def test_an_answer_read_with_the_replay_and_sent_after_the_join_is_shown_once(chat_model, monkeypatch):
    """The answer was stored before the socket read its replay, and its frame sent after the socket joined
    (handed straight to the socket, held until the replay is out): the replay shows it, the frame is dropped."""
    session_key = await new_session_key()
    conversation_id = await conversation_with_history(session_key)
    answer = "Your ticket 12345 is open."
    (seq,) = await stored(conversation_id, {"role": "assistant", "content": answer})
    replay = ChatConsumer._live_replay

    async def replay_while_the_turn_sends_it(self: ChatConsumer, frames: list[dict[str, Any]]) -> list[dict[str, Any]]:
        await sent(conversation_id, protocol.message("assistant", answer, seq=seq))
        return await replay(self, frames)

    monkeypatch.setattr(ChatConsumer, "_live_replay", replay_while_the_turn_sends_it)
    second, _ = await open_chat(session_key)
    frames = await until_idle(second)
    await second.disconnect()
    assert texts(frames, answer) == [
        {"type": "message", "role": "assistant", "text": answer, "replay": True, "seq": seq}
    ], frames


async def test_tool_steps_sent_before_the_join_and_stored_later_come_before_the_turns_idle(chat_model, monkeypatch):
    """A turn runs as the socket attaches. Its tool step and the words of the reply that called the tool
    are shown before they are stored (behind the next model call): sent before the socket joined, stored
    after its catch-up read. The socket shows them, once each, before the turn's ``idle``."""
    session_key = await new_session_key()
    conversation_id = await conversation_with_history(session_key)
    words = "Let me look that up."
    result = {"ticket_id": "12345", "status": "Open"}
    join = fanout.group_join

    async def join_after_the_steps_went_out(layer: Any, group: str, channel_name: str) -> None:
        await sent(conversation_id, protocol.message("assistant", words, calls=[CALL["id"]]))
        await sent(conversation_id, protocol.tool_finished(
            call_id=CALL["id"], name="get_ticket_status", failed=False, result=result
        ))
        await join(layer, group, channel_name)

    monkeypatch.setattr(fanout, "group_join", join_after_the_steps_went_out)
    async with conversation_lock(conversation_id):  # the running turn
        second, _ = await open_chat(session_key)
        replayed = await until_replay_done(second)  # attached: its catch-up read is done
        assert not texts(replayed, words), "not stored yet"
        await stored(
            conversation_id,
            {"role": "assistant", "content": words, "tool_calls": [CALL]},
            {"role": "tool", "tool_call_id": CALL["id"], "content": "{}"},
            tool_results={CALL["id"]: (False, result)},
        )
        answer = "It is open."
        (seq,) = await stored(conversation_id, {"role": "assistant", "content": answer})
        await sent(conversation_id, protocol.message("assistant", answer, seq=seq))
        await sent(conversation_id, protocol.idle())
        frames = await until_idle(second)
    await second.disconnect()
    assert [f["text"] for f in frames if f["type"] == "message"] == [answer, words], frames
    (step,) = of_type(frames, "tool")
    assert step["id"] == CALL["id"] and step["status"] == "done" and step["result"] == result
    assert texts(frames, words)[0]["replay"] is True and step["replay"] is True
    assert frames[-1] == {"type": "idle"}


async def test_steps_shown_live_are_not_shown_again_by_the_catch_up_before_idle(chat_model, monkeypatch):
    """Sent after the socket joined, stored after its catch-up read: shown live once; the catch-up before
    the running turn's idle reads their rows and sends nothing again."""
    session_key = await new_session_key()
    conversation_id = await conversation_with_history(session_key)
    words = "Let me look that up."
    result = {"ticket_id": "12345", "status": "Open"}
    async with conversation_lock(conversation_id):
        second, _ = await open_chat(session_key)
        await until_replay_done(second)
        await sent(conversation_id, protocol.message("assistant", words, calls=[CALL["id"]]))
        await sent(conversation_id, protocol.tool_started(call_id=CALL["id"], name="get_ticket_status", arguments={}))
        await sent(conversation_id, protocol.tool_finished(
            call_id=CALL["id"], name="get_ticket_status", failed=False, result=result
        ))
        await stored(
            conversation_id,
            {"role": "assistant", "content": words, "tool_calls": [CALL]},
            {"role": "tool", "tool_call_id": CALL["id"], "content": "{}"},
            tool_results={CALL["id"]: (False, result)},
        )
        await sent(conversation_id, protocol.idle())
        frames = await until_idle(second)
    await second.disconnect()
    assert [f["type"] for f in frames] == ["message", "tool", "tool", "idle"], frames
    assert not any(frame.get("replay") for frame in frames)


async def test_a_live_turns_frames_name_the_rows_the_replay_shows(chat_model, demo_data):
    """The customer's message, the answer and each tool step carry the number of their row live (the words
    and steps shown before they are stored, their calls' ids) as the replay does after a reload."""
    from tests.support.seed import SEED_MESSAGES

    session_key = await new_session_key()
    first, _ = await open_chat(session_key)
    live = await until_idle(first)
    for text in SEED_MESSAGES[1:3]:
        live += await say(first, text)
    await first.disconnect()
    second, _ = await open_chat(session_key)
    replay = await until_idle(second)
    await second.disconnect()
    numbered = {frame["seq"]: frame for frame in replay if "seq" in frame}
    messages = [frame for frame in live if frame["type"] == "message"]
    assert len(messages) == 3, live  # the greeting, the answers (the sender's own messages are not echoed)
    for frame in messages:
        assert numbered[frame["seq"]]["text"] == frame["text"], (frame, replay)
    steps = [frame for frame in live if frame["type"] == "tool" and frame["status"] != "started"]
    assert [step["id"] for step in steps] == [step["id"] for step in of_type(replay, "tool")]
    assert len(numbered) == len([f for f in replay if f["type"] in ("message", "tool")]), replay


async def until_replay_done(communicator) -> list[dict[str, Any]]:
    """The frames a socket sends as it attaches to a conversation whose turn runs (no idle): up to a quiet moment."""
    frames = []
    while not await communicator.receive_nothing(timeout=0.3):
        frames.append(await communicator.receive_json_from())
    return frames


# THE OPERATORS' LIVE TIMELINE: the page shows the rows up to its ``data-last-seq``; its socket says so.


def timeline_socket(conversation_id: uuid.UUID, headers, query: str):
    from channels.testing import WebsocketCommunicator

    from supportsite.asgi import application

    return WebsocketCommunicator(
        application, f"/ws/operators/conversations/{conversation_id}/{query}", headers=headers
    )


async def test_an_operators_timeline_gets_the_rows_stored_after_its_page_was_read(monkeypatch):
    """The page was read up to a row; a turn then stored and sent its steps before the page's socket joined.
    The socket sends those rows (the customer's as stored, masked) once; their frames sent again are dropped;
    a new step is relayed as usual."""
    from tests.support.history import last_seq
    from tests.support.sockets import staff_headers, watched_conversation

    conversation_id = await watched_conversation()
    await stored(conversation_id, {"role": "assistant", "content": "Hello! How can I help?"})
    page_upto = await last_seq(conversation_id)  # what the page rendered
    question = "is 12345 open?"
    answer = "Ticket 12345 is open."
    seqs = await stored(
        conversation_id, {"role": "user", "content": question}, {"role": "assistant", "content": answer}
    )
    await sent(conversation_id, protocol.message("assistant", answer, seq=seqs[1]))  # nobody listens yet

    operator = timeline_socket(conversation_id, await staff_headers("operator"), f"?after={page_upto}")
    connected, _ = await operator.connect(timeout=10)
    assert connected
    caught = [await operator.receive_json_from(timeout=10) for _ in range(2)]
    assert caught == [
        {"type": "message", "role": "user", "text": question, "replay": True, "seq": seqs[0], "masked": True},
        {"type": "message", "role": "assistant", "text": answer, "replay": True, "seq": seqs[1]},
    ]
    await sent(conversation_id, protocol.message("assistant", answer, seq=seqs[1]))  # sent late: shown already
    assert await operator.receive_nothing(timeout=0.3)
    (later,) = await stored(conversation_id, {"role": "assistant", "content": "Anything else?"})
    await sent(conversation_id, protocol.message("assistant", "Anything else?", seq=later))
    assert (await operator.receive_json_from(timeout=10))["seq"] == later
    await operator.disconnect()


@pytest.mark.parametrize("query", ["", "?after=", "?after=abc", "?after=-1", "?after=1&after=2", "?after=" + "9" * 12])
async def test_a_timeline_socket_without_a_row_number_catches_nothing_up(query):
    """Without a usable ``after`` (an older page, a made-up URL) the socket relays live frames only, as before."""
    from tests.support.sockets import staff_headers, watched_conversation

    conversation_id = await watched_conversation()
    await stored(conversation_id, {"role": "assistant", "content": "Hello! How can I help?"})
    operator = timeline_socket(conversation_id, await staff_headers("operator"), query)
    connected, _ = await operator.connect(timeout=10)
    assert connected
    assert await operator.receive_nothing(timeout=0.3)
    await operator.disconnect()
