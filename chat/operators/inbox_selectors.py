"""Reads for the staff console: the waiting list (oldest first) and the conversations a staff member holds."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.utils import timezone

from chat.models import Conversation, Holder


@dataclass(frozen=True)
class QueueItem:
    conversation_id: uuid.UUID
    customer: str | None
    reason: str
    since: datetime | None

    @property
    def wait_seconds(self) -> int:
        return int((timezone.now() - self.since).total_seconds()) if self.since else 0

    def as_json(self) -> dict[str, Any]:
        return {
            "id": str(self.conversation_id),
            "customer": self.customer,
            "reason": self.reason,
            "since": self.since.isoformat() if self.since else None,
            "wait_seconds": self.wait_seconds,
        }


def _items(conversations: Any) -> list[QueueItem]:
    rows = conversations.values_list("id", "customer__username", "handoff_reason", "holder_since")
    return [QueueItem(*row) for row in rows]


def waiting_list() -> list[QueueItem]:
    """Conversations waiting for a person, oldest first (the order their queue positions follow)."""
    return _items(Conversation.objects.filter(holder=Holder.WAITING).order_by("holder_since", "pk"))


def held_by(*, user_id: int) -> list[QueueItem]:
    """The conversations this staff member holds now, oldest claim first."""
    held = Conversation.objects.filter(holder=Holder.HUMAN, holder_staff_id=user_id)
    return _items(held.order_by("holder_since", "pk"))


def queue_frame(*, user_id: int) -> dict[str, Any]:
    """What an inbox socket sends: the waiting list and the staff member's own conversations."""
    return {
        "type": "queue",
        "waiting": [item.as_json() for item in waiting_list()],
        "mine": [item.as_json() for item in held_by(user_id=user_id)],
    }


def conversation_may_be_handled(conversation_id: uuid.UUID) -> bool:
    return Conversation.objects.filter(id=conversation_id).exists()
