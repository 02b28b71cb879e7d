"""Staff read and answer a ticket's comments inline, and open the conversations about it; the
"Support staff" group reads conversations with their turns in admin."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import User
from django.test import Client
from django.urls import reverse

from chat.services import conversation_start, conversation_verify, turns_append
from tests.support.admin import inline_management_forms
from tickets.models import Ticket, TicketComment

pytestmark = pytest.mark.django_db


def logged_in(username: str) -> Client:
    client = Client()
    client.force_login(User.objects.get(username=username))
    return client


def ticket_page(client: Client, ticket: Ticket) -> str:
    response = client.get(reverse("admin:tickets_ticket_change", args=[ticket.pk]))
    assert response.status_code == 200
    return response.content.decode()


def reply(client: Client, ticket: Ticket, text: str, *, public: bool) -> int:
    data = {
        "public_id": ticket.public_id, "customer": ticket.customer_id, "status": ticket.status,
        "issue": ticket.issue, "description": ticket.description, **inline_management_forms(replies=1),
        "comments-2-0-text": text,
    }
    if public:
        data["comments-2-0-public"] = "on"
    return client.post(reverse("admin:tickets_ticket_change", args=[ticket.pk]), data).status_code


def test_staff_read_the_customers_comment_and_answer_it_inline(demo_data):
    ticket = Ticket.objects.get(public_id="12345")
    TicketComment.objects.create(ticket=ticket, author="customer", text="<b>I paid</b> already")
    staff = logged_in("staff")
    body = ticket_page(staff, ticket)
    assert "&lt;b&gt;I paid&lt;/b&gt; already" in body and "<b>I paid</b>" not in body  # text only
    assert reply(staff, ticket, "Refund sent today.", public=True) == 302
    assert reply(staff, ticket, "Customer called twice", public=False) == 302
    comments = TicketComment.objects.filter(ticket=ticket)
    rows = list(comments.values_list("author", "public", "text", "staff_user__username"))
    assert rows == [
        ("customer", True, "<b>I paid</b> already", None),
        ("staff", True, "Refund sent today.", "staff"),
        ("staff", False, "Customer called twice", "staff"),
    ]
    body = ticket_page(staff, ticket)
    assert "Refund sent today." in body and "Customer called twice" in body


def test_operators_read_comments_but_cannot_reply(demo_data):
    ticket = Ticket.objects.get(public_id="12345")
    TicketComment.objects.create(ticket=ticket, author="customer", text="hello from the chat")
    operator = logged_in("operator")
    assert "hello from the chat" in ticket_page(operator, ticket)
    assert reply(operator, ticket, "sneaky", public=True) == 403
    assert TicketComment.objects.filter(author="staff").count() == 0


def conversation_of(customer: str, ticket_id: str | None = None):
    conversation = conversation_start(session_key="k" * 32)
    conversation_verify(conversation_id=conversation.id, customer_id=User.objects.get(username=customer).pk)
    if ticket_id:
        call = {"id": "c1", "type": "function",
                "function": {"name": "get_ticket_status", "arguments": f'{{"ticket_id": "{ticket_id}"}}'}}
        turns_append(conversation_id=conversation.id, messages=[
            {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": "c1", "content": "{}"},
        ], tool_results={"c1": (False, {"ticket_id": ticket_id, "status": "Open"})})
    return conversation


def test_the_ticket_links_conversations_that_created_commented_on_or_looked_it_up(demo_data):
    ticket = Ticket.objects.get(public_id="12345")
    created, commented = conversation_of("john_doe"), conversation_of("john_doe")
    looked_up = conversation_of("john_doe", "12345")
    unrelated = conversation_of("john_doe", "67890")
    Ticket.objects.filter(pk=ticket.pk).update(conversation_id=created.id)
    TicketComment.objects.create(ticket=ticket, author="customer", text="x", conversation_id=commented.id)
    ticket.refresh_from_db()
    staff_body = ticket_page(logged_in("staff"), ticket)
    for conversation, what in ((created, "(created)"), (commented, "(commented)"), (looked_up, "(looked up)")):
        link = reverse("admin:chat_conversation_change", args=[conversation.id])
        assert link in staff_body
        assert what in staff_body.split(link, 1)[1][:120]
    assert reverse("admin:chat_conversation_change", args=[unrelated.id]) not in staff_body
    assert reverse("operators:conversation", args=[looked_up.id]) not in staff_body  # they could not open it
    operator_body = ticket_page(logged_in("operator"), ticket)
    assert reverse("operators:conversation", args=[looked_up.id]) in operator_body


def test_support_staff_open_the_linked_conversation_with_its_turns(demo_data):
    conversation = conversation_of("john_doe", "12345")
    staff = logged_in("staff")
    response = staff.get(reverse("admin:chat_conversation_change", args=[conversation.id]))
    assert response.status_code == 200
    body = response.content.decode()
    assert "get_ticket_status" in body  # the turns inline is shown: the group may view turns
    assert User.objects.get(username="staff").has_perm("chat.view_turn")
    assert not User.objects.get(username="staff").has_perm("chat.change_turn")
    assert staff.get(reverse("operators:conversation", args=[conversation.id])).status_code == 403
