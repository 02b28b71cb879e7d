"""The chat WebSocket: wire protocol only. The agent's work happens in ``chat.runtime``."""

from __future__ import annotations

import asyncio
import functools
import logging
import uuid
from typing import Any
from urllib.parse import parse_qs

from django.contrib.sessions.backends.base import SessionBase

from chat import earlycall, fanout, handoff, identity, limits, modelstatus, protocol, selectors, services
from chat.confirmations import (
    confirmation_decide,
    confirmation_wake,
    confirmations_expire_all,
    confirmations_supersede_statement,
)
from chat.db import database_sync_to_async
from chat.frames import ConfirmFrame, HumanFrame, parse_client_frame
from chat.prompts import SYSTEM_PROMPT
from chat.protocol import CustomerError
from chat.resume import Shown
from chat.runtime import Arrival, Attached, conversation_attach, conversation_respond
from chat.sockets import Socket
from chat.turnlock import conversation_busy, conversation_wait_free

logger = logging.getLogger(__name__)

# Turns outlive the socket that asked for them: a customer who drops mid-reply finds it on return.
running_turns: set[asyncio.Task[Any]] = set()
# The same tasks by conversation, so a message counts its conversation's turns without a walk over all of them.
_conversation_turns: dict[uuid.UUID, set[asyncio.Task[Any]]] = {}
# Turns one conversation may have running or waiting in this process; more is a client flooding.
MAX_QUEUED_TURNS = 5
TOO_MANY = "Please wait for the answer to your earlier messages before sending more."
CONFIRMATION_CLOSED = "That question was already answered or has expired; nothing was done."


def conversation_group(conversation_id: uuid.UUID) -> str:
    return f"conversation.{conversation_id.hex}"


def session_conversation_attach(
    *, session: SessionBase, client_address: str | None, new: bool
) -> tuple[Attached, str]:
    """The conversation of the socket's browser session, and the socket's lease; a session the database
    doesn't hold (no cookie, a made-up or expired key) is replaced by a fresh one, so no key is ever
    taken on trust.

    Raises a refusal (``CustomerError``) over the flood limits (open sockets, new conversations); the
    lease is held until ``limits.socket_close`` (or its expiry, if this process dies first).
    """
    if session.session_key is not None:
        session.load()  # forgets a key the store doesn't hold, or that has expired
    fresh = session.session_key is None
    if fresh:
        session.create()
    where = {"session_key": session.session_key, "client_address": client_address}
    lease = limits.socket_open(**where)
    try:
        attached = conversation_attach(  # a session made just now has no conversation to look up
            **where, new=new or fresh, before_start=lambda: limits.conversation_start_admit(**where)
        )
        # A customer the company's website signed in is verified before the greeting (chat.identity).
        identity.conversation_sign_in(
            session=session, conversation=attached.conversation, client_address=client_address
        )
    except BaseException:
        limits.socket_close(lease=lease, **where)
        raise
    return attached, lease


def customer_message_arrive(
    *, session_key: str, client_address: str | None, conversation_id: uuid.UUID, text: str
) -> bool:
    """Count the message against the flood limits and, if admitted, store it to wait for its turn: one
    database step, and from here the message outlives this process. Raises the refusal when over a limit.
    For a message that must wait behind a running turn (one for a free conversation is stored by its
    turn's first step, ``runtime.turn_start_arriving``).

    Writing instead of answering a pending card drops it: True when one was (the turn waiting on it must
    be woken, to go on to this message)."""
    limits.message_admit(session_key=session_key, client_address=client_address)
    _, superseded = services.statements_run(  # one round trip on PostgreSQL, one transaction
        [
            services.customer_message_wait_statement(conversation_id=conversation_id, text=text),
            confirmations_supersede_statement(conversation_id=conversation_id),
        ]
    )
    return bool(superseded)


def _turn_name(conversation_id: uuid.UUID) -> str:
    return f"turn:{conversation_id.hex}"


def _turns_queued(conversation_id: uuid.UUID) -> int:
    """The conversation's turns (and handoffs) running or waiting in this process."""
    return len(_conversation_turns.get(conversation_id, ()))


def _turn_track(conversation_id: uuid.UUID, task: asyncio.Task[Any]) -> None:
    """Keep the task (a turn outlives its socket) until it is done, counted against its conversation."""
    running_turns.add(task)
    _conversation_turns.setdefault(conversation_id, set()).add(task)

    def done(task: asyncio.Task[Any]) -> None:
        running_turns.discard(task)
        tasks = _conversation_turns.get(conversation_id)
        if tasks is not None:
            tasks.discard(task)
            if not tasks:
                del _conversation_turns[conversation_id]

    task.add_done_callback(done)


class ChatConsumer(Socket):
    """One customer's socket. Over a flood limit the socket is accepted, told why in an ``error`` frame
    (``"refused": true``) and closed with ``limits.CLOSE_CODE``, so the page can show the reason; a
    refused message gets the frame, then ``idle`` when no turn is running, and never reaches the model."""

    conversation_id: uuid.UUID
    group: str
    session_key: str | None = None
    client_address: str | None = None
    socket_lease: str | None = None
    shown: Shown
    _catch_up_at_idle = False  # a turn was running as the socket attached: catch up before its idle
    _idle_waiter: asyncio.Task[None] | None = None

    async def connect(self) -> None:
        session = self.scope.get("session")
        if session is None:
            await self.close(code=4401)
            return
        query = parse_qs(self.scope.get("query_string", b"").decode())
        client = self.scope.get("client") or (None, None)
        try:
            attached, self.socket_lease = await database_sync_to_async(session_conversation_attach)(
                session=session, client_address=client[0], new=query.get("new") == ["1"]
            )
        except CustomerError as refusal:
            await self.accept()
            await self.send_json(refusal.frame())
            await self.close(code=limits.CLOSE_CODE)
            return
        self.session_key, self.client_address = session.session_key, client[0]
        self.conversation_id = attached.conversation.id
        self.group = conversation_group(self.conversation_id)
        await asyncio.gather(  # side by side: four or five Redis round trips, not one after another
            fanout.group_join(self.channel_layer, self.group, self.channel_name),
            self.channel_layer.group_add(modelstatus.STATUS_GROUP, self.channel_name),
        )
        # A turn of this conversation running in this process hands its frames straight to the socket: they
        # are held until the conversation frame and the replay are out, so none goes ahead of them. (Frames
        # through the layer wait anyway: the socket takes the next message only once ``connect`` returns.)
        held: list[dict[str, Any]] = []

        async def hold(event: dict[str, Any]) -> None:
            held.append(event)

        fanout.listen(self.group, self.channel_name, hold)
        await self.accept()
        await self.send_json(protocol.conversation(self.conversation_id, resumed=not attached.created))
        if modelstatus.model_state() == "down":
            await self.send_json(modelstatus.status_frame())
        replay = await self._live_replay(attached.replay)
        self.shown = Shown(replay)
        for frame in replay:
            await self.send_json(frame)
        if not attached.created:
            # Joined now: what was stored since the replay was read, whose frames went out before the join
            # (``chat.resume``); asked after whether a turn runs, whose steps stored later it will catch up.
            self._catch_up_at_idle = attached.waiting or await conversation_busy(self.conversation_id)
            for frame in await self._catch_up():
                await self.send_json(frame)
        if not self._catch_up_at_idle:
            self.shown.caught_up()
        while held:  # frames held meanwhile may still arrive behind these: they join the list and go in order
            await self.chat_frame(held.pop(0))
        fanout.listen(self.group, self.channel_name, self.chat_frame)
        if attached.created and attached.conversation.customer_id is None:
            earlycall.expect(self.conversation_id, [{"role": "system", "content": SYSTEM_PROMPT}], None, frozenset())
        else:  # it may have changed anywhere since this process last ran a turn of it (a sign-in: verified)
            earlycall.forget(self.conversation_id)
        if attached.created or attached.waiting:
            # The greeting; or messages stored and not yet taken (their process may have died): the turn
            # waits for any running one, then answers them (and does nothing if another turn took them).
            self._start_turn(early_call=attached.created)
        elif not await conversation_busy(self.conversation_id):
            await self.send_json(protocol.idle())
        else:
            # The running turn sends its idle to everyone; but if its process died, only the lease's
            # expiry ends it, and nobody would say so: this socket hears it once the conversation is free.
            self._idle_waiter = asyncio.create_task(self._idle_when_free())

    async def _catch_up(self) -> list[dict[str, Any]]:
        """The frames of the turns stored since the replay that this socket has not shown (``chat.resume``)."""
        frames = await database_sync_to_async(selectors.conversation_replay_frames)(
            conversation_id=self.conversation_id, after_seq=self.shown.upto
        )
        return self.shown.unshown(frames)

    async def _live_replay(self, replay: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The replay, without cards no turn waits on any more (its process died): they are expired."""
        if not any(frame["type"] == "confirm" for frame in replay) or await conversation_busy(self.conversation_id):
            return replay
        await database_sync_to_async(confirmations_expire_all)(conversation_id=self.conversation_id)
        return [frame for frame in replay if frame["type"] != "confirm"]

    async def _idle_when_free(self) -> None:
        await conversation_wait_free(self.conversation_id)
        # Through the layer, behind the turn's last frames, which travel the same way.
        await self.channel_layer.send(self.channel_name, {"type": "chat.frame", "frame": protocol.idle()})

    async def disconnect(self, code: int) -> None:
        if self._idle_waiter is not None:
            self._idle_waiter.cancel()
        if hasattr(self, "group"):
            fanout.unlisten(self.group, self.channel_name)
            if not fanout.listened_here(self.group):
                earlycall.forget(self.conversation_id)  # its next message comes through a new socket anyway
            await self.channel_layer.group_discard(self.group, self.channel_name)
            await self.channel_layer.group_discard(modelstatus.STATUS_GROUP, self.channel_name)
        await self._socket_release()

    # THE SOCKET'S LEASE: given back however the socket ends (closed, a handler's exception, cancelled
    # by a server shutdown); a process killed outright stops renewing it, and it expires.

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            if hasattr(self, "group"):
                fanout.unlisten(self.group, self.channel_name)
            await asyncio.shield(self._socket_release())

    async def _socket_release(self) -> None:
        lease, self.socket_lease = self.socket_lease, None
        if lease is not None:
            await database_sync_to_async(limits.socket_close)(
                lease=lease, session_key=self.session_key, client_address=self.client_address
            )

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        if self.session_key is None:
            return  # a refused socket, closing: nothing it sends is read
        try:
            frame = parse_client_frame(text_data)
        except CustomerError as refusal:
            await self._refuse(refusal)
            return
        if isinstance(frame, ConfirmFrame):
            await self._confirm(frame)
            return
        if _turns_queued(self.conversation_id) >= MAX_QUEUED_TURNS:
            await self._refuse(CustomerError("too_many_messages", TOO_MANY, refused=True))
            return
        if isinstance(frame, HumanFrame):  # counted like a message, and nothing to store
            try:
                await database_sync_to_async(limits.message_admit)(
                    session_key=self.session_key, client_address=self.client_address
                )
            except CustomerError as refusal:
                await self._refuse(refusal)
                return
            self._start_handoff()
            return
        # The turn counts and stores the message in its first step when the conversation is free, else
        # (``_store_waiting``) before it waits; it takes the oldest waiting message: this one, or an earlier.
        self._start_turn(
            Arrival(
                text=frame.text,
                admit=functools.partial(
                    limits.message_admit, session_key=self.session_key, client_address=self.client_address
                ),
                store=functools.partial(self._store_waiting, frame.text),
                refuse=self._refuse,
            ),
            early_call=fanout.known_ours(self.group),  # no other process's socket can have changed it
        )

    async def _store_waiting(self, text: str) -> None:
        """Count and store a message that must wait for a running turn (raises the refusal)."""
        superseded = await database_sync_to_async(customer_message_arrive)(
            session_key=self.session_key,
            client_address=self.client_address,
            conversation_id=self.conversation_id,
            text=text,
        )
        if superseded:  # the turn waiting on the card goes on to this message
            await confirmation_wake(self.conversation_id)

    async def _confirm(self, frame: ConfirmFrame) -> None:
        """The customer's answer to a card: decided only for this socket's own conversation, then the
        waiting turn (in whichever process) is woken; a stale or unknown card is refused."""
        decided = await database_sync_to_async(confirmation_decide)(
            conversation_id=self.conversation_id, confirm_id=frame.id, approve=frame.approve
        )
        if decided:
            await confirmation_wake(self.conversation_id)
            return
        await self._refuse(CustomerError("confirmation_closed", CONFIRMATION_CLOSED, refused=True))

    async def _refuse(self, refusal: CustomerError) -> None:
        """Tell the customer why the message was not taken; the page's turn state stays right."""
        await self.send_json(refusal.frame())
        if not await conversation_busy(self.conversation_id):
            await self.send_json(protocol.idle())

    async def chat_frame(self, event: dict[str, Any]) -> None:
        """A frame of this conversation, from whichever socket's turn produced it, unless already shown."""
        frame = event["frame"]
        if not self.shown.fresh(frame):
            return
        if frame.get("role") == "user" and event.get("origin") == self.channel_name:
            return  # the sender already shows its own message
        if frame.get("type") == "idle" and self._catch_up_at_idle:
            # The turn running as this socket attached is over: its steps stored after the catch-up's read.
            self._catch_up_at_idle = False
            for missed in await self._catch_up():
                await self.send_json(missed)
            self.shown.caught_up()
        await self.send_json(frame)

    async def chat_joined(self, event: dict[str, Any]) -> None:
        """A socket joined this conversation's group (``fanout.group_join``): perhaps not one of this process's."""
        if hasattr(self, "group"):
            fanout.joined(self.group, event["channel"])

    def _start_turn(self, arrival: Arrival | None = None, *, early_call: bool = False) -> None:
        """Run a turn as a task of its own: it finishes, and is stored, even if this socket closes. It
        answers the conversation's oldest waiting message (``arrival``, just received, is stored first), or
        greets a new conversation. ``early_call``: every listener of the conversation is this process's
        (``runtime.conversation_respond``)."""
        task = asyncio.create_task(
            conversation_respond(
                conversation_id=self.conversation_id,
                emit=fanout.ConversationFanout(self.channel_layer, self.group, origin=self.channel_name),
                arrival=arrival,
                early_call=early_call,
            ),
            name=_turn_name(self.conversation_id),
        )
        _turn_track(self.conversation_id, task)


    def _start_handoff(self) -> None:
        """The customer asked for a person: queued behind any running turn, like a turn (and counted as one)."""
        earlycall.forget(self.conversation_id)  # its next message goes to a person, not the model
        task = asyncio.create_task(
            handoff.customer_asks_for_human(
                conversation_id=self.conversation_id,
                emit=fanout.ConversationFanout(self.channel_layer, self.group, origin=self.channel_name),
            ),
            name=_turn_name(self.conversation_id),
        )
        _turn_track(self.conversation_id, task)
