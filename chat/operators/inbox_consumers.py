"""The staff console's sockets: ``/ws/operators/inbox/`` (the waiting list, live) and
``/ws/operators/inbox/<id>/`` (one conversation, live, while a staff member answers it).

Both need ``may_handle`` (the "Support staff" right): checked at the handshake (refused with 4403
before accept), again when the user's rights may have changed (``rights.changed``, from
``chat.operators.revocation``: the same events that close a revoked operator's socket) and, as a
backstop, before relaying anything once the last check is older than ``RECHECK_SECONDS``. Anything a
staff member does (claim, reply, hand back, close) goes through the inbox's POST views, which check the
right on every request; these sockets only listen.

An open console socket is a lease in ``chat.counters`` (``chat.handoff.console_open``): customers are
told whether anyone from support is online. The lease is given back however the socket ends, and expires
by itself when its process dies.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

from django.contrib.auth import get_user_model

from chat import handoff
from chat.db import database_sync_to_async
from chat.operators.access import may_handle
from chat.operators.consumers import OperatorConsumer, StaffSocket, last_customer_seq
from chat.operators.inbox_selectors import conversation_may_be_handled, queue_frame
from chat.operators.revocation import staff_user_group


def user_may_still_handle(user_id: int) -> bool:
    """``may_handle`` for the user as stored now (a deleted user may not)."""
    user = get_user_model().objects.filter(pk=user_id).first()
    return user is not None and may_handle(user)


class _ConsolePresence:
    """Counts this socket as an open staff console while it lives (a lease; see ``chat.handoff``)."""

    presence_lease: str | None = None

    async def presence_take(self) -> None:
        self.presence_lease = await database_sync_to_async(handoff.console_open)()

    async def presence_release(self) -> None:
        lease, self.presence_lease = self.presence_lease, None
        if lease is not None:
            await database_sync_to_async(handoff.console_close)(lease)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)  # type: ignore[misc]
        finally:
            await asyncio.shield(self.presence_release())

    async def _still_allowed(self) -> bool:
        allowed = await super()._still_allowed()  # type: ignore[misc]
        if not allowed:
            await self.presence_release()  # a revoked console no longer counts as someone online
        return allowed


class InboxConsumer(_ConsolePresence, StaffSocket):
    """The waiting list: a ``queue`` frame at connect and whenever it changes."""

    async def connect(self) -> None:
        user = self.scope.get("user")
        if user is not None and user.is_authenticated:
            await self._join(staff_user_group(user.pk))  # before the check: a change meanwhile is not missed
        if user is None or not user.is_authenticated or not await database_sync_to_async(may_handle)(user):
            await self._leave_groups()
            await self.close(code=4403)
            return
        self.user_id = user.pk
        self.checked_at = time.monotonic()
        await self._join(handoff.QUEUE_GROUP)
        await self.accept()
        await self.presence_take()
        await self._send_queue()

    async def disconnect(self, code: int) -> None:
        await self._leave_groups()
        await self.presence_release()

    async def may_still_watch(self) -> bool:
        return await database_sync_to_async(user_may_still_handle)(self.user_id)

    async def handoff_queue(self, event: dict[str, Any]) -> None:
        if await self._may_relay():
            await self._send_queue()

    async def _send_queue(self) -> None:
        await self.send_json(await database_sync_to_async(queue_frame)(user_id=self.user_id))

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        return None  # actions are POSTs, each checked on its own


class InboxConversationConsumer(_ConsolePresence, OperatorConsumer):
    """One conversation's frames for the staff member answering it: the operators' live socket, behind the
    handoff right instead of the review right. A customer message stored while a person holds the
    conversation (``held``) is already masked, so it is shown at once."""

    async def may_watch(self, user: Any, conversation_id: uuid.UUID) -> bool:
        allowed = await database_sync_to_async(may_handle)(user)
        return allowed and await database_sync_to_async(conversation_may_be_handled)(conversation_id)

    async def may_still_watch(self) -> bool:
        return await database_sync_to_async(user_may_still_handle)(self.user_id)

    async def connect(self) -> None:
        await super().connect()
        if hasattr(self, "user_id") and not self.revoked:
            await self.presence_take()

    async def disconnect(self, code: int) -> None:
        await super().disconnect(code)
        await self.presence_release()

    async def _relay(self, frame: dict[str, Any]) -> None:
        if frame.get("type") == "message" and frame.get("role") == "user" and frame.get("held"):
            await self.send_json(frame)
            # Stored before it was sent: later placeholders are filled from after it, never with it again.
            self.shown_customer_seq = await database_sync_to_async(last_customer_seq)(self.conversation_id)
            return
        await super()._relay(frame)
