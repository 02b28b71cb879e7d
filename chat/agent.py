"""The agent loop: model → tool calls → tool results → model … until the model answers in words.

This module knows nothing of Django, Channels or the ``openai`` package. It talks to three small
interfaces: a ``ChatModel`` (``chat.llm`` provides them), a ``ToolRunner`` (the tools the model may
call) and a ``Transcript`` (where turns are stored). It runs alike from a socket, a terminal or a test.

Events go out through ``emit`` as dicts shaped like the WebSocket frames of the public contract.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

logger = logging.getLogger(__name__)

MASK = "****"
FALLBACK_REPLY = (
    "I'm sorry, I couldn't finish that request. Could you say it again in other words? "
    "I can verify your account and check the status of your tickets."
)

Message = dict[str, Any]
Emit = Callable[[dict[str, Any]], Awaitable[None]]


class ModelError(Exception):
    """The model could not answer. ``message`` is written for the customer; ``code`` for machines."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


@dataclass(frozen=True)
class ToolCall:
    id: str
    name: str
    arguments: str  # JSON text, exactly as the model wrote it

    def as_api(self) -> Message:
        return {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}}


@dataclass
class ModelReply:
    content: str
    tool_calls: list[ToolCall] = field(default_factory=list)
    model: str = ""
    latency_ms: int = 0
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


@dataclass(frozen=True)
class ToolOutcome:
    """What a tool call produced: ``content`` goes to the model, ``result`` to the screen."""

    content: str
    ok: bool
    result: Any = None
    secrets: tuple[str, ...] = ()


class ChatModel(Protocol):
    name: str

    async def complete(
        self, messages: list[Message], tools: list[Message], on_delta: Callable[[str], Awaitable[None]]
    ) -> ModelReply: ...


class ToolRunner(Protocol):
    schemas: list[Message]

    def display_arguments(self, call: ToolCall) -> dict[str, Any] | None: ...

    async def run(self, call: ToolCall) -> ToolOutcome: ...


class Transcript(Protocol):
    async def append(
        self,
        messages: list[Message],
        *,
        reply: ModelReply | None = None,
        secrets: Iterable[str] = (),
        fallback: bool = False,
    ) -> None: ...

    async def record_error(self, code: str, message: str) -> None: ...


@dataclass(frozen=True)
class TurnResult:
    outcome: Literal["answered", "fallback", "error"]
    model_calls: int


async def run_turn(
    *,
    model: ChatModel,
    tools: ToolRunner,
    transcript: Transcript,
    history: list[Message],
    emit: Emit,
    customer_text: str | None = None,
    max_model_calls: int = 8,
    max_tool_calls_per_reply: int | None = None,
    max_tool_result_chars: int | None = None,
    history_token_budget: int | None = None,
) -> TurnResult:
    """Answer one customer message (or greet, when ``customer_text`` is None).

    ``history`` is the stored conversation in API format, system prompt first; it is extended in place.
    A model failure is stored as an error turn and reported through ``emit``; what was stored before
    it stays, and the history stays valid for the API.

    Bounds (None: unbounded): at most ``max_tool_calls_per_reply`` calls of one model response run,
    the others are answered with an error and never run; a tool result longer than
    ``max_tool_result_chars`` is cut with a note; the model receives ``trim_history(history,
    history_token_budget)``, while the whole history is stored.
    """
    if customer_text is not None:
        message = {"role": "user", "content": customer_text}
        await transcript.append([message])
        history.append(message)

    async def on_delta(text: str) -> None:
        await emit({"type": "delta", "text": text})

    for call_number in range(1, max_model_calls + 1):
        try:
            reply = await model.complete(trim_history(history, history_token_budget), tools.schemas, on_delta)
        except ModelError as error:
            logger.warning("model call failed: %s", error)
            await transcript.record_error(error.code, error.message)
            await emit({"type": "error", "code": error.code, "message": error.message})
            return TurnResult("error", call_number)
        if not reply.tool_calls:
            message = {"role": "assistant", "content": reply.content}
            await transcript.append([message], reply=reply)
            history.append(message)
            await emit({"type": "message", "role": "assistant", "text": reply.content})
            return TurnResult("answered", call_number)
        await _answer_tool_calls(
            reply,
            tools=tools,
            transcript=transcript,
            history=history,
            emit=emit,
            max_calls=max_tool_calls_per_reply,
            max_result_chars=max_tool_result_chars,
        )

    message = {"role": "assistant", "content": FALLBACK_REPLY}
    await transcript.append([message], fallback=True)
    history.append(message)
    await emit({"type": "message", "role": "assistant", "text": FALLBACK_REPLY, "fallback": True})
    return TurnResult("fallback", max_model_calls)


async def _answer_tool_calls(
    reply: ModelReply,
    *,
    tools: ToolRunner,
    transcript: Transcript,
    history: list[Message],
    emit: Emit,
    max_calls: int | None = None,
    max_result_chars: int | None = None,
) -> None:
    """Run the tool calls of ``reply`` in order (the first ``max_calls``; the rest are answered with an
    error and never run), then store the call and all its results at once: every call id is answered."""
    if reply.content:
        await emit({"type": "message", "role": "assistant", "text": reply.content})
    results: list[Message] = []
    secrets: list[str] = []
    for number, call in enumerate(reply.tool_calls):
        if max_calls is not None and number >= max_calls:
            error = {"error": TOO_MANY_CALLS.format(limit=max_calls)}
            results.append({"role": "tool", "tool_call_id": call.id, "content": json.dumps(error)})
            await emit({"type": "tool", "name": call.name, "id": call.id, "status": "error", "result": error})
            continue
        await emit(
            {
                "type": "tool",
                "name": call.name,
                "status": "started",
                "id": call.id,
                "arguments": tools.display_arguments(call),
            }
        )
        outcome = await tools.run(call)
        secrets.extend(outcome.secrets)
        content = cut_text(outcome.content, max_result_chars)
        results.append({"role": "tool", "tool_call_id": call.id, "content": content})
        frame: dict[str, Any] = {"type": "tool", "name": call.name, "id": call.id, "result": outcome.result}
        frame["status"] = "done" if outcome.ok else "error"
        await emit(frame)
    assistant = {"role": "assistant", "content": reply.content or None}
    assistant["tool_calls"] = [call.as_api() for call in reply.tool_calls]
    stored = mask_messages([assistant, *results], secrets)
    await transcript.append(stored, reply=reply, secrets=secrets)
    history[:] = [*mask_messages(history, secrets), *stored]


# BOUNDS

TOO_MANY_CALLS = "Not run: at most {limit} tool calls are run per reply. Call it again if it is still needed."
CUT_NOTE = "\n[cut: this result was {total} characters long; only the first {kept} are shown]"


def cut_text(text: str, max_chars: int | None) -> str:
    """``text``, or its first ``max_chars`` characters and a note saying how much was left out."""
    if max_chars is None or len(text) <= max_chars:
        return text
    return text[:max_chars] + CUT_NOTE.format(total=len(text), kept=max_chars)


def estimate_tokens(message: Message) -> int:
    """About four characters a token, plus a few for the message's framing."""
    chars = len(message.get("content") or "")
    for call in message.get("tool_calls") or []:
        chars += len(call["function"]["name"]) + len(call["function"]["arguments"] or "")
    return chars // 4 + 4


def trim_history(messages: list[Message], budget: int | None) -> list[Message]:
    """What the model receives of ``messages`` (a valid API history) within about ``budget`` tokens.

    The leading system messages are always kept, then the newest whole groups that fit: a group is one
    message, or an assistant's tool calls with all their results, so a call is never separated from its
    results, and the kept part never starts with a tool message. The newest group is kept even when it
    alone is over the budget: the model must see what it is answering.
    """
    if budget is None:
        return messages
    head = 0
    while head < len(messages) and messages[head]["role"] == "system":
        head += 1
    groups: list[list[Message]] = []
    for message in messages[head:]:
        if message["role"] == "tool" and groups:
            groups[-1].append(message)
        else:
            groups.append([message])
    spent = sum(map(estimate_tokens, messages[:head]))
    kept: list[list[Message]] = []
    for group in reversed(groups):
        cost = sum(map(estimate_tokens, group))
        if kept and spent + cost > budget:
            break
        kept.append(group)
        spent += cost
    tail = [message for group in reversed(kept) for message in group]
    while tail and tail[0]["role"] == "tool":
        tail.pop(0)
    return [*messages[:head], *tail]


# SECRETS


def mask_text(text: str, secrets: Iterable[str]) -> str:
    """Replace each secret in free text; where it stands in quotes, only the quoted uses are masked."""
    for secret in secrets:
        if not secret or secret not in text:
            continue
        escaped = re.escape(secret)
        quoted = re.compile(rf"""(["'“‘`]){escaped}(["'”’`])""")
        if quoted.search(text):
            text = quoted.sub(rf"\g<1>{MASK}\g<2>", text)
        else:
            text = re.sub(rf"(?<![\w-]){escaped}(?![\w-])", MASK, text)
    return text


def mask_value(value: Any, secrets: Iterable[str]) -> Any:
    """Replace every string value equal to a secret, at any depth; keys are left alone."""
    secrets = set(secrets)
    if isinstance(value, str):
        return MASK if value in secrets else value
    if isinstance(value, dict):
        return {key: mask_value(item, secrets) for key, item in value.items()}
    if isinstance(value, list):
        return [mask_value(item, secrets) for item in value]
    return value


def mask_arguments(arguments: str, secrets: Iterable[str]) -> str:
    try:
        parsed = json.loads(arguments)
    except ValueError:
        return mask_text(arguments, secrets)
    return json.dumps(mask_value(parsed, secrets))


def mask_messages(messages: list[Message], secrets: Iterable[str]) -> list[Message]:
    """The messages with each secret masked in texts and tool-call arguments."""
    secrets = [secret for secret in secrets if secret]
    if not secrets:
        return messages
    masked = []
    for message in messages:
        message = dict(message)
        if message.get("role") in ("user", "assistant") and isinstance(message.get("content"), str):
            message["content"] = mask_text(message["content"], secrets)
        if message.get("tool_calls"):
            message["tool_calls"] = [_masked_call(call, secrets) for call in message["tool_calls"]]
        masked.append(message)
    return masked


def _masked_call(call: Message, secrets: Iterable[str]) -> Message:
    arguments = mask_arguments(call["function"]["arguments"], secrets)
    return {**call, "function": {**call["function"], "arguments": arguments}}
