"""``python manage.py evaluate``: run the scenario suite against the configured model, k times each.

Prints a progress bar on stderr, then a table per scenario and pass^1 … pass^k; stores the run for the
operators' "Evaluations" page; ``--json FILE`` writes the contract's shape; below ``--min-pass`` (of
pass^1) it exits with status 1, so CI can gate on it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser, OutputWrapper
from django.db import connection
from django.test.utils import override_settings

from chat.evaluation.records import evaluation_run_store
from chat.evaluation.runner import Attempt, SuiteReport, suite_run
from chat.evaluation.scenarios import ScenarioError, load_suite


class Progress:
    """A plain-text bar: redrawn in place on a terminal, a line per tenth of the work otherwise."""

    WIDTH = 30

    def __init__(self, total: int, stream: OutputWrapper) -> None:
        self.total = total
        self.done = 0
        self.failed = 0
        self.stream = stream
        self.tty = stream.isatty()
        self.shown_tenth = -1

    def __call__(self, attempt: Attempt) -> None:
        self.done += 1
        self.failed += not attempt.passed
        tenth = self.done * 10 // self.total
        if not self.tty and tenth == self.shown_tenth and self.done != self.total:
            return
        self.shown_tenth = tenth
        filled = self.done * self.WIDTH // self.total
        line = f"[{'#' * filled}{'.' * (self.WIDTH - filled)}] {self.done}/{self.total} runs, {self.failed} failed"
        ending = "\n" if not self.tty or self.done == self.total else ""
        self.stream.write(f"\r{line}" if self.tty else line, style_func=str, ending=ending)
        self.stream.flush()


class Command(BaseCommand):
    help = "Run the evaluation scenarios against the configured model and report pass^k."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--suite", default=settings.EVAL_SUITE, help="A scenario file or folder (default: evals/).")
        parser.add_argument("--k", type=int, default=1, help="Runs per scenario (default 1).")
        parser.add_argument(
            "--concurrency", type=int, default=1, help="Runs at once (PostgreSQL; SQLite runs one at a time)."
        )
        parser.add_argument("--json", metavar="FILE", help="Write the results as JSON ('-' for stdout).")
        parser.add_argument("--only", action="append", metavar="NAME", help="Run only this scenario (repeatable).")
        parser.add_argument(
            "--min-pass", type=float, metavar="X", help="Exit with status 1 when pass^1 is below X (0-1)."
        )

    def handle(self, *args: object, **options: Any) -> None:
        k, min_pass = options["k"], options["min_pass"]
        if k < 1:
            raise CommandError("--k must be at least 1.")
        if min_pass is not None and not 0 <= min_pass <= 1:
            raise CommandError("--min-pass is a fraction between 0 and 1.")
        try:
            scenarios = load_suite(Path(options["suite"]), options["only"])
        except ScenarioError as error:
            raise CommandError(str(error)) from error
        concurrency = self._concurrency(options["concurrency"])
        runs = k * sum(not s.customer.simulated or bool(settings.EVAL_USER_MODEL) for s in scenarios)
        self._note(f"Evaluating {settings.CHAT_MODEL}: {len(scenarios)} scenarios, k={k}, {concurrency} at a time")
        progress = Progress(max(runs, 1), self.stderr)
        # The builtin model's pause between words only makes replies visibly stream; nobody watches here.
        with override_settings(CHAT_BUILTIN_DELAY_MS=0):
            report = suite_run(
                scenarios, k=k, concurrency=concurrency, suite=str(options["suite"]), on_attempt=progress
            )
        stored = evaluation_run_store(report=report)
        self._print(report)
        self.stdout.write(f"Stored as evaluation run {stored.id} (/operators/evaluations/).")
        if options["json"]:
            self._write_json(report, options["json"])
        self._gate(report, min_pass)

    def _concurrency(self, wanted: int) -> int:
        if wanted < 1:
            raise CommandError("--concurrency must be at least 1.")
        if wanted > 1 and connection.vendor == "sqlite":
            self._note(
                "Note: SQLite lets one transaction write at a time, and every run is a transaction: "
                "runs go one at a time (use PostgreSQL for --concurrency)."
            )
            return 1
        return wanted

    def _note(self, text: str) -> None:
        self.stderr.write(text, style_func=str)

    def _print(self, report: SuiteReport) -> None:
        width = max((len(outcome.scenario.name) for outcome in report.outcomes), default=10)
        self.stdout.write(f"\n{'scenario':<{width}}  passed  what failed")
        for outcome in report.outcomes:
            failures = [f"run {a.number}: {'; '.join(a.failures)}" for a in outcome.attempts if not a.passed]
            score = f"{outcome.passed}/{len(outcome.attempts)}"
            self.stdout.write(f"{outcome.scenario.name:<{width}}  {score:>6}  {failures[0] if failures else ''}")
            for failure in failures[1:]:
                self.stdout.write(f"{'':<{width}}  {'':>6}  {failure}")
        for skipped in report.skipped:
            self.stdout.write(f"{skipped['name']:<{width}}  {'skip':>6}  {skipped['reason']}")
        self._print_figures(report)

    def _print_figures(self, report: SuiteReport) -> None:
        figures = report.figures()
        self.stdout.write("")
        self.stdout.write(f"model {report.model}, prompt+tools {report.prompt_hash[:12]}, k={report.k}")
        for k, value in report.pass_hat_k.items():
            self.stdout.write(f"pass^{k:<3} {value:.3f}")
        latency = figures["latency_ms"]
        self.stdout.write(
            f"tokens {figures['tokens']}, model calls {figures['model_calls']}, "
            f"latency per model call p50 {latency['p50']} ms / p95 {latency['p95']} ms, "
            f"{figures['seconds']} s in all"
        )

    def _write_json(self, report: SuiteReport, target: str) -> None:
        text = json.dumps(report.as_json(), indent=2, ensure_ascii=False)
        if target == "-":
            self.stdout.write(text)
            return
        try:
            Path(target).write_text(text + "\n", encoding="utf-8")
        except OSError as error:
            raise CommandError(f"Cannot write {target}: {error.strerror}") from error

    def _gate(self, report: SuiteReport, min_pass: float | None) -> None:
        if min_pass is None:
            return
        score = report.pass_hat_k.get("1", 0.0)
        if score < min_pass:
            raise CommandError(f"pass^1 is {score:.3f}, below --min-pass {min_pass}.", returncode=1)
