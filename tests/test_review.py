"""The operators' transcript review: list, search, filters, timeline, query counts, the ticket admin."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from asgiref.sync import async_to_sync
from django.contrib.auth.models import User
from django.urls import reverse
from django.utils import timezone

from chat.models import Conversation, Feedback, Turn
from chat.operators.access import roles_ensure
from chat.operators.selectors import conversations_for_review, duration_text
from chat.runtime import conversation_respond
from chat.services import conversation_start, turn_record_error, turns_append
from tests.support.driver import run_conversation
from tests.support.seed import SEED_MESSAGES
from tickets.models import Ticket

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("runtime_on_test_connection")]


@pytest.fixture
def operator_client(client, demo_data):
    roles_ensure()
    client.force_login(User.objects.get(username="operator"))
    return client


@pytest.fixture
def seeded(demo_data) -> uuid.UUID:
    return run_conversation()


def greeting_only() -> uuid.UUID:
    return run_conversation([])


# THE LIST


def test_list_shows_a_row_per_conversation_newest_first(operator_client, seeded):
    other = greeting_only()
    response = operator_client.get(reverse("operators:conversations"))
    assert response.status_code == 200
    rows = response.context["rows"]
    assert [row.conversation.id for row in rows] == [other, seeded]
    verified, anonymous = rows[1], rows[0]
    assert verified.customer == "john_doe" and anonymous.customer is None
    assert verified.tools == ["get_ticket_status", "verify_user"]
    assert verified.conversation.outcome == "answered" and anonymous.conversation.outcome == "not verified"
    stored = Turn.objects.filter(conversation_id=seeded).exclude(role="system")
    assert verified.conversation.turn_count == stored.count()
    body = response.content.decode()
    assert "john_doe" in body and "not verified" in body and "get_ticket_status" in body


def test_list_query_count_is_constant(operator_client, demo_data, django_assert_max_num_queries):
    for _ in range(3):
        run_conversation()
    with django_assert_max_num_queries(12) as few:
        operator_client.get(reverse("operators:conversations"))
    for _ in range(6):
        run_conversation(SEED_MESSAGES[:2])
        greeting_only()
    with django_assert_max_num_queries(len(few.captured_queries)):
        response = operator_client.get(reverse("operators:conversations"))
    assert len(response.context["rows"]) == 15


def test_outcomes_error_and_fallback(demo_data):
    failed = conversation_start(session_key="a" * 32)
    turn_record_error(conversation_id=failed.id, code="model_unavailable", message="The model is down.")
    fallen = conversation_start(session_key="b" * 32)
    turns_append(
        conversation_id=fallen.id, messages=[{"role": "assistant", "content": "Sorry"}], meta={"is_fallback": True}
    )
    outcomes = {c.id: c.outcome for c in conversations_for_review()}
    assert outcomes[failed.id] == "error" and outcomes[fallen.id] == "fallback"


def test_duration_text():
    assert duration_text(timedelta(seconds=42)) == "42 s"
    assert duration_text(timedelta(minutes=3, seconds=5)) == "3 min 05 s"
    assert duration_text(timedelta(hours=2, minutes=7)) == "2 h 07 min"
    assert duration_text(None) == ""


# SEARCH AND FILTERS


def listed(client, **query) -> set[uuid.UUID]:
    response = client.get(reverse("operators:conversations"), query)
    assert response.status_code == 200
    return {row.conversation.id for row in response.context["rows"]}


def test_search_finds_what_was_said_or_looked_up(operator_client, seeded):
    quiet = greeting_only()
    assert listed(operator_client, q="12345") == {seeded}
    assert listed(operator_client, q="THANKS") == {seeded}  # case-insensitive
    assert listed(operator_client, q="Billing Query") == {seeded}  # only in the tool's result
    assert listed(operator_client, q="no such words anywhere") == set()
    assert quiet in listed(operator_client)


def test_search_finds_tool_call_arguments(operator_client, demo_data):
    conversation = conversation_start(session_key="c" * 32)
    function = {"name": "get_ticket_status", "arguments": '{"ticket_id": "77777"}'}
    call = {"id": "call_1", "type": "function", "function": function}
    turns_append(
        conversation_id=conversation.id, messages=[{"role": "assistant", "content": None, "tool_calls": [call]}]
    )
    assert listed(operator_client, q="77777") == {conversation.id}


def test_search_ignores_the_system_prompt(operator_client, demo_data):
    greeting_only()
    assert listed(operator_client, q="verify_user") == set()


def test_filters(operator_client, seeded):
    anonymous = greeting_only()
    assert listed(operator_client, verified="yes") == {seeded}
    assert listed(operator_client, verified="no") == {anonymous}
    assert listed(operator_client, tool="get_ticket_status") == {seeded}
    Feedback.objects.create(conversation_id=seeded, rating="up")
    assert listed(operator_client, rating="up") == {seeded}
    assert listed(operator_client, rating="down") == set()
    assert listed(operator_client, rating="none") == {anonymous}
    turn_record_error(conversation_id=anonymous, code="timeout", message="The model took too long.")
    assert listed(operator_client, problem="error") == {anonymous}
    assert listed(operator_client, problem="fallback") == set()
    assert listed(operator_client, problem="any") == {anonymous}


def test_date_filters(operator_client, seeded):
    old = greeting_only()
    Conversation.objects.filter(id=old).update(created_at=timezone.now() - timedelta(days=10))
    today = timezone.localdate()
    assert listed(operator_client, since=today.isoformat()) == {seeded}
    assert listed(operator_client, until=(today - timedelta(days=5)).isoformat()) == {old}


def test_invalid_filter_is_shown_not_fatal(operator_client, seeded):
    response = operator_client.get(reverse("operators:conversations"), {"since": "not a date", "q": "12345"})
    assert response.status_code == 200
    assert response.context["form"].errors["since"]
    assert {row.conversation.id for row in response.context["rows"]} == {seeded}


def test_export_links_keep_the_filters(operator_client, seeded):
    body = operator_client.get(reverse("operators:conversations"), {"q": "12345", "verified": "yes"}).content.decode()
    assert 'href="/operators/export.jsonl?q=12345&amp;verified=yes"' in body
    assert 'href="/operators/export.csv?q=12345&amp;verified=yes"' in body


def test_list_paginates(operator_client, demo_data, monkeypatch):
    monkeypatch.setattr("chat.operators.views.PAGE_SIZE", 2)
    ids = [greeting_only() for _ in range(3)]
    first = operator_client.get(reverse("operators:conversations"))
    second = operator_client.get(reverse("operators:conversations"), {"page": 2})
    assert [r.conversation.id for r in first.context["rows"]] == ids[:0:-1]
    assert [r.conversation.id for r in second.context["rows"]] == ids[:1]
    assert "page=2" in first.content.decode()


# THE TIMELINE


def test_timeline_shows_messages_tool_calls_results_and_model_figures(operator_client, seeded):
    response = operator_client.get(reverse("operators:conversation", args=[seeded]))
    assert response.status_code == 200
    body = response.content.decode()
    timeline = response.context["timeline"]
    calls = [call for entry in timeline.entries for call in entry.calls]
    assert [call.name for call in calls] == ["verify_user", "get_ticket_status"]
    assert '"api_key": "****"' in calls[0].arguments and '"success": true' in calls[0].result
    assert '"status": "Open"' in calls[1].result
    assert "Yea it&#x27;s: 12345" in body  # customer text, escaped
    assert "builtin-support-1" in body
    model_turns = Turn.objects.filter(conversation_id=seeded, latency_ms__isnull=False)
    assert timeline.model_calls == model_turns.count() > 0
    assert timeline.prompt_tokens == sum(t.prompt_tokens or 0 for t in model_turns)
    ticket = Ticket.objects.get(public_id="12345")
    assert reverse("admin:tickets_ticket_change", args=[ticket.pk]) in body


def test_timeline_escapes_customer_text(operator_client, demo_data):
    conversation_id = run_conversation(["<script>alert(1)</script><img src=x onerror=alert(2)>"])
    body = operator_client.get(reverse("operators:conversation", args=[conversation_id])).content.decode()
    assert "<script>alert(1)" not in body and "<img src=x" not in body
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in body


def test_timeline_shows_errors_and_unknown_conversation_is_404(operator_client, demo_data):
    conversation = conversation_start(session_key="d" * 32)
    turn_record_error(conversation_id=conversation.id, code="model_unavailable", message="The model is unavailable.")
    body = operator_client.get(reverse("operators:conversation", args=[conversation.id])).content.decode()
    assert "model_unavailable" in body and "The model is unavailable." in body
    assert operator_client.get(reverse("operators:conversation", args=[uuid.uuid4()])).status_code == 404


def test_timeline_query_count_is_constant(operator_client, seeded, django_assert_max_num_queries):
    with django_assert_max_num_queries(10) as few:
        operator_client.get(reverse("operators:conversation", args=[seeded]))
    for text in SEED_MESSAGES * 3:
        async_to_sync(conversation_respond)(conversation_id=seeded, emit=_ignore, customer_text=text)
    with django_assert_max_num_queries(len(few.captured_queries)):
        operator_client.get(reverse("operators:conversation", args=[seeded]))


async def _ignore(frame):
    return None


# THE TICKET'S ADMIN PAGE


def test_ticket_admin_lists_the_conversations_that_looked_it_up(client, seeded):
    greeting_only()
    client.force_login(User.objects.get(username="admin"))
    ticket = Ticket.objects.get(public_id="12345")
    body = client.get(reverse("admin:tickets_ticket_change", args=[ticket.pk])).content.decode()
    assert reverse("operators:conversation", args=[seeded]) in body
    other = Ticket.objects.get(public_id="67890")
    body = client.get(reverse("admin:tickets_ticket_change", args=[other.pk])).content.decode()
    assert reverse("operators:conversation", args=[seeded]) not in body


# THE DASHBOARD


def test_dashboard_figures_per_day(operator_client, seeded):
    from chat.operators.dashboard import daily_stats, percentile

    anonymous = greeting_only()
    turn_record_error(conversation_id=anonymous, code="timeout", message="The model took too long.")
    yesterday = timezone.localdate() - timedelta(days=1)
    Conversation.objects.filter(id=anonymous).update(created_at=timezone.now() - timedelta(days=1))
    stats = {day.day: day for day in daily_stats(since=yesterday, until=timezone.localdate())}
    today = stats[timezone.localdate()]
    assert (today.conversations, today.verified, today.answered, today.error) == (1, 1, 1, 0)
    assert (stats[yesterday].conversations, stats[yesterday].error_share) == (1, 1.0)
    latencies = list(Turn.objects.filter(latency_ms__isnull=False).values_list("latency_ms", flat=True))
    assert today.reply_median_ms == percentile(latencies, 0.5) and today.reply_p95_ms == max(latencies)
    model_turns = Turn.objects.filter(latency_ms__isnull=False)
    assert today.tokens == sum(t.prompt_tokens + t.completion_tokens for t in model_turns)
    assert percentile([5, 1, 3, 2, 4], 0.5) == 3 and percentile([], 0.5) is None


def test_dashboard_page_draws_svg_charts(operator_client, seeded, django_assert_max_num_queries):
    with django_assert_max_num_queries(9):
        response = operator_client.get(reverse("operators:dashboard"), {"since": "2020-01-01", "until": "2020-03-01"})
    body = response.content.decode()
    assert response.status_code == 200
    assert body.count('<svg class="chart"') == 4
    assert len(response.context["stats"]) == 61
    assert "<script" not in body and "style=" not in body


def test_dashboard_range_defaults_to_30_days_and_is_capped(operator_client, demo_data):
    response = operator_client.get(reverse("operators:dashboard"))
    assert len(response.context["stats"]) == 30
    response = operator_client.get(reverse("operators:dashboard"), {"since": "1990-01-01"})
    assert len(response.context["stats"]) == 366


def test_operators_can_hide_conversations_in_which_the_customer_never_wrote(operator_client):
    from chat.operators.selectors import ReviewFilters

    silent = conversation_start(session_key="s1")
    turns_append(conversation_id=silent.id, messages=[{"role": "assistant", "content": "Hello!"}])
    spoken = conversation_start(session_key="s2")
    turns_append(conversation_id=spoken.id, messages=[{"role": "user", "content": "hi"}])
    assert [c.id for c in conversations_for_review(filters=ReviewFilters(wrote=True))] == [spoken.id]
    assert [c.id for c in conversations_for_review(filters=ReviewFilters(wrote=False))] == [silent.id]
    page = operator_client.get(reverse("operators:conversations"), {"wrote": "yes"}).content.decode()
    assert str(spoken.id) in page and str(silent.id) not in page


def test_the_dashboard_has_satisfaction_per_day_and_collapses_quiet_days(operator_client):
    from chat.operators.dashboard import QuietDays, daily_stats, table_rows

    today = timezone.localdate()
    for rating in ("up", "up", "down"):
        Feedback.objects.create(conversation=conversation_start(session_key=str(uuid.uuid4())), rating=rating)
    conversation_start(session_key="unrated")
    stats = daily_stats(since=today - timedelta(days=9), until=today)
    assert (stats[-1].rated_up, stats[-1].rated_down, stats[-1].csat_percent) == (2, 1, 67)
    assert stats[0].csat is None
    rows = table_rows(stats)
    assert rows[0] is stats[-1] and rows[1] == QuietDays(today - timedelta(days=9), today - timedelta(days=1))
    page = operator_client.get(reverse("operators:dashboard")).content.decode()
    assert "67%" in page and "no conversations (29 days)" in page
