"""Reads of conversations."""

from __future__ import annotations

import json
import uuid
from typing import Any

from chat.models import Conversation, Turn

API_ROLES = (Turn.Role.SYSTEM, Turn.Role.USER, Turn.Role.ASSISTANT, Turn.Role.TOOL)


def conversation_for_session(*, session_key: str, conversation_id: uuid.UUID | None = None) -> Conversation | None:
    """The session's conversation (the given one, else its latest); never another session's."""
    conversations = Conversation.objects.filter(session_key=session_key)
    if conversation_id is not None:
        conversations = conversations.filter(id=conversation_id)
    return conversations.order_by("-created_at").first()


def turn_as_message(turn: Turn) -> dict[str, Any]:
    """A stored turn in the OpenAI chat format."""
    message: dict[str, Any] = {"role": turn.role, "content": turn.content}
    if turn.role == Turn.Role.ASSISTANT and turn.tool_calls:
        message["content"] = turn.content or None
        message["tool_calls"] = turn.tool_calls
    if turn.role == Turn.Role.TOOL:
        message["tool_call_id"] = turn.tool_call_id
    return message


def messages_valid_for_api(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Drop any tool call left without its results, and any result without its call.

    Turns are stored a whole model step at a time, so this only mends histories written by other means
    (an import, a crash of an older version); the API refuses such histories outright.
    """
    valid: list[dict[str, Any]] = []
    index = 0
    while index < len(messages):
        message = messages[index]
        if message["role"] == "assistant" and message.get("tool_calls"):
            wanted = {call["id"] for call in message["tool_calls"]}
            results = []
            index += 1
            while index < len(messages) and messages[index]["role"] == "tool":
                results.append(messages[index])
                index += 1
            if {result["tool_call_id"] for result in results} == wanted and len(results) == len(wanted):
                valid.extend([message, *results])
            continue
        if message["role"] != "tool":
            valid.append(message)
        index += 1
    return valid


def conversation_history(*, conversation_id: uuid.UUID) -> list[dict[str, Any]]:
    """The conversation as the model API receives it, system prompt first."""
    turns = Turn.objects.filter(conversation_id=conversation_id, role__in=API_ROLES).order_by("seq")
    return messages_valid_for_api([turn_as_message(turn) for turn in turns])


def conversation_replay_frames(*, conversation_id: uuid.UUID) -> list[dict[str, Any]]:
    """The conversation so far as WebSocket frames, to show it again after a reload."""
    frames: list[dict[str, Any]] = []
    calls: dict[str, dict[str, Any]] = {}
    for turn in Turn.objects.filter(conversation_id=conversation_id).exclude(role=Turn.Role.SYSTEM).order_by("seq"):
        if turn.role in (Turn.Role.USER, Turn.Role.ASSISTANT) and turn.content:
            frames.append({"type": "message", "role": turn.role, "text": turn.content, "replay": True})
        for call in turn.tool_calls or []:
            calls[call["id"]] = call
        if turn.role == Turn.Role.TOOL:
            call = calls.get(turn.tool_call_id, {"function": {"name": turn.name, "arguments": "{}"}})
            frames.append(_tool_frame(call, turn))
        if turn.role == Turn.Role.ERROR:
            frames.append({"type": "error", "code": turn.error_code, "message": turn.content, "replay": True})
    return frames


def _tool_frame(call: dict[str, Any], turn: Turn) -> dict[str, Any]:
    try:
        arguments = json.loads(call["function"]["arguments"])
        result = json.loads(turn.content)
    except ValueError:
        arguments, result = None, None
    failed = isinstance(result, dict) and "error" in result
    return {
        "type": "tool",
        "name": call["function"]["name"],
        "id": turn.tool_call_id,
        "status": "error" if failed else "done",
        "arguments": arguments,
        "result": result,
        "replay": True,
    }
