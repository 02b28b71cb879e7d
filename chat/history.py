"""What the model receives of a conversation: a history valid for the API, trimmed to a budget.

Django-free pure functions. The API's rule that matters here: an assistant message with tool calls is
followed by exactly one tool message per call, and no tool message stands anywhere else.
"""

from __future__ import annotations

from typing import Any

Message = dict[str, Any]

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


def messages_valid_for_api(messages: list[Message]) -> list[Message]:
    """Drop any tool call left without its results, and any result without its call.

    Turns are stored a whole model step at a time, so this only mends histories written by other means
    (an import, a crash of an older version); the API refuses such histories outright.
    """
    valid: list[Message] = []
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
