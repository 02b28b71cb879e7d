"""Who sees what: the two staff roles, the review pages, the admin, the live operator socket."""

from __future__ import annotations

import uuid

import pytest
from channels.layers import get_channel_layer
from django.contrib.auth.models import Group, User
from django.test import Client
from django.urls import reverse

from chat.consumers import conversation_group
from chat.operators.access import OPERATORS, ROLE_PERMISSIONS, SUPPORT_STAFF, roles_ensure
from chat.services import conversation_start
from tests.support.admin import as_user
from tests.support.sockets import operator_socket, staff_headers, watched_conversation
from tickets.models import Customer, Ticket

PAGES = ["operators:conversations", "operators:dashboard", "operators:export-jsonl", "operators:export-csv"]


def permissions_of(group_name: str) -> set[str]:
    group = Group.objects.get(name=group_name)
    return {f"{p.content_type.app_label}.{p.codename}" for p in group.permissions.select_related("content_type")}


@pytest.mark.django_db
def test_the_migration_made_both_groups_with_exactly_their_permissions():
    assert permissions_of(SUPPORT_STAFF) == ROLE_PERMISSIONS[SUPPORT_STAFF]
    assert permissions_of(OPERATORS) == ROLE_PERMISSIONS[OPERATORS]
    assert "chat.review_conversation" not in permissions_of(SUPPORT_STAFF)
    assert not any(p.split(".")[1].startswith(("add_", "change_", "delete_")) for p in permissions_of(OPERATORS))


@pytest.mark.django_db
def test_roles_ensure_repairs_edited_groups():
    Group.objects.get(name=OPERATORS).permissions.clear()
    Group.objects.filter(name=SUPPORT_STAFF).delete()
    roles_ensure()
    assert permissions_of(OPERATORS) == ROLE_PERMISSIONS[OPERATORS]
    assert permissions_of(SUPPORT_STAFF) == ROLE_PERMISSIONS[SUPPORT_STAFF]


@pytest.fixture
def people(demo_data):
    roles_ensure()
    customer = User.objects.get(username="john_doe")
    customer.set_password("customer-password-1")
    customer.save()
    return conversation_start(session_key="r" * 32)


@pytest.mark.django_db
@pytest.mark.parametrize("page", PAGES)
@pytest.mark.parametrize(("username", "status"), [("admin", 200), ("operator", 200), ("staff", 403), ("john_doe", 403)])
def test_review_pages_need_the_review_permission(people, page, username, status):
    assert as_user(username).get(reverse(page)).status_code == status


@pytest.mark.django_db
@pytest.mark.parametrize("username", ["admin", "operator", "staff", "john_doe", None])
def test_conversation_page_by_role(people, username):
    response = as_user(username).get(reverse("operators:conversation", args=[people.id]))
    expected = {"admin": 200, "operator": 200, None: 302}.get(username, 403)
    assert response.status_code == expected


@pytest.mark.django_db
@pytest.mark.parametrize("page", PAGES)
def test_anonymous_visitors_are_sent_to_log_in(people, page):
    response = as_user(None).get(reverse(page))
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("admin:login") + "?next=")


@pytest.mark.django_db
def test_a_customer_cannot_log_in_to_staff_pages(people):
    client = Client()
    response = client.post(reverse("admin:login"), {"username": "john_doe", "password": "customer-password-1"})
    assert response.status_code == 200  # the login form again: customers are not staff
    assert client.get(reverse("operators:conversations")).status_code == 302


def ticket_change(ticket: Ticket, **changes) -> dict:
    data = {"public_id": ticket.public_id, "customer": ticket.customer_id, "status": ticket.status,
            "issue": ticket.issue, "description": ticket.description}
    # The page's two comment inlines (the comments, read-only, and the reply form): their management forms.
    for prefix in ("comments", "comments-2"):
        data.update({f"{prefix}-TOTAL_FORMS": "0", f"{prefix}-INITIAL_FORMS": "0"})
    return {**data, **changes}


@pytest.mark.django_db
def test_operator_views_tickets_and_conversations_but_changes_nothing(people):
    operator = as_user("operator")
    ticket = Ticket.objects.get(public_id="12345")
    url = reverse("admin:tickets_ticket_change", args=[ticket.pk])
    assert operator.get(url).status_code == 200
    assert operator.post(url, ticket_change(ticket, status="Closed")).status_code == 403
    ticket.refresh_from_db()
    assert ticket.status == "Open"
    assert operator.get(reverse("admin:chat_conversation_change", args=[people.id])).status_code == 200
    assert operator.get(reverse("admin:tickets_customer_changelist")).status_code == 403
    assert operator.get(reverse("admin:tickets_ticket_add")).status_code == 403


@pytest.mark.django_db
def test_support_staff_change_tickets_and_customers(people):
    staff = as_user("staff")
    ticket = Ticket.objects.get(public_id="12345")
    url = reverse("admin:tickets_ticket_change", args=[ticket.pk])
    response = staff.post(url, ticket_change(ticket, status="Resolved"))
    assert response.status_code == 302
    ticket.refresh_from_db()
    assert ticket.status == "Resolved"
    customer = Customer.objects.get(username="jane_roe")
    response = staff.post(
        reverse("admin:tickets_customer_change", args=[customer.pk]),
        {"username": "jane_roe", "first_name": "Jane", "last_name": "Roe", "email": "jane@example.com",
         "is_active": "on", **_empty_inlines(customer)},
    )
    assert response.status_code == 302, response.content.decode()[:3000]
    customer.refresh_from_db()
    assert customer.first_name == "Jane"
    assert staff.get(reverse("admin:chat_conversation_change", args=[people.id])).status_code == 200


def _empty_inlines(customer: Customer) -> dict[str, str]:
    """The management forms of the customer page's inlines, with the existing rows unchanged."""
    data: dict[str, str] = {}
    for prefix, rows in (("api_keys", customer.api_keys.all()), ("tickets", customer.tickets.all())):
        data.update({f"{prefix}-TOTAL_FORMS": str(len(rows)), f"{prefix}-INITIAL_FORMS": str(len(rows)),
                     f"{prefix}-MIN_NUM_FORMS": "0", f"{prefix}-MAX_NUM_FORMS": "1000"})
        for index, row in enumerate(rows):
            data[f"{prefix}-{index}-id"] = str(row.pk)
            data[f"{prefix}-{index}-customer"] = str(customer.pk)
            if prefix == "tickets":
                data.update({f"{prefix}-{index}-public_id": row.public_id, f"{prefix}-{index}-status": row.status,
                             f"{prefix}-{index}-issue": row.issue})
    return data


# THE LIVE OPERATOR SOCKET


@pytest.mark.django_db(transaction=True)
async def test_operator_socket_forwards_the_conversations_frames():
    conversation_id = await watched_conversation()
    communicator = operator_socket(conversation_id, await staff_headers("operator"))
    connected, _ = await communicator.connect(timeout=10)
    assert connected
    frame = {"type": "message", "role": "assistant", "text": "<b>Hello</b>"}
    await get_channel_layer().group_send(conversation_group(conversation_id), {"type": "chat.frame", "frame": frame})
    assert await communicator.receive_json_from(timeout=10) == frame
    await communicator.send_json_to({"type": "message", "text": "operators cannot speak"})
    assert await communicator.receive_nothing(timeout=0.2)
    await communicator.disconnect()


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("username", [None, "staff", "john_doe"])
async def test_operator_socket_refuses_everyone_else(username):
    conversation_id = await watched_conversation()
    communicator = operator_socket(conversation_id, await staff_headers(username))
    connected, _ = await communicator.connect(timeout=10)
    assert not connected


@pytest.mark.django_db(transaction=True)
async def test_operator_socket_refuses_an_unknown_conversation():
    await watched_conversation()
    communicator = operator_socket(uuid.uuid4(), await staff_headers("operator"))
    connected, _ = await communicator.connect(timeout=10)
    assert not connected
