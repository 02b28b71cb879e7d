"""Per-day figures for the operators' dashboard: a handful of queries for any range of days."""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from datetime import date, timedelta

from django.db.models import Count, Exists, OuterRef, Q, Sum
from django.db.models.functions import Coalesce, TruncDate

from chat.models import Conversation, Feedback, Turn

MAX_DAYS = 366


@dataclass(frozen=True)
class DashboardRange:
    since: date
    until: date


@dataclass
class DayStats:
    day: date
    conversations: int = 0
    verified: int = 0
    answered: int = 0
    fallback: int = 0
    error: int = 0
    tokens: int = 0
    reply_median_ms: int | None = None
    reply_p95_ms: int | None = None
    rated_up: int = 0
    rated_down: int = 0

    @property
    def csat(self) -> float | None:
        """Satisfaction: the share of thumbs up among the day's rated conversations (None: none rated)."""
        rated = self.rated_up + self.rated_down
        return self.rated_up / rated if rated else None

    @property
    def csat_percent(self) -> int | None:
        return None if self.csat is None else round(self.csat * 100)

    def share(self, count: int) -> float | None:
        return count / self.conversations if self.conversations else None

    @property
    def verified_share(self) -> float | None:
        return self.share(self.verified)

    @property
    def answered_share(self) -> float | None:
        return self.share(self.answered)

    @property
    def fallback_share(self) -> float | None:
        return self.share(self.fallback)

    @property
    def error_share(self) -> float | None:
        return self.share(self.error)


def percentile(values: list[int], fraction: float) -> int | None:
    """The nearest-rank percentile of ``values`` (sorted or not); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


def daily_stats(*, since: date, until: date) -> list[DayStats]:
    """One ``DayStats`` per day from ``since`` to ``until`` inclusive (days without data are zeros)."""
    days = {since + timedelta(days=offset): DayStats(since + timedelta(days=offset))
            for offset in range((until - since).days + 1)}
    _add_conversation_counts(days, since, until)
    _add_ratings(days, since, until)
    turns = Turn.objects.filter(created_at__date__gte=since, created_at__date__lte=until)
    tokens = (
        turns.annotate(day=TruncDate("created_at")).values("day")
        .annotate(total=Coalesce(Sum("prompt_tokens"), 0) + Coalesce(Sum("completion_tokens"), 0))
        .order_by("day")
    )
    for row in tokens:
        if row["day"] in days:
            days[row["day"]].tokens = row["total"]
    latencies: dict[date, list[int]] = defaultdict(list)
    model_turns = turns.filter(latency_ms__isnull=False).annotate(day=TruncDate("created_at"))
    for day, latency in model_turns.values_list("day", "latency_ms").iterator(chunk_size=2000):
        latencies[day].append(latency)
    for day, values in latencies.items():
        if day in days:
            days[day].reply_median_ms = percentile(values, 0.5)
            days[day].reply_p95_ms = percentile(values, 0.95)
    return list(days.values())


def _add_conversation_counts(days: dict[date, DayStats], since: date, until: date) -> None:
    has_error = Exists(Turn.objects.filter(conversation=OuterRef("pk"), role=Turn.Role.ERROR))
    has_fallback = Exists(Turn.objects.filter(conversation=OuterRef("pk"), is_fallback=True))
    rows = (
        Conversation.objects.filter(created_at__date__gte=since, created_at__date__lte=until)
        .annotate(day=TruncDate("created_at"), has_error=has_error, has_fallback=has_fallback)
        .values("day")
        .annotate(
            conversations=Count("pk"),
            verified=Count("pk", filter=Q(customer__isnull=False)),
            error=Count("pk", filter=Q(has_error=True)),
            fallback=Count("pk", filter=Q(has_fallback=True, has_error=False)),
            answered=Count("pk", filter=Q(customer__isnull=False, has_error=False, has_fallback=False)),
        )
        .order_by("day")
    )
    for row in rows:
        stats = days.get(row["day"])
        if stats is not None:
            for name in ("conversations", "verified", "error", "fallback", "answered"):
                setattr(stats, name, row[name])


def _add_ratings(days: dict[date, DayStats], since: date, until: date) -> None:
    """Thumbs up and down of the conversations started each day (one query)."""
    rows = (
        Feedback.objects.filter(
            conversation__created_at__date__gte=since, conversation__created_at__date__lte=until
        )
        .annotate(day=TruncDate("conversation__created_at"))
        .values("day")
        .annotate(
            up=Count("pk", filter=Q(rating=Feedback.Rating.UP)),
            down=Count("pk", filter=Q(rating=Feedback.Rating.DOWN)),
        )
        .order_by("day")
    )
    for row in rows:
        if (stats := days.get(row["day"])) is not None:
            stats.rated_up, stats.rated_down = row["up"], row["down"]


@dataclass(frozen=True)
class QuietDays:
    """A run of days without a conversation, shown as one line of the table."""

    first: date
    last: date

    @property
    def count(self) -> int:
        return (self.last - self.first).days + 1


def table_rows(stats: list[DayStats]) -> list[DayStats | QuietDays]:
    """The table's lines, newest first: each day with conversations, and each run of empty days collapsed."""
    rows: list[DayStats | QuietDays] = []
    for day in reversed(stats):
        if day.conversations:
            rows.append(day)
        elif rows and isinstance(rows[-1], QuietDays):
            rows[-1] = QuietDays(day.day, rows[-1].last)
        else:
            rows.append(QuietDays(day.day, day.day))
    return rows
