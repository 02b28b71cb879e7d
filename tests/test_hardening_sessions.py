"""Sessions cost a row only when a conversation starts: a page view stores nothing; the page's POST
(CSRF-checked) makes the session right before the socket opens; purge_transcripts clears expired ones."""

from __future__ import annotations

import io
import re
from datetime import timedelta
from importlib import import_module

import pytest
from django.conf import settings
from django.contrib.sessions.backends.db import SessionStore
from django.contrib.sessions.models import Session
from django.core.management import call_command
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from tests.support.sockets import open_chat

pytestmark = pytest.mark.django_db(transaction=True)


def test_a_hundred_cookieless_page_views_create_no_session():
    before = Session.objects.count()
    for _ in range(100):
        response = Client().get("/")
        assert response.status_code == 200 and settings.SESSION_COOKIE_NAME not in response.cookies
    assert Session.objects.count() == before


def test_the_pages_post_makes_the_session_once_and_needs_the_csrf_token():
    browser = Client(enforce_csrf_checks=True)
    page = browser.get("/")
    token = re.search(r'data-csrf-token="([^"]+)"', page.content.decode()).group(1)
    assert browser.post("/").status_code == 403, "no token, no session"
    assert Session.objects.count() == 0
    assert browser.post("/", HTTP_X_CSRFTOKEN=token).status_code == 204
    key = browser.cookies[settings.SESSION_COOKIE_NAME].value
    assert browser.post("/", HTTP_X_CSRFTOKEN=token).status_code == 204
    assert browser.cookies[settings.SESSION_COOKIE_NAME].value == key and Session.objects.count() == 1


@pytest.mark.usefixtures("no_turn_left_running")
async def test_the_session_the_page_made_resumes_its_conversation():
    from channels.db import database_sync_to_async

    browser = Client()
    await database_sync_to_async(browser.post)("/")
    key = browser.cookies[settings.SESSION_COOKIE_NAME].value
    first, conversation = await open_chat(key)
    await first.disconnect()
    again, resumed = await open_chat(key)
    await again.disconnect()
    assert resumed == conversation


def test_purge_transcripts_clears_expired_sessions():
    expired, current = SessionStore(), SessionStore()
    expired.create()
    current.create()
    Session.objects.filter(session_key=expired.session_key).update(expire_date=timezone.now() - timedelta(days=1))
    call_command("purge_transcripts", "--older-than", "30", stdout=io.StringIO())
    assert list(Session.objects.values_list("session_key", flat=True)) == [current.session_key]


def test_a_new_session_is_one_insert_and_a_taken_key_is_drawn_again(monkeypatch):
    """The engine asks nothing before saving a new session's key; a key already taken (a collision the
    database refuses) is drawn again, never shared."""
    taken = import_module(settings.SESSION_ENGINE).SessionStore()
    taken.create()
    draws = iter([taken.session_key, "k" * 32])
    monkeypatch.setattr("supportsite.sessions.get_random_string", lambda length, chars: next(draws))
    fresh = import_module(settings.SESSION_ENGINE).SessionStore()
    with CaptureQueriesContext(connection) as queries:
        fresh.create()
    assert fresh.session_key == "k" * 32
    assert Session.objects.filter(session_key__in=[taken.session_key, fresh.session_key]).count() == 2
    assert not [q["sql"] for q in queries.captured_queries if q["sql"].startswith("SELECT")]
