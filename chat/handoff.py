"""Handing a conversation over to a person from support, and back: who holds it, and what everyone is told.

A conversation is held by the assistant (``agent``), waits for a person (``waiting``), is held by a named
staff member (``human``) or is ``closed`` (``chat.models.Holder``). The holder is stored on the
conversation; every change is a ``HandoffEvent`` row (who, when, why) and a ``handoff`` note turn, so
the model, after a hand-back, reads that a person took over, what they wrote and that they left; the
replay after a reload shows the same. The runtime (``chat.runtime``) makes no model call while the
holder is not the assistant: the customer's messages are stored and relayed to staff.

Ways in: the model's tool ``request_human`` (then the turn ends, with no further model call), the
customer's ``{"type": "human"}`` frame (the page's "Talk to a person"), and ``HANDOFF_AFTER_FAILURES``
fallback replies or model errors in a row. Ways out: a staff member hands it back or closes it.

Writes are sync, atomic and keyword-only; frames go out after commit, through the channel layer, to the
conversation's group (its customer tabs and watching staff) and to the inbox group (the waiting list).
A claim is one conditional ``UPDATE … WHERE holder = 'waiting'``: of two staff members, in any processes,
exactly one wins.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from datetime import datetime, time
from typing import Annotated, Any

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone
from pydantic import Field

from chat import counters, protocol, services
from chat.agent import Emit, TurnResult, numbered
from chat.db import database_sync_to_async
from chat.models import Conversation, HandoffEvent, Holder, Turn
from chat.toolbox import ToolContext, ToolError
from chat.turnlock import conversation_lock

QUEUE_GROUP = "handoff.queue"  # every open inbox socket: the waiting list changed
PRESENCE_SCOPE = "handoff:console"  # leases of open staff console sockets (chat.counters)
HELD = (Holder.WAITING, Holder.HUMAN)

CLOSED_MESSAGE = "This conversation was closed by our support team. Please start a new conversation to go on."
BUTTON_REASON = "The customer pressed \u201cTalk to a person\u201d."

# What the model reads after a hand-back (assistant-role notes: a role every OpenAI-compatible API takes).
NOTES = {
    Holder.WAITING: (
        "[Handoff note: the customer is waiting for a person from the support team (reason: {reason}). "
        "The assistant does not answer while a person is awaited or holds the conversation.]"
    ),
    Holder.HUMAN: (
        "[Handoff note: {name} from the support team took the conversation over. Until the next handoff "
        "note, {name} answered the customer, not the assistant.]"
    ),
    Holder.AGENT: (
        "[Handoff note: {name} from the support team left the conversation and handed it back to the "
        "assistant, which answers the customer again from here.]"
    ),
    Holder.CLOSED: "[Handoff note: {name} from the support team closed the conversation.]",
}


class HandoffRefused(Exception):
    """A staff action that cannot be done now (claimed by someone else, not held by this staff member)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


# SUPPORT HOURS AND PRESENCE

_DAYS = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
_HOURS = re.compile(r"^\s*(?:(?P<days>[a-z,\-]+)\s+)?(?P<start>\d{1,2}:\d{2})\s*-\s*(?P<end>\d{1,2}:\d{2})\s*$", re.I)


@dataclass(frozen=True)
class SupportHours:
    days: frozenset[int]
    start: time
    end: time

    def open_at(self, moment: datetime) -> bool:
        local = timezone.localtime(moment)
        return local.weekday() in self.days and self.start <= local.time() < self.end


def parse_support_hours(text: str) -> SupportHours | None:
    """``"mon-fri 09:00-17:00"``, ``"mon,wed 10:00-12:00"`` or ``"08:00-20:00"`` (every day), in
    ``TIME_ZONE``; empty: always open. Raises ``ValueError`` on anything else (``manage.py check`` reports it)."""
    if not text.strip():
        return None
    match = _HOURS.match(text)
    if match is None:
        raise ValueError(f"support hours must look like 'mon-fri 09:00-17:00', not {text!r}")
    days: set[int] = set()
    for part in (match["days"] or "mon-sun").lower().split(","):
        first, _, last = part.partition("-")
        if first not in _DAYS or (last and last not in _DAYS):
            raise ValueError(f"unknown day in support hours {text!r}")
        days.update(range(_DAYS.index(first), _DAYS.index(last or first) + 1))
    start, end = (time.fromisoformat(f"{value:0>5}") for value in (match["start"], match["end"]))
    return SupportHours(frozenset(days), start, end)


def support_open(moment: datetime | None = None) -> bool:
    hours = parse_support_hours(settings.HANDOFF_SUPPORT_HOURS)
    return hours is None or hours.open_at(moment or timezone.now())


def staff_online() -> int:
    """Staff console sockets open now, in every process (their leases expire if a process dies)."""
    return counters.store().lease_count(PRESENCE_SCOPE)


def console_open() -> str:
    """Count an open staff console socket; give the lease back with ``console_close`` (or it expires)."""
    lease = uuid.uuid4().hex
    counters.store().lease_take([PRESENCE_SCOPE], lease, counters.now() + counters.LEASE_SECONDS)
    counters.keeper.add(lease, [PRESENCE_SCOPE])
    return lease


def console_close(lease: str) -> None:
    counters.keeper.remove(lease)
    counters.store().lease_drop([PRESENCE_SCOPE], lease)


# WHAT THE CUSTOMER IS TOLD


def staff_display_name(user: Any) -> str:
    """The name a customer sees: the staff member's first name, else their username."""
    return (getattr(user, "first_name", "") or user.get_username())[:64]


def queue_position(conversation: Conversation) -> int:
    """1 for the oldest waiting conversation (ties broken by id, as the inbox orders them)."""
    earlier = Q(holder_since__lt=conversation.holder_since) | Q(
        holder_since=conversation.holder_since, pk__lte=conversation.pk
    )
    return Conversation.objects.filter(earlier, holder=Holder.WAITING).count()


def waiting_frame(conversation: Conversation) -> protocol.Frame:
    """The truth for a waiting customer: their place in the queue, and whether anyone can answer now."""
    position = queue_position(conversation)
    online = staff_online() > 0
    open_now = support_open()
    place = f"You're number {position} in the queue for a person from our support team."
    if not open_now:
        tail = (
            f" Our support team is away right now (support hours: {settings.HANDOFF_SUPPORT_HOURS}). "
            "Your conversation stays in the queue; they will read your messages when they are back."
        )
    elif not online:
        tail = (
            " No one from our support team is online right now. Your conversation stays in the queue; "
            "they will read your messages when they are back."
        )
    else:
        tail = " Someone will be with you shortly; you can keep writing here, they will see your messages."
    return protocol.handoff(
        Holder.WAITING, place + tail, position=position, online=online, support_hours=open_now
    )


def status_frame(conversation: Conversation) -> protocol.Frame | None:
    """The conversation's current holder as a frame, for a page that attaches; None while the assistant holds it."""
    if conversation.holder == Holder.WAITING:
        return waiting_frame(conversation)
    if conversation.holder in (Holder.HUMAN, Holder.CLOSED):
        last = conversation.turns.filter(kind="handoff").order_by("-seq").first()
        if last is not None and isinstance(last.result, dict):
            return protocol.handoff(**last.result)
    return None


# WRITES


def _mask(conversation: Conversation, text: str) -> str:
    # Imported here: chat.runtime imports this module (a turn's branch for held conversations).
    from chat.runtime import conversation_secret_keeper

    return conversation_secret_keeper(conversation).mask_text(text)


def _turn_append(conversation: Conversation, *, content: str, kind: str, name: str = "", result: Any = None) -> Turn:
    """An assistant-role turn of ``kind``; the conversation row is locked by the caller (seq is unique)."""
    return Turn.objects.create(
        conversation=conversation, seq=services.turn_next_seq(conversation.id), role=Turn.Role.ASSISTANT,
        content=content, kind=kind, name=name, result=result,
    )


def _note_append(conversation: Conversation, frame: protocol.Frame, **words: str) -> None:
    """Store the note of a change of holder, with the frame that tells the customer (which then names its row)."""
    fields = {key: value for key, value in frame.items() if key != "type"}
    turn = _turn_append(conversation, content=NOTES[frame["state"]].format(**words), kind="handoff", result=fields)
    frame["seq"] = turn.seq


def _holder_set(conversation: Conversation, state: str, *, staff: Any = None, reason: str | None = None) -> None:
    conversation.holder = state
    conversation.holder_staff = staff
    conversation.holder_since = timezone.now()
    update = ["holder", "holder_staff", "holder_since", "updated_at"]
    if reason is not None:
        conversation.handoff_reason = reason[:500]
        update.append("handoff_reason")
    conversation.save(update_fields=update)


def _locked(conversation_id: uuid.UUID) -> Conversation:
    return services.conversation_locked(conversation_id)


@transaction.atomic
def handoff_request(*, conversation_id: uuid.UUID, actor: str, reason: str, note: bool = True) -> protocol.Frame:
    """Put the conversation in the queue for a person; the frame tells the customer where they stand.

    ``actor`` is ``customer``, ``assistant`` or ``system``. Without ``note`` the caller appends the note
    (the tool's call and result are stored after it runs: the note must follow them). A conversation
    already waiting or held is left as it is and its status returned; a closed one is refused.
    """
    conversation = _locked(conversation_id)
    if conversation.holder == Holder.CLOSED:
        raise HandoffRefused("conversation_closed", CLOSED_MESSAGE)
    if conversation.holder != Holder.AGENT:
        return status_frame(conversation) or waiting_frame(conversation)
    reason = _mask(conversation, reason.strip() or "not given")[:500]
    _holder_set(conversation, Holder.WAITING, reason=reason)
    HandoffEvent.objects.create(conversation=conversation, state=Holder.WAITING, actor=actor, reason=reason)
    frame = waiting_frame(conversation)
    if note:
        _note_append(conversation, frame, reason=reason)
    _after_commit(conversation_id, [], queue=True)
    return frame


@transaction.atomic
def waiting_note_append(*, conversation_id: uuid.UUID) -> protocol.Frame | None:
    """After a turn whose tool asked for a person: the note that it waits, and the customer's frame."""
    conversation = _locked(conversation_id)
    if conversation.holder != Holder.WAITING:
        return None
    frame = waiting_frame(conversation)
    _note_append(conversation, frame, reason=conversation.handoff_reason or "not given")
    return frame


def handoff_claim(*, conversation_id: uuid.UUID, staff: Any) -> protocol.Frame:
    """The staff member takes a waiting conversation; raises ``HandoffRefused`` when someone else was first
    (or it no longer waits). One conditional UPDATE decides, whatever the process or database."""
    with transaction.atomic():
        won = Conversation.objects.filter(id=conversation_id, holder=Holder.WAITING).update(
            holder=Holder.HUMAN, holder_staff=staff, holder_since=timezone.now(), updated_at=timezone.now()
        )
        if not won:
            holder = Conversation.objects.filter(id=conversation_id).select_related("holder_staff").first()
            taker = holder and holder.holder_staff and staff_display_name(holder.holder_staff)
            raise HandoffRefused("claimed", f"{taker} already took this conversation." if taker
                                 else "This conversation is no longer waiting for a person.")
        conversation = _locked(conversation_id)
        name = staff_display_name(staff)
        HandoffEvent.objects.create(conversation=conversation, state=Holder.HUMAN, staff=staff, staff_name=name,
                                    actor="staff", reason="claimed in the inbox")
        frame = protocol.handoff(Holder.HUMAN, f"{name} joined the conversation.", name=name)
        _note_append(conversation, frame, name=name)
        _after_commit(conversation_id, [frame], queue=True, positions=True)
    return frame


def _held_by(conversation_id: uuid.UUID, staff: Any) -> Conversation:
    conversation = _locked(conversation_id)
    if conversation.holder != Holder.HUMAN or conversation.holder_staff_id != staff.pk:
        raise HandoffRefused("not_yours", "You don't hold this conversation: claim it first.")
    return conversation


@transaction.atomic
def staff_reply(*, conversation_id: uuid.UUID, staff: Any, text: str) -> protocol.Frame:
    """The holding staff member's message to the customer, stored (secrets masked) then sent."""
    conversation = _held_by(conversation_id, staff)
    name = staff_display_name(staff)
    text = _mask(conversation, text)
    turn = _turn_append(conversation, content=text, kind="staff", name=name)
    frame = protocol.message("staff", text, name=name, seq=turn.seq)
    _after_commit(conversation_id, [frame])
    return frame


@transaction.atomic
def handoff_release(*, conversation_id: uuid.UUID, staff: Any, close: bool = False) -> protocol.Frame:
    """The holding staff member hands the conversation back to the assistant, or closes it."""
    conversation = _held_by(conversation_id, staff)
    name = staff_display_name(staff)
    state = Holder.CLOSED if close else Holder.AGENT
    _holder_set(conversation, state)
    HandoffEvent.objects.create(conversation=conversation, state=state, staff=staff, staff_name=name, actor="staff",
                                reason="closed" if close else "returned to the assistant")
    text = (f"{name} closed this conversation. Start a new conversation if you need anything else." if close
            else f"{name} left \u2014 you're back with the assistant.")
    frame = protocol.handoff(state, text, name=name)
    _note_append(conversation, frame, name=name)
    _after_commit(conversation_id, [frame], queue=True)
    return frame


def handoff_after_failures(*, conversation_id: uuid.UUID) -> protocol.Frame | None:
    """With ``HANDOFF_AFTER_FAILURES`` = N, queue the conversation when its last N answers were all fallback
    replies or errors; None otherwise."""
    wanted = settings.HANDOFF_AFTER_FAILURES
    if not wanted:
        return None
    answers = Turn.objects.filter(conversation_id=conversation_id).filter(
        Q(role=Turn.Role.ERROR) | Q(role=Turn.Role.ASSISTANT, tool_calls__isnull=True, kind="")
    )
    last = list(answers.order_by("-seq")[:wanted])
    if len(last) < wanted or not all(turn.role == Turn.Role.ERROR or turn.is_fallback for turn in last):
        return None
    reason = f"The assistant failed to answer {wanted} times in a row."
    return handoff_request(conversation_id=conversation_id, actor="system", reason=reason)


# AFTER COMMIT: the frames, the inbox, the other waiting customers' places


def _after_commit(
    conversation_id: uuid.UUID, frames: list[protocol.Frame], *, queue: bool = False, positions: bool = False
) -> None:
    transaction.on_commit(lambda: _send(conversation_id, frames, queue, positions), robust=True)


def _send(conversation_id: uuid.UUID, frames: list[protocol.Frame], queue: bool, positions: bool) -> None:
    from chat.consumers import conversation_group  # the consumer module imports this one

    layer = get_channel_layer()
    if layer is None:
        return
    for frame in frames:
        async_to_sync(layer.group_send)(conversation_group(conversation_id), {"type": "chat.frame", "frame": frame})
    if queue:
        async_to_sync(layer.group_send)(QUEUE_GROUP, {"type": "handoff.queue"})
    if positions:  # someone left the queue: everyone behind them moved up
        for waiting in Conversation.objects.filter(holder=Holder.WAITING):
            async_to_sync(layer.group_send)(
                conversation_group(waiting.id), {"type": "chat.frame", "frame": waiting_frame(waiting)}
            )


# THE TURN'S SIDE (called by chat.runtime)


async def customer_message_while_held(*, holder: str, stored: dict[str, Any] | None, emit: Emit) -> TurnResult:
    """A customer message while a person is awaited or holds the conversation: already stored (masked) as
    the turn started, relayed to the conversation's group, staff included; no model call. A closed
    conversation did not store it, and refuses it."""
    if holder == Holder.CLOSED or stored is None:
        await emit(protocol.error("conversation_closed", CLOSED_MESSAGE, refused=True))
        return TurnResult("error", 0)
    await emit(protocol.message("user", stored["content"], held=True, **numbered(stored)))
    return TurnResult("held", 0)


async def after_turn(*, conversation_id: uuid.UUID, result: TurnResult, emit: Emit) -> None:
    """The customer hears at once that the turn queued them: by the model's tool, or by failing too often."""
    if result.outcome == "handed_off":
        frame = await database_sync_to_async(waiting_note_append)(conversation_id=conversation_id)
    elif result.outcome in ("fallback", "error"):
        frame = await database_sync_to_async(handoff_after_failures)(conversation_id=conversation_id)
    else:
        return
    if frame is not None:
        await emit(frame)


async def customer_asks_for_human(*, conversation_id: uuid.UUID, emit: Emit) -> None:
    """The page's "Talk to a person": queued after any running turn, so the note follows its answer."""
    async with conversation_lock(conversation_id):
        try:
            frame = await database_sync_to_async(handoff_request)(
                conversation_id=conversation_id, actor="customer", reason=BUTTON_REASON
            )
        except HandoffRefused as refusal:
            frame = protocol.error(refusal.code, refusal.message, refused=True)
        await emit(frame)


# THE MODEL'S TOOL


def request_human(
    context: ToolContext,
    reason: Annotated[
        str, Field(description="Why the customer needs a person, in a few words.", min_length=1, max_length=300)
    ],
) -> dict[str, Any]:
    """Hand the conversation to a person from support: when the customer asks for one, or you cannot help.

    The customer is told their place in the queue by the server; the model is not called again this turn.
    """
    try:
        frame = handoff_request(conversation_id=context.conversation_id, actor="assistant", reason=reason, note=False)
    except HandoffRefused as refusal:
        raise ToolError(refusal.message) from refusal
    context.ends_turn = True  # the server tells the customer; the model is not called again
    return {
        "queued": True,
        "position": frame.get("position"),
        "staff_online": frame.get("online"),
        "within_support_hours": frame.get("support_hours"),
        "customer_was_told": frame.get("message"),
    }
