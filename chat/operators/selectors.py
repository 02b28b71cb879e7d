"""Reads for the operators' transcript review: the filtered list, one conversation's timeline.

The list is one annotated query per page whatever its length (plus one for the tools used), and
the same query feeds the exports, so "Export" always means "what the list shows".
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any

from django.db.models import Case, CharField, Count, Exists, F, Max, OuterRef, Q, QuerySet, Sum, Value, When
from django.db.models.functions import Coalesce

from chat.models import Conversation, Feedback, HandoffEvent, Turn
from tickets.models import Ticket, TicketComment

OUTCOME_ANSWERED = "answered"
OUTCOME_NOT_VERIFIED = "not verified"
OUTCOME_FALLBACK = "fallback"
OUTCOME_ERROR = "error"
OUTCOME_HANDED_OFF = "handed off"


@dataclass(frozen=True)
class ReviewFilters:
    """What the operator asked to see; every field empty means everything."""

    q: str = ""
    since: date | None = None
    until: date | None = None
    verified: bool | None = None
    tool: str = ""
    problem: str = ""  # "", "error", "fallback" or "any"
    rating: str = ""  # "", "up", "down" or "none"
    wrote: bool | None = None  # whether the customer wrote anything (None: either)
    handed_off: bool | None = None  # asked for (or was given) a person from support


def _turns_of_conversation(**lookups: Any) -> Exists:
    return Exists(Turn.objects.filter(conversation=OuterRef("pk"), **lookups))


def conversations_matching(*, filters: ReviewFilters = ReviewFilters()) -> QuerySet[Conversation]:
    """The conversations the filters select, newest first, with no annotation (for the JSONL export)."""
    return _filtered(Conversation.objects.select_related("customer"), filters).order_by("-created_at", "-pk")


def conversations_for_review(*, filters: ReviewFilters = ReviewFilters()) -> QuerySet[Conversation]:
    """Conversations newest first, each annotated with what the list and the CSV export show."""
    conversations = Conversation.objects.select_related("customer").annotate(
        turn_count=Count("turns", filter=~Q(turns__role=Turn.Role.SYSTEM)),
        error_count=Count("turns", filter=Q(turns__role=Turn.Role.ERROR)),
        fallback_count=Count("turns", filter=Q(turns__is_fallback=True)),
        model_calls=Count("turns", filter=Q(turns__latency_ms__isnull=False)),
        prompt_tokens=Coalesce(Sum("turns__prompt_tokens"), 0),
        completion_tokens=Coalesce(Sum("turns__completion_tokens"), 0),
        last_turn_at=Max("turns__created_at"),
        rating=F("feedback__rating"),
        handed_off=_handed_off(),
        outcome=Case(
            When(handed_off=True, then=Value(OUTCOME_HANDED_OFF)),
            When(error_count__gt=0, then=Value(OUTCOME_ERROR)),
            When(fallback_count__gt=0, then=Value(OUTCOME_FALLBACK)),
            When(customer__isnull=True, then=Value(OUTCOME_NOT_VERIFIED)),
            default=Value(OUTCOME_ANSWERED),
            output_field=CharField(),
        ),
    )
    return _filtered(conversations, filters).order_by("-created_at", "-pk")


def _handed_off() -> Exists:
    return Exists(HandoffEvent.objects.filter(conversation=OuterRef("pk")))


def _filtered(conversations: QuerySet[Conversation], filters: ReviewFilters) -> QuerySet[Conversation]:
    # Every condition on turns is an EXISTS, so it never multiplies the rows the counts above add up.
    if filters.q:
        said = Q(content__icontains=filters.q) | Q(tool_calls__icontains=filters.q)
        conversations = conversations.filter(
            Exists(Turn.objects.filter(said, conversation=OuterRef("pk")).exclude(role=Turn.Role.SYSTEM))
        )
    if filters.since:
        conversations = conversations.filter(created_at__date__gte=filters.since)
    if filters.until:
        conversations = conversations.filter(created_at__date__lte=filters.until)
    if filters.verified is not None:
        conversations = conversations.filter(customer__isnull=not filters.verified)
    if filters.tool:
        conversations = conversations.filter(_turns_of_conversation(role=Turn.Role.TOOL, name=filters.tool))
    problems = {
        "error": _turns_of_conversation(role=Turn.Role.ERROR),
        "fallback": _turns_of_conversation(is_fallback=True),
    }
    if filters.problem in problems:
        conversations = conversations.filter(problems[filters.problem])
    elif filters.problem == "any":
        conversations = conversations.filter(problems["error"] | problems["fallback"])
    if filters.wrote is not None:
        wrote = _turns_of_conversation(role=Turn.Role.USER)
        conversations = conversations.filter(wrote if filters.wrote else ~wrote)
    if filters.rating in Feedback.Rating.values:
        conversations = conversations.filter(feedback__rating=filters.rating)
    elif filters.rating == "none":
        conversations = conversations.filter(feedback__isnull=True)
    if filters.handed_off is not None:
        conversations = conversations.filter(_handed_off() if filters.handed_off else ~_handed_off())
    return conversations


def tools_used(*, conversation_ids: list[uuid.UUID]) -> dict[uuid.UUID, list[str]]:
    """The tools each conversation called, in name order: one query for a whole page."""
    used: dict[uuid.UUID, list[str]] = {conversation_id: [] for conversation_id in conversation_ids}
    rows = (
        Turn.objects.filter(conversation_id__in=conversation_ids, role=Turn.Role.TOOL)
        .exclude(name="")
        .values_list("conversation_id", "name")
        .distinct()
        .order_by("conversation_id", "name")
    )
    for conversation_id, name in rows:
        used[conversation_id].append(name)
    return used


@dataclass(frozen=True)
class ReviewRow:
    """One line of the list (and of the CSV export)."""

    conversation: Conversation
    tools: list[str]

    @property
    def customer(self) -> str | None:
        return self.conversation.customer.username if self.conversation.customer else None

    @property
    def duration(self) -> timedelta | None:
        last = self.conversation.last_turn_at  # type: ignore[attr-defined]
        return last - self.conversation.created_at if last else None

    @property
    def duration_text(self) -> str:
        return duration_text(self.duration)


def duration_text(duration: timedelta | None) -> str:
    """"42 s", "3 min 05 s", "2 h 07 min"; empty for no duration."""
    if duration is None:
        return ""
    seconds = int(duration.total_seconds())
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def review_rows(conversations: list[Conversation]) -> list[ReviewRow]:
    used = tools_used(conversation_ids=[conversation.id for conversation in conversations])
    return [ReviewRow(conversation, used[conversation.id]) for conversation in conversations]


# THE TIMELINE


@dataclass
class ToolCallView:
    id: str
    name: str
    arguments: str  # pretty JSON, secrets already masked when stored
    result: str | None = None
    ok: bool = True
    ticket_id: str | None = None
    ticket_pk: int | None = None


@dataclass
class TimelineEntry:
    """A stored turn as the reviewer reads it; tool results are folded into their calls."""

    kind: str  # "system", "customer", "agent", "error", "staff" (a person's reply), "handoff" (holder changed)
    turn: Turn
    text: str = ""
    calls: list[ToolCallView] = field(default_factory=list)

    @property
    def tokens(self) -> int | None:
        if self.turn.prompt_tokens is None and self.turn.completion_tokens is None:
            return None
        return (self.turn.prompt_tokens or 0) + (self.turn.completion_tokens or 0)


@dataclass
class Timeline:
    conversation: Conversation
    entries: list[TimelineEntry]
    model_calls: int
    latency_ms: int
    prompt_tokens: int
    completion_tokens: int
    last_seq: int


def _pretty(text: str) -> tuple[str, Any]:
    try:
        value = json.loads(text)
    except (TypeError, ValueError):
        return text, None
    return json.dumps(value, indent=2, ensure_ascii=False), value


def conversation_timeline(*, conversation_id: uuid.UUID) -> Timeline | None:
    """The conversation as a readable timeline, or None when there is no such conversation."""
    conversation = Conversation.objects.select_related("customer", "feedback").filter(id=conversation_id).first()
    if conversation is None:
        return None
    turns = list(conversation.turns.order_by("seq"))
    entries: list[TimelineEntry] = []
    calls: dict[str, ToolCallView] = {}
    for turn in turns:
        if turn.role == Turn.Role.TOOL:
            _attach_result(calls, turn)
            continue
        kind = turn.kind or {"user": "customer", "assistant": "agent"}.get(turn.role, turn.role)
        text = turn.content
        if turn.kind == "handoff" and isinstance(turn.result, dict):  # what the customer was told
            text = turn.result.get("message") or text
        entry = TimelineEntry(kind=kind, turn=turn, text=text)
        for call in turn.tool_calls or []:
            function = call.get("function", {})
            name = function.get("name", "")
            arguments = function.get("arguments", "")  # stored with its secrets masked (chat.secrets)
            view = ToolCallView(call.get("id", ""), name, _pretty(arguments)[0])
            calls[view.id] = view
            entry.calls.append(view)
        entries.append(entry)
    _link_tickets(list(calls.values()))
    model_turns = [turn for turn in turns if turn.latency_ms is not None]
    return Timeline(
        conversation=conversation,
        entries=entries,
        model_calls=len(model_turns),
        latency_ms=sum(turn.latency_ms or 0 for turn in model_turns),
        prompt_tokens=sum(turn.prompt_tokens or 0 for turn in turns),
        completion_tokens=sum(turn.completion_tokens or 0 for turn in turns),
        last_seq=turns[-1].seq if turns else 0,
    )


def _attach_result(calls: dict[str, ToolCallView], turn: Turn) -> None:
    view = calls.get(turn.tool_call_id)
    if view is None:  # a result without its call: show it on its own rather than lose it
        view = calls[turn.tool_call_id or f"orphan-{turn.seq}"] = ToolCallView(turn.tool_call_id, turn.name, "")
    view.result = _pretty(turn.content)[0]
    view.ok = not turn.is_error
    if view.ok and isinstance(turn.result, dict) and turn.result.get("ticket_id"):
        view.ticket_id = str(turn.result["ticket_id"])


def _link_tickets(calls: list[ToolCallView]) -> None:
    wanted = {call.ticket_id for call in calls if call.ticket_id}
    if not wanted:
        return
    pks = dict(Ticket.objects.filter(public_id__in=wanted).values_list("public_id", "pk"))
    for call in calls:
        call.ticket_pk = pks.get(call.ticket_id or "")


def conversations_that_looked_up(*, ticket: Ticket) -> QuerySet[Conversation]:
    """Conversations of the ticket's owner in which a tool answered with this ticket's data."""
    looked_up = Turn.objects.filter(
        conversation=OuterRef("pk"), role=Turn.Role.TOOL, is_error=False, result__ticket_id=ticket.public_id
    )
    return Conversation.objects.filter(Exists(looked_up), customer_id=ticket.customer_id).order_by("-created_at")


def conversations_about_ticket(*, ticket: Ticket) -> list[tuple[Conversation, list[str]]]:
    """Conversations of the ticket's owner that created it, commented on it or looked it up, newest
    first, each with what it did ("created", "commented", "looked up"). Two queries, whatever the count."""
    commented = set(
        TicketComment.objects.filter(ticket=ticket, conversation_id__isnull=False).values_list(
            "conversation_id", flat=True
        )
    )
    looked_up = Turn.objects.filter(
        conversation=OuterRef("pk"), role=Turn.Role.TOOL, is_error=False, result__ticket_id=ticket.public_id
    )
    conversations = (
        Conversation.objects.filter(customer_id=ticket.customer_id)
        .filter(Q(id=ticket.conversation_id) | Q(id__in=commented) | Exists(looked_up))
        .annotate(looked_up=Exists(looked_up))
        .order_by("-created_at")[:50]
    )
    about = []
    for conversation in conversations:
        what = [
            label
            for label, done in (
                ("created", conversation.id == ticket.conversation_id),
                ("commented", conversation.id in commented),
                ("looked up", conversation.looked_up),
            )
            if done
        ]
        about.append((conversation, what))
    return about


def conversation_exists(*, conversation_id: uuid.UUID) -> bool:
    return Conversation.objects.filter(id=conversation_id).exists()
