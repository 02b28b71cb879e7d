"""The tools that list, open and add to tickets, on the database: each with a verified owner / unverified /
wrong owner / unknown id / malformed arguments, the daily limit, the list cap, and staff replies."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from chat.agent import ConfirmRequest, ToolCall, ToolOutcome
from chat.services import conversation_start
from chat.toolbox import NEEDS_APPROVAL, Toolbox, ToolContext
from tickets import tools
from tickets.models import Ticket, TicketComment
from tickets.services import apikey_rotate, ticket_staff_reply

pytestmark = pytest.mark.django_db

ALL = [tools.verify_user, tools.get_ticket_status, tools.list_my_tickets, tools.create_ticket, tools.add_ticket_comment]


@pytest.fixture
def toolbox() -> Toolbox:
    return Toolbox(ALL)


def new_context() -> ToolContext:
    conversation = conversation_start(session_key="s" * 32, client_address="127.0.0.1")
    return ToolContext(conversation.id, None, conversation.client_address)


@pytest.fixture
def unverified(demo_data) -> ToolContext:
    return new_context()


@pytest.fixture
def john(demo_data, toolbox) -> ToolContext:
    return verified_as(toolbox, "john_doe", "key")


@pytest.fixture
def jane(demo_data, toolbox) -> ToolContext:
    return verified_as(toolbox, "jane_roe", "jane-key")


def verified_as(toolbox: Toolbox, username: str, key: str) -> ToolContext:
    context = new_context()
    assert call(toolbox, context, "verify_user", {"username": username, "api_key": key}) == {"success": True}
    return context


def call(toolbox: Toolbox, context: ToolContext, name: str, arguments: Any, *, approved: bool = True) -> dict:
    text = arguments if isinstance(arguments, str) else json.dumps(arguments)
    outcome = toolbox.run(ToolCall("call_1", name, text), context, approved=approved)
    return json.loads(outcome.content)


def prepare(toolbox: Toolbox, context: ToolContext, name: str, arguments: Any) -> ConfirmRequest | ToolOutcome | None:
    text = arguments if isinstance(arguments, str) else json.dumps(arguments)
    return toolbox.prepare(ToolCall("call_1", name, text), context)


NOT_VERIFIED = {"error": tools.NOT_VERIFIED}


# LIST_MY_TICKETS


def test_list_my_tickets_newest_first_with_id_status_issue_and_update(toolbox, john):
    Ticket.objects.filter(public_id="67890").update(updated_at=timezone.now() + timedelta(minutes=1))
    result = call(toolbox, john, "list_my_tickets", {})
    assert [(t["ticket_id"], t["status"], t["issue"]) for t in result["tickets"]] == [
        ("67890", "Closed", "Technical Support"),
        ("12345", "Open", "Billing Query"),
    ]
    assert all(t["updated_at"] for t in result["tickets"]) and result["more"] is False


@pytest.mark.parametrize("status", ["Open", "open", "OPEN", " open "])
def test_list_my_tickets_by_status_in_any_case(toolbox, john, status):
    assert [t["ticket_id"] for t in call(toolbox, john, "list_my_tickets", {"status": status})["tickets"]] == ["12345"]


def test_list_my_tickets_is_capped(toolbox, john, settings):
    settings.TICKETS_LIST_MAX = 1
    result = call(toolbox, john, "list_my_tickets", {})
    assert len(result["tickets"]) == 1 and result["more"] is True


def test_list_my_tickets_before_verification_lists_nothing(toolbox, unverified):
    assert call(toolbox, unverified, "list_my_tickets", {}) == NOT_VERIFIED


def test_list_my_tickets_shows_only_the_verified_customers_own(toolbox, jane):
    result = call(toolbox, jane, "list_my_tickets", {})
    assert [t["ticket_id"] for t in result["tickets"]] == ["24680"]
    assert "Billing Query" not in json.dumps(result)


def test_list_my_tickets_after_the_key_was_rotated_lists_nothing(toolbox, john):
    apikey_rotate(customer=User.objects.get(username="john_doe"))
    assert call(toolbox, john, "list_my_tickets", {}) == NOT_VERIFIED


@pytest.mark.parametrize(
    "arguments",
    ['{"status": "Lost"}', '{"status": 5}', '{"customer_id": 2}', "[]", "not json", '{"status": "' + "x" * 50 + '"}'],
)
def test_list_my_tickets_malformed_arguments_are_errors_and_list_nothing(toolbox, john, arguments):
    result = call(toolbox, john, "list_my_tickets", arguments)
    assert set(result) == {"error"} and "12345" not in json.dumps(result)


def test_list_my_tickets_is_one_query_when_verified(toolbox, john):
    with CaptureQueriesContext(connection) as queries:
        call(toolbox, john, "list_my_tickets", {})
    assert len(queries) == 1


# CREATE_TICKET


def test_create_ticket_opens_an_open_ticket_owned_by_the_customer_and_linked_to_the_conversation(toolbox, john):
    result = call(toolbox, john, "create_ticket", {"issue": "Invoice is wrong", "description": "Charged twice."})
    ticket = Ticket.objects.get(public_id=result["ticket_id"])
    assert result == {"ticket_id": ticket.public_id, "status": "Open", "issue": "Invoice is wrong", "created": True}
    assert (ticket.customer.username, ticket.status, ticket.description) == ("john_doe", "Open", "Charged twice.")
    assert ticket.conversation_id == john.conversation_id
    assert len(ticket.public_id) == 6 and ticket.public_id.isdigit()


def test_create_ticket_needs_the_customers_approval(toolbox, john):
    before = Ticket.objects.count()
    result = call(toolbox, john, "create_ticket", {"issue": "x"}, approved=False)
    assert result == {"error": NEEDS_APPROVAL.format(tool="create_ticket")}
    assert Ticket.objects.count() == before


def test_create_ticket_asks_in_plain_words_with_the_arguments(toolbox, john):
    request = prepare(toolbox, john, "create_ticket", {"issue": "Invoice is wrong", "description": "Charged twice."})
    assert isinstance(request, ConfirmRequest)
    assert request.summary == "Open a new support ticket: \u201cInvoice is wrong\u201d"
    assert request.arguments == {"issue": "Invoice is wrong", "description": "Charged twice."}
    assert (request.tool, request.call_id) == ("create_ticket", "call_1")


def test_create_ticket_unverified_is_not_asked_and_creates_nothing(toolbox, unverified):
    before = Ticket.objects.count()
    prepared = prepare(toolbox, unverified, "create_ticket", {"issue": "x"})
    assert isinstance(prepared, ToolOutcome) and prepared.result == NOT_VERIFIED
    assert call(toolbox, unverified, "create_ticket", {"issue": "x"}) == NOT_VERIFIED
    assert Ticket.objects.count() == before


@pytest.mark.parametrize(
    "arguments",
    ['{"issue": ""}', '{"issue": "' + "x" * 121 + '"}', "{}", '{"issue": "x", "customer_id": 2}', "[1]", "nope"],
)
def test_create_ticket_malformed_arguments_are_not_asked_and_create_nothing(toolbox, john, arguments):
    before = Ticket.objects.count()
    prepared = prepare(toolbox, john, "create_ticket", arguments)
    assert isinstance(prepared, ToolOutcome) and prepared.is_error
    assert "error" in call(toolbox, john, "create_ticket", arguments)
    assert Ticket.objects.count() == before


def test_create_ticket_is_limited_per_customer_per_day(toolbox, john, jane, settings):
    settings.TICKETS_CREATED_PER_DAY = 2
    for number in range(2):
        assert call(toolbox, john, "create_ticket", {"issue": f"issue {number}"})["created"] is True
    assert call(toolbox, john, "create_ticket", {"issue": "one too many"}) == {"error": tools.TOO_MANY_TICKETS}
    prepared = prepare(toolbox, john, "create_ticket", {"issue": "one too many"})
    assert isinstance(prepared, ToolOutcome) and prepared.result == {"error": tools.TOO_MANY_TICKETS}
    assert call(toolbox, jane, "create_ticket", {"issue": "jane's own"})["created"] is True  # per customer
    Ticket.objects.filter(issue__startswith="issue").update(created_at=timezone.now() - timedelta(days=1, minutes=1))
    assert call(toolbox, john, "create_ticket", {"issue": "a day later"})["created"] is True


def test_tickets_staff_open_do_not_count_towards_the_limit(toolbox, john, settings):
    settings.TICKETS_CREATED_PER_DAY = 1
    Ticket.objects.create(public_id="55555", customer=User.objects.get(username="john_doe"), issue="by staff")
    assert call(toolbox, john, "create_ticket", {"issue": "by the customer"})["created"] is True


# ADD_TICKET_COMMENT


def test_add_ticket_comment_appends_the_customers_words(toolbox, john):
    result = call(toolbox, john, "add_ticket_comment", {"ticket_id": "#12345", "text": "I already paid."})
    assert result == {"ticket_id": "12345", "comment_added": True}
    comment = TicketComment.objects.get()
    assert (comment.ticket.public_id, comment.author, comment.public, comment.text) == (
        "12345", "customer", True, "I already paid."
    )
    assert comment.conversation_id == john.conversation_id and comment.staff_user is None


def test_add_ticket_comment_asks_with_the_ticket_and_the_words(toolbox, john):
    request = prepare(toolbox, john, "add_ticket_comment", {"ticket_id": "12345", "text": "I already paid."})
    assert isinstance(request, ConfirmRequest)
    assert request.summary == "Add your comment to ticket 12345: \u201cI already paid.\u201d"


@pytest.mark.parametrize(
    ("who", "ticket_id", "expected"),
    [
        ("unverified", "12345", NOT_VERIFIED),
        ("jane", "12345", {"error": "No ticket 12345 was found for this customer."}),  # wrong owner
        ("john", "99999", {"error": "No ticket 99999 was found for this customer."}),  # unknown id
        ("john", "١٢٣٤٥", {"error": "No ticket ١٢٣٤٥ was found for this customer."}),  # not ASCII digits
    ],
)
def test_add_ticket_comment_to_a_ticket_not_theirs_is_not_asked_and_adds_nothing(
    toolbox, request, who, ticket_id, expected
):
    context = request.getfixturevalue(who)
    arguments = {"ticket_id": ticket_id, "text": "hello"}
    prepared = prepare(toolbox, context, "add_ticket_comment", arguments)
    assert isinstance(prepared, ToolOutcome) and prepared.result == expected
    assert call(toolbox, context, "add_ticket_comment", arguments) == expected
    assert not TicketComment.objects.exists()


@pytest.mark.parametrize(
    "arguments",
    ['{"ticket_id": "12345"}', '{"ticket_id": "12345", "text": ""}', '{"text": "hi"}', "[]", "{",
     '{"ticket_id": "12345", "text": "hi", "author": "staff"}', '{"ticket_id": "12345", "text": "' + "x" * 4001 + '"}'],
)
def test_add_ticket_comment_malformed_arguments_add_nothing(toolbox, john, arguments):
    prepared = prepare(toolbox, john, "add_ticket_comment", arguments)
    assert isinstance(prepared, ToolOutcome) and prepared.is_error
    assert "error" in call(toolbox, john, "add_ticket_comment", arguments)
    assert not TicketComment.objects.exists()


def test_a_comment_made_after_the_verification_stopped_holding_is_refused(toolbox, john):
    prepared = prepare(toolbox, john, "add_ticket_comment", {"ticket_id": "12345", "text": "hi"})
    assert isinstance(prepared, ConfirmRequest)
    apikey_rotate(customer=User.objects.get(username="john_doe"))  # while the card waits
    assert call(toolbox, john, "add_ticket_comment", {"ticket_id": "12345", "text": "hi"}) == NOT_VERIFIED
    assert not TicketComment.objects.exists()


# GET_TICKET_STATUS AND STAFF REPLIES


def test_get_ticket_status_returns_the_latest_public_staff_reply_only(toolbox, john):
    ticket = Ticket.objects.get(public_id="12345")
    staff = User.objects.get(username="staff")
    assert "latest_staff_reply" not in call(toolbox, john, "get_ticket_status", {"ticket_id": "12345"})
    ticket_staff_reply(ticket=ticket, staff_user=staff, text="We refunded you.")
    ticket_staff_reply(ticket=ticket, staff_user=staff, text="internal: customer is nice", public=False)
    TicketComment.objects.create(ticket=ticket, author="customer", text="thanks")
    result = call(toolbox, john, "get_ticket_status", {"ticket_id": "12345"})
    assert result["latest_staff_reply"]["text"] == "We refunded you."
    assert "internal" not in json.dumps(result)


def test_get_ticket_status_with_a_staff_reply_is_still_one_query(toolbox, john):
    ticket_staff_reply(ticket=Ticket.objects.get(public_id="12345"), staff_user=User.objects.get(username="staff"),
                       text="On it.")
    with CaptureQueriesContext(connection) as queries:
        result = call(toolbox, john, "get_ticket_status", {"ticket_id": "12345"})
    assert result["latest_staff_reply"]["text"] == "On it." and len(queries) == 1


def test_another_customers_staff_reply_stays_invisible(toolbox, jane):
    ticket_staff_reply(ticket=Ticket.objects.get(public_id="12345"), staff_user=User.objects.get(username="staff"),
                       text="Refund for john")
    result = call(toolbox, jane, "get_ticket_status", {"ticket_id": "12345"})
    assert result == {"error": "No ticket 12345 was found for this customer."}


def _orm_lookup(*, public_id: str, customer_id: int, conversation_id: object) -> Ticket | None:
    """The ORM's statement of the lookup's rule: the reference the written-out query is held to."""
    from django.db.models import Exists, OuterRef, Subquery

    from tickets.selectors import verifications_holding

    holding = verifications_holding(conversation_id=conversation_id).filter(customer_id=customer_id)
    replies = TicketComment.objects.filter(
        ticket=OuterRef("pk"), author=TicketComment.Author.STAFF, public=True
    ).order_by("-created_at", "-id")
    return (
        Ticket.objects.filter(public_id=public_id, customer_id=customer_id)
        .annotate(
            holds=Exists(holding),
            staff_reply=Subquery(replies.values("text")[:1]),
            staff_reply_at=Subquery(replies.values("created_at")[:1]),
        )
        .first()
    )


def test_ticket_lookup_matches_the_orms_rule(toolbox, john, jane, settings):
    """Case by case (owner or not, unknown id, key revoked, customer deactivated, verification too old,
    signed in by the website with the current or a rotated secret, replies, notes and comments), the
    written-out lookup answers exactly what the ORM's statement of the same rule answers."""
    from tickets.models import Verification
    from tickets.selectors import ticket_get_for_customer
    from tickets.signatures import current_signer

    john_id = User.objects.get(username="john_doe").id
    jane_id = User.objects.get(username="jane_roe").id
    staff = User.objects.create(username="agent-smith", is_staff=True)
    ticket = Ticket.objects.get(public_id="12345")
    ticket_staff_reply(ticket=ticket, staff_user=staff, text="Earlier public reply")
    ticket_staff_reply(ticket=ticket, staff_user=staff, text="Latest public reply")
    ticket_staff_reply(ticket=ticket, staff_user=staff, text="Internal note", public=False)
    TicketComment.objects.create(ticket=ticket, author=TicketComment.Author.CUSTOMER, text="Customer's own words")
    settings.CHAT_IDENTITY_SECRET = "the-current-signing-secret"
    signed = new_context()
    Verification.objects.create(conversation_id=signed.conversation_id, customer_id=jane_id, signer=current_signer())
    rotated = new_context()
    Verification.objects.create(conversation_id=rotated.conversation_id, customer_id=jane_id, signer="0" * 16)

    def answer(found: Ticket | None) -> tuple | None:
        return found and (found.pk, found.public_id, found.status, found.issue, found.holds, found.staff_reply,
                          found.staff_reply_at)

    def compare() -> list[tuple | None]:
        answers = []
        for conversation in (john, jane, signed, rotated):
            for customer_id in (john_id, jane_id):
                for public_id in ("12345", "67890", "24680", "99999"):
                    where = {"public_id": public_id, "customer_id": customer_id,
                             "conversation_id": conversation.conversation_id}
                    expected = answer(_orm_lookup(**where))
                    assert answer(ticket_get_for_customer(**where)) == expected, where
                    answers.append(expected)
        return answers

    answers = compare()
    assert any(a and a[4] and a[5] == "Latest public reply" for a in answers), "a holding lookup with a reply"
    assert any(a and a[4] and a[5] is None for a in answers), "a holding lookup without one"
    assert any(a and not a[4] for a in answers), "a lookup that does not hold"
    apikey_rotate(customer=User.objects.get(username="john_doe"))  # john's key revoked
    compare()
    User.objects.filter(username="jane_roe").update(is_active=False)
    compare()
    User.objects.filter(username="jane_roe").update(is_active=True)
    Verification.objects.update(created_at=timezone.now() - timedelta(seconds=settings.VERIFY_TTL_SECONDS + 5))
    assert not any(a and a[4] for a in compare()), "too old: nothing holds"
