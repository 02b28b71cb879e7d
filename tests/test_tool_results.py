"""A tool's failure is data: a flag stored beside the result, read by replay, review and the page."""

from __future__ import annotations

import json

import pytest
from channels.db import database_sync_to_async

from chat.models import Turn
from chat.selectors import conversation_replay_frames
from chat.services import conversation_start, turns_append
from tests.support.driver import Chat
from tests.support.models import calls, say_text

pytestmark = pytest.mark.django_db(transaction=True)


async def test_a_failed_call_is_stored_with_its_flag_and_result(chat_model, demo_data):
    chat_model.script(calls(("get_ticket_status", {"ticket_id": "12345"})), say_text("Please verify first."))
    chat = await Chat.start()
    frames = await chat.respond("ticket 12345?")
    tool = await database_sync_to_async(Turn.objects.get)(conversation_id=chat.id, role=Turn.Role.TOOL)
    assert tool.is_error is True
    assert tool.result == json.loads(tool.content) and "not verified" in tool.result["error"]
    finished = [f for f in frames if f["type"] == "tool" and f["status"] != "started"]
    assert [f["status"] for f in finished] == ["error"]
    replayed = [f for f in await database_sync_to_async(conversation_replay_frames)(conversation_id=chat.id)
                if f["type"] == "tool"]
    assert replayed[0]["status"] == "error" and replayed[0]["result"] == tool.result


def test_replay_reads_the_flag_not_the_keys_of_the_result(db):
    """A tool may return data with an "error" key and still have succeeded, and the other way round."""
    conversation = conversation_start(session_key="s" * 32)
    call = {"id": "call_1", "type": "function", "function": {"name": "lookup", "arguments": "{}"}}
    turns_append(
        conversation_id=conversation.id,
        messages=[
            {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": "call_1", "content": '{"error": "none", "ok": true}'},
        ],
        tool_results={"call_1": (False, {"error": "none", "ok": True})},
    )
    (frame,) = conversation_replay_frames(conversation_id=conversation.id)
    assert frame["status"] == "done" and frame["replay"] is True and frame["name"] == "lookup"
