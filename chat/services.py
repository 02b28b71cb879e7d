"""Writes to conversations. Short, keyword-only, atomic; called from sync code only."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from typing import Any

from django.db import transaction
from django.db.models import Max

from chat.agent import mask_text
from chat.models import Conversation, Turn
from chat.prompts import SYSTEM_PROMPT


@transaction.atomic
def conversation_start(*, session_key: str, client_address: str | None = None) -> Conversation:
    """A new conversation for the browser session, its system prompt stored as the first turn."""
    conversation = Conversation.objects.create(session_key=session_key, client_address=client_address)
    Turn.objects.create(conversation=conversation, seq=0, role=Turn.Role.SYSTEM, content=SYSTEM_PROMPT)
    return conversation


def conversation_verify(*, conversation_id: uuid.UUID, customer_id: int) -> None:
    Conversation.objects.filter(id=conversation_id).update(customer_id=customer_id)


@transaction.atomic
def turns_append(
    *,
    conversation_id: uuid.UUID,
    messages: list[dict[str, Any]],
    meta: dict[str, Any] | None = None,
    secrets: Iterable[str] = (),
) -> list[Turn]:
    """Append API-format messages in order; ``meta`` (model, latency, tokens …) goes on the first.

    ``secrets`` revealed by these messages are masked in the customer's earlier turns too.
    """
    conversation = Conversation.objects.select_for_update().get(id=conversation_id)
    seq = (conversation.turns.aggregate(last=Max("seq"))["last"] or 0) + 1
    tool_names = {
        call["id"]: call["function"]["name"] for message in messages for call in message.get("tool_calls") or []
    }
    turns = []
    for offset, message in enumerate(messages):
        turns.append(
            Turn(
                conversation=conversation,
                seq=seq + offset,
                role=message["role"],
                content=message.get("content") or "",
                tool_calls=message.get("tool_calls"),
                tool_call_id=message.get("tool_call_id", ""),
                name=tool_names.get(message.get("tool_call_id", ""), ""),
                **((meta or {}) if offset == 0 else {}),
            )
        )
    _mask_earlier_turns(conversation, secrets)
    Turn.objects.bulk_create(turns)
    conversation.save(update_fields=["updated_at"])
    return turns


def turn_record_error(*, conversation_id: uuid.UUID, code: str, message: str) -> Turn:
    return turns_append(
        conversation_id=conversation_id,
        messages=[{"role": Turn.Role.ERROR, "content": message}],
        meta={"error_code": code},
    )[0]


def _mask_earlier_turns(conversation: Conversation, secrets: Iterable[str]) -> None:
    for secret in filter(None, secrets):
        for turn in conversation.turns.filter(role=Turn.Role.USER, content__contains=secret):
            turn.content = mask_text(turn.content, [secret])
            turn.save(update_fields=["content"])
