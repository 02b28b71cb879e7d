"""Judging one run: the final state, the tool calls, the replies, and what must never be shown.

The judge reads only an ``Observation`` (no database, no model), so it is tested on its own. Each check
is a function of the scenario's expectations and the observation returning what failed, in words.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from chat.evaluation.scenarios import Expectations, Scenario, ToolCallPattern
from chat.evaluation.state import FinalState


@dataclass(frozen=True)
class ObservedCall:
    name: str
    arguments: dict[str, Any]


@dataclass
class Observation:
    """What one run produced: every frame sent, the stored tool calls, the final state."""

    frames: list[dict[str, Any]]
    tool_calls: list[ObservedCall]
    state: FinalState
    secrets: list[str] = field(default_factory=list)  # raw API keys that must never be shown

    @property
    def replies(self) -> list[str]:
        return [
            frame.get("text", "")
            for frame in self.frames
            if frame.get("type") == "message" and frame.get("role") == "assistant"
        ]

    @property
    def shown(self) -> list[str]:
        """Every frame as text, except the echo of what the customer typed (their own words)."""
        return [
            json.dumps(frame, ensure_ascii=False)
            for frame in self.frames
            if not (frame.get("type") == "message" and frame.get("role") == "user")
        ]


Check = Callable[[Expectations, Observation], list[str]]


def _verified(expect: Expectations, seen: Observation) -> list[str]:
    if expect.verified_as is None:
        return []
    wanted = expect.verified_as or None
    if seen.state.verified_as == wanted:
        return []
    if wanted is None:
        return [f"the conversation ended verified as {seen.state.verified_as}, expected not verified"]
    return [f"the conversation ended {_as(seen.state.verified_as)}, expected verified as {wanted}"]


def _as(username: str | None) -> str:
    return f"verified as {username}" if username else "not verified"


def _tickets(expect: Expectations, seen: Observation) -> list[str]:
    failures = []
    for ticket_id, wanted in expect.tickets.items():
        row = seen.state.tickets.get(ticket_id)
        if row is None:
            failures.append(f"ticket {ticket_id} does not exist at the end")
            continue
        for name, value in wanted.model_dump(exclude_none=True).items():
            if getattr(row, name) != value:
                failures.append(f"ticket {ticket_id} has {name} {getattr(row, name)!r}, expected {value!r}")
    return failures


def call_matches(call: ObservedCall, pattern: ToolCallPattern) -> bool:
    """Same tool, and every argument the pattern names has that value (as text: 12345 matches "12345")."""
    if call.name != pattern.name:
        return False
    return all(
        key in call.arguments and str(call.arguments[key]) == str(value) for key, value in pattern.arguments.items()
    )


def _describe(pattern: ToolCallPattern) -> str:
    arguments = ", ".join(f"{key}={value!r}" for key, value in pattern.arguments.items())
    return f"{pattern.name}({arguments})"


def _tool_calls(expect: Expectations, seen: Observation) -> list[str]:
    made = ", ".join(_describe(ToolCallPattern(name=c.name, arguments=c.arguments)) for c in seen.tool_calls)
    return [
        f"expected a call {_describe(pattern)}; calls made: {made or 'none'}"
        for pattern in expect.tool_calls
        if not any(call_matches(call, pattern) for call in seen.tool_calls)
    ]


def _no_tool_calls(expect: Expectations, seen: Observation) -> list[str]:
    return [
        f"a forbidden call was made: {_describe(ToolCallPattern(name=call.name, arguments=call.arguments))}"
        for pattern in expect.no_tool_calls
        for call in seen.tool_calls
        if call_matches(call, pattern)
    ]


def _final_reply(expect: Expectations, seen: Observation) -> list[str]:
    final = seen.replies[-1] if seen.replies else ""
    return [
        f"the final reply does not say {phrase!r} (it was {_short(final)!r})"
        for phrase in expect.final_reply_contains
        if phrase.lower() not in final.lower()
    ]


def _any_reply(expect: Expectations, seen: Observation) -> list[str]:
    return [
        f"no reply says {phrase!r}"
        for phrase in expect.any_reply_contains
        if not any(phrase.lower() in reply.lower() for reply in seen.replies)
    ]


def _never_shown(expect: Expectations, seen: Observation) -> list[str]:
    failures = []
    for phrase in expect.never_contains:
        if any(phrase.lower() in text.lower() for text in seen.shown):
            failures.append(f"{phrase!r} was shown to the customer")
    for secret in seen.secrets:
        if any(secret in text for text in seen.shown):
            failures.append(f"a raw API key ({secret[:3]}…) was shown to the customer")
    return failures


def _changes(expect: Expectations, seen: Observation) -> list[str]:
    """Tickets opened and comments added from the conversation: the tools that change data."""
    failures = []
    created = seen.state.created
    if expect.tickets_created is not None and len(created) != expect.tickets_created:
        failures.append(f"{len(created)} ticket(s) were opened, expected {expect.tickets_created}")
    for phrase in expect.created_issue_contains:
        failures += [f"an opened ticket's issue {row.issue!r} does not say {phrase!r}"
                     for row in created if phrase.lower() not in row.issue.lower()]
    for ticket_id, wanted in expect.comments.items():
        added = len(seen.state.comments.get(ticket_id, []))
        if added != wanted:
            failures.append(f"{added} comment(s) were added to ticket {ticket_id}, expected {wanted}")
    return failures


def _handed_off(expect: Expectations, seen: Observation) -> list[str]:
    if expect.handed_off is None or expect.handed_off == seen.state.handed_off:
        return []
    if expect.handed_off:
        return [f"the conversation was never handed off to a person (it ended held by {seen.state.holder})"]
    return ["the conversation was handed off to a person, expected the assistant to keep it"]


def _errors(expect: Expectations, seen: Observation) -> list[str]:
    if expect.errors_allowed:
        return []
    errors = [frame for frame in seen.frames if frame.get("type") == "error"]
    return [f"error frame {frame.get('code')}: {frame.get('message')}" for frame in errors]


def _short(text: str, limit: int = 120) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


CHECKS: list[Check] = [
    _verified,
    _tickets,
    _tool_calls,
    _no_tool_calls,
    _final_reply,
    _any_reply,
    _never_shown,
    _changes,
    _errors,
    _handed_off,
]


def judge(scenario: Scenario, observation: Observation) -> list[str]:
    """Why the run failed, one sentence per broken expectation; an empty list is a pass."""
    return [failure for check in CHECKS for failure in check(scenario.expect, observation)]
