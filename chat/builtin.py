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

from chat import builtin_intents as intents
from chat.agent import FALLBACK_REPLY

MODEL_NAME = "builtin-support-1"

GREETING = (
    "Hello, and welcome to customer support! I can check the status of your support tickets. "
    "To get started, could you tell me your username and API key?"
)
GREETING_SIGNED_IN = (
    "Hello {username}, and welcome to customer support! You're signed in, so I can check your support "
    "tickets right away. Which ticket would you like me to look at?"
)
_SIGNED_IN = re.compile(r"^Signed-in customer: the website verified this customer as (\S+?)\. ")
ASK_KEY = "Thanks, {username}. Before I can look anything up, I need to verify it's you: what is your API key?"
ASK_USERNAME = "Thanks. I also need your username to verify your identity. What is it?"
ASK_CREDENTIALS = "I can help with that. First I need to verify your identity: what are your username and API key?"
VERIFIED = "Thank you, {username}, you're verified. Which ticket would you like me to check? Please give me its ID."
NOT_VERIFIED = (
    "I'm sorry, I couldn't verify that username and API key. Could you check them and try again?"
)
ASK_TICKET = "Which ticket should I look up? Please give me its ticket ID (for example 12345)."
GOODBYE = "You're welcome! If anything else comes up, just write to us here. Have a great day!"
CAPABILITIES = (
    "I'm here to help you check the status of your support tickets, list them, open a new one or add to one."
)
ANYTHING_ELSE = "Is there anything else I can help you with?"
ASK_NEW_TICKET = "Of course. What should the new ticket say? Please describe the problem in a sentence or two."
ASK_COMMENT = "What would you like me to add to ticket {ticket_id}?"
NO_TICKETS = "You don't have any tickets with us yet."
CREATED = "Done: I've opened ticket {ticket_id} (“{issue}”). Our support team will get back to you there."
COMMENTED = "Done: I've added your comment to ticket {ticket_id}. Our support team will see it."
NOT_APPROVED = {
    "refused": "All right, I haven't {action}.",
    "expired": "I didn't get your answer, so I haven't {action}. Just say yes if you still want me to.",
    "superseded": "All right, I've left that for now: I haven't {action}.",
    "unavailable": "I can't ask you to confirm that here, so I haven't {action}.",
}
WONT = "All right, I won't. " + ANYTHING_ELSE
_ACTIONS = {"create_ticket": "opened the ticket", "add_ticket_comment": "added your comment"}

_USERNAME = re.compile(r"user\s*-?\s*name\s*(?:is\b|[:=])?\s*:?\s*([\"'“‘]?)([A-Za-z0-9_.@+-]{2,150})", re.I)
_API_KEY = re.compile(r"\b(?:api[\s_-]*)?key\s*(?:is\b|[:=])\s*:?\s*([\"'“‘]?)([^\s\"'”’,;]{1,256})", re.I)
# "I'm john_doe", "I am jane_roe, …", "this is john_doe" (see _introduced: "I'm sorry" names nobody).
_I_AM = re.compile(r"\b(?:i['’]?m|i\s+am|this\s+is)\s+([\"'“‘]?)([A-Za-z0-9_.@+-]{2,150})", re.I)
_NOT_NAMES = {
    "sorry", "here", "back", "new", "not", "fine", "good", "ok", "okay", "sure", "trying", "looking", "having",
    "still", "locked", "unable", "just", "so", "very", "really", "the", "a", "an", "your", "customer", "stuck",
}
# "api key key" (no "is"): only with a username in the same message, or right after being asked for the key.
_BARE_API_KEY = re.compile(
    r"\bapi[\s_-]*key\s+(?!is\b|was\b)([\"'“‘]?)([^\s\"'”’,;]{1,256})(?=[\"'”’]?\s*(?:[,;.!?]|$))", re.I
)
# A key given alone, after the agent asked for it: "key", "it's jane-key", "\"key\"".
_LONE_KEY = re.compile(
    r"^\s*(?:(?:it'?s|it\s+is|sure|here|ok|okay)[\s,:]+)?([\"'“‘]?)([^\s\"'”’?]{1,256}?)[\"'”’]?[.!]?\s*$", re.I
)
# Words that answer "what is your API key?" without being one.
_NOT_KEYS = {"no", "yes", "why", "what", "hi", "hello", "ok", "okay", "sure", "thanks", "help", "sorry", "later"}
_TICKET_ID = re.compile(r"(?<![\w-])[0-9]{3,20}(?![\w-])")
_MENTIONS_TICKET = re.compile(r"\b(tickets?|status|case|request)\b", re.I)
_GOODBYE = re.compile(
    r"\b(that'?s it|that is it|that'?s all|thanks|thank you|thx|bye|goodbye|nothing else|all good|no,? thanks?)\b",
    re.I,
)


# The customer asks for a person: "talk to a human", "a real person", "an agent", "a representative" …
_WANTS_PERSON = re.compile(
    r"\b(human|real person|a person|someone real|live agent|real agent|an agent|human agent|representative|"
    r"live chat with|operator|talk to someone|speak to someone|support staff)\b",
    re.I,
)
PERSON_REASON = "The customer asked to talk to a person."
STUCK_REASON = "The assistant could not help after repeated attempts."
HANDOFF_FAILED = "I'm sorry, I couldn't reach a person from our support team just now. Please try again in a moment."


@dataclass
class Decision:
    text: str = ""
    tool_calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)


def _text(message: dict[str, Any]) -> str:
    content = message.get("content")
    if isinstance(content, list):  # content parts
        return " ".join(part.get("text", "") for part in content if isinstance(part, dict))
    return content or ""


def _credentials(text: str, key_asked: bool = False) -> tuple[str | None, str | None, str]:
    """Username and API key found in ``text``, and the text with the key taken out. ``key_asked``: the
    agent's last message asked for the key, so a lone word is taken as it."""
    username = _value(_USERNAME.search(text)) or _introduced(text)
    key = _API_KEY.search(text) or (_BARE_API_KEY.search(text) if username or key_asked else None)
    if key is None and key_asked and not _TICKET_ID.fullmatch(text.strip().lstrip("#")):
        key = _LONE_KEY.match(text)
        key = key if key and key.group(2).lower().rstrip(".!") not in _NOT_KEYS else None
    rest = text[: key.start()] + text[key.end() :] if key else text
    secret = _value(key)
    return username, (secret if secret and set(secret) != {"*"} else None), rest


def _introduced(text: str) -> str | None:
    """The username in "I'm john_doe" / "I am jane_roe": one that looks like a username (with _ . @ - or a
    digit), or a plain word right before the key ("I'm alice, my key is …")."""
    for match in _I_AM.finditer(text):
        name = match.group(2).rstrip(".!?")
        looks_like_one = any(char in name for char in "_.@-") or any(char.isdigit() for char in name)
        # A plain word only when credentials follow ("I'm alice, my key is …"): "I'm confused" names nobody.
        before_key = re.match(r"[\"'”’]?\s*(?:,|and\b)?\s*my\s+(?:api[\s_-]*)?key\b", text[match.end(2) :], re.I)
        if looks_like_one or (before_key and name.lower() not in _NOT_NAMES):
            return name
    return None


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


def _signed_in_as(messages: list[dict[str, Any]]) -> str | None:
    """The customer a system note says the website signed in (``chat.prompts.SIGNED_IN_NOTE``), if any."""
    found = None
    for message in messages:
        if message.get("role") == "system" and (match := _SIGNED_IN.search(_text(message))):
            found = match.group(1)
    return found


def decide(messages: list[dict[str, Any]], tool_names: set[str]) -> Decision:
    """The next assistant message for this conversation."""
    conversation = [m for m in messages if m.get("role") != "system"]
    signed_in = _signed_in_as(messages)
    if not conversation:
        return Decision(GREETING_SIGNED_IN.format(username=signed_in) if signed_in else GREETING)
    state = _read_state(conversation)
    state.verified_as = state.verified_as or signed_in
    if conversation[-1]["role"] == "tool":
        return _after_tools(conversation, state, tool_names)
    last_user = next((m for m in reversed(conversation) if m["role"] == "user"), None)
    if last_user is None:
        return Decision(GREETING)
    if "request_human" in tool_names and (_WANTS_PERSON.search(_text(last_user)) or _stuck(conversation)):
        reason = PERSON_REASON if _WANTS_PERSON.search(_text(last_user)) else STUCK_REASON
        return Decision(tool_calls=[("request_human", {"reason": reason})])
    return _answer(_text(last_user), state, tool_names, conversation)


def _stuck(conversation: list[dict[str, Any]]) -> bool:
    """The last two answers in words were the agent's fallback ("I couldn't finish that request")."""
    answers = [m for m in conversation if m["role"] == "assistant" and not m.get("tool_calls")]
    return len(answers) >= 2 and all(_text(m) == FALLBACK_REPLY for m in answers[-2:])


def _answer(text: str, state: _State, tool_names: set[str], conversation: list[dict[str, Any]]) -> Decision:
    asked = _last_assistant_text(conversation)
    username, key, rest = _credentials(text, key_asked=asked.startswith(ASK_KEY.split("{")[0]))
    username = username or state.username
    tickets = list(dict.fromkeys(_TICKET_ID.findall(rest)))
    if key and username and "verify_user" in tool_names:
        return Decision(tool_calls=[("verify_user", {"username": username, "api_key": key})])
    if key:
        return Decision(ASK_USERNAME)
    if state.verified_as and (decision := _follow_up(text, asked, conversation, tool_names)):
        return decision
    if state.verified_as and (decision := _request(rest, tool_names)):
        return decision
    if _GOODBYE.search(text) and not tickets:
        return Decision(GOODBYE)
    if state.verified_as:
        if _MENTIONS_TICKET.search(text):
            return Decision(ASK_TICKET)
        return Decision(f"{CAPABILITIES} Just tell me a ticket ID and I'll look it up.")
    if username:
        return Decision(ASK_KEY.format(username=username))
    if tickets or _MENTIONS_TICKET.search(text) or intents.intent(rest):
        return Decision(ASK_CREDENTIALS)
    return Decision(f"{CAPABILITIES} To begin, please tell me your username and API key.")


def _after_tools(conversation: list[dict[str, Any]], state: _State, tool_names: set[str]) -> Decision:
    """Speak about the results of the latest round of tool calls."""
    start = max(i for i, m in enumerate(conversation) if m["role"] == "assistant" and m.get("tool_calls"))
    calls = {call["id"]: call["function"] for call in conversation[start]["tool_calls"]}
    sentences: list[str] = []
    for message in conversation[start + 1 :]:
        call = calls.get(message.get("tool_call_id"), {"name": "", "arguments": "{}"})
        result = _json(message.get("content"))
        if call["name"] == "request_human":  # queued, the turn ends; here only when the request failed
            return Decision(HANDOFF_FAILED)
        if call["name"] == "verify_user":
            if result.get("success") is True:
                pending = _pending_request(conversation[:start], tool_names)
                return pending or Decision(VERIFIED.format(username=state.verified_as or "there"))
            if result.get("error"):
                return Decision(
                    "I'm sorry, there have been too many attempts to verify this account. "
                    "Please wait a few minutes and try again."
                )
            return Decision(NOT_VERIFIED)
        if call["name"] == "list_my_tickets":
            return _after_list(result, conversation[:start], tool_names)
        if call["name"] in _ACTIONS:
            return Decision(_write_sentence(call["name"], _json(call["arguments"]), result))
        sentences.append(_ticket_sentence(_json(call["arguments"]).get("ticket_id", ""), result))
    if not sentences:
        return Decision("Sorry, something went wrong on my side. Could you try that again?")
    return Decision(" ".join([*sentences, ANYTHING_ELSE]))


def _ticket_sentence(asked: str, result: dict[str, Any]) -> str:
    if "status" in result:
        ticket = result.get("ticket_id", asked)
        sentence = f"Your ticket {ticket} is currently {result['status']}; the issue is: {result.get('issue')}."
        reply = result.get("latest_staff_reply")
        if isinstance(reply, dict) and reply.get("text"):
            sentence += f" The latest reply from our support team: \u201c{reply['text']}\u201d"
        return sentence
    error = str(result.get("error", ""))
    if "not verified" in error:
        return "I need to verify your identity before I can look up tickets: what are your username and API key?"
    if "No ticket" in error:
        return f"I couldn't find a ticket {asked} on your account. Could you check the number?"
    return f"I couldn't look up ticket {asked} just now."


# REQUESTS BEYOND ONE LOOKUP: listing, "the one about …", opening and adding to tickets (chat.builtin_intents)


def _last_assistant_text(conversation: list[dict[str, Any]]) -> str:
    return next((_text(m) for m in reversed(conversation) if m["role"] == "assistant" and _text(m)), "")


def _request(text: str, tool_names: set[str]) -> Decision | None:
    """The tool calls a verified customer's words ask for (credentials already taken out), if any."""
    wanted = intents.intent(text)
    tickets = list(dict.fromkeys(_TICKET_ID.findall(text)))
    if wanted and wanted.kind == "comment" and "add_ticket_comment" in tool_names:
        if not wanted.arguments["text"]:
            return Decision(ASK_COMMENT.format(ticket_id=wanted.arguments["ticket_id"]))
        return Decision(tool_calls=[("add_ticket_comment", wanted.arguments)])
    if wanted and wanted.kind == "create" and "create_ticket" in tool_names:
        if not wanted.arguments["description"]:
            return Decision(ASK_NEW_TICKET)
        return Decision(tool_calls=[("create_ticket", intents.new_ticket_arguments(wanted.arguments["description"]))])
    if tickets and "get_ticket_status" in tool_names:
        return Decision(tool_calls=[("get_ticket_status", {"ticket_id": ticket}) for ticket in tickets])
    if wanted and wanted.kind in {"list", "about"} and "list_my_tickets" in tool_names:
        return Decision(tool_calls=[("list_my_tickets", wanted.arguments if wanted.kind == "list" else {})])
    return None


def _follow_up(text: str, asked: str, conversation: list[dict[str, Any]], tool_names: set[str]) -> Decision | None:
    """An answer to the agent's own question: the new ticket's text, the comment's text, or yes / no after
    a change that was not confirmed in time (or was dropped when the customer wrote instead)."""
    if asked == ASK_NEW_TICKET and "create_ticket" in tool_names:
        return Decision(tool_calls=[("create_ticket", intents.new_ticket_arguments(text.strip()))])
    comment_to = re.fullmatch(ASK_COMMENT.format(ticket_id=r"([0-9]{3,20})").replace("?", r"\?"), asked)
    if comment_to and "add_ticket_comment" in tool_names:
        return Decision(tool_calls=[("add_ticket_comment", {"ticket_id": comment_to.group(1), "text": text.strip()})])
    unconfirmed = _unconfirmed_change(conversation)
    if unconfirmed is None:
        return None
    if intents.says_yes(text):
        return Decision(tool_calls=[unconfirmed])
    if intents.says_no(text):
        return Decision(WONT)
    return None


def _unconfirmed_change(conversation: list[dict[str, Any]]) -> tuple[str, dict[str, Any]] | None:
    """The call of the latest tool round, when it changes data and went unconfirmed (expired or dropped)."""
    rounds = [i for i, m in enumerate(conversation) if m["role"] == "assistant" and m.get("tool_calls")]
    if not rounds:
        return None
    start = rounds[-1]
    calls = {call["id"]: call["function"] for call in conversation[start]["tool_calls"]}
    for message in conversation[start + 1 :]:
        call = calls.get(message.get("tool_call_id"))
        if call and call["name"] in _ACTIONS and _json(message.get("content")).get("confirmation") in {
            "expired", "superseded"
        }:
            return call["name"], _json(call.get("arguments"))
    return None


def _pending_request(before: list[dict[str, Any]], tool_names: set[str]) -> Decision | None:
    """Right after verifying: what the customer asked for while not yet verified (newest first), back to
    any earlier verification."""
    for message in reversed(before):
        if message["role"] == "tool" and _json(message.get("content")).get("success") is True:
            return None
        if message["role"] == "user":
            _, _, rest = _credentials(_text(message))
            if decision := _request(rest, tool_names):
                return decision
    return None


def _after_list(result: dict[str, Any], before: list[dict[str, Any]], tool_names: set[str]) -> Decision:
    """The customer's tickets in words; for "the one about …", that ticket looked up."""
    if "tickets" not in result:
        return Decision(f"{_ticket_sentence('', result)}")
    tickets = [t for t in result["tickets"] if isinstance(t, dict)]
    wanted = next(
        (found for m in reversed(before) if m["role"] == "user" and (found := intents.intent(_text(m)))), None
    )
    if wanted is not None and wanted.kind == "about":
        matches = intents.topic_matches(wanted.arguments["topic"], tickets)
        if len(matches) == 1 and "get_ticket_status" in tool_names:
            return Decision(tool_calls=[("get_ticket_status", {"ticket_id": matches[0]["ticket_id"]})])
        if not matches:
            return Decision(f"I couldn't find a ticket about {wanted.arguments['topic']}. {_listing(tickets)}")
    return Decision(f"{_listing(tickets, more=result.get('more') is True)} {ANYTHING_ELSE}")


def _listing(tickets: list[dict[str, Any]], more: bool = False) -> str:
    if not tickets:
        return NO_TICKETS
    items = "; ".join(f"{t.get('ticket_id')} ({t.get('status')}): {t.get('issue')}" for t in tickets)
    noun = "ticket" if len(tickets) == 1 else "tickets"
    tail = " (and older ones I haven't listed)" if more else ""
    return f"Here are your {noun}: {items}{tail}."


def _write_sentence(name: str, arguments: dict[str, Any], result: dict[str, Any]) -> str:
    """What became of a change: done, not confirmed, or why it could not be made."""
    if result.get("created") is True:
        return CREATED.format(ticket_id=result.get("ticket_id"), issue=result.get("issue")) + " " + ANYTHING_ELSE
    if result.get("comment_added") is True:
        return COMMENTED.format(ticket_id=result.get("ticket_id")) + " " + ANYTHING_ELSE
    decision = result.get("confirmation")
    if decision in NOT_APPROVED:
        return NOT_APPROVED[decision].format(action=_ACTIONS[name])
    error = str(result.get("error", ""))
    if "opened as many tickets" in error:
        return "You've opened as many tickets today as I can open through the chat. I can add to an existing one."
    if "not verified" in error or "No ticket" in error:
        return _ticket_sentence(str(arguments.get("ticket_id", "")), result)
    return "I couldn't do that just now. Could you try again in a moment?"


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
