"""The judge's checks of what a conversation changed: tickets opened and comments added."""

from __future__ import annotations

from chat.evaluation.judge import Observation, judge
from chat.evaluation.scenarios import Scenario
from chat.evaluation.state import FinalState, TicketRow


def scenario(confirm: list[str] | None = None, **expect) -> Scenario:
    customer = {"messages": ["hi"], "confirm": confirm or []}
    return Scenario.model_validate({"name": "s", "customer": customer, "expect": expect})


def changed(created: list[TicketRow] = (), comments: dict[str, list[str]] | None = None) -> Observation:
    return Observation([], [], FinalState("john_doe", {}, list(created), comments or {}), [])


def test_the_judge_counts_tickets_opened_and_comments_added() -> None:
    expect = scenario(["yes"], tickets_created=1, created_issue_contains=["invoice"], comments={"12345": 1})
    good = changed([TicketRow("Open", "My invoice is wrong", "john_doe")], {"12345": ["paid"]})
    assert judge(expect, good) == []
    assert judge(expect, changed()) == [
        "0 ticket(s) were opened, expected 1",
        "0 comment(s) were added to ticket 12345, expected 1",
    ]
    wrong = changed([TicketRow("Open", "Printer", "john_doe")] * 2, {"12345": ["a", "b"]})
    assert judge(expect, wrong) == [
        "2 ticket(s) were opened, expected 1",
        "an opened ticket's issue 'Printer' does not say 'invoice'",
        "an opened ticket's issue 'Printer' does not say 'invoice'",
        "2 comment(s) were added to ticket 12345, expected 1",
    ]


def test_unset_expectations_check_nothing_and_answers_are_yes_or_no() -> None:
    assert judge(scenario(), changed([TicketRow("Open", "x", "john_doe")], {"1": ["a"]})) == []
    assert scenario(["yes", "no"]).customer.confirm == ["yes", "no"]
