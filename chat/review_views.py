"""The operators' pages: the transcript list, one conversation's timeline, exports, the dashboard.

Thin views: the filters come from ``ReviewFilterForm``, the reads from ``chat.review`` and
``chat.dashboard``, the downloads from ``chat.exports``. Every page needs the review permission.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from functools import wraps
from typing import Any

from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.http import Http404, HttpRequest, HttpResponse, StreamingHttpResponse
from django.shortcuts import render
from django.utils import timezone
from django.views.decorators.http import require_GET

from chat import exports
from chat.charts import dashboard_charts
from chat.dashboard import DashboardRange, daily_stats
from chat.review import conversation_timeline, conversations_for_review, conversations_matching, review_rows
from chat.review_forms import DashboardRangeForm, ReviewFilterForm
from chat.roles import REVIEW_PERMISSION

PAGE_SIZE = 50

View = Callable[..., HttpResponse]


def reviewer_required(view: View) -> View:
    """Anonymous visitors go to the login page; anyone else without the review permission gets 403."""

    @wraps(view)
    def checked(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if not (request.user.is_staff and request.user.has_perm(REVIEW_PERMISSION)):
            raise PermissionDenied
        return view(request, *args, **kwargs)

    return login_required(checked)


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
    context = {"nav": "dashboard", "form": form, "stats": stats, "charts": dashboard_charts(stats)}
    return render(request, "operators/dashboard.html", context)
