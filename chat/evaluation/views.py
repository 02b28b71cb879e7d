"""The operators' "Evaluations" page: stored runs side by side, and a failed run's transcript.

Same permission as every operators' page (``reviewer_required``): anonymous visitors go to the login
page, anyone else without the review permission gets 403.
"""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, render
from django.views.decorators.http import require_GET

from chat.evaluation.models import FailedAttempt, ScenarioResult
from chat.evaluation.records import runs_side_by_side
from chat.operators.access import reviewer_required

RUNS_SHOWN = 8


@require_GET
@reviewer_required
def evaluation_list(request: HttpRequest) -> HttpResponse:
    runs, rows = runs_side_by_side(limit=RUNS_SHOWN)
    return render(request, "operators/evaluations.html", {"nav": "evaluations", "runs": runs, "rows": rows})


@require_GET
@reviewer_required
def scenario_result(request: HttpRequest, result_id: int) -> HttpResponse:
    result = get_object_or_404(ScenarioResult.objects.select_related("run"), id=result_id)
    attempts: list[FailedAttempt] = list(result.failed_attempts.all())
    return render(
        request,
        "operators/evaluation_result.html",
        {"nav": "evaluations", "result": result, "run": result.run, "attempts": attempts},
    )
