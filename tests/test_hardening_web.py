"""Customer, model and staff text is rendered as text on every page that shows it (OWASP A03 / LLM05:
improper output handling): payloads stored in turns, tool results and ticket issues come out escaped."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from django.conf import settings
from django.contrib.auth.models import User
from django.urls import reverse

from chat import services
from chat.models import Feedback
from chat.selectors import conversation_replay_frames
from tickets.models import Ticket

pytestmark = pytest.mark.django_db

PAYLOADS = [
    "<script>window.__xss=1</script>",
    '<img src=x onerror="window.__xss=1">',
    '"><svg onload=alert(1)>',
]


@pytest.fixture
def hostile_conversation(demo_data):
    """A verified conversation whose every stored text is a payload, and a ticket issue that is one."""
    Ticket.objects.filter(public_id="24680").update(issue=PAYLOADS[1])
    conversation = services.conversation_start(session_key="x" * 32, client_address="127.0.0.1")
    services.conversation_verify(
        conversation_id=conversation.id, customer_id=User.objects.get(username="jane_roe").id
    )
    call = {"id": "call_1", "type": "function",
            "function": {"name": "get_ticket_status", "arguments": json.dumps({"ticket_id": PAYLOADS[2]})}}
    result = {"ticket_id": "24680", "status": "In progress", "issue": PAYLOADS[1]}
    services.turns_append(conversation_id=conversation.id, messages=[{"role": "user", "content": PAYLOADS[0]}])
    services.turns_append(
        conversation_id=conversation.id,
        messages=[
            {"role": "assistant", "content": PAYLOADS[2], "tool_calls": [call]},
            {"role": "tool", "tool_call_id": "call_1", "content": json.dumps(result)},
        ],
    )
    services.turns_append(conversation_id=conversation.id, messages=[{"role": "assistant", "content": PAYLOADS[1]}])
    services.turn_record_error(conversation_id=conversation.id, code="model_error", message=PAYLOADS[0])
    Feedback.objects.create(conversation=conversation, rating="down", comment=PAYLOADS[0])
    return conversation


def assert_escaped(html: str, where: str) -> None:
    for payload in PAYLOADS:
        assert payload not in html, (where, payload)
    assert not re.search(r"<(script|img|svg)\b[^>]*(onerror|onload|__xss)", html, re.I), where


@pytest.mark.parametrize("page", ["operators list", "operators search", "operators timeline", "admin conversation"])
def test_stored_payloads_are_escaped_on_staff_pages(client, hostile_conversation, page):
    client.force_login(User.objects.get(username="admin"))
    urls = {
        "operators list": reverse("operators:conversations"),
        "operators search": reverse("operators:conversations") + "?q=script",
        "operators timeline": reverse("operators:conversation", args=[hostile_conversation.id]),
        "admin conversation": reverse("admin:chat_conversation_change", args=[hostile_conversation.id]),
    }
    response = client.get(urls[page])
    assert response.status_code == 200
    html = response.content.decode()
    assert_escaped(html, page)
    if page in ("operators timeline", "admin conversation"):
        assert "&lt;script&gt;window.__xss=1&lt;/script&gt;" in html, "shown, as text"


def test_a_payload_ticket_issue_is_escaped_in_ticket_admin(client, hostile_conversation):
    client.force_login(User.objects.get(username="staff"))
    ticket = Ticket.objects.get(public_id="24680")
    for url in (reverse("admin:tickets_ticket_changelist"), reverse("admin:tickets_ticket_change", args=[ticket.id])):
        response = client.get(url)
        assert response.status_code == 200
        assert_escaped(response.content.decode(), url)


def test_the_chat_replay_carries_payloads_as_json_text_and_the_page_never_parses_html(hostile_conversation):
    frames = conversation_replay_frames(conversation_id=hostile_conversation.id)
    texts = [frame.get("text") or frame.get("message") for frame in frames if frame["type"] in ("message", "error")]
    assert texts == [PAYLOADS[0], PAYLOADS[2], PAYLOADS[1], PAYLOADS[0]], "data, unchanged, for textContent"
    # The browser side: no script of ours turns a string into HTML (tests/test_browser.py shows it live).
    for script in Path(settings.BASE_DIR, "static").rglob("*.js"):
        code = script.read_text()
        assert not re.search(r"\.(innerHTML|outerHTML)\s*=|insertAdjacentHTML|document\.write|\beval\(", code), script
