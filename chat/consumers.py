"""The chat WebSocket: wire protocol only. The agent's work happens in ``chat.runtime``."""

from __future__ import annotations

import asyncio
import logging
import uuid
from typing import Any
from urllib.parse import parse_qs

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django.contrib.sessions.backends.base import SessionBase

from chat import limits
from chat.frames import FrameError, parse_client_frame
from chat.limits import Refused
from chat.runtime import Attached, conversation_attach, conversation_busy, conversation_lock, conversation_respond

logger = logging.getLogger(__name__)

# Turns outlive the socket that asked for them: a customer who drops mid-reply finds it on return.
running_turns: set[asyncio.Task[Any]] = set()
# Turns one conversation may have running or waiting in this process; more is a client flooding.
MAX_QUEUED_TURNS = 5
TOO_MANY = "Please wait for the answer to your earlier messages before sending more."


def conversation_group(conversation_id: uuid.UUID) -> str:
    return f"conversation.{conversation_id.hex}"


def session_conversation_attach(*, session: SessionBase, client_address: str | None, new: bool) -> Attached:
    """The conversation of the socket's browser session; a session the database doesn't hold (no
    cookie, a made-up or expired key) is replaced by a fresh one, so no key is ever taken on trust.

    Raises ``Refused`` over the flood limits (open sockets, new conversations); a socket attached is
    counted until ``limits.socket_close``.
    """
    session.load()  # forgets a key the store doesn't hold, or that has expired
    if session.session_key is None:
        session.create()
    where = {"session_key": session.session_key, "client_address": client_address}
    limits.socket_open(**where)
    try:
        return conversation_attach(
            **where, new=new, before_start=lambda: limits.conversation_start_admit(**where)
        )
    except BaseException:
        limits.socket_close(**where)
        raise


def _turn_name(conversation_id: uuid.UUID) -> str:
    return f"turn:{conversation_id.hex}"


class ChatConsumer(AsyncJsonWebsocketConsumer):
    """One customer's socket. Over a flood limit the socket is accepted, told why in an ``error`` frame
    (``"refused": true``) and closed with ``limits.CLOSE_CODE``, so the page can show the reason; a
    refused message gets the frame, then ``idle`` when no turn is running, and never reaches the model."""

    conversation_id: uuid.UUID
    group: str
    session_key: str | None = None
    client_address: str | None = None
    _idle_waiter: asyncio.Task[None] | None = None

    async def connect(self) -> None:
        session = self.scope.get("session")
        if session is None:
            await self.close(code=4401)
            return
        query = parse_qs(self.scope.get("query_string", b"").decode())
        client = self.scope.get("client") or (None, None)
        try:
            attached = await database_sync_to_async(session_conversation_attach)(
                session=session, client_address=client[0], new=query.get("new") == ["1"]
            )
        except Refused as refusal:
            await self.accept()
            await self.send_json(refusal.frame())
            await self.close(code=limits.CLOSE_CODE)
            return
        self.session_key, self.client_address = session.session_key, client[0]
        self.conversation_id = attached.conversation.id
        self.group = conversation_group(self.conversation_id)
        await self.channel_layer.group_add(self.group, self.channel_name)
        await self.accept()
        await self.send_json({"type": "conversation", "id": str(self.conversation_id), "resumed": not attached.created})
        for frame in attached.replay:
            await self.send_json(frame)
        if attached.created:
            self._start_turn(None)
        elif not await conversation_busy(self.conversation_id):
            await self.send_json({"type": "idle"})
        else:
            # The running turn sends its idle to everyone; but if its process died, only the lease's
            # expiry ends it, and nobody would say so: this socket hears it once the conversation is free.
            self._idle_waiter = asyncio.create_task(self._idle_when_free())

    async def _idle_when_free(self) -> None:
        async with conversation_lock(self.conversation_id):
            pass
        # Through the layer, behind the turn's last frames, which travel the same way.
        await self.channel_layer.send(self.channel_name, {"type": "chat.frame", "frame": {"type": "idle"}})

    async def disconnect(self, code: int) -> None:
        if self._idle_waiter is not None:
            self._idle_waiter.cancel()
        if hasattr(self, "group"):
            await self.channel_layer.group_discard(self.group, self.channel_name)
        if self.session_key is not None:
            where = {"session_key": self.session_key, "client_address": self.client_address}
            self.session_key = None
            await database_sync_to_async(limits.socket_close)(**where)

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        if self.session_key is None:
            return  # a refused socket, closing: nothing it sends is read
        try:
            frame = parse_client_frame(text_data)
        except FrameError as error:
            await self._refuse(Refused(error.code, error.message))
            return
        queued = sum(task.get_name() == _turn_name(self.conversation_id) for task in running_turns)
        if queued >= MAX_QUEUED_TURNS:
            await self._refuse(Refused("too_many_messages", TOO_MANY))
            return
        try:
            await database_sync_to_async(limits.message_admit)(
                session_key=self.session_key, client_address=self.client_address
            )
        except Refused as refusal:
            await self._refuse(refusal)
            return
        self._start_turn(frame.text)

    async def _refuse(self, refusal: Refused) -> None:
        """Tell the customer why the message was not taken; the page's turn state stays right."""
        await self.send_json(refusal.frame())
        if not await conversation_busy(self.conversation_id):
            await self.send_json({"type": "idle"})

    async def chat_frame(self, event: dict[str, Any]) -> None:
        """A frame of this conversation, from whichever socket's turn produced it."""
        frame = event["frame"]
        if frame.get("role") == "user" and event.get("origin") == self.channel_name:
            return  # the sender already shows its own message
        await self.send_json(frame)

    def _start_turn(self, customer_text: str | None) -> None:
        """Run the turn as a task of its own: it finishes, and is stored, even if this socket closes."""
        task = asyncio.create_task(
            conversation_respond(
                conversation_id=self.conversation_id, emit=self._broadcast, customer_text=customer_text
            ),
            name=_turn_name(self.conversation_id),
        )
        running_turns.add(task)
        task.add_done_callback(running_turns.discard)

    async def _broadcast(self, frame: dict[str, Any]) -> None:
        await self.channel_layer.group_send(
            self.group, {"type": "chat.frame", "frame": frame, "origin": self.channel_name}
        )
