"""The scripted model: a ``ChatModel`` that answers from a queue, else as an inner model (the builtin one
by default in the ``chat_model`` fixture), else "OK."; it records every request and can be held at a gate."""

from __future__ import annotations

import asyncio
import copy
import json
import re
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from chat.agent import ChatModel, ModelError, ModelReply, ToolCall

Message = dict[str, Any]


class ScriptedModel:
    """Replies come from the queue in order (a queued exception is raised); with the queue empty, from
    ``inner`` when there is one, else "OK.". A reply's text is streamed a word at a time."""

    name = "scripted"

    def __init__(self, *replies: ModelReply | Exception, inner: ChatModel | None = None) -> None:
        self.replies: deque[ModelReply | Exception] = deque(replies)
        self.inner = inner
        self.requests: list[list[Message]] = []  # the messages of every call, as sent
        self.tools_offered: list[list[Message]] = []
        self.gate: asyncio.Event | None = None
        self.entered = asyncio.Event()  # set when a call has reached the gate

    @property
    def calls(self) -> int:
        return len(self.requests)

    def queue(self, *replies: ModelReply | Exception) -> ScriptedModel:
        """Answer the next calls with these; then go on as before."""
        self.replies.extend(replies)
        return self

    def script(self, *replies: ModelReply | Exception) -> ScriptedModel:
        """Say exactly these, then only "OK.": nothing of the inner model any more."""
        self.inner = None
        return self.queue(*replies)

    def hold(self) -> None:
        """Calls wait at the gate until ``release``."""
        self.gate = asyncio.Event()
        self.entered.clear()

    def release(self) -> None:
        assert self.gate is not None
        self.gate.set()
        self.gate = None

    async def complete(
        self, messages: list[Message], tools: list[Message], on_delta: Callable[[str], Awaitable[None]]
    ) -> ModelReply:
        self.requests.append(copy.deepcopy(messages))
        self.tools_offered.append(tools)
        self.entered.set()
        if self.gate is not None:
            await self.gate.wait()
        if not self.replies and self.inner is not None:
            return await self.inner.complete(messages, tools, on_delta)
        reply = self.replies.popleft() if self.replies else ModelReply("OK.")
        if isinstance(reply, Exception):
            raise reply
        for piece in re.findall(r"\S+\s*", reply.content):
            await on_delta(piece)
        return reply


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


MODEL_ERROR = ModelError("model_error", "The assistant ran into a problem answering. Please try again.")
