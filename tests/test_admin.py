"""Staff use of admin: tickets, customers and their API keys, conversations read-only."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import User
from django.urls import reverse

from chat.services import conversation_start, turns_append
from tests.support.admin import inline_management_forms
from tickets.models import ApiKey, Customer, Ticket
from tickets.services import customer_authenticate

pytestmark = pytest.mark.django_db


@pytest.fixture
def admin_client_logged_in(client, demo_data):
    client.force_login(User.objects.get(username="admin"))
    return client


def test_ticket_list_shows_status_owner_and_search(admin_client_logged_in):
    response = admin_client_logged_in.get(reverse("admin:tickets_ticket_changelist"), {"q": "Billing"})
    body = response.content.decode()
    assert response.status_code == 200
    assert "12345" in body and "john_doe" in body and "Open" in body
    assert "24680" not in body  # jane's ticket does not match the search


def test_ticket_filter_by_status(admin_client_logged_in):
    response = admin_client_logged_in.get(reverse("admin:tickets_ticket_changelist"), {"status__exact": "Closed"})
    body = response.content.decode()
    assert "67890" in body and "12345" not in body


def test_staff_changes_ticket_status(admin_client_logged_in):
    ticket = Ticket.objects.get(public_id="12345")
    url = reverse("admin:tickets_ticket_change", args=[ticket.pk])
    response = admin_client_logged_in.post(
        url,
        {
            "public_id": "12345",
            "customer": ticket.customer_id,
            "status": "Resolved",
            "issue": "Billing Query",
            "description": "",
            **inline_management_forms(),
        },
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    ticket.refresh_from_db()
    assert ticket.status == "Resolved"


def test_customers_list_excludes_staff_and_counts_keys(admin_client_logged_in):
    response = admin_client_logged_in.get(reverse("admin:tickets_customer_changelist"))
    listed = {customer.username for customer in response.context["cl"].result_list}
    assert listed == {"john_doe", "jane_roe"}
    assert {c._active_keys for c in response.context["cl"].result_list} == {1}


def test_issue_api_key_shows_it_once_and_revokes_the_old_one(admin_client_logged_in):
    john = Customer.objects.get(username="john_doe")
    response = admin_client_logged_in.post(
        reverse("admin:tickets_customer_changelist"),
        {"action": "issue_api_key", "_selected_action": [john.pk]},
    )
    assert response.status_code == 200
    assert "no-store" in response["Cache-Control"]
    raw_key = response.context_data["raw_key"]
    assert raw_key.startswith("sk_") and raw_key in response.content.decode()
    assert not ApiKey.objects.filter(digest__contains=raw_key).exists()
    assert customer_authenticate(username="john_doe", raw_key=raw_key).pk == john.pk
    assert customer_authenticate(username="john_doe", raw_key="key") is None
    change_page = admin_client_logged_in.get(reverse("admin:tickets_customer_change", args=[john.pk]))
    assert raw_key not in change_page.content.decode()
    assert raw_key[:9] in change_page.content.decode()  # the visible prefix tells keys apart


def test_customer_added_in_admin_is_never_staff(admin_client_logged_in):
    response = admin_client_logged_in.post(
        reverse("admin:tickets_customer_add"),
        {"username": "new_customer", "first_name": "", "last_name": "", "email": "", "is_active": "on",
         "api_keys-TOTAL_FORMS": "0", "api_keys-INITIAL_FORMS": "0",
         "tickets-TOTAL_FORMS": "0", "tickets-INITIAL_FORMS": "0"},
    )
    assert response.status_code == 302, response.content.decode()[:3000]
    user = User.objects.get(username="new_customer")
    assert not user.is_staff and not user.has_usable_password()


def test_conversation_is_read_only_with_turns_in_order(admin_client_logged_in):
    conversation = conversation_start(session_key="s" * 32)
    turns_append(conversation_id=conversation.id, messages=[{"role": "user", "content": "<b>hi</b> first"}])
    turns_append(conversation_id=conversation.id, messages=[{"role": "assistant", "content": "second"}])
    url = reverse("admin:chat_conversation_change", args=[conversation.pk])
    body = admin_client_logged_in.get(url).content.decode()
    assert body.index("first") < body.index("second")
    assert "<b>hi</b>" not in body and "&lt;b&gt;hi&lt;/b&gt;" in body
    assert admin_client_logged_in.get(reverse("admin:chat_conversation_add")).status_code == 403
