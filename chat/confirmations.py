"""The customer's "yes" before a tool that changes data runs.

A turn that meets such a call opens a ``Confirmation`` row, sends the confirm card and waits, holding the
conversation's turn lock, until the row is decided or ``CHAT_CONFIRM_TIMEOUT_SECONDS`` pass. The row is
decided only by ``confirmation_decide``, which the customer's socket calls with the card's id (and the
conversation the socket's browser session owns): nothing the model writes reaches it.

The customer's socket may live in another server process than the waiting turn. The database row is the
truth; the channel layer only wakes the turn early: the turn listens on a channel of its own added to the
conversation's confirmation group, and the socket that decided sends a wake-up there. A lost wake-up
costs at most ``RECHECK_SECONDS``.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from channels.layers import get_channel_layer
from django.conf import settings
from django.db import connection
from django.utils import timezone

from chat import protocol
from chat.agent import ConfirmDecision, ConfirmRequest, Emit
from chat.db import database_sync_to_async
from chat.models import Confirmation
from chat.sockets import layer_receive_within

logger = logging.getLogger(__name__)

RECHECK_SECONDS = 2.0
State = Confirmation.State


def confirmation_group(conversation_id: uuid.UUID) -> str:
    """Where a conversation's waiting turn listens for its customer's answer."""
    return f"confirm.{conversation_id.hex}"


# THE ROWS (sync: called through database_sync_to_async)


def confirmation_open(
    *, conversation_id: uuid.UUID, confirm_id: uuid.UUID, request: ConfirmRequest, frame: protocol.Frame
) -> None:
    """Record the question asked (``frame``, as sent: masked) as pending until the timeout."""
    Confirmation.objects.create(
        id=confirm_id,
        conversation_id=conversation_id,
        tool_call_id=request.call_id,
        tool=request.tool,
        frame=frame,
        expires_at=timezone.now() + timedelta(seconds=settings.CHAT_CONFIRM_TIMEOUT_SECONDS),
    )


def confirmation_decide(*, conversation_id: uuid.UUID, confirm_id: uuid.UUID, approve: bool) -> bool:
    """The customer's answer, from their own socket: True when it decided a pending, unexpired question of
    *this* conversation (an unknown id, another conversation's, or one already decided changes nothing)."""
    decided = Confirmation.objects.filter(
        id=confirm_id, conversation_id=conversation_id, state=State.PENDING, expires_at__gt=timezone.now()
    ).update(state=State.APPROVED if approve else State.REFUSED, decided_at=timezone.now())
    return decided == 1


def confirmations_supersede(*, conversation_id: uuid.UUID) -> bool:
    """The customer wrote instead of answering: every pending question of the conversation is dropped.
    True when there was one (a turn waits on it)."""
    sql, params = confirmations_supersede_statement(conversation_id=conversation_id)
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return bool(cursor.fetchall())


def confirmations_supersede_statement(*, conversation_id: uuid.UUID) -> tuple[str, list[Any]]:
    """``confirmations_supersede``'s statement, to run with others: a row for each question dropped."""
    # Written out (every customer message runs it, and there is rarely a card): the ORM's update costs ~4x.
    decided_at = Confirmation._meta.get_field("decided_at").get_db_prep_save(timezone.now(), connection)
    conversation = Confirmation._meta.get_field("conversation").get_db_prep_save(conversation_id, connection)
    return _SUPERSEDE, [State.SUPERSEDED.value, decided_at, conversation, State.PENDING.value]


_SUPERSEDE = (
    "UPDATE chat_confirmation SET state = %s, decided_at = %s WHERE conversation_id = %s AND state = %s RETURNING id"
)


def confirmations_expire_all(*, conversation_id: uuid.UUID) -> None:
    """No turn waits on them (its process died): the questions can no longer be answered."""
    Confirmation.objects.filter(conversation_id=conversation_id, state=State.PENDING).update(
        state=State.EXPIRED, decided_at=timezone.now()
    )


def confirmation_state(*, confirm_id: uuid.UUID) -> str:
    return Confirmation.objects.values_list("state", flat=True).get(id=confirm_id)


def confirmation_expire(*, confirm_id: uuid.UUID) -> str:
    """Expire the question if still pending; its final state either way (an answer may have just come)."""
    Confirmation.objects.filter(id=confirm_id, state=State.PENDING).update(
        state=State.EXPIRED, decided_at=timezone.now()
    )
    return confirmation_state(confirm_id=confirm_id)


def confirmation_pending_frames(*, conversation_id: uuid.UUID) -> list[protocol.Frame]:
    """The cards still waiting for an answer, as sent, for the replay after a reload."""
    pending = Confirmation.objects.filter(
        conversation_id=conversation_id, state=State.PENDING, expires_at__gt=timezone.now()
    ).order_by("created_at")
    return [protocol.replayed(frame) for frame in pending.values_list("frame", flat=True)]


# THE WAITING TURN


class ChannelConfirmer:
    """The runtime's ``chat.agent.Confirmer``: the card goes to every socket of the conversation (through
    ``emit``), the answer comes from the customer's socket, in whichever process it is."""

    def __init__(self, conversation_id: uuid.UUID, emit: Emit, mask: Callable[[protocol.Frame], Any]) -> None:
        self.conversation_id = conversation_id
        self.emit = emit
        self.mask = mask

    async def confirm(self, request: ConfirmRequest) -> ConfirmDecision:
        confirm_id = uuid.uuid4()
        frame = self.mask(
            protocol.confirm(
                confirm_id=str(confirm_id), tool=request.tool, summary=request.summary, arguments=request.arguments
            )
        )
        layer = get_channel_layer()
        channel = await layer.new_channel() if layer is not None else None
        group = confirmation_group(self.conversation_id)
        if channel is not None:
            await layer.group_add(group, channel)  # before the card goes out: no answer can come earlier
        try:
            await database_sync_to_async(confirmation_open)(
                conversation_id=self.conversation_id, confirm_id=confirm_id, request=request, frame=frame
            )
            await self.emit(frame)
            state = await self._answer(confirm_id, layer, channel)
        finally:
            if channel is not None:
                await layer.group_discard(group, channel)
        await self.emit(protocol.confirmation(confirm_id=str(confirm_id), state=state))
        logger.info("confirmation of %s in %s: %s", request.tool, self.conversation_id, state)
        return state  # type: ignore[return-value]

    async def _answer(self, confirm_id: uuid.UUID, layer: Any, channel: str | None) -> str:
        """The row's decision, once it has one; expired when the timeout passes first."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + settings.CHAT_CONFIRM_TIMEOUT_SECONDS
        while True:
            state = await database_sync_to_async(confirmation_state)(confirm_id=confirm_id)
            if state != State.PENDING:
                return state
            remaining = deadline - loop.time()
            if remaining <= 0:
                return await database_sync_to_async(confirmation_expire)(confirm_id=confirm_id)
            wait = min(remaining, RECHECK_SECONDS)
            if channel is None:
                await asyncio.sleep(wait)
            else:
                await layer_receive_within(layer, channel, wait)


async def confirmation_wake(conversation_id: uuid.UUID) -> None:
    """Tell the conversation's waiting turn (in any process) that its question was decided."""
    layer = get_channel_layer()
    if layer is not None:
        await layer.group_send(confirmation_group(conversation_id), {"type": "confirm.decided"})
