"""``/ws/operators/conversations/<id>/``: an operator watches a conversation as it happens.

Read-only: the socket joins the conversation's group and forwards its frames; anything the operator
sends is ignored. Tool frames carry masked arguments already, but the customer's own message goes to
the group as typed, before any tool has said which part of it is a secret. So an operator gets a
placeholder at once and the stored, masked text when the turn is over (its ``idle`` frame).
"""

from __future__ import annotations

import uuid
from typing import Any

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer

from chat.consumers import conversation_group
from chat.models import Turn
from chat.review import conversation_exists
from chat.roles import REVIEW_PERMISSION


def operator_may_watch(user: Any, conversation_id: uuid.UUID) -> bool:
    if not (user is not None and user.is_authenticated and user.is_staff and user.has_perm(REVIEW_PERMISSION)):
        return False
    return conversation_exists(conversation_id=conversation_id)


def customer_messages_after(conversation_id: uuid.UUID, seq: int, limit: int) -> list[tuple[int, str]]:
    """The customer's stored (masked) messages after ``seq``, oldest first."""
    turns = Turn.objects.filter(conversation_id=conversation_id, role=Turn.Role.USER, seq__gt=seq).order_by("seq")
    return list(turns.values_list("seq", "content")[:limit])


def last_customer_seq(conversation_id: uuid.UUID) -> int:
    turn = Turn.objects.filter(conversation_id=conversation_id, role=Turn.Role.USER).order_by("-seq").first()
    return turn.seq if turn else 0


class OperatorConsumer(AsyncJsonWebsocketConsumer):
    group: str
    conversation_id: uuid.UUID
    pending_customer_messages = 0
    shown_customer_seq = 0

    async def connect(self) -> None:
        conversation_id = self.scope["url_route"]["kwargs"]["conversation_id"]
        if not await database_sync_to_async(operator_may_watch)(self.scope.get("user"), conversation_id):
            await self.close(code=4403)  # before accept: the handshake is refused (HTTP 403)
            return
        self.conversation_id = conversation_id
        self.shown_customer_seq = await database_sync_to_async(last_customer_seq)(conversation_id)
        self.group = conversation_group(conversation_id)
        await self.channel_layer.group_add(self.group, self.channel_name)
        await self.accept()

    async def disconnect(self, code: int) -> None:
        if hasattr(self, "group"):
            await self.channel_layer.group_discard(self.group, self.channel_name)

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        return None  # operators watch; they never speak in the customer's conversation

    async def chat_frame(self, event: dict[str, Any]) -> None:
        frame = event["frame"]
        if frame.get("type") == "message" and frame.get("role") == "user":
            self.pending_customer_messages += 1
            await self.send_json({"type": "message", "role": "user", "pending": True})
            return
        await self.send_json(frame)
        if frame.get("type") == "idle" and self.pending_customer_messages:
            await self._send_stored_customer_messages()

    async def _send_stored_customer_messages(self) -> None:
        stored = await database_sync_to_async(customer_messages_after)(
            self.conversation_id, self.shown_customer_seq, self.pending_customer_messages
        )
        for seq, text in stored:
            await self.send_json({"type": "message", "role": "user", "text": text, "masked": True, "seq": seq})
            self.shown_customer_seq = seq
            self.pending_customer_messages -= 1
