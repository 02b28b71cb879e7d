"""Transcript exports, JSONL (a fine-tuning file) and CSV (the review list), streamed.

Conversations are read with ``.iterator(chunk_size=…)`` and their turns prefetched a chunk at a time,
so ten thousand conversations cost a few dozen queries and never sit in memory together.
"""

from __future__ import annotations

import csv
import itertools
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

from asgiref.sync import sync_to_async
from django.core.handlers.asgi import ASGIRequest
from django.db.models import Prefetch, QuerySet
from django.http import HttpRequest, StreamingHttpResponse

from chat.models import Conversation, Turn
from chat.review import ReviewRow, arguments_masked
from chat.runtime import get_toolbox
from chat.selectors import API_ROLES, messages_valid_for_api, turn_as_message

EXPORT_CHUNK_SIZE = 200
CSV_COLUMNS = [
    "id", "started", "customer", "turns", "tools", "outcome", "rating", "duration_seconds",
    "model_calls", "prompt_tokens", "completion_tokens",
]


def _masked_message(message: dict[str, Any]) -> dict[str, Any]:
    if not message.get("tool_calls"):
        return message
    calls = [
        {**call, "function": {**call["function"], "arguments": arguments_masked(
            tool_name=call["function"]["name"], arguments=call["function"]["arguments"]
        )}}
        for call in message["tool_calls"]
    ]
    return {**message, "tool_calls": calls}


def transcript_record(conversation: Conversation, turns: list[Turn], tools: list[dict[str, Any]]) -> dict[str, Any]:
    """One conversation in the OpenAI chat format, system prompt first, as a fine-tuning line."""
    messages = messages_valid_for_api([turn_as_message(turn) for turn in turns])
    return {
        "id": str(conversation.id),
        "customer": conversation.customer.username if conversation.customer else None,
        "created_at": conversation.created_at.isoformat(),
        "messages": [_masked_message(message) for message in messages],
        "tools": tools,
    }


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
    """``conversations`` as annotated by ``chat.review.conversations_for_review``."""
    writer = csv.writer(_Line())
    yield writer.writerow(CSV_COLUMNS)
    tool_turns = Prefetch(
        "turns", queryset=Turn.objects.filter(role=Turn.Role.TOOL).only("conversation_id", "name"), to_attr="tool_turns"
    )
    for conversation in conversations.prefetch_related(tool_turns).iterator(chunk_size=chunk_size):
        names = sorted({turn.name for turn in conversation.tool_turns if turn.name})  # type: ignore[attr-defined]
        yield writer.writerow(csv_row(ReviewRow(conversation, names)))


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
