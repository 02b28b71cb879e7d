"""``manage.py evaluate``: the pass^k estimator, scenario validation, the judge, the builtin suite at 100 %,
a flaky scripted model below 1, the JSON shape, the ``--min-pass`` gate, runs kept and shown to operators.

The command runs each scenario run in its own transaction on its own thread, so these tests commit for
real (``transactional_db``): a run's thread cannot see the rows of a test's open transaction.
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import pytest
from django.conf import settings
from django.contrib.auth.models import Permission, User
from django.core.management import call_command
from django.core.management.base import CommandError

from chat import llm
from chat.evaluation.judge import Observation, ObservedCall, judge
from chat.evaluation.metrics import pass_hat, pass_hat_table
from chat.evaluation.models import EvaluationRun, FailedAttempt, ScenarioResult
from chat.evaluation.scenarios import Scenario, ScenarioError, load_suite
from chat.evaluation.state import FinalState, TicketRow
from chat.models import Conversation
from chat.operators.access import roles_ensure
from tests.support.fake_openai import FakeOpenAI, completion
from tickets.models import Ticket

SUITE = Path(settings.BASE_DIR) / "evals"


def evaluate(*args: str) -> tuple[str, str]:
    out, err = io.StringIO(), io.StringIO()
    call_command("evaluate", *args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def write_suite(directory: Path, text: str) -> Path:
    path = directory / "suite.yaml"
    path.write_text(text, encoding="utf-8")
    return path


# PASS^K


def test_pass_hat_known_values() -> None:
    counts = [(4, 4), (4, 2), (4, 0)]
    assert pass_hat(counts, 1) == pytest.approx(0.5)
    assert pass_hat(counts, 2) == pytest.approx((1 + 1 / 6 + 0) / 3)  # C(2,2)/C(4,2) = 1/6
    assert pass_hat(counts, 3) == pytest.approx(1 / 3)
    assert pass_hat(counts, 4) == pytest.approx(1 / 3)
    assert pass_hat([(8, 5)], 3) == pytest.approx(math.comb(5, 3) / math.comb(8, 3))
    assert pass_hat_table([(2, 1), (2, 2)], 2) == {"1": 0.75, "2": 0.5}


@pytest.mark.parametrize("counts,k", [([(2, 2)], 3), ([(3, 4)], 1), ([], 1), ([(3, 1)], 0)])
def test_pass_hat_refuses_impossible_counts(counts, k) -> None:
    with pytest.raises(ValueError):
        pass_hat(counts, k)


# SCENARIOS


def test_the_repository_suite_is_valid_and_large_enough() -> None:
    scenarios = load_suite(SUITE)
    assert len(scenarios) >= 40
    assert len({scenario.name for scenario in scenarios}) == len(scenarios)
    tags = {tag for scenario in scenarios for tag in scenario.tags}
    assert {"seed", "lockout", "injection", "off-topic", "goodbye", "several", "security"} <= tags


@pytest.mark.parametrize(
    "customer,problem",
    [
        ("customer: {messages: [hi], persona: x, goal: y}", "not both"),
        ("customer: {persona: x}", "both a persona and a goal"),
        ("customer: {messages: []}", "give the customer's messages"),
        ("customer: {messages: [hi]}\n    expect: {verified: john_doe}", "verified"),
    ],
)
def test_invalid_scenarios_are_refused_with_their_name(tmp_path, customer, problem) -> None:
    path = write_suite(tmp_path, f"scenarios:\n  - name: broken\n    {customer}\n")
    with pytest.raises(ScenarioError, match=problem) as error:
        load_suite(path)
    assert "broken" in str(error.value)


def test_duplicate_names_and_unknown_only_are_refused(tmp_path) -> None:
    one = "  - name: twice\n    customer: {messages: [hi]}\n"
    with pytest.raises(ScenarioError, match="twice"):
        load_suite(write_suite(tmp_path, "scenarios:\n" + one + one))
    with pytest.raises(ScenarioError, match="nope"):
        load_suite(SUITE, only=["nope"])


# THE JUDGE


def scenario(**expect) -> Scenario:
    return Scenario.model_validate({"name": "s", "customer": {"messages": ["hi"]}, "expect": expect})


def observed(frames=(), calls=(), verified_as=None, tickets=None, secrets=()) -> Observation:
    return Observation(list(frames), list(calls), FinalState(verified_as, tickets or {}), list(secrets))


def reply(text: str) -> dict:
    return {"type": "message", "role": "assistant", "text": text}


def test_judge_passes_what_matches() -> None:
    expectations = scenario(
        verified_as="john_doe",
        tickets={"12345": {"status": "Open"}},
        tool_calls=[{"name": "get_ticket_status", "arguments": {"ticket_id": 12345}}],
        no_tool_calls=[{"name": "get_ticket_status", "arguments": {"ticket_id": "24680"}}],
        final_reply_contains=["open"],
        any_reply_contains=["hello"],
        never_contains=["Password reset"],
    )
    seen = observed(
        frames=[reply("Hello"), reply("Ticket 12345 is Open")],
        calls=[ObservedCall("get_ticket_status", {"ticket_id": "12345"})],
        verified_as="john_doe",
        tickets={"12345": TicketRow("Open", "Billing Query", "john_doe")},
    )
    assert judge(expectations, seen) == []


def test_judge_names_every_broken_expectation() -> None:
    expectations = scenario(
        verified_as=False,
        tickets={"12345": {"status": "Closed"}, "55555": {"status": "Open"}},
        tool_calls=[{"name": "verify_user", "arguments": {"username": "jane_roe"}}],
        no_tool_calls=[{"name": "get_ticket_status"}],
        final_reply_contains=["goodbye"],
        any_reply_contains=["welcome"],
        never_contains=["password reset"],
    )
    seen = observed(
        frames=[reply("Your ticket: Password reset"), {"type": "error", "code": "model_busy", "message": "busy"}],
        calls=[ObservedCall("verify_user", {"username": "john_doe"}), ObservedCall("get_ticket_status", {})],
        verified_as="john_doe",
        tickets={"12345": TicketRow("Open", "Billing Query", "john_doe")},
    )
    failures = judge(expectations, seen)
    assert len(failures) == 9, failures
    assert any("verified as john_doe, expected not verified" in failure for failure in failures)
    assert any("ticket 55555 does not exist" in failure for failure in failures)
    assert any("'Password reset'" in failure or "'password reset'" in failure for failure in failures)
    assert any("model_busy" in failure for failure in failures)


def test_a_raw_key_is_caught_anywhere_but_in_the_customers_own_words() -> None:
    expectations = scenario()
    own_words = {"type": "message", "role": "user", "text": "my key is sk-live-123456"}
    assert judge(expectations, observed(frames=[own_words], secrets=["sk-live-123456"])) == []
    leaked = {"type": "tool", "name": "verify_user", "status": "started", "arguments": {"api_key": "sk-live-123456"}}
    failures = judge(expectations, observed(frames=[own_words, leaked], secrets=["sk-live-123456"]))
    assert failures == ["a raw API key (sk-…) was shown to the customer"]


# THE BUILTIN SUITE, THROUGH THE COMMAND


@pytest.mark.django_db(transaction=True)
def test_the_builtin_model_passes_every_scenario(tmp_path) -> None:
    report_path = tmp_path / "report.json"
    out, err = evaluate("--json", str(report_path), "--min-pass", "1")
    report = json.loads(report_path.read_text())
    scripted = [s for s in load_suite(SUITE) if not s.customer.simulated]
    failed = {s["name"]: s["failures"] for s in report["scenarios"] if s["passed"] != s["runs"]}
    assert failed == {}
    assert len(report["scenarios"]) == len(scripted) >= 40
    assert report["pass_hat_k"] == {"1": 1.0}
    assert {s["name"] for s in report["skipped"]} == {s.name for s in load_suite(SUITE) if s.customer.simulated}
    assert "pass^1   1.000" in out
    assert f"{len(scripted)}/{len(scripted)} runs, 0 failed" in err
    # Every run was rolled back: no conversation, no customer or ticket a scenario added is left.
    assert not Conversation.objects.exists()
    assert not User.objects.filter(username__in=["alice_w", "mallory", "bob_k"]).exists()
    assert not Ticket.objects.exists()
    stored = EvaluationRun.objects.get()
    assert stored.model == "builtin-support-1"
    assert stored.results.count() == len(scripted)
    assert not FailedAttempt.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_a_run_starts_from_the_seed_as_defined_whatever_the_database_holds(demo_data, tmp_path) -> None:
    Ticket.objects.filter(public_id="12345").update(status="Closed", issue="Edited by staff")
    out, _ = evaluate("--only", "seed-flow", "--only", "lookup-leaves-tickets-unchanged")
    assert "pass^1   1.000" in out
    assert Ticket.objects.get(public_id="12345").status == "Closed"  # the database itself is untouched


@pytest.mark.django_db(transaction=True)
def test_concurrency_on_sqlite_runs_one_at_a_time_and_says_so() -> None:
    if settings.DATABASES["default"]["ENGINE"] != "django.db.backends.sqlite3":
        pytest.skip("SQLite only")
    _, err = evaluate("--only", "seed-flow", "--k", "2", "--concurrency", "4")
    assert "runs go one at a time" in err
    assert "1 at a time" in err


@pytest.mark.django_db(transaction=True)
def test_concurrent_runs_each_keep_their_own_data() -> None:
    """On PostgreSQL, runs go side by side, each in its own transaction on its own connection."""
    if settings.DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
        pytest.skip("PostgreSQL only: SQLite runs one at a time")
    _, err = evaluate("--k", "3", "--concurrency", "4", "--min-pass", "1")
    assert "4 at a time" in err
    assert not Conversation.objects.exists()


# A FLAKY MODEL ON A SCRIPTED LOOPBACK SERVER

FLAKY_SUITE = """
scenarios:
  - name: steady
    customer: {messages: ["what can you do?"]}
    expect: {final_reply_contains: ["tickets"]}
  - name: flaky
    customer: {messages: ["hello"]}
    expect: {final_reply_contains: ["tickets"]}
"""


@pytest.fixture
def flaky_model(settings):
    """A scripted endpoint: ``steady`` always answers well, ``flaky`` only in its 1st and 3rd runs.

    Runs go one at a time, every scenario's first run, then every second run …: per run a greeting and
    one answer, so the queue is exactly the order of the calls.
    """
    with FakeOpenAI() as server:
        good, bad = completion("I can check your tickets."), completion("Sorry, what?")
        for flaky_ok in (True, False, True, False):
            server.script(completion("Hello!"), good, completion("Hello!"), good if flaky_ok else bad)
        settings.CHAT_BACKEND = "openai"
        settings.OPENAI_BASE_URL = server.base_url
        settings.OPENAI_API_KEY = "test"
        settings.CHAT_MODEL = "flaky-1"
        settings.CHAT_STREAM = False
        llm.configured_chat_model.cache_clear()
        yield server
        llm.configured_chat_model.cache_clear()


@pytest.mark.django_db(transaction=True)
def test_a_flaky_model_scores_below_one_at_k4(flaky_model, tmp_path) -> None:
    suite = write_suite(tmp_path, FLAKY_SUITE)
    report_path = tmp_path / "report.json"
    out, _ = evaluate("--suite", str(suite), "--k", "4", "--json", str(report_path))
    print(out)  # the table, for the record (pytest -s)
    assert flaky_model.unused == 0 and len(flaky_model.requests) == 16
    report = json.loads(report_path.read_text())
    assert set(report) >= {"model", "k", "scenarios", "pass_hat_k"}
    assert report["model"] == "flaky-1" and report["k"] == 4
    assert report["pass_hat_k"] == {"1": 0.75, "2": 0.5833, "3": 0.5, "4": 0.5}
    by_name = {s["name"]: s for s in report["scenarios"]}
    assert set(by_name) == {"steady", "flaky"}
    assert {key: by_name["flaky"][key] for key in ("runs", "passed")} == {"runs": 4, "passed": 2}
    assert [failure["run"] for failure in by_name["flaky"]["failures"]] == [2, 4]
    assert "does not say 'tickets'" in by_name["flaky"]["failures"][0]["reasons"][0]
    assert by_name["steady"] == {"name": "steady", "runs": 4, "passed": 4, "failures": []}
    assert "flaky" in out and "2/4" in out and "pass^4   0.500" in out
    failed = FailedAttempt.objects.filter(result__name="flaky").order_by("attempt")
    assert [attempt.attempt for attempt in failed] == [2, 4]
    assert failed[0].transcript[-1] == {"role": "assistant", "content": "Sorry, what?"}


@pytest.mark.django_db(transaction=True)
def test_min_pass_gates_the_exit_status(flaky_model, tmp_path) -> None:
    suite = write_suite(tmp_path, FLAKY_SUITE)
    with pytest.raises(CommandError, match=r"pass\^1 is 0\.750, below --min-pass 0\.9") as error:
        evaluate("--suite", str(suite), "--k", "2", "--min-pass", "0.9")
    assert error.value.returncode == 1
    evaluate("--suite", str(suite), "--k", "2", "--min-pass", "0.75")  # at the threshold: passes
    assert EvaluationRun.objects.count() == 2  # a failing gate still keeps the run


@pytest.mark.django_db(transaction=True)
def test_json_to_stdout_has_the_contract_shape(tmp_path) -> None:
    out, _ = evaluate("--only", "hello-only", "--k", "2", "--json", "-")
    report = json.loads(out[out.index("{") :])
    assert report["model"] == "builtin-support-1"
    assert report["k"] == 2
    assert report["scenarios"] == [{"name": "hello-only", "runs": 2, "passed": 2, "failures": []}]
    assert report["pass_hat_k"] == {"1": 1.0, "2": 1.0}


# A SIMULATED CUSTOMER


@pytest.mark.django_db(transaction=True)
def test_a_simulated_customer_is_played_by_the_configured_model(settings, tmp_path) -> None:
    suite = write_suite(
        tmp_path,
        """
scenarios:
  - name: simulated-john
    customer: {persona: "John, username john_doe, API key key", goal: "status of 12345", max_turns: 5}
    expect:
      verified_as: john_doe
      tool_calls: [{name: get_ticket_status, arguments: {ticket_id: "12345"}}]
""",
    )
    out, _ = evaluate("--suite", str(suite))
    assert "set EVAL_USER_MODEL" in out
    with FakeOpenAI() as customer:
        customer.script(
            completion("my username is john_doe and my api key is key"),
            completion("ticket 12345 please"),
            completion("###STOP###"),
        )
        settings.EVAL_USER_MODEL = "customer-1"
        settings.EVAL_USER_BASE_URL = customer.base_url
        out, _ = evaluate("--suite", str(suite), "--min-pass", "1")
    assert customer.unused == 0
    first = customer.requests[0].json
    assert first["model"] == "customer-1"
    assert "status of 12345" in first["messages"][0]["content"]
    assert first["messages"][1] == {"role": "user", "content": llm_greeting()}  # the agent speaks as "user"


def llm_greeting() -> str:
    from chat.builtin import GREETING

    return GREETING


# THE EVALUATIONS PAGE


@pytest.fixture
def two_runs(db, tmp_path) -> list[EvaluationRun]:
    """Two stored runs without running anything: the page only reads rows."""
    runs = []
    for number, flaky_passed in enumerate((2, 4), start=1):
        run = EvaluationRun.objects.create(
            started_at=f"2026-11-2{number}T10:00:00Z",
            model=f"model-{number}",
            prompt_hash="ab" * 32,
            suite="evals",
            k=4,
            pass_hat_k={"1": 0.75, "4": 0.5},
            figures={"tokens": 10, "model_calls": 4, "latency_ms": {"p50": 5, "p95": 9}},
        )
        ScenarioResult.objects.create(run=run, name="steady", runs=4, passed=4)
        flaky = ScenarioResult.objects.create(run=run, name="flaky", runs=4, passed=flaky_passed)
        if flaky_passed < 4:
            FailedAttempt.objects.create(
                result=flaky,
                attempt=2,
                conversation_id="00000000-0000-0000-0000-000000000002",
                reasons=["the final reply does not say 'tickets'"],
                transcript=[{"role": "user", "content": "hello"}, {"role": "assistant", "content": "Sorry, what?"}],
            )
        runs.append(run)
    return runs


def test_operators_see_runs_side_by_side(client, demo_data, two_runs) -> None:
    roles_ensure()
    client.force_login(User.objects.get(username="operator"))
    page = client.get("/operators/evaluations/")
    assert page.status_code == 200
    html = page.content.decode()
    assert html.index("model-2") < html.index("model-1")  # newest first
    assert html.count('class="cell cell--failed"') == 1
    assert "2/4" in html and "4/4" in html
    assert "75%" in html  # flaky: 6 of 8 runs across both runs
    failed = ScenarioResult.objects.get(run=two_runs[0], name="flaky")
    assert f'href="/operators/evaluations/results/{failed.id}/"' in html
    detail = client.get(f"/operators/evaluations/results/{failed.id}/").content.decode()
    assert "Sorry, what?" in detail and "does not say" in detail


def test_the_page_reads_in_a_constant_number_of_queries(client, demo_data, two_runs, django_assert_max_num_queries):
    roles_ensure()
    client.force_login(User.objects.get(username="operator"))
    with django_assert_max_num_queries(8):
        assert client.get("/operators/evaluations/").status_code == 200


def test_nobody_else_sees_evaluations(client, demo_data, two_runs) -> None:
    result = ScenarioResult.objects.filter(passed__lt=4).get()
    urls = ["/operators/evaluations/", f"/operators/evaluations/results/{result.id}/"]
    for url in urls:
        response = client.get(url)
        assert response.status_code == 302 and "/admin/login/" in response["Location"]
    customer = User.objects.get(username="john_doe")
    staff_without_review = User.objects.create(username="helper", is_staff=True)
    staff_without_review.user_permissions.add(Permission.objects.get(codename="view_ticket"))
    for user in (customer, staff_without_review):
        client.force_login(user)
        for url in urls:
            response = client.get(url)
            assert response.status_code == 403
            assert b"Sorry, what?" not in response.content
