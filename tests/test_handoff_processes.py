"""Handing over to a person across two daphne processes: the staff member's inbox and actions on one, the
customer's socket on the other, talking through Redis (channel layer, presence leases) and one database.

It needs ``REDIS_URL``: the in-memory channel layer cannot carry a frame from one process to another, so in
the SQLite/in-memory pass it is skipped (see tests/README.md); in the PostgreSQL+Redis pass it runs.
"""

from __future__ import annotations

import json
import os
import threading
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from http.cookies import SimpleCookie
from typing import Any

import pytest
from django.conf import settings as django_settings
from django.contrib.auth.models import User
from django.core.management import call_command
from django.test import Client
from pytest_django import DjangoDbBlocker
from websockets.sync.client import ClientConnection
from websockets.sync.client import connect as ws_connect

from chat import handoff
from chat.models import Conversation, Holder, Turn
from chat.operators.access import roles_ensure
from tests.support.browser import ARTIFACTS, STAFF_PASSWORD, ChatServer, daphne_environment, free_port
from tests.support.history import last_seq_sync
from tests.support.live import frames_until, greeted_conversation, resumed, say
from tests.support.seed import SEED_MESSAGES

pytestmark = pytest.mark.skipif(
    not os.environ.get("REDIS_URL"),
    reason="two processes talk only through Redis (the in-memory layer is per process); runs in the Redis pass",
)

TIMEOUT = 20


@pytest.fixture(scope="module")
def two_daphnes(django_db_setup: None, django_db_blocker: DjangoDbBlocker) -> Iterator[tuple[ChatServer, ChatServer]]:
    ARTIFACTS.mkdir(exist_ok=True)
    servers = []
    with django_db_blocker.unblock():
        environment = daphne_environment()
    for _ in range(2):
        port = free_port()
        log = ARTIFACTS / f"handoff-daphne-{port}.log"
        log.write_bytes(b"")
        server = ChatServer(port=port, environment=environment, log=log)
        server.start()
        servers.append(server)
    yield servers[0], servers[1]
    for server in servers:
        server.stop()
        server.log.unlink(missing_ok=True)


@pytest.fixture
def servers(two_daphnes, transactional_db, settings) -> tuple[ChatServer, ChatServer]:
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    with open(os.devnull, "w") as quiet:
        call_command("seed_demo", password=STAFF_PASSWORD, stdout=quiet)
    roles_ensure()
    for username, first_name in (("staff", "Alice"), ("admin", "Bob")):
        User.objects.filter(username=username).update(first_name=first_name)
    return two_daphnes


class StaffBrowser:
    """A logged-in staff member's cookies (session made here, in the shared database) and CSRF token."""

    def __init__(self, server: ChatServer, username: str) -> None:
        client = Client()
        client.force_login(User.objects.get(username=username))
        self.server = server
        self.session = client.cookies[django_settings.SESSION_COOKIE_NAME].value
        request = urllib.request.Request(  # noqa: S310 - a loopback http:// URL this test made
            f"{server.url}/operators/inbox/", headers={"Cookie": self.cookie()}
        )
        with urllib.request.urlopen(request, timeout=TIMEOUT) as response:  # noqa: S310 - loopback
            cookies = SimpleCookie(response.headers.get("Set-Cookie", ""))
        self.csrf = cookies[django_settings.CSRF_COOKIE_NAME].value

    def cookie(self, csrf: bool = False) -> str:
        cookie = f"{django_settings.SESSION_COOKIE_NAME}={self.session}"
        return cookie + (f"; {django_settings.CSRF_COOKIE_NAME}={self.csrf}" if csrf else "")

    def post(self, path: str, **form: str) -> tuple[int, dict[str, Any]]:
        data = "&".join(f"{key}={urllib.request.quote(value)}" for key, value in form.items()).encode()
        request = urllib.request.Request(  # noqa: S310 - a loopback http:// URL this test made
            f"{self.server.url}{path}", data=data, method="POST",
            headers={"Cookie": self.cookie(csrf=True), "X-CSRFToken": self.csrf, "Accept": "application/json",
                     "Content-Type": "application/x-www-form-urlencoded"},
        )
        try:
            with urllib.request.urlopen(request, timeout=TIMEOUT) as response:  # noqa: S310 - loopback
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read() or b"{}")

    def socket(self, path: str) -> ClientConnection:
        headers = {"Origin": self.server.url, "Cookie": self.cookie()}
        return ws_connect(f"ws://127.0.0.1:{self.server.port}{path}", additional_headers=headers, open_timeout=TIMEOUT)


def customer_socket(server: ChatServer, session_key: str) -> ClientConnection:
    headers = {"Origin": server.url, "Cookie": f"{django_settings.SESSION_COOKIE_NAME}={session_key}"}
    return ws_connect(f"ws://127.0.0.1:{server.port}/ws/chat/", additional_headers=headers, open_timeout=TIMEOUT)


def next_frame(ws: ClientConnection, kind: str) -> dict[str, Any]:
    return frames_until(ws, lambda frame: frame["type"] == kind)[-1]


def model_calls_between(conversation_id: uuid.UUID, first_seq: int, last_seq: int) -> int:
    turns = Turn.objects.filter(conversation_id=conversation_id, seq__gt=first_seq, seq__lt=last_seq)
    return turns.filter(latency_ms__isnull=False).count()


def test_staff_on_one_process_and_the_customer_on_another_talk_live(servers):
    staff_server, customer_server = servers
    alice = StaffBrowser(staff_server, "staff")
    session_key, conversation_id = greeted_conversation()
    with customer_socket(customer_server, session_key) as customer, alice.socket("/ws/operators/inbox/") as inbox:
        resumed(customer)
        say(customer, SEED_MESSAGES[1])
        assert next_frame(inbox, "queue")["waiting"] == []

        customer.send(json.dumps({"type": "human"}))
        waiting = next_frame(customer, "handoff")
        assert waiting["state"] == "waiting" and waiting["position"] == 1
        assert waiting["online"] is True, "Alice's console on the other process counts as online (Redis)"
        queue = next_frame(inbox, "queue")
        assert [item["id"] for item in queue["waiting"]] == [str(conversation_id)]

        status, answer = alice.post(f"/operators/inbox/{conversation_id}/claim/")
        assert status == 200 and answer["frame"]["state"] == "human"
        joined = next_frame(customer, "handoff")
        assert joined == {"type": "handoff", "state": "human", "message": "Alice joined the conversation.",
                          "name": "Alice", "seq": last_seq_sync(conversation_id)}  # its note's row
        with alice.socket(f"/ws/operators/inbox/{conversation_id}/") as watching:
            status, _ = alice.post(f"/operators/inbox/{conversation_id}/reply/", text="Hello from Alice")
            assert status == 200
            staff_message = next_frame(customer, "message")
            assert staff_message == {
                "type": "message", "role": "staff", "text": "Hello from Alice", "name": "Alice",
                "seq": last_seq_sync(conversation_id),
            }
            assert next_frame(watching, "message")["role"] == "staff"

            customer.send(json.dumps({"type": "message", "text": "thanks Alice, it's about 12345"}))
            relayed = next_frame(watching, "message")
            assert relayed["role"] == "user" and relayed["text"] == "thanks Alice, it's about 12345"
            assert relayed["held"] is True
            assert [f["type"] for f in frames_until(customer, lambda f: f["type"] == "idle")] == ["idle"]

            status, _ = alice.post(f"/operators/inbox/{conversation_id}/return/")
            assert status == 200
            left = next_frame(customer, "handoff")
            assert left["state"] == "agent" and left["message"] == "Alice left \u2014 you're back with the assistant."

        frames = say(customer, SEED_MESSAGES[2])
        answers = [f["text"] for f in frames if f["type"] == "message" and f.get("role") == "assistant"]
        assert answers and "12345 is currently Open" in answers[-1]

    notes = list(Turn.objects.filter(conversation_id=conversation_id, kind="handoff").order_by("seq"))
    assert [note.result["state"] for note in notes] == ["waiting", "human", "agent"]
    assert model_calls_between(conversation_id, notes[0].seq, notes[-1].seq) == 0, "no model call while held"
    assert Conversation.objects.get(id=conversation_id).holder == Holder.AGENT


def claim_race(staff: dict[str, StaffBrowser], conversation_id: uuid.UUID) -> dict[str, tuple[int, dict[str, Any]]]:
    """Every staff member POSTs the claim at the same moment (a barrier); each one's answer."""
    barrier = threading.Barrier(len(staff))
    results: dict[str, tuple[int, dict[str, Any]]] = {}

    def claim(name: str, who: StaffBrowser) -> None:
        barrier.wait(timeout=TIMEOUT)
        results[name] = who.post(f"/operators/inbox/{conversation_id}/claim/")

    threads = [threading.Thread(target=claim, args=pair) for pair in staff.items()]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=TIMEOUT * 2)
    return results


def test_two_staff_on_two_processes_claim_at_once_and_exactly_one_wins(servers):
    staff_server, other_server = servers
    alice, bob = StaffBrowser(staff_server, "staff"), StaffBrowser(other_server, "admin")
    for _ in range(5):  # several rounds: the race must be won by exactly one every time
        conversation = Conversation.objects.create(session_key=uuid.uuid4().hex)
        handoff.handoff_request(conversation_id=conversation.id, actor="customer", reason="button")
        results = claim_race({"Alice": alice, "Bob": bob}, conversation.id)
        statuses = sorted(status for status, _ in results.values())
        assert statuses == [200, 409], results
        winner = next(name for name, (status, _) in results.items() if status == 200)
        loser = next(answer for status, answer in results.values() if status == 409)
        assert loser["message"] == f"{winner} already took this conversation."
        conversation.refresh_from_db()
        assert conversation.holder_staff.first_name == winner
