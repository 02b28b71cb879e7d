"""The customer's rating: only for the session's own conversation, validated, one per conversation."""

from __future__ import annotations

import json
import re
import uuid

import pytest
from django.contrib.auth.models import User
from django.test import Client
from django.urls import reverse

from chat.feedback import MAX_COMMENT_CHARS
from chat.models import Feedback
from chat.operators.access import roles_ensure
from chat.services import conversation_start

pytestmark = pytest.mark.django_db


def rate(client: Client, conversation, rating="up", comment="", **extra):
    body = {"conversation": str(conversation), "rating": rating, "comment": comment, **extra}
    return client.post(reverse("feedback"), json.dumps(body), content_type="application/json")


@pytest.fixture
def customer() -> Client:
    client = Client()
    client.get(reverse("chat"))  # the chat page makes the session the conversation belongs to
    return client


@pytest.fixture
def own(customer):
    return conversation_start(session_key=customer.session.session_key).id


def test_rating_the_own_conversation_and_changing_it(customer, own):
    response = rate(customer, own, "up")
    assert response.status_code == 200 and response.json() == {"ok": True, "rating": "up", "comment": ""}
    response = rate(customer, own, "down", "  It didn't find my ticket.  ")
    assert response.status_code == 200
    feedback = Feedback.objects.get(conversation_id=own)
    assert (feedback.rating, feedback.comment) == ("down", "It didn't find my ticket.")
    assert Feedback.objects.count() == 1


def test_another_sessions_conversation_is_not_found(customer, own):
    stranger = Client()
    stranger.get(reverse("chat"))
    assert rate(stranger, own).status_code == 404
    assert rate(customer, uuid.uuid4()).status_code == 404
    assert rate(Client(), own).status_code == 404  # no session at all
    assert not Feedback.objects.exists()


OWN = "{own}"  # replaced by the session's own conversation id


@pytest.mark.parametrize(
    "body",
    [
        "not json",
        "[]",
        json.dumps({"rating": "up"}),
        json.dumps({"conversation": "not-a-uuid", "rating": "up"}),
        json.dumps({"conversation": OWN, "rating": "meh"}),
        json.dumps({"conversation": OWN, "rating": "up", "comment": "x" * (MAX_COMMENT_CHARS + 1)}),
        json.dumps({"conversation": OWN, "rating": "up", "comment": 42}),
        json.dumps({"conversation": OWN, "rating": "up", "stars": 5}),
        json.dumps({"conversation": OWN, "rating": "up", "comment": "bad\x00byte"}),
    ],
)
def test_bad_input_is_400(customer, own, body):
    response = customer.post(reverse("feedback"), body.replace(OWN, str(own)), content_type="application/json")
    assert response.status_code == 400
    assert response.json()["ok"] is False
    assert not Feedback.objects.exists()
    assert rate(customer, own).status_code == 200  # the same session, rating properly, is fine


def test_only_post(customer):
    assert customer.get(reverse("feedback")).status_code == 405


def test_csrf_token_from_the_chat_page_is_required():
    browser = Client(enforce_csrf_checks=True)
    page = browser.get(reverse("chat")).content.decode()
    conversation = conversation_start(session_key=browser.session.session_key)
    body = json.dumps({"conversation": str(conversation.id), "rating": "up"})
    assert browser.post(reverse("feedback"), body, content_type="application/json").status_code == 403
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page).group(1)
    response = browser.post(reverse("feedback"), body, content_type="application/json", headers={"X-CSRFToken": token})
    assert response.status_code == 200


def test_the_chat_page_has_the_widget(customer):
    page = customer.get(reverse("chat")).content.decode()
    assert 'id="feedback"' in page and 'aria-pressed="false"' in page
    assert "chat/feedback.js" in page
    assert "<script>" not in page.split('id="feedback"')[1].split("</section>")[0]


def test_the_rating_and_comment_show_in_review(customer, own, demo_data):
    rate(customer, own, "down", "<b>Too slow</b>")
    roles_ensure()
    operator = Client()
    operator.force_login(User.objects.get(username="operator"))
    body = operator.get(reverse("operators:conversation", args=[own])).content.decode()
    assert "thumbs down" in body and "&lt;b&gt;Too slow&lt;/b&gt;" in body
    listed = operator.get(reverse("operators:conversations"), {"rating": "down"})
    assert [row.conversation.id for row in listed.context["rows"]] == [own]
