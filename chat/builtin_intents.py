"""What the builtin model reads in a customer's words beyond credentials and ticket ids: listing their
tickets, "the one about my password reset", opening a ticket, adding to one, and yes / no after a
confirmation that did not run. Pure functions of text; ``chat.builtin`` decides with them.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

STATUS_WORDS = {
    "open": "Open",
    "in progress": "In progress",
    "waiting": "Waiting on customer",
    "resolved": "Resolved",
    "closed": "Closed",
}

_COMMENT = re.compile(
    r"\b(?:add|append|put|write|note|comment|tell\s+(?:them|staff|support|the\s+team|your\s+team))\b"
    r"[^.?!\n]*?\b(?:to|on|in|for|under)\s+(?:my\s+|the\s+)?(?:ticket\s*)?#?\s*([0-9]{3,20})\b"
    r"[\s,:;\-–—]*(?:(?:that|saying|which\s+says)\b[\s:]*)?(.*)",
    re.I | re.S,
)
_CREATE = re.compile(
    r"\b(?:open|create|file|raise|start|submit|log|make)\s+(?:me\s+)?(?:a\s+|an\s+)?(?:new\s+)?(?:support\s+)?"
    r"(?:ticket|case)\b(?![\s#]*[0-9])[\s,:;\-–—]*(?:(?:saying|that\s+says|which\s+says|about|for|regarding|because)\b)?"
    r"[\s:]*(.*)",
    re.I | re.S,
)
_LIST = re.compile(
    r"\b(?:list|show|see|view|check|get|give)\b[^.?!]*\btickets\b|\bwhat\s+tickets\b|\ball\s+(?:of\s+)?my\s+tickets\b"
    r"|\bmy\s+(?:open\s+|closed\s+|resolved\s+|waiting\s+|in\s+progress\s+)?tickets\b|\btickets\s+(?:do\s+)?i\s+have\b",
    re.I,
)
_LIST_STATUS = re.compile(r"\b(open|closed|resolved|waiting|in progress)\s+tickets\b", re.I)
_ABOUT = re.compile(
    r"\b(?:about|regarding|concerning)\s+(?:my\s+|the\s+|a\s+|an\s+)?([^.?!\n]{2,80})", re.I
)
_ABOUT_CONTEXT = re.compile(
    r"\b(?:ticket|case|the\s+one|don'?t\s+know\s+(?:the|its|my)\s+(?:number|id)|it'?s\s+about|it\s+is\s+about)\b",
    re.I,
)
_YES = re.compile(r"^\W*(?:yes|yeah|yep|yup|sure|ok|okay|please\s+do|go\s+ahead|do\s+it|y)\b(?!\s+(?:but|wait))", re.I)
_NO = re.compile(r"^\W*(?:no|nope|nah|don'?t|do\s+not|cancel|never\s*mind|n)\b", re.I)
_STOPWORDS = {"my", "the", "a", "an", "one", "ticket", "issue", "problem", "with", "of", "for", "to", "it", "is", "and"}


@dataclass
class Intent:
    """What the customer asks for: ``kind`` is ``comment``, ``create``, ``about`` or ``list``."""

    kind: str
    arguments: dict[str, Any] = field(default_factory=dict)


def intent(text: str) -> Intent | None:
    """The request in ``text`` that needs a tool beyond a plain ticket lookup, if any."""
    if match := _COMMENT.search(text):
        return Intent("comment", {"ticket_id": match.group(1), "text": _clean(match.group(2))})
    if match := _CREATE.search(text):
        return Intent("create", {"description": _clean(match.group(1))})
    if (match := _ABOUT.search(text)) and _ABOUT_CONTEXT.search(text):
        return Intent("about", {"topic": _clean(match.group(1))})
    if _LIST.search(text):
        status = _LIST_STATUS.search(text)
        return Intent("list", {"status": STATUS_WORDS[status.group(1).lower()]} if status else {})
    return None


def _clean(text: str) -> str:
    return text.strip().strip("\"'“”‘’").strip()


def new_ticket_arguments(description: str) -> dict[str, str]:
    """``create_ticket``'s arguments from the customer's words: the first sentence, shortened, as the issue."""
    first = re.split(r"(?<=[.!?])\s+|\n", description, maxsplit=1)[0].rstrip(".!? ")
    issue = first if len(first) <= 80 else first[:79].rsplit(" ", 1)[0] + "…"
    return {"issue": issue[:1].upper() + issue[1:], "description": description}


def says_yes(text: str) -> bool:
    return bool(_YES.search(text)) and not says_no(text)


def says_no(text: str) -> bool:
    return bool(_NO.search(text))


def topic_matches(topic: str, tickets: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The listed tickets whose issue shares the most words (of four letters' stem) with ``topic``."""
    wanted = {_stem(word) for word in re.findall(r"[a-z]+", topic.lower()) if word not in _STOPWORDS}
    scored = []
    for ticket in tickets:
        words = {_stem(word) for word in re.findall(r"[a-z]+", str(ticket.get("issue", "")).lower())}
        if score := len(wanted & words):
            scored.append((score, ticket))
    best = max((score for score, _ in scored), default=0)
    return [ticket for score, ticket in scored if score == best]


def _stem(word: str) -> str:
    return word[:5]


def parsed(text: Any) -> dict[str, Any]:
    try:
        value = json.loads(text or "{}")
    except (TypeError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}
