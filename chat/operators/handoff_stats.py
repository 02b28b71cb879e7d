"""Handoff figures for the dashboard's date range: how often customers went to a person, how long they
waited for a person's first reply, and how many waited longer than ``HANDOFF_WAIT_TARGET_SECONDS``.

Three queries for any range: conversations started in it, their requests for a person, the staff replies
after them. A wait runs from a request (``HandoffEvent`` to ``waiting``) to the first staff reply after it;
a request nobody has answered yet counts as waiting until now (it is over the target once that is long).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta

from django.conf import settings
from django.utils import timezone

from chat.models import Conversation, HandoffEvent, Holder, Turn
from chat.operators.dashboard import percentile


@dataclass(frozen=True)
class HandoffSummary:
    conversations: int
    handed_off: int
    answered_waits_seconds: list[int]
    over_target: int
    target_seconds: int

    @property
    def rate(self) -> float | None:
        return self.handed_off / self.conversations if self.conversations else None

    @property
    def rate_percent(self) -> str:
        return "—" if self.rate is None else f"{self.rate * 100:.0f}%"

    @property
    def median_wait_seconds(self) -> int | None:
        return percentile(self.answered_waits_seconds, 0.5)


def _first_reply_after(replies: list[datetime], moment: datetime) -> datetime | None:
    return next((reply for reply in replies if reply >= moment), None)


def handoff_summary(
    *, since: date, until: date, conversations: int | None = None, now: datetime | None = None
) -> HandoffSummary:
    """The figures for conversations started from ``since`` to ``until``; ``conversations``, their number,
    when the caller has it already (the dashboard's daily figures)."""
    now = now or timezone.now()
    started = Conversation.objects.filter(created_at__date__gte=since, created_at__date__lte=until)
    requests = list(
        HandoffEvent.objects.filter(conversation__in=started, state=Holder.WAITING)
        .order_by("created_at")
        .values_list("conversation_id", "created_at")
    )
    replies: dict[object, list[datetime]] = {}
    if requests:
        staff_turns = Turn.objects.filter(conversation_id__in={c for c, _ in requests}, kind="staff").order_by("seq")
        for conversation_id, created_at in staff_turns.values_list("conversation_id", "created_at"):
            replies.setdefault(conversation_id, []).append(created_at)
    target = timedelta(seconds=settings.HANDOFF_WAIT_TARGET_SECONDS)
    waits: list[int] = []
    over = set()
    for conversation_id, asked_at in requests:
        reply = _first_reply_after(replies.get(conversation_id, []), asked_at)
        if reply is not None:
            waits.append(int((reply - asked_at).total_seconds()))
        if (reply or now) - asked_at > target:
            over.add(conversation_id)
    return HandoffSummary(
        conversations=started.count() if conversations is None else conversations,
        handed_off=len({conversation_id for conversation_id, _ in requests}),
        answered_waits_seconds=waits,
        over_target=len(over),
        target_seconds=settings.HANDOFF_WAIT_TARGET_SECONDS,
    )
