"""``/ws/operators/conversations/<id>/``: an operator watches a conversation as it happens.

Read-only: the socket joins the conversation's group and forwards its frames; anything the operator
sends is ignored. Tool frames carry masked arguments already, but the customer's own message goes to
the group as typed, before any tool has said which part of it is a secret. So an operator gets a
placeholder at once and the stored, masked text when the turn is over (its ``idle`` frame).

The right to watch is checked at connect and again whenever it may have changed: a ``rights.changed``
event on the user's group (``chat.operators.revocation``) and, as a backstop for changes no signal
reported (bulk updates, raw SQL), before relaying a frame once the last check is older than
``RECHECK_SECONDS``. A socket whose user lost the right is closed with 4403 and relays nothing more.
"""

from __future__ import annotations

import time
import uuid
from typing import Any
from urllib.parse import parse_qs

from django.contrib.auth import get_user_model

from chat import fanout, selectors
from chat.consumers import conversation_group
from chat.db import database_sync_to_async
from chat.models import Turn
from chat.operators.access import may_review
from chat.operators.revocation import staff_user_group
from chat.operators.selectors import conversation_exists
from chat.resume import Shown
from chat.sockets import Socket

# Seconds a check of the right is trusted before a relayed frame pays for another (one worker-thread hop,
# a couple of queries): the signals close a revoked socket at once; this bounds what they miss.
RECHECK_SECONDS = 5.0


def operator_may_watch(user: Any, conversation_id: uuid.UUID) -> bool:
    return may_review(user) and conversation_exists(conversation_id=conversation_id)


def user_may_still_review(user_id: int) -> bool:
    """``may_review`` for the user as stored now (a deleted user may not); never the cached scope user."""
    user = get_user_model().objects.filter(pk=user_id).first()
    return user is not None and may_review(user)


def customer_messages_after(conversation_id: uuid.UUID, seq: int, limit: int) -> list[tuple[int, str]]:
    """The customer's stored (masked) messages after ``seq``, oldest first."""
    turns = Turn.objects.filter(conversation_id=conversation_id, role=Turn.Role.USER, seq__gt=seq).order_by("seq")
    return list(turns.values_list("seq", "content")[:limit])


def last_customer_seq(conversation_id: uuid.UUID) -> int:
    turn = Turn.objects.filter(conversation_id=conversation_id, role=Turn.Role.USER).order_by("-seq").first()
    return turn.seq if turn else 0


def _page_upto(scope: dict[str, Any]) -> int | None:
    """The last stored row the page shows (``?after=<seq>``, which ``static/operators/live.js`` sends); None
    when the URL has none or not a number (then nothing is caught up)."""
    values = parse_qs(scope.get("query_string", b"").decode()).get("after", [])
    if len(values) != 1 or not values[0].isdecimal() or len(values[0]) > 9:
        return None
    return int(values[0])


class StaffSocket(Socket):
    """A staff member's listening socket whose right is checked at the handshake and again whenever it may
    have changed: a ``rights.changed`` event on the user's group, and before relaying once the last check
    is older than ``RECHECK_SECONDS``. Subclasses say which right (``may_still_watch``)."""

    groups_joined: tuple[str, ...] = ()
    user_id: int
    checked_at = 0.0  # time.monotonic() of the last check that the user still holds the right
    revoked = False

    async def may_still_watch(self) -> bool:
        raise NotImplementedError

    async def _join(self, group: str, *, conversation: bool = False) -> None:
        """Join the group; a conversation's group through ``fanout.group_join``, which tells its members."""
        if conversation:
            await fanout.group_join(self.channel_layer, group, self.channel_name)
        else:
            await self.channel_layer.group_add(group, self.channel_name)
        self.groups_joined = (*self.groups_joined, group)

    async def _leave_groups(self) -> None:
        for group in self.groups_joined:
            await self.channel_layer.group_discard(group, self.channel_name)
        self.groups_joined = ()

    async def _still_allowed(self) -> bool:
        """Check the right again; close the socket (4403) for good when it is gone."""
        if self.revoked:
            return False
        if await self.may_still_watch():
            self.checked_at = time.monotonic()
            return True
        self.revoked = True  # frames already queued for this socket are dropped from now on
        await self._leave_groups()
        await self.close(code=4403)
        return False

    async def _may_relay(self) -> bool:
        """Whether a frame may go out now: not revoked, and checked recently enough (or checked again)."""
        if self.revoked:
            return False
        return time.monotonic() - self.checked_at < RECHECK_SECONDS or await self._still_allowed()

    async def rights_changed(self, event: dict[str, Any]) -> None:
        """The user's rights may have changed (``chat.operators.revocation``)."""
        if hasattr(self, "user_id"):  # an event that raced a refused handshake has nothing to close
            await self._still_allowed()


class OperatorConsumer(StaffSocket):
    conversation_id: uuid.UUID
    pending_customer_messages = 0
    shown_customer_seq = 0

    async def connect(self) -> None:
        conversation_id = self.scope["url_route"]["kwargs"]["conversation_id"]
        user = self.scope.get("user")
        if user is not None and user.is_authenticated:
            # Joined before the check, so a change committed while it runs is not missed.
            await self._join(staff_user_group(user.pk))
        if not await self.may_watch(user, conversation_id):
            await self._leave_groups()
            await self.close(code=4403)  # before accept: the handshake is refused (HTTP 403)
            return
        self.user_id = user.pk
        self.checked_at = time.monotonic()
        self.conversation_id = conversation_id
        self.shown_customer_seq = await database_sync_to_async(last_customer_seq)(conversation_id)
        await self._join(conversation_group(conversation_id), conversation=True)
        await self.accept()
        after = _page_upto(self.scope)
        self.shown = Shown([], upto=after or 0)
        if after is not None:
            # The rows stored since the page's timeline was read (or since the frames it showed before its
            # socket dropped), whose frames went out before this socket joined: from the database, once.
            frames = await database_sync_to_async(selectors.conversation_replay_frames)(
                conversation_id=conversation_id, after_seq=after
            )
            for frame in self.shown.unshown(frames):
                if frame.get("role") == "user":  # stored: masked already
                    frame = {**frame, "masked": True}
                    self.shown_customer_seq = max(self.shown_customer_seq, frame["seq"])
                await self.send_json(frame)
        self.shown.caught_up()

    async def disconnect(self, code: int) -> None:
        await self._leave_groups()

    # The right this socket needs; the inbox's conversation socket (chat.operators.inbox_consumers) asks another.

    async def may_watch(self, user: Any, conversation_id: uuid.UUID) -> bool:
        return await database_sync_to_async(operator_may_watch)(user, conversation_id)

    async def may_still_watch(self) -> bool:
        return await database_sync_to_async(user_may_still_review)(self.user_id)

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        return None  # operators watch; they never speak in the customer's conversation

    async def chat_joined(self, event: dict[str, Any]) -> None:
        """Another socket joined the conversation's group (``fanout.group_join``): nothing to show."""

    async def chat_frame(self, event: dict[str, Any]) -> None:
        if not await self._may_relay():
            return
        frame = event["frame"]
        if self.shown.fresh(frame):  # not a row the page or this socket's catch-up already shows
            await self._relay(frame)

    async def _relay(self, frame: dict[str, Any]) -> None:
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
