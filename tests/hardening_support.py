"""Helpers shared by the ``test_hardening_*`` modules: a scripted model and a conversation driver."""

from __future__ import annotations

import copy
import json
import uuid
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from channels.db import database_sync_to_async

from chat import llm, selectors
from chat.agent import ModelError, ModelReply, ToolCall
from chat.models import Turn
from chat.runtime import conversation_attach, conversation_respond


class QueuedModel:
    """A ``ChatModel`` that returns queued replies in order (a queued exception is raised), records every
    request it receives, and says "OK." when its queue is empty."""

    name = "queued"

    def __init__(self, *replies: ModelReply | Exception) -> None:
        self.replies: deque[ModelReply | Exception] = deque(replies)
        self.requests: list[list[dict[str, Any]]] = []

    def queue(self, *replies: ModelReply | Exception) -> None:
        self.replies.extend(replies)

    async def complete(
        self, messages: list[dict[str, Any]], tools: list[dict[str, Any]], on_delta: Callable[[str], Awaitable[None]]
    ) -> ModelReply:
        self.requests.append(copy.deepcopy(messages))
        reply = self.replies.popleft() if self.replies else ModelReply("OK.")
        if isinstance(reply, Exception):
            raise reply
        if reply.content:
            await on_delta(reply.content)
        return reply


def use_model(monkeypatch: Any, model: Any) -> None:
    """Make ``model`` the process's chat model for this test."""

    def get_chat_model() -> Any:
        return model

    get_chat_model.cache_clear = lambda: None  # type: ignore[attr-defined]
    monkeypatch.setattr(llm, "get_chat_model", get_chat_model)


_ids = iter(range(1, 10**9))


def calls(*specs: tuple[str, Any], content: str = "") -> ModelReply:
    """A reply calling tools: each spec is (name, arguments as a dict, or raw argument text)."""
    tool_calls = [
        ToolCall(f"call_{next(_ids)}", name, arguments if isinstance(arguments, str) else json.dumps(arguments))
        for name, arguments in specs
    ]
    return ModelReply(content=content, tool_calls=tool_calls)


def say_text(text: str) -> ModelReply:
    return ModelReply(content=text)


class Chat:
    """One conversation driven through ``chat.runtime`` (as the consumer does), collecting its frames."""

    def __init__(self, conversation_id: uuid.UUID) -> None:
        self.id = conversation_id
        self.frames: list[dict[str, Any]] = []

    @classmethod
    async def start(cls, *, client_address: str | None = "198.51.100.7", greet: bool = False) -> Chat:
        attached = await database_sync_to_async(conversation_attach)(
            session_key=uuid.uuid4().hex, client_address=client_address, new=True
        )
        chat = cls(attached.conversation.id)
        if greet:
            await chat.respond(None)
        return chat

    async def emit(self, frame: dict[str, Any]) -> None:
        self.frames.append(frame)

    async def respond(self, text: str | None) -> list[dict[str, Any]]:
        start = len(self.frames)
        await conversation_respond(conversation_id=self.id, emit=self.emit, customer_text=text)
        return self.frames[start:]


@database_sync_to_async
def stored_messages(conversation_id: uuid.UUID) -> list[dict[str, Any]]:
    """Every API-role row, as stored, in order (no mending)."""
    turns = Turn.objects.filter(conversation_id=conversation_id, role__in=selectors.API_ROLES).order_by("seq")
    return [selectors.turn_as_message(turn) for turn in turns]


def assert_valid_api_history(messages: list[dict[str, Any]]) -> None:
    """The API's rules: system first, every tool call answered right after it, no stray tool message."""
    assert messages and messages[0]["role"] == "system"
    assert selectors.messages_valid_for_api(messages) == messages, messages
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


MODEL_ERROR = ModelError("model_error", "The assistant ran into a problem answering. Please try again.")
