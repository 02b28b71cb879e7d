"""Transcript exports, JSONL (a fine-tuning file) and CSV (the review list), streamed.

Conversations are read with ``.iterator(chunk_size=…)`` and their turns prefetched a chunk at a time,
so ten thousand conversations cost a few dozen queries and never sit in memory together.

Every CSV line is written by ``csv_line``, which neutralises cells a spreadsheet would run as a formula
(tool names are whatever the model invented; usernames are whatever customers chose).
"""

from __future__ import annotations

import csv
import itertools
import json
import numbers
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

from asgiref.sync import sync_to_async
from django.core.handlers.asgi import ASGIRequest
from django.db.models import Prefetch, QuerySet
from django.http import HttpRequest, StreamingHttpResponse

from chat.history import messages_valid_for_api
from chat.models import Conversation, Turn
from chat.operators.selectors import ReviewRow
from chat.selectors import API_ROLES, turn_as_message
from chat.toolbox import get_toolbox

EXPORT_CHUNK_SIZE = 200
CSV_COLUMNS = [
    "id", "started", "customer", "turns", "tools", "outcome", "rating", "duration_seconds",
    "model_calls", "prompt_tokens", "completion_tokens",
]


def transcript_record(conversation: Conversation, turns: list[Turn], tools: list[dict[str, Any]]) -> dict[str, Any]:
    """One conversation in the OpenAI chat format, system prompt first, as a fine-tuning line. Rows are
    stored with their secrets masked (``chat.secrets``), so they are written out as stored."""
    messages = messages_valid_for_api([export_message(turn) for turn in turns])
    return {
        "id": str(conversation.id),
        "customer": conversation.customer.username if conversation.customer else None,
        "created_at": conversation.created_at.isoformat(),
        "messages": messages,
        "tools": tools,
    }


# Marks on what no model wrote: a support staff member's reply, a handoff note. ``name`` is the chat format's
# participant name; ``weight: 0`` keeps fine-tuning from teaching a model to speak as the staff did.
EXPORT_MARKS = {"staff": "support_staff", "handoff": "handoff_note"}


def export_message(turn: Turn) -> dict[str, Any]:
    """``turn_as_message``, with staff replies and handoff notes marked as such (``name``, ``weight: 0``)."""
    message = turn_as_message(turn)
    if turn.kind in EXPORT_MARKS:
        message.update(name=EXPORT_MARKS[turn.kind], weight=0)
    return message


def jsonl_lines(*, conversations: QuerySet[Conversation], chunk_size: int = EXPORT_CHUNK_SIZE) -> Iterator[str]:
    tools = get_toolbox().schemas
    api_turns = Prefetch(
        "turns", queryset=Turn.objects.filter(role__in=API_ROLES).order_by("seq"), to_attr="api_turns"
    )
    for conversation in conversations.prefetch_related(api_turns).iterator(chunk_size=chunk_size):
        record = transcript_record(conversation, conversation.api_turns, tools)  # type: ignore[attr-defined]
        yield json.dumps(record, ensure_ascii=False) + "\n"


class _Line:
    """A file-like object whose ``write`` returns what it was given, for ``csv.writer``."""

    def write(self, value: str) -> str:
        return value


# What makes Excel, LibreOffice or Google Sheets read a cell as a formula (OWASP "CSV Injection").
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(value: Any) -> Any:
    """``value`` safe to open in a spreadsheet: a number as it is, text starting like a formula prefixed
    with ``'`` (OWASP's advice: shown as text, never run), ``None`` as an empty cell."""
    if value is None:
        return ""
    if isinstance(value, numbers.Number):
        return value  # written as digits, a leading minus included: a number, never a formula
    text = str(value)
    return "'" + text if text.startswith(FORMULA_STARTS) else text


def csv_line(cells: Sequence[Any]) -> str:
    """One CSV line (with its line ending), every cell through ``csv_cell``: the only way CSV is written."""
    # A writer per line: a shared one keeps its record buffer between calls, unsafe across threads.
    return csv.writer(_Line()).writerow([csv_cell(cell) for cell in cells])


def csv_row(row: ReviewRow) -> list[Any]:
    conversation: Any = row.conversation
    return [
        conversation.id,
        conversation.created_at.isoformat(),
        row.customer or "",
        conversation.turn_count,
        " ".join(row.tools),
        conversation.outcome,
        conversation.rating or "",
        round(row.duration.total_seconds(), 1) if row.duration else "",
        conversation.model_calls,
        conversation.prompt_tokens,
        conversation.completion_tokens,
    ]


def csv_lines(*, conversations: QuerySet[Conversation], chunk_size: int = EXPORT_CHUNK_SIZE) -> Iterator[str]:
    """``conversations`` as annotated by ``chat.operators.selectors.conversations_for_review``."""
    yield csv_line(CSV_COLUMNS)
    tool_turns = Prefetch(
        "turns", queryset=Turn.objects.filter(role=Turn.Role.TOOL).only("conversation_id", "name"), to_attr="tool_turns"
    )
    for conversation in conversations.prefetch_related(tool_turns).iterator(chunk_size=chunk_size):
        names = sorted({turn.name for turn in conversation.tool_turns if turn.name})  # type: ignore[attr-defined]
        yield csv_line(csv_row(ReviewRow(conversation, names)))


async def _in_worker_thread(lines: Iterator[str], per_step: int) -> AsyncIterator[str]:
    # The ORM is synchronous: each step reads a slice of lines in Django's sync thread.
    step = sync_to_async(lambda: "".join(itertools.islice(lines, per_step)), thread_sensitive=True)
    while chunk := await step():
        yield chunk


def export_response(
    request: HttpRequest, lines: Iterator[str], *, content_type: str, filename: str
) -> StreamingHttpResponse:
    """A download streamed as it is read: asynchronously under ASGI (daphne), so that Django does not
    gather a synchronous iterator into one list first, and synchronously under WSGI and the test client."""
    body: Any = _in_worker_thread(lines, EXPORT_CHUNK_SIZE) if isinstance(request, ASGIRequest) else lines
    response = StreamingHttpResponse(body, content_type=content_type)
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    response["Cache-Control"] = "no-store"
    return response
