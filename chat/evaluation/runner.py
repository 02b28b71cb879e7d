"""Runs a suite: every scenario k times, each run on its own rolled-back copy of the data.

A run talks to the agent through ``chat.runtime.conversation_respond``, exactly as the WebSocket does:
the greeting, then each customer message after the agent's reply. Runs go side by side up to
``concurrency`` (asyncio tasks in one event loop, each with its own database thread and transaction;
see ``chat.evaluation.sandbox``). Runs are ordered run-number first (every scenario's first run, then
every second run …), so the k runs of one scenario, which add the same rows, rarely overlap.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import openai
from asgiref.sync import ThreadSensitiveContext, sync_to_async
from django.conf import settings

from chat import llm, selectors
from chat.confirmations import confirmation_decide
from chat.db import database_sync_to_async
from chat.evaluation.judge import Observation, ObservedCall, judge
from chat.evaluation.metrics import median, pass_hat_table, percentile
from chat.evaluation.sandbox import DEMO_KEYS, Sandbox, sandbox_close, sandbox_open, transactions_survive_hops
from chat.evaluation.scenarios import Scenario
from chat.evaluation.simulated import CustomerPlayer, Exchange, customer_client, customer_player
from chat.evaluation.state import final_state
from chat.models import Turn
from chat.prompts import SYSTEM_PROMPT
from chat.runtime import conversation_respond
from chat.toolbox import get_toolbox

QUIET_FRAMES = {"delta", "typing", "idle"}  # not kept with a failed run: the whole messages are


@dataclass
class Attempt:
    """One run of one scenario."""

    scenario: str
    number: int  # 1 … k
    conversation_id: uuid.UUID | None = None
    failures: list[str] = field(default_factory=list)
    transcript: list[dict[str, Any]] = field(default_factory=list)
    frames: list[dict[str, Any]] = field(default_factory=list)
    tokens: int = 0
    model_calls: int = 0
    latencies_ms: list[int] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return not self.failures


@dataclass
class ScenarioOutcome:
    scenario: Scenario
    attempts: list[Attempt]

    @property
    def passed(self) -> int:
        return sum(attempt.passed for attempt in self.attempts)


@dataclass
class SuiteReport:
    model: str
    prompt_hash: str
    suite: str
    k: int
    started_at: float
    seconds: float
    outcomes: list[ScenarioOutcome]
    skipped: list[dict[str, str]]

    @property
    def pass_hat_k(self) -> dict[str, float]:
        counts = [(len(outcome.attempts), outcome.passed) for outcome in self.outcomes]
        return pass_hat_table(counts, self.k) if counts else {}

    @property
    def attempts(self) -> list[Attempt]:
        return [attempt for outcome in self.outcomes for attempt in outcome.attempts]

    def figures(self) -> dict[str, Any]:
        latencies = [ms for attempt in self.attempts for ms in attempt.latencies_ms]
        return {
            "tokens": sum(attempt.tokens for attempt in self.attempts),
            "model_calls": sum(attempt.model_calls for attempt in self.attempts),
            "latency_ms": {"p50": median(latencies), "p95": percentile(latencies, 0.95)},
            "seconds": round(self.seconds, 2),
        }

    def as_json(self) -> dict[str, Any]:
        """The contract's shape (``model``, ``k``, ``scenarios``, ``pass_hat_k``) plus a few extra keys."""
        return {
            "model": self.model,
            "k": self.k,
            "scenarios": [
                {
                    "name": outcome.scenario.name,
                    "runs": len(outcome.attempts),
                    "passed": outcome.passed,
                    "failures": [
                        {"run": a.number, "reasons": a.failures, "conversation_id": str(a.conversation_id)}
                        for a in outcome.attempts
                        if not a.passed
                    ],
                }
                for outcome in self.outcomes
            ],
            "pass_hat_k": self.pass_hat_k,
            "prompt_hash": self.prompt_hash,
            "suite": self.suite,
            "skipped": self.skipped,
            **self.figures(),
        }


def prompt_hash() -> str:
    """SHA-256 of what the model is given besides the conversation: the system prompt and tool schemas."""
    given = {"system": SYSTEM_PROMPT, "tools": get_toolbox().schemas}
    return hashlib.sha256(json.dumps(given, sort_keys=True).encode()).hexdigest()


def suite_run(
    scenarios: list[Scenario],
    *,
    k: int,
    concurrency: int = 1,
    suite: str = "",
    on_attempt: Callable[[Attempt], None] | None = None,
) -> SuiteReport:
    """Run ``scenarios`` ``k`` times each (sync; starts its own event loop). Simulated customers without
    ``EVAL_USER_MODEL`` are skipped and listed in ``skipped``."""
    started = time.time()
    runnable = [s for s in scenarios if not s.customer.simulated or settings.EVAL_USER_MODEL]
    skipped = [
        {"name": s.name, "reason": "simulated customer; set EVAL_USER_MODEL to run it"}
        for s in scenarios
        if s not in runnable
    ]
    with transactions_survive_hops():
        attempts = asyncio.run(_run_all(runnable, k, max(1, concurrency), on_attempt))
    outcomes = [
        ScenarioOutcome(s, sorted((a for a in attempts if a.scenario == s.name), key=lambda a: a.number))
        for s in runnable
    ]
    return SuiteReport(
        model=settings.CHAT_MODEL,
        prompt_hash=prompt_hash(),
        suite=suite,
        k=k,
        started_at=started,
        seconds=time.time() - started,
        outcomes=outcomes,
        skipped=skipped,
    )


async def _run_all(
    scenarios: list[Scenario], k: int, concurrency: int, on_attempt: Callable[[Attempt], None] | None
) -> list[Attempt]:
    # The process's model client keeps connections of the event loop it first ran in; this suite's loop
    # ends with the suite, so the client is made inside it and closed with it.
    llm.configured_chat_model.cache_clear()
    client = customer_client()
    gate = asyncio.Semaphore(concurrency)

    async def one(scenario: Scenario, number: int) -> Attempt:
        async with gate:
            attempt = await attempt_run(scenario, number, client)
        if on_attempt is not None:
            on_attempt(attempt)
        return attempt

    try:
        return await asyncio.gather(*(one(s, number) for number in range(1, k + 1) for s in scenarios))
    finally:
        if client is not None:
            await client.close()
        await llm.configured_chat_model_close()


async def attempt_run(scenario: Scenario, number: int, client: openai.AsyncOpenAI | None) -> Attempt:
    """One run in its own thread-sensitive context: every database hop of it lands on one thread."""
    attempt = Attempt(scenario.name, number)
    started = time.monotonic()
    async with ThreadSensitiveContext():
        hop = sync_to_async(sandbox_open, thread_sensitive=True)
        sandbox = await hop(scenario)
        attempt.conversation_id = sandbox.conversation_id
        try:
            await _converse(scenario, attempt, sandbox.conversation_id, customer_player(scenario.customer, client))
            await sync_to_async(_observe_and_judge, thread_sensitive=True)(scenario, attempt, sandbox)
        finally:
            await sync_to_async(sandbox_close, thread_sensitive=True)(sandbox)
    attempt.seconds = time.monotonic() - started
    return attempt


async def _converse(
    scenario: Scenario, attempt: Attempt, conversation_id: uuid.UUID, customer: CustomerPlayer
) -> None:
    """The greeting, then the customer's messages, each after the agent's answer to the one before."""
    exchanges: list[Exchange] = []
    answers = list(scenario.customer.confirm)

    async def emit(frame: dict[str, Any]) -> None:
        attempt.frames.append(frame)
        if frame.get("type") == "message" and frame.get("role") == "assistant":
            exchanges.append(Exchange("agent", frame.get("text", "")))
        if frame.get("type") == "confirm":  # the customer clicks, as on the page: through their own answer
            approve = bool(answers) and answers.pop(0) == "yes"
            await database_sync_to_async(confirmation_decide)(
                conversation_id=conversation_id, confirm_id=uuid.UUID(frame["id"]), approve=approve
            )

    result = await conversation_respond(conversation_id=conversation_id, emit=emit)
    attempt.model_calls += result.model_calls
    for _ in range(max(len(scenario.customer.messages), scenario.customer.max_turns)):
        try:
            text = await customer.next_message(exchanges)
        except openai.OpenAIError as error:
            attempt.failures.append(f"the simulated customer's model failed: {error}")
            return
        if text is None:
            return
        exchanges.append(Exchange("customer", text))
        result = await conversation_respond(conversation_id=conversation_id, emit=emit, customer_text=text)
        attempt.model_calls += result.model_calls


def _observe_and_judge(scenario: Scenario, attempt: Attempt, sandbox: Sandbox) -> None:
    """Read the run's stored conversation and final state (before the rollback) and judge them."""
    sandbox.check_thread()
    conversation_id = sandbox.conversation_id
    attempt.transcript = selectors.conversation_history(conversation_id=conversation_id)
    calls = [
        ObservedCall(call["function"]["name"], _arguments(call["function"].get("arguments")))
        for message in attempt.transcript
        for call in message.get("tool_calls") or []
    ]
    for turn in Turn.objects.filter(conversation_id=conversation_id, role=Turn.Role.ASSISTANT).exclude(model=""):
        attempt.tokens += (turn.prompt_tokens or 0) + (turn.completion_tokens or 0)
        if turn.latency_ms is not None:
            attempt.latencies_ms.append(turn.latency_ms)
    state = final_state(conversation_id=conversation_id, ticket_ids=list(scenario.expect.tickets))
    observation = Observation(attempt.frames, calls, state, scenario.secrets(DEMO_KEYS))
    attempt.failures.extend(judge(scenario, observation))
    attempt.frames = [frame for frame in attempt.frames if frame.get("type") not in QUIET_FRAMES]


def _arguments(text: str | None) -> dict[str, Any]:
    try:
        value = json.loads(text or "{}")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}
