"""Reads of conversations."""

from __future__ import annotations

import json
import uuid
from collections import namedtuple
from typing import Any

from chat import protocol
from chat.compiled import CompiledQuery
from chat.confirmations import confirmation_pending_frames
from chat.history import cut_text, messages_valid_for_api
from chat.models import Conversation, Turn

# A replayed frame's text is at most this long, so every frame fits a WebSocket frame (daphne's limit is
# 1 MiB; four bytes a character at worst). Rows written before replies were capped may be longer: the
# replay cuts them with a note; operators and exports still have them whole.
REPLAY_MAX_CHARS = 64_000

API_ROLES = (Turn.Role.SYSTEM, Turn.Role.USER, Turn.Role.ASSISTANT, Turn.Role.TOOL)


def conversation_for_session(*, session_key: str, conversation_id: uuid.UUID | None = None) -> Conversation | None:
    """The session's conversation (the given one, else its latest); never another session's."""
    conversations = Conversation.objects.filter(session_key=session_key)
    if conversation_id is not None:
        conversations = conversations.filter(id=conversation_id)
    return conversations.order_by("-created_at").first()


STAFF_NOTE = "[{name} from the support team wrote to the customer:] {text}"
MESSAGE_FIELDS = ("role", "content", "tool_calls", "tool_call_id", "kind", "name")  # what turn_as_message reads


def turn_as_message(turn: Turn | Any) -> dict[str, Any]:
    """A stored turn (or a row of its ``MESSAGE_FIELDS``) in the OpenAI chat format. A staff member's
    reply is an assistant message saying who wrote it; a handoff note is an assistant message as stored:
    roles every compatible API accepts."""
    if turn.kind == "staff":
        return {"role": "assistant", "content": STAFF_NOTE.format(name=turn.name, text=turn.content)}
    message: dict[str, Any] = {"role": turn.role, "content": turn.content}
    if turn.role == Turn.Role.ASSISTANT and turn.tool_calls:
        message["content"] = turn.content or None
        message["tool_calls"] = turn.tool_calls
    if turn.role == Turn.Role.TOOL:
        message["tool_call_id"] = turn.tool_call_id
    return message


HISTORY = CompiledQuery(  # rows, not models, compiled once: read at the start of every turn (``history_messages``)
    lambda conversation_id: Turn.objects.filter(conversation_id=conversation_id, role__in=API_ROLES)
    .order_by("seq")
    .values_list(*MESSAGE_FIELDS)
)
_MessageRow = namedtuple("_MessageRow", MESSAGE_FIELDS)


def conversation_history(*, conversation_id: uuid.UUID) -> list[dict[str, Any]]:
    """The conversation as the model API receives it, system prompt first."""
    return history_messages(HISTORY.rows(conversation_id))


def history_messages(rows: list[Any]) -> list[dict[str, Any]]:
    """``HISTORY``'s rows as the model API receives them."""
    return messages_valid_for_api([turn_as_message(_MessageRow(*row)) for row in rows])


def conversation_replay_frames(*, conversation_id: uuid.UUID, after_seq: int = 0) -> list[protocol.Frame]:
    """The conversation so far as WebSocket frames, to show it again after a reload; only its turns after
    ``after_seq`` when given (the cards still awaiting an answer always). A frame of a turn carries its
    ``seq``, as the live one did (``chat.resume``); a tool step's carries its call's ``id``."""
    frames: list[protocol.Frame] = []
    calls: dict[str, dict[str, Any]] = {}
    turns = Turn.objects.filter(conversation_id=conversation_id, seq__gt=after_seq).exclude(role=Turn.Role.SYSTEM)
    for turn in turns.order_by("seq"):
        if turn.kind == "staff":
            frames.append(protocol.message("staff", turn.content, name=turn.name, replay=True, seq=turn.seq))
        elif turn.kind == "handoff":
            fields = turn.result or {"state": "agent", "message": ""}
            frames.append(protocol.replayed(protocol.handoff(**{**fields, "seq": turn.seq})))
        elif turn.role in (Turn.Role.USER, Turn.Role.ASSISTANT) and turn.content:
            text = cut_text(turn.content, REPLAY_MAX_CHARS)
            calls = {"calls": [call["id"] for call in turn.tool_calls]} if turn.tool_calls else {}
            frames.append(protocol.message(turn.role, text, replay=True, seq=turn.seq, **calls))
        for call in turn.tool_calls or []:
            calls[call["id"]] = call
        if turn.role == Turn.Role.TOOL:
            call = calls.get(turn.tool_call_id, {"function": {"name": turn.name, "arguments": "{}"}})
            frames.append(_tool_frame(call, turn))
        if turn.role == Turn.Role.ERROR:
            frames.append(protocol.error(turn.error_code, turn.content, replay=True, seq=turn.seq))
    frames.extend(confirmation_pending_frames(conversation_id=conversation_id))  # a card awaiting its answer
    return frames


def _tool_frame(call: dict[str, Any], turn: Turn) -> protocol.Frame:
    try:
        arguments = json.loads(call["function"]["arguments"])
    except ValueError:
        arguments = None
    return protocol.tool_finished(
        call_id=turn.tool_call_id,
        name=call["function"]["name"],
        failed=turn.is_error,
        result=turn.result,
        arguments=arguments,
        replay=True,
        seq=turn.seq,
    )
