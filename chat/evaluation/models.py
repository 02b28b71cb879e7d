"""Stored evaluation runs: one row per ``manage.py evaluate``, one per scenario, one per failed attempt.

A run's own data is rolled back when it ends, so a failed attempt keeps its transcript here (the
messages in the OpenAI chat format, secrets masked as stored) for reviewers to read.
"""

from django.db import models


class EvaluationRun(models.Model):
    started_at = models.DateTimeField(db_index=True)
    duration_ms = models.PositiveIntegerField(default=0)
    model = models.CharField(max_length=128)
    prompt_hash = models.CharField(max_length=64, help_text="SHA-256 of the system prompt and the tool schemas.")
    suite = models.CharField(max_length=500)
    k = models.PositiveSmallIntegerField()
    pass_hat_k = models.JSONField(default=dict, help_text='pass^1 … pass^k, e.g. {"1": 0.95, "2": 0.9}.')
    figures = models.JSONField(default=dict, help_text="Tokens, model calls, latency of the whole run.")
    skipped = models.JSONField(default=list, help_text="Scenarios not run, with the reason.")

    class Meta:
        ordering = ["-started_at"]

    def __str__(self) -> str:
        return f"{self.model} at {self.started_at:%Y-%m-%d %H:%M}"

    @property
    def pass_hat_1(self) -> float | None:
        return self.pass_hat_k.get("1")

    @property
    def pass_hat_last(self) -> float | None:
        return self.pass_hat_k.get(str(self.k))


class ScenarioResult(models.Model):
    run = models.ForeignKey(EvaluationRun, on_delete=models.CASCADE, related_name="results")
    name = models.CharField(max_length=100)
    runs = models.PositiveSmallIntegerField()
    passed = models.PositiveSmallIntegerField()

    class Meta:
        ordering = ["run", "name"]
        constraints = [models.UniqueConstraint(fields=["run", "name"], name="evaluation_result_unique_name")]

    def __str__(self) -> str:
        return f"{self.name}: {self.passed}/{self.runs}"


class FailedAttempt(models.Model):
    result = models.ForeignKey(ScenarioResult, on_delete=models.CASCADE, related_name="failed_attempts")
    attempt = models.PositiveSmallIntegerField(help_text="Which of the k runs, from 1.")
    conversation_id = models.UUIDField(help_text="The conversation's id during the run (its rows were rolled back).")
    reasons = models.JSONField(default=list)
    transcript = models.JSONField(default=list, help_text="The stored messages, OpenAI chat format.")
    frames = models.JSONField(default=list, help_text="What the customer was sent (no streamed pieces).")

    class Meta:
        ordering = ["result", "attempt"]

    def __str__(self) -> str:
        return f"{self.result.name} run {self.attempt}"
