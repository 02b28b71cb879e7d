"""``/ws/operators/conversations/<id>/``: an operator watches a conversation as it happens.

Read-only: the socket joins the conversation's group and forwards its frames (the same ones the
customer's page gets, secrets already masked); anything the operator sends is ignored.
"""

from __future__ import annotations

import uuid
from typing import Any

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer

from chat.consumers import conversation_group
from chat.review import conversation_exists
from chat.roles import REVIEW_PERMISSION


def operator_may_watch(user: Any, conversation_id: uuid.UUID) -> bool:
    if not (user is not None and user.is_authenticated and user.is_staff and user.has_perm(REVIEW_PERMISSION)):
        return False
    return conversation_exists(conversation_id=conversation_id)


class OperatorConsumer(AsyncJsonWebsocketConsumer):
    group: str

    async def connect(self) -> None:
        conversation_id = self.scope["url_route"]["kwargs"]["conversation_id"]
        if not await database_sync_to_async(operator_may_watch)(self.scope.get("user"), conversation_id):
            await self.close(code=4403)  # before accept: the handshake is refused (HTTP 403)
            return
        self.group = conversation_group(conversation_id)
        await self.channel_layer.group_add(self.group, self.channel_name)
        await self.accept()

    async def disconnect(self, code: int) -> None:
        if hasattr(self, "group"):
            await self.channel_layer.group_discard(self.group, self.channel_name)

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        return None  # operators watch; they never speak in the customer's conversation

    async def chat_frame(self, event: dict[str, Any]) -> None:
        await self.send_json(event["frame"])
