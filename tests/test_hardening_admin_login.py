"""Brute force on the staff login: django-axes locks a username from one client address after
``ADMIN_LOGIN_MAX_FAILURES`` wrong passwords; the same staff member from another address still logs in."""

from __future__ import annotations

import pytest
from django.contrib.auth import authenticate
from django.contrib.auth.models import User
from django.test import Client

pytestmark = pytest.mark.django_db

ATTACKER, STAFF_DESK = "198.51.100.99", "203.0.113.10"
LOGIN = "/admin/login/?next=/admin/"


def log_in(address: str, password: str) -> int:
    client = Client(REMOTE_ADDR=address)
    return client.post(LOGIN, {"username": "staff", "password": password}).status_code


def test_wrong_passwords_lock_that_username_from_that_address_only(demo_data, settings):
    settings.AXES_FAILURE_LIMIT = 5
    for n in range(4):
        assert log_in(ATTACKER, f"guess-{n}") == 200  # the form again, with its error
    assert log_in(ATTACKER, "guess-4") == 429, "the fifth failure locks"
    assert log_in(ATTACKER, "demo-password-1") == 429, "locked: even the right password is refused there"
    assert log_in(ATTACKER, "guess-again") == 429
    assert log_in(STAFF_DESK, "demo-password-1") == 302, "the staff member elsewhere logs in"


def test_a_login_without_a_request_is_not_counted(demo_data):
    """Management commands and the shell authenticate with no request: nothing to lock, nothing raised."""
    assert authenticate(username="staff", password="demo-password-1") == User.objects.get(username="staff")
