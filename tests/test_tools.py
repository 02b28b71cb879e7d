"""The toolbox (schemas, validation, errors the model can read) and the two tools, on the database."""

from __future__ import annotations

import json
import uuid
from typing import Annotated, Any

import pytest
from django.contrib.auth.models import User
from django.utils import timezone
from pydantic import Field, SecretStr

from chat.agent import ToolCall
from chat.models import Conversation
from chat.secrets import MASK
from chat.services import conversation_start
from chat.toolbox import Tool, Toolbox, ToolContext
from tickets import tools
from tickets.models import ApiKey, Ticket, VerificationAttempt
from tickets.services import apikey_issue, apikey_rotate, customer_authenticate

pytestmark = pytest.mark.django_db


@pytest.fixture
def toolbox() -> Toolbox:
    return Toolbox([tools.verify_user, tools.get_ticket_status])


@pytest.fixture
def context(demo_data) -> ToolContext:
    conversation = conversation_start(session_key="s" * 32, client_address="127.0.0.1")
    return ToolContext(conversation.id, None, conversation.client_address)


def run(toolbox: Toolbox, context: ToolContext, name: str, arguments: Any) -> dict[str, Any]:
    text = arguments if isinstance(arguments, str) else json.dumps(arguments)
    outcome = toolbox.run(ToolCall("call_1", name, text), context)
    assert json.loads(outcome.content) == outcome.result or outcome.result == {"error": "failed"}
    return json.loads(outcome.content)


def verify(toolbox, context, username="john_doe", api_key="key") -> dict[str, Any]:
    return run(toolbox, context, "verify_user", {"username": username, "api_key": api_key})


def customer_of(context: ToolContext) -> int | None:
    return Conversation.objects.get(id=context.conversation_id).customer_id


# THE TOOLBOX


def test_schemas_come_from_the_signatures(toolbox):
    schemas = {schema["function"]["name"]: schema for schema in toolbox.schemas}
    assert list(schemas) == ["verify_user", "get_ticket_status"]
    verify_schema = schemas["verify_user"]
    assert verify_schema["type"] == "function"
    assert verify_schema["function"]["description"] == (
        "Verify the customer's identity with their username and API key; needed before ticket lookups."
    )
    parameters = verify_schema["function"]["parameters"]
    assert parameters["type"] == "object"
    assert parameters["additionalProperties"] is False
    assert sorted(parameters["required"]) == ["api_key", "username"]
    assert set(parameters["properties"]) == {"username", "api_key"}  # never the context
    assert parameters["properties"]["api_key"]["type"] == "string"
    assert parameters["properties"]["api_key"]["format"] == "password"
    assert parameters["properties"]["username"]["description"] == "The customer's username."
    assert "title" not in parameters and "title" not in parameters["properties"]["username"]
    ticket = schemas["get_ticket_status"]["function"]
    assert (
        ticket["description"] == "Get the status and issue of one of the verified customer's tickets by its ticket ID."
    )
    assert ticket["parameters"]["required"] == ["ticket_id"]
    assert ticket["parameters"]["additionalProperties"] is False
    json.dumps(toolbox.schemas)  # sent as JSON as is


def test_optional_parameters_are_not_required_and_docstring_first_line_only():
    def find_orders(context: ToolContext, email: str, limit: int = 5) -> dict[str, Any]:
        """Find a customer's orders.

        Longer text the model never sees.
        """
        return {}

    parameters = Tool.from_function(find_orders).schema["function"]["parameters"]
    assert parameters["required"] == ["email"]
    assert parameters["properties"]["limit"] == {"type": "integer", "default": 5}
    assert Tool.from_function(find_orders).description == "Find a customer's orders."


def test_a_tool_must_take_the_context_first():
    def no_context(ticket_id: str) -> dict[str, Any]:
        """Nope."""
        return {}

    with pytest.raises(TypeError, match="context"):
        Tool.from_function(no_context)


def test_display_arguments_mask_secret_fields(toolbox):
    shown = toolbox.display_arguments(ToolCall("c", "verify_user", '{"username": "john_doe", "api_key": "key"}'))
    assert shown == {"username": "john_doe", "api_key": MASK}
    assert toolbox.display_arguments(ToolCall("c", "verify_user", "not json")) is None
    assert toolbox.display_arguments(ToolCall("c", "verify_user", "[1, 2]")) is None


class Spy:
    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    def __call__(self, context: ToolContext, ticket_id: Annotated[str, Field(min_length=1)]) -> dict[str, Any]:
        """Spy on ticket lookups."""
        self.calls.append({"ticket_id": ticket_id})
        return {"ticket_id": ticket_id}


@pytest.fixture
def spy_toolbox():
    spy = Spy()

    def lookup(context: ToolContext, ticket_id: Annotated[str, Field(min_length=1)]) -> dict[str, Any]:
        """Look a ticket up."""
        return spy(context, ticket_id)

    return Toolbox([lookup]), spy


@pytest.mark.parametrize(
    ("arguments", "expected"),
    [
        ("{not json", "the arguments must be a JSON object."),
        ('["12345"]', "the arguments must be a JSON object."),
        ("null", "the arguments must be a JSON object."),
        ("{}", "ticket_id: field required."),
        ('{"ticket_id": "1", "customer_id": 2}', "customer_id: extra inputs are not permitted."),
        ('{"ticket_id": "1", "context": {"customer_id": 2}}', "context: extra inputs are not permitted."),
        ('{"ticket_id": ""}', "ticket_id"),
    ],
)
def test_bad_arguments_give_an_error_the_model_can_read_and_nothing_runs(spy_toolbox, arguments, expected):
    toolbox, spy = spy_toolbox
    outcome = toolbox.run(ToolCall("c1", "lookup", arguments), ToolContext(conversation_id=None))
    assert outcome.is_error
    error = json.loads(outcome.content)["error"]
    assert error.startswith("Invalid arguments for lookup: ")
    assert expected in error
    assert spy.calls == []


def test_numbers_are_accepted_as_strings(spy_toolbox):
    toolbox, spy = spy_toolbox
    outcome = toolbox.run(ToolCall("c1", "lookup", '{"ticket_id": 12345}'), ToolContext(conversation_id=None))
    assert not outcome.is_error and spy.calls == [{"ticket_id": "12345"}]


def test_an_unknown_tool_names_the_real_ones(spy_toolbox):
    toolbox, spy = spy_toolbox
    outcome = toolbox.run(ToolCall("c1", "delete_everything", "{}"), ToolContext(conversation_id=None))
    assert outcome.is_error
    assert json.loads(outcome.content) == {
        "error": "There is no tool named 'delete_everything'. The tools are: lookup."
    }
    assert spy.calls == []


def test_an_exception_inside_a_tool_becomes_an_error_without_its_details(caplog):
    def explode(context: ToolContext, api_key: SecretStr) -> dict[str, Any]:
        """Always fails."""
        raise RuntimeError("database password is hunter2")

    outcome = Toolbox([explode]).run(ToolCall("c1", "explode", '{"api_key": "s3cret"}'), ToolContext(None))
    assert outcome.is_error
    assert json.loads(outcome.content) == {"error": "explode failed on our side. Apologise and try later."}
    assert "hunter2" not in outcome.content
    assert outcome.secrets == ("s3cret",)  # still masked where the call is stored
    assert "tool explode failed" in caplog.text


# VERIFY_USER


def test_the_right_key_verifies_the_conversation(toolbox, context):
    outcome = toolbox.run(ToolCall("c1", "verify_user", '{"username": "john_doe", "api_key": "key"}'), context)
    assert not outcome.is_error and json.loads(outcome.content) == {"success": True}
    assert outcome.secrets == ("key",)
    john = User.objects.get(username="john_doe")
    assert customer_of(context) == john.id
    assert context.customer_id == john.id
    assert VerificationAttempt.objects.get().succeeded is True


@pytest.mark.parametrize(("username", "api_key"), [("john_doe", "wrong"), ("nobody", "key"), ("john_doe", "jane-key")])
def test_a_wrong_key_or_unknown_username_does_not_verify(toolbox, context, username, api_key):
    assert verify(toolbox, context, username, api_key) == {"success": False}
    assert customer_of(context) is None and context.customer_id is None
    assert VerificationAttempt.objects.get().succeeded is False


def test_unknown_username_and_wrong_key_answer_identically(toolbox, context):
    unknown = toolbox.run(ToolCall("c1", "verify_user", '{"username": "nobody", "api_key": "key"}'), context)
    wrong = toolbox.run(ToolCall("c1", "verify_user", '{"username": "john_doe", "api_key": "nope"}'), context)
    assert (unknown.content, unknown.is_error, unknown.result) == (wrong.content, wrong.is_error, wrong.result)


def test_staff_cannot_verify_as_customers(toolbox, context):
    staff = User.objects.get(username="staff")
    apikey_issue(customer=staff, raw_key="staff-key")
    admin = User.objects.get(username="admin")
    apikey_issue(customer=admin, raw_key="admin-key")
    assert verify(toolbox, context, "staff", "staff-key") == {"success": False}
    assert verify(toolbox, context, "admin", "admin-key") == {"success": False}
    assert customer_of(context) is None


def test_inactive_customers_cannot_verify(toolbox, context):
    User.objects.filter(username="john_doe").update(is_active=False)
    assert verify(toolbox, context) == {"success": False}


def test_revoked_keys_fail_and_the_new_key_works(toolbox, context):
    john = User.objects.get(username="john_doe")
    _, new_key = apikey_rotate(customer=john)
    assert verify(toolbox, context, "john_doe", "key") == {"success": False}
    assert verify(toolbox, context, "john_doe", new_key) == {"success": True}


def test_keys_are_stored_only_as_hmac_digests(demo_data):
    john = User.objects.get(username="john_doe")
    stored = ApiKey.objects.get(customer=john)
    assert stored.prefix == ""  # a short, hand-set key shows nothing of itself
    assert len(stored.digest) == 64 and "key" not in stored.digest
    _, generated = apikey_issue(customer=john)
    issued = ApiKey.objects.get(customer=john, prefix__startswith="sk_")
    assert generated.startswith("sk_") and len(generated) > 30
    assert issued.prefix == generated[:9]
    for row in ApiKey.objects.values():
        assert not any(
            isinstance(value, str) and raw in value for value in row.values() for raw in ("jane-key", generated)
        )
        assert row["digest"] not in ("key", "jane-key", generated)
    assert customer_authenticate(username="john_doe", raw_key=generated) == john


def test_verification_locks_after_too_many_failures(toolbox, context, settings):
    settings.VERIFY_MAX_FAILURES = 3
    for _ in range(3):
        assert verify(toolbox, context, "john_doe", "wrong") == {"success": False}
    locked = verify(toolbox, context, "john_doe", "key")
    assert locked == {"success": False, "error": tools.LOCKED}
    assert customer_of(context) is None
    # In another conversation from the same address, the username is still locked …
    other = ToolContext(conversation_start(session_key="o" * 32).id, None, context.client_address)
    assert verify(toolbox, other, "john_doe", "key") == {"success": False, "error": tools.LOCKED}
    # … and a locked unknown username answers exactly the same.
    for _ in range(3):
        verify(toolbox, ToolContext(conversation_start(session_key="u" * 32).id), "nobody", "x")
    third = ToolContext(conversation_start(session_key="t" * 32).id)
    assert verify(toolbox, third, "nobody", "key") == locked
    assert customer_of(third) is None


def test_failures_lock_by_client_address(toolbox, demo_data, settings):
    settings.VERIFY_MAX_FAILURES_PER_ADDRESS = 2
    for name in ("a", "b"):
        conversation = conversation_start(session_key=name * 32, client_address="10.0.0.9")
        verify(toolbox, ToolContext(conversation.id, None, "10.0.0.9"), f"user_{name}", "x")
    fresh = conversation_start(session_key="c" * 32, client_address="10.0.0.9")
    assert verify(toolbox, ToolContext(fresh.id, None, "10.0.0.9"))["error"] == tools.LOCKED


def test_old_failures_do_not_lock(toolbox, context, settings):
    settings.VERIFY_MAX_FAILURES = 2
    for _ in range(2):
        verify(toolbox, context, "john_doe", "wrong")
    VerificationAttempt.objects.update(created_at=timezone.now() - timezone.timedelta(hours=1))
    assert verify(toolbox, context) == {"success": True}


# GET_TICKET_STATUS


def lookup(toolbox, context, ticket_id: Any) -> dict[str, Any]:
    return run(toolbox, context, "get_ticket_status", {"ticket_id": ticket_id})


def test_no_ticket_data_before_verification(toolbox, context):
    answer = lookup(toolbox, context, "12345")
    assert answer == {"error": tools.NOT_VERIFIED}
    assert "Open" not in json.dumps(answer) and "Billing" not in json.dumps(answer)


def test_a_verified_customer_sees_their_own_ticket(toolbox, context, django_assert_num_queries):
    verify(toolbox, context)
    with django_assert_num_queries(1):
        answer = lookup(toolbox, context, "12345")
    assert answer == {"ticket_id": "12345", "status": "Open", "issue": "Billing Query"}
    assert lookup(toolbox, context, "67890") == {"ticket_id": "67890", "status": "Closed", "issue": "Technical Support"}


def test_verification_carries_over_from_the_stored_conversation(toolbox, context):
    verify(toolbox, context)
    later = ToolContext(context.conversation_id, customer_of(context))  # as a new turn loads it
    assert lookup(toolbox, later, "12345")["status"] == "Open"


def test_another_customers_ticket_answers_exactly_like_an_unknown_one(toolbox, context, django_assert_num_queries):
    verify(toolbox, context)
    assert Ticket.objects.filter(public_id="24680").exists()
    assert not Ticket.objects.filter(public_id="99999").exists()
    with django_assert_num_queries(1):
        janes = lookup(toolbox, context, "24680")
    with django_assert_num_queries(1):
        unknown = lookup(toolbox, context, "99999")
    assert janes == json.loads(json.dumps(unknown).replace("99999", "24680"))
    assert "error" in janes and "Password reset" not in json.dumps(janes)


@pytest.mark.parametrize("ticket_id", ["#12345", " 12345 ", 12345, "# 12345"])
def test_usual_spellings_of_a_ticket_id_work(toolbox, context, ticket_id):
    verify(toolbox, context)
    assert lookup(toolbox, context, ticket_id) == {"ticket_id": "12345", "status": "Open", "issue": "Billing Query"}


@pytest.mark.parametrize(
    "ticket_id",
    [
        "１２３４５",
        "١٢٣٤٥",
        "۱۲۳۴۵",
        "12345; DROP TABLE tickets_ticket",
        "12345 OR 1=1",
        "1234５",
        "%",
        "12_45",
        "12345\n6",
    ],
)
def test_strings_that_are_not_ticket_ids_find_nothing(toolbox, context, ticket_id, django_assert_max_num_queries):
    verify(toolbox, context)
    with django_assert_max_num_queries(1):
        answer = lookup(toolbox, context, ticket_id)
    assert set(answer) == {"error"} and "No ticket" in answer["error"]


def test_a_ticket_lookup_runs_through_the_toolbox_as_one_query(toolbox, context, django_assert_num_queries):
    verify(toolbox, context)
    with django_assert_num_queries(1):
        outcome = toolbox.run(ToolCall("c", "get_ticket_status", '{"ticket_id": "12345"}'), context)
    assert not outcome.is_error and outcome.result["status"] == "Open"


@pytest.mark.parametrize(
    "arguments",
    [
        {"username": "john_doe", "api_key": "key", "ticket_id": "12345"},  # a smuggled field
        {"username": "", "api_key": "key"},  # a field that fails its constraint
        {"api_key": "key"},  # a missing field
    ],
)
def test_a_secret_in_a_call_that_fails_validation_is_still_masked(toolbox, context, arguments):
    outcome = toolbox.run(ToolCall("c1", "verify_user", json.dumps(arguments)), context)
    assert outcome.is_error and "Invalid arguments for verify_user" in outcome.content
    assert outcome.secrets == ("key",)
    assert "key" not in json.loads(outcome.content)["error"].replace("api_key", "")  # never echoed
    assert not VerificationAttempt.objects.exists()  # the tool did not run


def test_secrets_given_in_broken_or_made_up_calls_are_still_found():
    from chat.toolbox import secrets_in_arguments

    assert secrets_in_arguments('{"username": "john_doe", "api_key": "sk_live_1', {"api_key"}) == ("sk_live_1",)
    assert secrets_in_arguments('{"api_key": "a\\"b", "x": 1}', {"api_key"}) == ('a"b',)
    assert secrets_in_arguments("not json at all", {"api_key"}) == ()
    toolbox = Toolbox([tools.verify_user])
    outcome = toolbox.run(ToolCall("c1", "verifyUser", '{"api_key": "sk_live_2"}'), ToolContext(uuid.uuid4()))
    assert outcome.is_error and outcome.secrets == ("sk_live_2",), "a made-up tool's secret-named argument"
