"""The operators' pages: the transcript list, one conversation's timeline, exports, the dashboard.

Thin views: the filters come from ``ReviewFilterForm``, the reads from ``chat.operators.selectors`` and
``chat.operators.dashboard``, the downloads from ``chat.operators.exports``. Every page is behind
``chat.operators.access.reviewer_required``.
"""

from __future__ import annotations

import uuid

from django.core.paginator import Paginator
from django.http import Http404, HttpRequest, HttpResponse, StreamingHttpResponse
from django.shortcuts import render
from django.utils import timezone
from django.views.decorators.http import require_GET

from chat.operators import exports
from chat.operators.access import reviewer_required
from chat.operators.charts import dashboard_charts
from chat.operators.dashboard import DashboardRange, daily_stats, table_rows
from chat.operators.forms import DashboardRangeForm, ReviewFilterForm
from chat.operators.handoff_stats import handoff_summary
from chat.operators.selectors import (
    conversation_timeline,
    conversations_for_review,
    conversations_matching,
    review_rows,
)

PAGE_SIZE = 50


@require_GET
@reviewer_required
def conversation_list(request: HttpRequest) -> HttpResponse:
    form = ReviewFilterForm(request.GET)
    page = Paginator(conversations_for_review(filters=form.review_filters()), PAGE_SIZE).get_page(
        request.GET.get("page")
    )
    query = request.GET.copy()
    query.pop("page", None)
    return render(
        request,
        "operators/list.html",
        {
            "nav": "conversations",
            "form": form,
            "page": page,
            "rows": review_rows(list(page.object_list)),
            "query": query.urlencode(),
        },
    )


@require_GET
@reviewer_required
def conversation_detail(request: HttpRequest, conversation_id: uuid.UUID) -> HttpResponse:
    timeline = conversation_timeline(conversation_id=conversation_id)
    if timeline is None:
        raise Http404("No such conversation.")
    context = {
        "nav": "conversations",
        "timeline": timeline,
        "can_open_tickets": request.user.has_perm("tickets.view_ticket"),
        "live_path": f"/ws/operators/conversations/{conversation_id}/",
    }
    return render(request, "operators/conversation.html", context)


def _export_name(extension: str) -> str:
    return f"transcripts-{timezone.now():%Y%m%d-%H%M%S}.{extension}"


@require_GET
@reviewer_required
def export_jsonl(request: HttpRequest) -> StreamingHttpResponse:
    filters = ReviewFilterForm(request.GET).review_filters()
    lines = exports.jsonl_lines(conversations=conversations_matching(filters=filters))
    return exports.export_response(
        request, lines, content_type="application/x-ndjson; charset=utf-8", filename=_export_name("jsonl")
    )


@require_GET
@reviewer_required
def export_csv(request: HttpRequest) -> StreamingHttpResponse:
    filters = ReviewFilterForm(request.GET).review_filters()
    lines = exports.csv_lines(conversations=conversations_for_review(filters=filters))
    return exports.export_response(request, lines, content_type="text/csv; charset=utf-8", filename=_export_name("csv"))


@require_GET
@reviewer_required
def dashboard(request: HttpRequest) -> HttpResponse:
    form = DashboardRangeForm(request.GET)
    days: DashboardRange = form.dashboard_range(today=timezone.localdate())
    stats = daily_stats(since=days.since, until=days.until)
    context = {
        "nav": "dashboard", "form": form, "stats": stats, "rows": table_rows(stats), "charts": dashboard_charts(stats)
    }
    started = sum(day.conversations for day in stats)
    context["handoff"] = handoff_summary(since=days.since, until=days.until, conversations=started)
    return render(request, "operators/dashboard.html", context)
