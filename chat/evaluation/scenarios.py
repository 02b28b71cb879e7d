"""Scenarios: YAML files in ``evals/``, validated with pydantic before anything runs.

A file holds ``scenarios:``, a list of them. Each says what data it starts from (the demo data, plus
``setup.customers``), who the customer is (scripted ``messages``, or a ``persona`` and ``goal`` for a
simulated customer) and what the judge expects (``expect``; see ``Expectations``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

TICKET_STATUSES = ("Open", "In progress", "Waiting on customer", "Resolved", "Closed")


class ScenarioError(Exception):
    """A suite that cannot run: a file that does not parse, a scenario that does not validate."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ExtraTicket(_Strict):
    id: str = Field(pattern=r"^[0-9]{3,20}$")
    status: Literal["Open", "In progress", "Waiting on customer", "Resolved", "Closed"] = "Open"
    issue: str = Field(min_length=1, max_length=120)
    description: str = ""


class ExtraCustomer(_Strict):
    username: str = Field(min_length=1, max_length=150)
    api_key: str = Field(min_length=1, max_length=256)
    tickets: list[ExtraTicket] = []


class Setup(_Strict):
    """Rows added to the demo data (``seed_demo``'s customers and tickets) for this scenario only."""

    customers: list[ExtraCustomer] = []


class Customer(_Strict):
    """Either ``messages`` (sent in order, each after the agent's reply) or a simulated ``persona`` + ``goal``."""

    messages: list[str] = []
    # Answers to the confirmation cards, in order ("yes" approves, "no" refuses); a card past the list is refused.
    confirm: list[Literal["yes", "no"]] = []
    persona: str | None = None
    goal: str | None = None
    max_turns: int = Field(default=8, ge=1, le=40)

    @model_validator(mode="after")
    def _one_kind(self) -> Customer:
        simulated = self.persona is not None or self.goal is not None
        if simulated and self.messages:
            raise ValueError("give either messages or a persona and goal, not both")
        if simulated and not (self.persona and self.goal):
            raise ValueError("a simulated customer needs both a persona and a goal")
        if not simulated and not self.messages:
            raise ValueError("give the customer's messages, or a persona and goal")
        return self

    @property
    def simulated(self) -> bool:
        return self.persona is not None


class ToolCallPattern(_Strict):
    """A tool call by ``name`` whose arguments include every key of ``arguments`` with that value."""

    name: str
    arguments: dict[str, Any] = {}


class TicketState(_Strict):
    status: str | None = None
    issue: str | None = None
    owner: str | None = None


class Expectations(_Strict):
    """What the judge checks. Every field is optional; an empty ``expect`` only rejects errors.

    ``verified_as``: the username the conversation must end verified as, or ``false`` (not verified).
    ``tickets``: ticket id → fields its row must have at the end (``status``, ``issue``, ``owner``).
    ``tool_calls`` / ``no_tool_calls``: calls that must / must not happen (arguments matched partially;
    a verified customer's API key reads ``****`` in the stored calls, as reviewers see it).
    ``final_reply_contains`` / ``any_reply_contains``: phrases (case-insensitive) of the last assistant
    reply / of some assistant reply. ``never_contains``: text that must appear in no frame the server
    sent (the echo of the customer's own message aside). ``errors_allowed``: error frames do not fail it.
    ``tickets_created``: how many tickets the conversation opened; ``created_issue_contains``: phrases
    (case-insensitive) each opened ticket's issue has; ``comments``: ticket id -> comments the
    conversation added to it (the customer answers the confirmation cards with ``customer.confirm``).
    ``handed_off``: the conversation must (true) or must not (false) have gone to a person's queue.
    """

    verified_as: str | Literal[False] | None = None
    tickets: dict[str, TicketState] = {}
    tool_calls: list[ToolCallPattern] = []
    no_tool_calls: list[ToolCallPattern] = []
    final_reply_contains: list[str] = []
    any_reply_contains: list[str] = []
    never_contains: list[str] = []
    errors_allowed: bool = False
    tickets_created: int | None = None
    created_issue_contains: list[str] = []
    comments: dict[str, int] = {}
    handed_off: bool | None = None


class Scenario(_Strict):
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,99}$")
    description: str = ""
    tags: list[str] = []
    setup: Setup = Setup()
    customer: Customer
    expect: Expectations = Expectations()
    source: str = ""  # the file it came from, filled in by the loader

    def secrets(self, demo_keys: list[str]) -> list[str]:
        """Raw API keys in play that are distinctive enough to search for (8 characters or more)."""
        keys = [*demo_keys, *(customer.api_key for customer in self.setup.customers)]
        return [key for key in keys if len(key) >= 8]


class _SuiteFile(_Strict):
    scenarios: list[dict[str, Any]]


def suite_files(path: Path) -> list[Path]:
    """The YAML files of a suite: the file itself, or every ``*.yaml`` / ``*.yml`` in the folder."""
    if path.is_file():
        return [path]
    if path.is_dir():
        return sorted([*path.glob("*.yaml"), *path.glob("*.yml")])
    raise ScenarioError(f"No scenario suite at {path}.")


def load_suite(path: Path, only: list[str] | None = None) -> list[Scenario]:
    """Every scenario of the suite at ``path`` (or those named in ``only``), validated; names are unique."""
    scenarios: list[Scenario] = []
    for file in suite_files(path):
        scenarios.extend(_load_file(file))
    _check_unique(scenarios)
    if only:
        unknown = sorted(set(only) - {scenario.name for scenario in scenarios})
        if unknown:
            raise ScenarioError(f"No scenario named {', '.join(unknown)} in {path}.")
        scenarios = [scenario for scenario in scenarios if scenario.name in only]
    if not scenarios:
        raise ScenarioError(f"No scenarios in {path}.")
    return scenarios


def _load_file(file: Path) -> list[Scenario]:
    try:
        document = yaml.safe_load(file.read_text(encoding="utf-8"))
        entries = _SuiteFile.model_validate(document).scenarios
    except (OSError, yaml.YAMLError, ValidationError) as error:
        raise ScenarioError(f"{file}: {error}") from error
    scenarios = []
    for number, entry in enumerate(entries, start=1):
        try:
            scenarios.append(Scenario.model_validate({**entry, "source": file.name}))
        except ValidationError as error:
            label = entry.get("name", f"#{number}") if isinstance(entry, dict) else f"#{number}"
            raise ScenarioError(f"{file}, scenario {label}: {error}") from error
    return scenarios


def _check_unique(scenarios: list[Scenario]) -> None:
    seen: dict[str, str] = {}
    for scenario in scenarios:
        if scenario.name in seen:
            raise ScenarioError(f"Scenario {scenario.name!r} is in both {seen[scenario.name]} and {scenario.source}.")
        seen[scenario.name] = scenario.source
