"""The staff console: who may use it (pages, actions and sockets), the live waiting list, presence, the
customer's page over the socket, and what review, exports and the dashboard show of a handoff."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import timedelta

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.contrib.auth.models import Group, User
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from chat import counters, handoff
from chat.models import Conversation, HandoffEvent, Holder, Turn
from chat.operators import exports
from chat.operators.access import SUPPORT_STAFF, roles_ensure
from chat.operators.handoff_stats import handoff_summary
from chat.operators.selectors import conversations_for_review, conversations_matching
from supportsite.asgi import application
from tests.support.admin import as_user
from tests.support.history import last_seq, last_seq_sync
from tests.support.sockets import open_chat, staff_headers, until_idle

pytestmark = pytest.mark.django_db(transaction=True)
TIMEOUT = 10


@pytest.fixture
def waiting(demo_data) -> Conversation:
    """A conversation waiting for a person (the customer pressed the button)."""
    roles_ensure()
    staff = User.objects.get(username="staff")
    staff.first_name = "Alice"
    staff.save()
    conversation = Conversation.objects.create(session_key="c" * 32)
    Turn.objects.create(conversation=conversation, seq=0, role="system", content="prompt")
    handoff.handoff_request(conversation_id=conversation.id, actor="customer", reason="<script>alert(1)</script>")
    return conversation


def action(name: str, conversation: Conversation) -> str:
    return reverse(f"operators:inbox-{name}", args=[conversation.id])


JSON = {"HTTP_ACCEPT": "application/json"}


@pytest.mark.parametrize(("username", "status"), [("staff", 200), ("admin", 200), ("operator", 403), ("john_doe", 403)])
def test_the_inbox_needs_the_handoff_right(waiting, username, status):
    client = as_user(username)
    assert client.get(reverse("operators:inbox")).status_code == status
    assert client.get(reverse("operators:inbox-conversation", args=[waiting.id])).status_code == status


def test_anonymous_visitors_are_sent_to_log_in(waiting):
    response = Client().get(reverse("operators:inbox"))
    assert response.status_code == 302 and response["Location"].startswith(reverse("admin:login"))
    assert Client().post(action("claim", waiting)).status_code == 302
    waiting.refresh_from_db()
    assert waiting.holder == Holder.WAITING


@pytest.mark.parametrize("username", ["operator", "john_doe", None])
def test_nobody_without_the_right_can_claim_reply_hand_back_or_close(waiting, username):
    client = as_user(username)
    for name in ("claim", "reply", "return", "close"):
        response = client.post(action(name, waiting), {"text": "hi"}, **JSON)
        assert response.status_code in (302, 403), (name, response.status_code)
    waiting.refresh_from_db()
    assert waiting.holder == Holder.WAITING and waiting.holder_staff is None
    assert not Turn.objects.filter(conversation=waiting, kind="staff").exists()


def test_the_operators_group_does_not_hold_the_handoff_right(waiting):
    operator = User.objects.get(username="operator")
    assert not operator.has_perm("chat.handle_handoff")
    assert User.objects.get(username="staff").has_perm("chat.handle_handoff")


def test_claim_reply_return_over_http(waiting):
    staff = as_user("staff")
    page = staff.get(reverse("operators:inbox")).content.decode()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "<script>alert(1)" not in page
    answer = staff.post(action("claim", waiting), **JSON)
    assert answer.status_code == 200 and answer.json()["frame"]["state"] == "human"
    second = as_user("admin").post(action("claim", waiting), **JSON)
    assert second.status_code == 409
    assert second.json() == {"ok": False, "code": "claimed", "message": "Alice already took this conversation."}
    assert as_user("admin").post(action("reply", waiting), {"text": "me too"}, **JSON).status_code == 409
    assert staff.post(action("reply", waiting), {"text": "  "}, **JSON).json()["code"] == "bad_reply"
    assert staff.post(action("reply", waiting), {"text": "a\x00b"}, **JSON).json()["code"] == "bad_reply"
    reply = staff.post(action("reply", waiting), {"text": "Hello, <b>Alice</b> here"}, **JSON)
    assert reply.json()["frame"] == {"type": "message", "role": "staff", "text": "Hello, <b>Alice</b> here",
                                     "name": "Alice", "seq": last_seq_sync(waiting.id)}
    page = staff.get(reverse("operators:inbox-conversation", args=[waiting.id])).content.decode()
    assert "Hello, &lt;b&gt;Alice&lt;/b&gt; here" in page and "Alice (Support)" in page
    assert staff.post(action("return", waiting), **JSON).json()["frame"]["state"] == "agent"
    waiting.refresh_from_db()
    assert waiting.holder == Holder.AGENT
    events = list(HandoffEvent.objects.filter(conversation=waiting).values_list("state", "actor", "staff_name"))
    assert events == [("waiting", "customer", ""), ("human", "staff", "Alice"), ("agent", "staff", "Alice")]


def test_without_a_script_the_forms_redirect(waiting):
    staff = as_user("staff")
    response = staff.post(action("claim", waiting))
    assert response.status_code == 302 and response["Location"] == reverse(
        "operators:inbox-conversation", args=[waiting.id]
    )
    response = as_user("admin").post(action("claim", waiting), follow=True)
    assert "Alice already took this conversation." in response.content.decode()


def test_a_staff_reply_is_masked_by_the_conversations_secrets(waiting):
    waiting.secret_digests = [handoff_secret_digest("sk_live_abcdefgh12345678")]
    waiting.save()
    staff = as_user("staff")
    staff.post(action("claim", waiting), **JSON)
    frame = staff.post(action("reply", waiting), {"text": "your key sk_live_abcdefgh12345678 is revoked"}, **JSON)
    assert "sk_live_abcdefgh12345678" not in json.dumps(frame.json())
    assert not Turn.objects.filter(content__contains="sk_live_abcdefgh12345678").exists()


def handoff_secret_digest(value: str) -> str:
    from chat.services import secret_digest

    return secret_digest(value)


# THE SOCKETS


def inbox_socket(headers, path: str = "/ws/operators/inbox/") -> WebsocketCommunicator:
    return WebsocketCommunicator(application, path, headers=headers)


@pytest.mark.parametrize("username", [None, "operator", "john_doe"])
async def test_the_inbox_sockets_refuse_everyone_else(waiting, username):
    for path in ("/ws/operators/inbox/", f"/ws/operators/inbox/{waiting.id}/"):
        communicator = inbox_socket(await staff_headers(username), path)
        connected, _ = await communicator.connect(timeout=TIMEOUT)
        assert not connected, (username, path)
    assert await database_sync_to_async(handoff.staff_online)() == 0


async def test_the_waiting_list_is_live_and_presence_follows_the_socket(waiting):
    communicator = inbox_socket(await staff_headers("staff"))
    connected, _ = await communicator.connect(timeout=TIMEOUT)
    assert connected
    first = await communicator.receive_json_from(timeout=TIMEOUT)
    assert first["type"] == "queue" and [item["id"] for item in first["waiting"]] == [str(waiting.id)]
    assert first["waiting"][0]["reason"] == "<script>alert(1)</script>"  # text for textContent, as stored
    assert await database_sync_to_async(handoff.staff_online)() == 1

    @database_sync_to_async
    def another_customer_asks() -> uuid.UUID:
        other = Conversation.objects.create(session_key="d" * 32)
        frame = handoff.handoff_request(conversation_id=other.id, actor="customer", reason="button")
        assert frame["online"] is True and frame["position"] == 2
        assert "Someone will be with you shortly" in frame["message"]
        return other.id

    other = await another_customer_asks()
    update = await communicator.receive_json_from(timeout=TIMEOUT)
    assert [item["id"] for item in update["waiting"]] == [str(waiting.id), str(other)], "oldest first"
    await database_sync_to_async(handoff.handoff_claim)(
        conversation_id=waiting.id, staff=await User.objects.aget(username="staff")
    )
    update = await communicator.receive_json_from(timeout=TIMEOUT)
    assert [item["id"] for item in update["waiting"]] == [str(other)]
    assert [item["id"] for item in update["mine"]] == [str(waiting.id)]
    await communicator.disconnect()
    assert await database_sync_to_async(handoff.staff_online)() == 0, "presence comes down with the socket"


async def test_presence_of_a_crashed_socket_expires(waiting, monkeypatch):
    lease = await database_sync_to_async(handoff.console_open)()
    counters.keeper.remove(lease)  # as if its process died: nobody renews it
    assert await database_sync_to_async(handoff.staff_online)() == 1
    later = counters.now() + counters.LEASE_SECONDS + 1
    monkeypatch.setattr(counters, "now", lambda: later)
    assert await database_sync_to_async(handoff.staff_online)() == 0
    await database_sync_to_async(handoff.console_close)(lease)  # the lease table outlives the test's flush


async def test_a_revoked_staff_member_is_disconnected_from_both_inbox_sockets(waiting):
    headers = await staff_headers("staff")
    inbox = inbox_socket(headers)
    assert (await inbox.connect(timeout=TIMEOUT))[0]
    await inbox.receive_json_from(timeout=TIMEOUT)
    watching = inbox_socket(headers, f"/ws/operators/inbox/{waiting.id}/")
    assert (await watching.connect(timeout=TIMEOUT))[0]
    for _ in range(100):  # the watching socket counts itself right after it is accepted
        if await database_sync_to_async(handoff.staff_online)() == 2:
            break
        await asyncio.sleep(0.01)
    assert await database_sync_to_async(handoff.staff_online)() == 2

    @database_sync_to_async
    def revoke() -> None:
        User.objects.get(username="staff").groups.remove(Group.objects.get(name=SUPPORT_STAFF))

    await revoke()
    assert await inbox.receive_output(timeout=TIMEOUT) == {"type": "websocket.close", "code": 4403}
    assert await watching.receive_output(timeout=TIMEOUT) == {"type": "websocket.close", "code": 4403}
    await database_sync_to_async(handoff.handoff_request)(
        conversation_id=(await Conversation.objects.acreate(session_key="e" * 32)).id, actor="customer", reason="x"
    )
    assert await inbox.receive_nothing(timeout=0.3)
    await inbox.disconnect()
    await watching.disconnect()
    assert await database_sync_to_async(handoff.staff_online)() == 0


def test_revoked_staff_get_nothing_over_http(waiting):
    client = as_user("staff")
    User.objects.get(username="staff").groups.clear()
    assert client.get(reverse("operators:inbox")).status_code == 403
    assert client.post(action("claim", waiting), **JSON).status_code == 403
    waiting.refresh_from_db()
    assert waiting.holder == Holder.WAITING


async def test_the_customer_page_socket_asks_for_a_person_and_hears_the_staff(waiting, no_turn_left_running):
    from tests.support.sockets import new_session_key

    session_key = await new_session_key()
    customer, conversation_id = await open_chat(session_key)
    await until_idle(customer)  # the greeting
    await customer.send_json_to({"type": "human"})
    frame = await customer.receive_json_from(timeout=TIMEOUT)
    assert frame["type"] == "handoff" and frame["state"] == "waiting" and frame["position"] == 2

    staff = await User.objects.aget(username="staff")
    await database_sync_to_async(handoff.handoff_claim)(conversation_id=conversation_id, staff=staff)
    assert (await customer.receive_json_from(timeout=TIMEOUT))["state"] == "human"
    await database_sync_to_async(handoff.staff_reply)(conversation_id=conversation_id, staff=staff, text="Hi!")
    assert await customer.receive_json_from(timeout=TIMEOUT) == {
        "type": "message", "role": "staff", "text": "Hi!", "name": "Alice", "seq": await last_seq(conversation_id)
    }
    await customer.send_json_to({"type": "message", "text": "hello Alice"})
    frames = await until_idle(customer)
    assert [f["type"] for f in frames] == ["idle"], "no typing, no model: the sender shows its own message"
    await customer.disconnect()

    # A reload replays the whole story, and says who holds the conversation now.
    again, same = await open_chat(session_key)
    assert same == conversation_id
    replay = await until_idle(again)
    shown = [(f["type"], f.get("state") or f.get("role")) for f in replay]
    assert shown[-6:] == [
        ("handoff", "waiting"), ("handoff", "human"), ("message", "staff"), ("message", "user"),
        ("handoff", "human"),  # where it stands now, after the stored story
        ("idle", None),
    ]
    assert all(f.get("replay") for f in replay[:-1])
    await again.disconnect()


# REVIEW, EXPORTS, DASHBOARD


def test_review_shows_the_outcome_the_filter_and_the_timeline(waiting):
    other = Conversation.objects.create(session_key="f" * 32)
    staff = User.objects.get(username="staff")
    handoff.handoff_claim(conversation_id=waiting.id, staff=staff)
    handoff.staff_reply(conversation_id=waiting.id, staff=staff, text="Hello from a person")
    outcomes = dict(conversations_for_review().values_list("id", "outcome"))
    assert outcomes[waiting.id] == "handed off" and outcomes[other.id] != "handed off"
    operator = as_user("operator")
    listed = operator.get(reverse("operators:conversations"), {"handoff": "yes"})
    assert [row.conversation.id for row in listed.context["rows"]] == [waiting.id]
    listed = operator.get(reverse("operators:conversations"), {"handoff": "no"})
    assert waiting.id not in [row.conversation.id for row in listed.context["rows"]]
    page = operator.get(reverse("operators:conversation", args=[waiting.id])).content.decode()
    assert "Alice (Support)" in page and "Hello from a person" in page
    assert "Alice joined the conversation." in page and "entry--handoff" in page


def test_exports_carry_the_staff_replies_marked(waiting):
    staff = User.objects.get(username="staff")
    handoff.handoff_claim(conversation_id=waiting.id, staff=staff)
    handoff.staff_reply(conversation_id=waiting.id, staff=staff, text="Hello from a person")
    (line,) = [json.loads(x) for x in exports.jsonl_lines(conversations=conversations_matching())
               if json.loads(x)["id"] == str(waiting.id)]
    staff_messages = [m for m in line["messages"] if m.get("name") == "support_staff"]
    assert staff_messages == [{"role": "assistant", "name": "support_staff", "weight": 0,
                               "content": "[Alice from the support team wrote to the customer:] Hello from a person"}]
    assert all(m["role"] in {"system", "user", "assistant", "tool"} for m in line["messages"])
    assert [m["name"] for m in line["messages"] if m.get("name")] == ["handoff_note", "handoff_note", "support_staff"]


def test_the_dashboard_shows_rate_median_wait_and_waits_over_target(waiting, settings):
    settings.HANDOFF_WAIT_TARGET_SECONDS = 60
    Conversation.objects.create(session_key="g" * 32)
    slow = Conversation.objects.create(session_key="h" * 32)
    handoff.handoff_request(conversation_id=slow.id, actor="customer", reason="x")
    staff = User.objects.get(username="staff")
    handoff.handoff_claim(conversation_id=waiting.id, staff=staff)
    handoff.staff_reply(conversation_id=waiting.id, staff=staff, text="quick")
    HandoffEvent.objects.filter(conversation=waiting, state="waiting").update(
        created_at=timezone.now() - timedelta(seconds=30)
    )
    HandoffEvent.objects.filter(conversation=slow).update(created_at=timezone.now() - timedelta(seconds=300))
    today = timezone.localdate()
    summary = handoff_summary(since=today, until=today)
    assert (summary.conversations, summary.handed_off) == (3, 2)
    assert summary.rate_percent == "67%"
    assert 29 <= summary.median_wait_seconds <= 31
    assert summary.over_target == 1, "the unanswered one waits for 5 minutes"
    page = as_user("operator").get(reverse("operators:dashboard")).content.decode()
    assert "Handed off to a person" in page and "67%" in page and "Waited longer than 60 s" in page
