"""Writes and reads of stored evaluation runs (the operators' "Evaluations" page reads them here)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from django.db import transaction
from django.db.models import Prefetch

from chat.evaluation.models import EvaluationRun, FailedAttempt, ScenarioResult
from chat.evaluation.runner import SuiteReport


@transaction.atomic
def evaluation_run_store(*, report: SuiteReport) -> EvaluationRun:
    """Keep a finished suite run: its figures, each scenario's result, each failed attempt's transcript."""
    run = EvaluationRun.objects.create(
        started_at=datetime.fromtimestamp(report.started_at, tz=UTC),
        duration_ms=int(report.seconds * 1000),
        model=report.model,
        prompt_hash=report.prompt_hash,
        suite=report.suite,
        k=report.k,
        pass_hat_k=report.pass_hat_k,
        figures=report.figures(),
        skipped=report.skipped,
    )
    for outcome in report.outcomes:
        result = ScenarioResult.objects.create(
            run=run, name=outcome.scenario.name, runs=len(outcome.attempts), passed=outcome.passed
        )
        FailedAttempt.objects.bulk_create(
            FailedAttempt(
                result=result,
                attempt=attempt.number,
                conversation_id=attempt.conversation_id,
                reasons=attempt.failures,
                transcript=attempt.transcript,
                frames=attempt.frames,
            )
            for attempt in outcome.attempts
            if not attempt.passed
        )
    return run


@dataclass
class Cell:
    result: ScenarioResult | None

    @property
    def failed(self) -> bool:
        return self.result is not None and self.result.passed < self.result.runs


@dataclass
class ScenarioRow:
    name: str
    cells: list[Cell]

    @property
    def passed(self) -> int:
        return sum(cell.result.passed for cell in self.cells if cell.result)

    @property
    def runs(self) -> int:
        return sum(cell.result.runs for cell in self.cells if cell.result)

    @property
    def pass_rate(self) -> float | None:
        return self.passed / self.runs if self.runs else None


def runs_side_by_side(*, limit: int = 8) -> tuple[list[EvaluationRun], list[ScenarioRow]]:
    """The newest ``limit`` runs (columns) and every scenario any of them ran (rows), in three queries."""
    failed = FailedAttempt.objects.only("id", "result_id", "attempt").order_by("attempt")
    results = ScenarioResult.objects.prefetch_related(Prefetch("failed_attempts", queryset=failed))
    runs = list(EvaluationRun.objects.order_by("-started_at", "-id")[:limit].prefetch_related(
        Prefetch("results", queryset=results)
    ))
    by_run = [{result.name: result for result in run.results.all()} for run in runs]
    names = sorted({name for results_of_run in by_run for name in results_of_run})
    rows = [ScenarioRow(name, [Cell(results_of_run.get(name)) for results_of_run in by_run]) for name in names]
    return runs, rows
