"""The builtin model: a deterministic support agent served over an in-process HTTP transport.

It answers ``POST /chat/completions`` exactly as an OpenAI-compatible server would (JSON or a
server-sent-event stream, tool calls included), so the product runs with no key and no network
while every byte still goes through the official ``openai`` client. Like a hosted model, it decides
each reply only from the messages and tools in the request: it keeps no state of its own.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx2
from django.conf import settings

MODEL_NAME = "builtin-support-1"

GREETING = (
    "Hello, and welcome to customer support! I can check the status of your support tickets. "
    "To get started, could you tell me your username and API key?"
)
ASK_KEY = "Thanks, {username}. Before I can look anything up, I need to verify it's you: what is your API key?"
ASK_USERNAME = "Thanks. I also need your username to verify your identity. What is it?"
ASK_CREDENTIALS = "I can help with that. First I need to verify your identity: what are your username and API key?"
VERIFIED = "Thank you, {username}, you're verified. Which ticket would you like me to check? Please give me its ID."
NOT_VERIFIED = (
    "I'm sorry, I couldn't verify that username and API key. Could you check them and try again?"
)
ASK_TICKET = "Which ticket should I look up? Please give me its ticket ID (for example 12345)."
GOODBYE = "You're welcome! If anything else comes up, just write to us here. Have a great day!"
CAPABILITIES = "I'm here to help you check the status of your support tickets."
ANYTHING_ELSE = "Is there anything else I can help you with?"

_USERNAME = re.compile(r"user\s*-?\s*name\s*(?:is\b|[:=])?\s*:?\s*([\"'“‘]?)([A-Za-z0-9_.@+-]{2,150})", re.I)
_API_KEY = re.compile(r"\b(?:api[\s_-]*)?key\s*(?:is\b|[:=])\s*:?\s*([\"'“‘]?)([^\s\"'”’,;]{1,256})", re.I)
_TICKET_ID = re.compile(r"(?<![\w-])[0-9]{3,20}(?![\w-])")
_MENTIONS_TICKET = re.compile(r"\b(tickets?|status|case|request)\b", re.I)
_GOODBYE = re.compile(
    r"\b(that'?s it|that is it|that'?s all|thanks|thank you|thx|bye|goodbye|nothing else|all good|no,? thanks?)\b",
    re.I,
)


@dataclass
class Decision:
    text: str = ""
    tool_calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)


def _text(message: dict[str, Any]) -> str:
    content = message.get("content")
    if isinstance(content, list):  # content parts
        return " ".join(part.get("text", "") for part in content if isinstance(part, dict))
    return content or ""


def _credentials(text: str) -> tuple[str | None, str | None, str]:
    """Username and API key found in ``text``, and the text with the key taken out."""
    username = _value(_USERNAME.search(text))
    key = _API_KEY.search(text)
    rest = text[: key.start()] + text[key.end() :] if key else text
    secret = _value(key)
    return username, (secret if secret and set(secret) != {"*"} else None), rest


def _value(match: re.Match[str] | None) -> str | None:
    """The matched value; unquoted, without the full stop (or ! or ?) that ends the customer's sentence."""
    if match is None:
        return None
    quote, value = match.groups()
    return (value if quote else value.rstrip(".!?")) or None


@dataclass
class _State:
    username: str | None = None
    verified_as: str | None = None


def _read_state(messages: list[dict[str, Any]]) -> _State:
    """What the conversation so far tells: who the customer says they are, and who was verified."""
    state = _State()
    calls: dict[str, dict[str, Any]] = {}
    for message in messages:
        if message["role"] == "user":
            username, _, _ = _credentials(_text(message))
            state.username = username or state.username
        for call in message.get("tool_calls") or []:
            calls[call["id"]] = call
        if message["role"] == "tool" and message.get("tool_call_id") in calls:
            call = calls[message["tool_call_id"]]["function"]
            if call["name"] == "verify_user" and _json(message.get("content")).get("success") is True:
                state.verified_as = _json(call.get("arguments")).get("username") or state.username
    return state


def _json(text: Any) -> dict[str, Any]:
    try:
        value = json.loads(text or "{}")
    except (TypeError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def decide(messages: list[dict[str, Any]], tool_names: set[str]) -> Decision:
    """The next assistant message for this conversation."""
    conversation = [m for m in messages if m.get("role") != "system"]
    if not conversation:
        return Decision(GREETING)
    state = _read_state(conversation)
    if conversation[-1]["role"] == "tool":
        return _after_tools(conversation, state, tool_names)
    last_user = next((m for m in reversed(conversation) if m["role"] == "user"), None)
    if last_user is None:
        return Decision(GREETING)
    return _answer(_text(last_user), state, tool_names)


def _answer(text: str, state: _State, tool_names: set[str]) -> Decision:
    username, key, rest = _credentials(text)
    username = username or state.username
    tickets = list(dict.fromkeys(_TICKET_ID.findall(rest)))
    if key and username and "verify_user" in tool_names:
        return Decision(tool_calls=[("verify_user", {"username": username, "api_key": key})])
    if key:
        return Decision(ASK_USERNAME)
    if tickets and state.verified_as and "get_ticket_status" in tool_names:
        return Decision(tool_calls=[("get_ticket_status", {"ticket_id": ticket}) for ticket in tickets])
    if _GOODBYE.search(text) and not tickets:
        return Decision(GOODBYE)
    if state.verified_as:
        if _MENTIONS_TICKET.search(text):
            return Decision(ASK_TICKET)
        return Decision(f"{CAPABILITIES} Just tell me a ticket ID and I'll look it up.")
    if username:
        return Decision(ASK_KEY.format(username=username))
    if tickets or _MENTIONS_TICKET.search(text):
        return Decision(ASK_CREDENTIALS)
    return Decision(f"{CAPABILITIES} To begin, please tell me your username and API key.")


def _after_tools(conversation: list[dict[str, Any]], state: _State, tool_names: set[str]) -> Decision:
    """Speak about the results of the latest round of tool calls."""
    start = max(i for i, m in enumerate(conversation) if m["role"] == "assistant" and m.get("tool_calls"))
    calls = {call["id"]: call["function"] for call in conversation[start]["tool_calls"]}
    trigger = next((_text(m) for m in reversed(conversation[:start]) if m["role"] == "user"), "")
    sentences: list[str] = []
    for message in conversation[start + 1 :]:
        call = calls.get(message.get("tool_call_id"), {"name": "", "arguments": "{}"})
        result = _json(message.get("content"))
        if call["name"] == "verify_user":
            if result.get("success") is True:
                _, _, rest = _credentials(trigger)
                pending = list(dict.fromkeys(_TICKET_ID.findall(rest)))
                if pending and "get_ticket_status" in tool_names:
                    return Decision(tool_calls=[("get_ticket_status", {"ticket_id": t}) for t in pending])
                return Decision(VERIFIED.format(username=state.verified_as or "there"))
            if result.get("error"):
                return Decision(
                    "I'm sorry, there have been too many attempts to verify this account. "
                    "Please wait a few minutes and try again."
                )
            return Decision(NOT_VERIFIED)
        sentences.append(_ticket_sentence(_json(call["arguments"]).get("ticket_id", ""), result))
    if not sentences:
        return Decision("Sorry, something went wrong on my side. Could you try that again?")
    return Decision(" ".join([*sentences, ANYTHING_ELSE]))


def _ticket_sentence(asked: str, result: dict[str, Any]) -> str:
    if "status" in result:
        ticket = result.get("ticket_id", asked)
        return f"Your ticket {ticket} is currently {result['status']}; the issue is: {result.get('issue')}."
    error = str(result.get("error", ""))
    if "not verified" in error:
        return "I need to verify your identity before I can look up tickets: what are your username and API key?"
    if "No ticket" in error:
        return f"I couldn't find a ticket {asked} on your account. Could you check the number?"
    return f"I couldn't look up ticket {asked} just now."


# THE WIRE


class BuiltinTransport(httpx2.AsyncBaseTransport):
    """Serves the builtin model at ``/chat/completions`` of any base URL, inside the process."""

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        if not request.url.path.endswith("/chat/completions"):
            return httpx2.Response(404, json={"error": {"message": "Only /chat/completions is served."}})
        try:
            body = json.loads(await request.aread())
            messages = body["messages"]
            tool_names = {tool["function"]["name"] for tool in body.get("tools") or []}
            decision = decide(messages, tool_names)
        except (ValueError, KeyError, TypeError) as error:
            return httpx2.Response(400, json={"error": {"message": f"Bad request: {error}"}})
        completion = _Completion(decision, messages)
        if body.get("stream"):
            return httpx2.Response(200, headers={"content-type": "text/event-stream"}, content=completion.events())
        return httpx2.Response(200, json=completion.whole())


class _Completion:
    def __init__(self, decision: Decision, messages: list[dict[str, Any]]) -> None:
        self.decision = decision
        self.id = f"chatcmpl-builtin-{len(messages)}"
        earlier = sum(len(m.get("tool_calls") or []) for m in messages)
        self.tool_calls = [
            {
                "id": f"call_{earlier + index + 1}",
                "type": "function",
                "function": {"name": name, "arguments": json.dumps(arguments)},
            }
            for index, (name, arguments) in enumerate(decision.tool_calls)
        ]
        prompt_chars = sum(len(json.dumps(m)) for m in messages)
        completion_chars = len(decision.text) + sum(len(json.dumps(c)) for c in self.tool_calls)
        self.usage = {
            "prompt_tokens": prompt_chars // 4,
            "completion_tokens": completion_chars // 4 + 1,
            "total_tokens": (prompt_chars // 4) + completion_chars // 4 + 1,
        }
        self.finish_reason = "tool_calls" if self.tool_calls else "stop"

    def whole(self) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": self.decision.text or None}
        if self.tool_calls:
            message["tool_calls"] = self.tool_calls
        return {
            "id": self.id,
            "object": "chat.completion",
            "created": int(time.time()),
            "model": MODEL_NAME,
            "choices": [{"index": 0, "message": message, "finish_reason": self.finish_reason}],
            "usage": self.usage,
        }

    def _chunk(self, delta: dict[str, Any], finish_reason: str | None = None, usage: Any = None) -> bytes:
        chunk = {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": MODEL_NAME,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}] if usage is None else [],
            "usage": usage,
        }
        return f"data: {json.dumps(chunk)}\n\n".encode()

    async def events(self) -> AsyncIterator[bytes]:
        pause = settings.CHAT_BUILTIN_DELAY_MS / 1000
        yield self._chunk({"role": "assistant", "content": ""})
        for word in re.findall(r"\S+\s*", self.decision.text):
            if pause:
                await asyncio.sleep(pause)
            yield self._chunk({"content": word})
        for index, call in enumerate(self.tool_calls):
            yield self._chunk({"tool_calls": [{"index": index, **call}]})
        yield self._chunk({}, self.finish_reason)
        yield self._chunk({}, usage=self.usage)
        yield b"data: [DONE]\n\n"
