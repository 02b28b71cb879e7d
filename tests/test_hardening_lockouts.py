"""Lockouts that protect without being a lever: an attacker's failed API keys for a username lock that
username from the attacker's address only; support staff see and clear lockouts in admin."""

from __future__ import annotations

import json
import uuid

import pytest
from django.contrib.auth.models import User
from django.test import Client
from django.urls import reverse

from chat.agent import ToolCall
from chat.toolbox import ToolContext, get_toolbox
from tickets.models import VerificationAttempt
from tickets.tools import LOCKED

pytestmark = pytest.mark.django_db(transaction=True)

ATTACKER, CUSTOMER = "198.51.100.66", "203.0.113.77"


def verify(username: str, api_key: str, *, address: str, conversation: uuid.UUID | None = None) -> dict:
    context = ToolContext(conversation or uuid.uuid4(), None, address)
    call = ToolCall("call_1", "verify_user", json.dumps({"username": username, "api_key": api_key}))
    return json.loads(get_toolbox().run(call, context).content)


def lock_out_from(address: str, username: str = "john_doe") -> None:
    for n in range(5):
        assert verify(username, f"wrong-{n}", address=address) == {"success": False}


def test_an_attackers_failures_lock_the_username_from_the_attackers_address_only(demo_data, settings):
    settings.VERIFY_MAX_FAILURES = 5
    lock_out_from(ATTACKER)
    assert verify("john_doe", "key", address=ATTACKER) == {"success": False, "error": LOCKED}
    assert verify("john_doe", "key", address=CUSTOMER) == {"success": True}, "the customer elsewhere is served"


def test_failures_in_one_conversation_lock_it_whatever_the_usernames(demo_data, settings):
    settings.VERIFY_MAX_FAILURES = 5
    conversation = uuid.uuid4()
    for n in range(5):
        verify(f"someone_{n}", "wrong", address=f"192.0.2.{n}", conversation=conversation)
    assert verify("john_doe", "key", address=CUSTOMER, conversation=conversation) == {"success": False, "error": LOCKED}


def test_support_staff_see_and_clear_a_lockout_in_admin(demo_data, settings):
    settings.VERIFY_MAX_FAILURES = 5
    lock_out_from(ATTACKER)
    lock_out_from(CUSTOMER, "jane_roe")
    staff = Client()
    staff.force_login(User.objects.get(username="staff"))
    changelist = reverse("admin:tickets_verificationattempt_changelist")
    page = staff.get(changelist)
    assert page.status_code == 200 and "Clear lockout" in page.content.decode()
    selected = VerificationAttempt.objects.filter(username="john_doe").values_list("pk", flat=True)[:1]
    response = staff.post(changelist, {"action": "clear_lockout", "_selected_action": list(selected)}, follow=True)
    assert response.status_code == 200 and "Cleared 5 failed attempt(s)" in response.content.decode()
    assert verify("john_doe", "key", address=ATTACKER) == {"success": True}
    assert verify("jane_roe", "jane-key", address=CUSTOMER) == {"success": False, "error": LOCKED}, "others stay"


def test_operators_cannot_clear_lockouts(demo_data):
    lock_out_from(ATTACKER)
    operator = Client()
    operator.force_login(User.objects.get(username="operator"))
    changelist = reverse("admin:tickets_verificationattempt_changelist")
    selected = list(VerificationAttempt.objects.values_list("pk", flat=True)[:1])
    operator.post(changelist, {"action": "clear_lockout", "_selected_action": selected})
    assert VerificationAttempt.objects.count() == 5
