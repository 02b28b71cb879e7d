"""Stored rows, and the model API's rules a stored history must keep."""

from __future__ import annotations

import uuid
from typing import Any

from channels.db import database_sync_to_async

from chat import selectors
from chat.history import messages_valid_for_api
from chat.models import Turn

Message = dict[str, Any]


@database_sync_to_async
def stored_messages(conversation_id: uuid.UUID) -> list[Message]:
    """Every API-role row, as stored, in order (no mending)."""
    turns = Turn.objects.filter(conversation_id=conversation_id, role__in=selectors.API_ROLES).order_by("seq")
    return [selectors.turn_as_message(turn) for turn in turns]


@database_sync_to_async
def stored_turns(conversation_id: uuid.UUID) -> list[tuple[str, str]]:
    """(role, content) of every turn after the system prompt, in order."""
    turns = Turn.objects.filter(conversation_id=conversation_id).exclude(role=Turn.Role.SYSTEM).order_by("seq")
    return [(turn.role, turn.content) for turn in turns]


@database_sync_to_async
def stored_error_codes(conversation_id: uuid.UUID) -> list[str]:
    turns = Turn.objects.filter(conversation_id=conversation_id, role=Turn.Role.ERROR).order_by("seq")
    return [turn.error_code for turn in turns]


def assert_valid_api_history(messages: list[Message]) -> None:
    """The API's rules: system first, every tool call answered right after it, no stray tool message."""
    assert messages and messages[0]["role"] == "system"
    assert messages_valid_for_api(messages) == messages, messages
    index = 0
    while index < len(messages):
        message = messages[index]
        index += 1
        if message["role"] == "assistant" and message.get("tool_calls"):
            wanted = [call["id"] for call in message["tool_calls"]]
            answered = [m["tool_call_id"] for m in messages[index : index + len(wanted)] if m["role"] == "tool"]
            assert sorted(answered) == sorted(wanted), (wanted, answered)
            index += len(wanted)
        else:
            assert message["role"] != "tool", "a tool result without its call"


def last_seq_sync(conversation_id: uuid.UUID) -> int:
    """The number of the conversation's last stored row (what the frame showing it names as ``seq``)."""
    return Turn.objects.filter(conversation_id=conversation_id).order_by("-seq").values_list("seq", flat=True)[0]


last_seq = database_sync_to_async(last_seq_sync)
