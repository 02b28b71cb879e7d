"""Handing over to a person: the holder, the runtime that stops calling the model, the history the model
reads after the hand-back, the replay, the automatic handoff after failures, the atomic claim."""

from __future__ import annotations

import threading
import uuid
from typing import Any

import pytest
from channels.db import database_sync_to_async
from django.contrib.auth.models import User
from django.db import close_old_connections, connection

from chat import handoff, selectors
from chat.agent import FALLBACK_REPLY
from chat.models import Conversation, HandoffEvent, Holder, Turn
from chat.operators.access import roles_ensure
from tests.support.driver import Chat
from tests.support.history import assert_valid_api_history, last_seq, stored_messages
from tests.support.models import MODEL_ERROR, ScriptedModel
from tests.support.seed import SEED_MESSAGES

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def builtin(chat_model, monkeypatch, demo_data) -> ScriptedModel:
    """The builtin model, counting its calls."""
    roles_ensure()
    model = chat_model
    return model


def staff_user(username: str = "staff", first_name: str = "Alice") -> User:
    user = User.objects.get(username=username)
    user.first_name = first_name
    user.save(update_fields=["first_name"])
    return user


def of_type(frames: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [frame for frame in frames if frame["type"] == kind]


def assistant_texts(frames: list[dict[str, Any]]) -> list[str]:
    return [f["text"] for f in frames if f["type"] == "message" and f.get("role") == "assistant"]


async def holder_of(conversation_id: uuid.UUID) -> str:
    return (await Conversation.objects.aget(id=conversation_id)).holder


async def test_asking_for_a_person_queues_the_conversation_and_the_model_stays_silent(builtin):
    chat = await Chat.start(greet=True)
    await chat.respond(SEED_MESSAGES[1])
    calls = builtin.calls

    frames = await chat.respond("I want to talk to a human, please")
    assert builtin.calls == calls + 1, "one model call: the tool call; none after it"
    tools = of_type(frames, "tool")
    assert [t["name"] for t in tools] == ["request_human", "request_human"]
    assert tools[-1]["status"] == "done" and tools[-1]["result"]["queued"] is True
    (waiting,) = of_type(frames, "handoff")
    assert waiting["state"] == "waiting" and waiting["position"] == 1
    assert waiting["online"] is False and "No one from our support team is online" in waiting["message"]
    assert assistant_texts(frames) == [], "the server tells the customer; the model is not called to say it"
    assert await holder_of(chat.id) == Holder.WAITING

    for text in ("hello? anyone there", "my ticket is 12345"):
        frames = await chat.respond(text)
        assert builtin.calls == calls + 1, "no model call while waiting for a person"
        assert [f["type"] for f in frames] == ["message", "idle"]
        seq = await last_seq(chat.id)
        assert frames[0] == {"type": "message", "role": "user", "text": text, "held": True, "seq": seq}
    stored = await stored_messages(chat.id)
    assert [m["content"] for m in stored[-2:]] == ["hello? anyone there", "my ticket is 12345"]
    events = await database_sync_to_async(lambda: list(HandoffEvent.objects.filter(conversation_id=chat.id)))()
    assert [(e.state, e.actor, e.reason) for e in events] == [
        ("waiting", "assistant", "The customer asked to talk to a person.")
    ]


async def test_a_person_answers_hands_back_and_the_model_reads_what_happened(builtin):
    chat = await Chat.start(greet=True)
    await chat.respond(SEED_MESSAGES[1])
    await chat.respond("can I speak to a representative?")
    staff = await database_sync_to_async(staff_user)()
    calls = builtin.calls

    joined = await database_sync_to_async(handoff.handoff_claim)(conversation_id=chat.id, staff=staff)
    assert joined == {
        "type": "handoff", "state": "human", "message": "Alice joined the conversation.", "name": "Alice",
        "seq": await last_seq(chat.id),  # its note's row
    }
    reply = await database_sync_to_async(handoff.staff_reply)(
        conversation_id=chat.id, staff=staff, text="Hi, I'm Alice. How can I help?"
    )
    assert reply == {
        "type": "message", "role": "staff", "text": "Hi, I'm Alice. How can I help?", "name": "Alice",
        "seq": await last_seq(chat.id),
    }
    frames = await chat.respond("I was charged twice")
    assert builtin.calls == calls, "no model call while a person holds the conversation"
    assert frames[0]["held"] is True
    left = await database_sync_to_async(handoff.handoff_release)(conversation_id=chat.id, staff=staff)
    assert left["state"] == "agent" and left["message"] == "Alice left \u2014 you're back with the assistant."
    assert await holder_of(chat.id) == Holder.AGENT

    frames = await chat.respond(SEED_MESSAGES[2])
    assert builtin.calls == calls + 2, "the assistant answers again: a tool call, then its words"
    assert "Open" in assistant_texts(frames)[-1]
    history = await database_sync_to_async(selectors.conversation_history)(conversation_id=chat.id)
    assert_valid_api_history(history)
    assert {m["role"] for m in history} <= {"system", "user", "assistant", "tool"}
    contents = [m.get("content") or "" for m in history]
    joined_at = next(i for i, c in enumerate(contents) if "Alice from the support team took the conversation over" in c)
    wrote_at = contents.index("[Alice from the support team wrote to the customer:] Hi, I'm Alice. How can I help?")
    left_at = next(i for i, c in enumerate(contents) if "Alice from the support team left the conversation" in c)
    assert joined_at < wrote_at < contents.index("I was charged twice") < left_at


async def test_the_model_receives_the_notes_and_staff_replies_after_the_hand_back(chat_model, monkeypatch, demo_data):
    model = chat_model.script()
    chat = await Chat.start(greet=True)
    await database_sync_to_async(handoff.handoff_request)(conversation_id=chat.id, actor="customer", reason="button")
    staff = await database_sync_to_async(staff_user)()
    await database_sync_to_async(handoff.handoff_claim)(conversation_id=chat.id, staff=staff)
    await database_sync_to_async(handoff.staff_reply)(conversation_id=chat.id, staff=staff, text="Refund sent.")
    await database_sync_to_async(handoff.handoff_release)(conversation_id=chat.id, staff=staff)
    requests_before = len(model.requests)
    await chat.respond("thanks, did it work?")
    assert len(model.requests) == requests_before + 1
    sent = model.requests[-1]
    assert_valid_api_history(sent)
    assert [m["role"] for m in sent[-5:]] == ["assistant", "assistant", "assistant", "assistant", "user"]
    assert "waiting for a person" in sent[-5]["content"]
    assert "Alice from the support team took the conversation over" in sent[-4]["content"]
    assert sent[-3]["content"] == "[Alice from the support team wrote to the customer:] Refund sent."
    assert "left the conversation and handed it back" in sent[-2]["content"]


async def test_the_page_button_queues_behind_a_running_turn_and_a_closed_conversation_refuses(builtin):
    chat = await Chat.start(greet=True)
    await handoff.customer_asks_for_human(conversation_id=chat.id, emit=chat.emit)
    assert chat.frames[-1]["type"] == "handoff" and chat.frames[-1]["state"] == "waiting"
    assert await holder_of(chat.id) == Holder.WAITING
    calls = builtin.calls
    # Asking again while waiting changes nothing and says where the customer stands.
    await handoff.customer_asks_for_human(conversation_id=chat.id, emit=chat.emit)
    assert chat.frames[-1]["state"] == "waiting" and chat.frames[-1]["position"] == 1
    events = await database_sync_to_async(lambda: HandoffEvent.objects.filter(conversation_id=chat.id).count())()
    assert events == 1

    staff = await database_sync_to_async(staff_user)()
    await database_sync_to_async(handoff.handoff_claim)(conversation_id=chat.id, staff=staff)
    closed = await database_sync_to_async(handoff.handoff_release)(conversation_id=chat.id, staff=staff, close=True)
    assert closed["state"] == "closed"
    frames = await chat.respond("hello again")
    assert builtin.calls == calls
    assert frames[0]["type"] == "error" and frames[0]["code"] == "conversation_closed" and frames[0]["refused"]
    await handoff.customer_asks_for_human(conversation_id=chat.id, emit=chat.emit)
    assert chat.frames[-1]["code"] == "conversation_closed"


async def test_the_replay_shows_the_handoff_and_the_staff_replies(builtin):
    chat = await Chat.start(greet=True)
    await chat.respond("I need a real person")
    staff = await database_sync_to_async(staff_user)()
    await database_sync_to_async(handoff.handoff_claim)(conversation_id=chat.id, staff=staff)
    await database_sync_to_async(handoff.staff_reply)(conversation_id=chat.id, staff=staff, text="<b>Hello</b>")
    await chat.respond("hi Alice")
    frames = await database_sync_to_async(selectors.conversation_replay_frames)(conversation_id=chat.id)
    kinds = [(f["type"], f.get("role") or f.get("state") or f.get("name")) for f in frames]
    assert kinds[-5:] == [
        ("tool", "request_human"), ("handoff", "waiting"), ("handoff", "human"),
        ("message", "staff"), ("message", "user"),
    ]
    assert frames[-2] == {
        "type": "message", "role": "staff", "text": "<b>Hello</b>", "name": "Alice", "replay": True,
        "seq": frames[-1]["seq"] - 1,  # the rows' numbers, as their live frames had them
    }
    assert all(f.get("replay") for f in frames)


async def test_after_n_failures_in_a_row_the_conversation_is_queued(chat_model, monkeypatch, demo_data, settings):
    settings.HANDOFF_AFTER_FAILURES = 2
    model = chat_model.script()
    chat = await Chat.start(greet=True)
    model.queue(MODEL_ERROR)
    frames = await chat.respond("first")
    assert not of_type(frames, "handoff"), "one failure is not enough"
    model.queue(MODEL_ERROR)
    frames = await chat.respond("second")
    (waiting,) = of_type(frames, "handoff")
    assert waiting["state"] == "waiting"
    assert await holder_of(chat.id) == Holder.WAITING
    event = await HandoffEvent.objects.aget(conversation_id=chat.id)
    assert event.actor == "system" and "2 times in a row" in event.reason
    requests = len(model.requests)
    await chat.respond("third")
    assert len(model.requests) == requests


async def test_failures_broken_by_an_answer_do_not_queue(chat_model, monkeypatch, demo_data, settings):
    settings.HANDOFF_AFTER_FAILURES = 2
    model = chat_model.script(MODEL_ERROR)
    chat = await Chat.start()
    await chat.respond("first")
    model.queue(MODEL_ERROR)
    await chat.respond("second")
    assert await holder_of(chat.id) == Holder.WAITING
    other = await Chat.start(greet=True)
    model.queue(MODEL_ERROR)
    await other.respond("one")
    await other.respond("fine now")  # "OK."
    model.queue(MODEL_ERROR)
    await other.respond("again")
    assert await holder_of(other.id) == Holder.AGENT


def test_the_builtin_model_asks_for_a_person_after_repeated_fallbacks():
    from chat.builtin import STUCK_REASON, decide

    messages = [
        {"role": "system", "content": "x"},
        {"role": "user", "content": "blah"},
        {"role": "assistant", "content": FALLBACK_REPLY},
        {"role": "user", "content": "blah blah"},
        {"role": "assistant", "content": FALLBACK_REPLY},
        {"role": "user", "content": "well?"},
    ]
    decision = decide(messages, {"verify_user", "get_ticket_status", "request_human"})
    assert decision.tool_calls == [("request_human", {"reason": STUCK_REASON})]
    assert decide(messages[:4], {"verify_user", "request_human"}).tool_calls == []


@pytest.mark.parametrize(
    "text", ["I want to talk to a human", "Can I speak to a representative?", "get me an agent", "a real person pls"]
)
def test_the_builtin_model_hears_a_request_for_a_person(text):
    from chat.builtin import decide

    decision = decide([{"role": "system", "content": ""}, {"role": "user", "content": text}], {"request_human"})
    assert decision.tool_calls and decision.tool_calls[0][0] == "request_human"


def test_two_staff_claiming_at_once_exactly_one_wins(demo_data):
    roles_ensure()
    conversation = Conversation.objects.create(session_key="s" * 32)
    handoff.handoff_request(conversation_id=conversation.id, actor="customer", reason="button")
    alice = staff_user("staff", "Alice")
    bob = staff_user("admin", "Bob")
    barrier = threading.Barrier(2)
    outcomes: dict[str, str] = {}

    def claim(user: User) -> None:
        close_old_connections()
        try:
            barrier.wait(timeout=10)
            handoff.handoff_claim(conversation_id=conversation.id, staff=user)
            outcomes[user.first_name] = "won"
        except handoff.HandoffRefused as refusal:
            outcomes[user.first_name] = refusal.message
        finally:
            connection.close()

    threads = [threading.Thread(target=claim, args=(user,)) for user in (alice, bob)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert sorted(outcomes) == ["Alice", "Bob"]
    winners = [name for name, outcome in outcomes.items() if outcome == "won"]
    assert len(winners) == 1, outcomes
    loser = "Bob" if winners == ["Alice"] else "Alice"
    assert outcomes[loser] == f"{winners[0]} already took this conversation."
    conversation.refresh_from_db()
    assert conversation.holder == Holder.HUMAN and conversation.holder_staff.first_name == winners[0]
    assert HandoffEvent.objects.filter(conversation=conversation, state=Holder.HUMAN).count() == 1
    assert Turn.objects.filter(conversation=conversation, kind="handoff", result__state="human").count() == 1


def test_only_the_holder_replies_hands_back_or_closes(demo_data):
    conversation = Conversation.objects.create(session_key="s" * 32)
    alice, bob = staff_user("staff", "Alice"), staff_user("admin", "Bob")
    with pytest.raises(handoff.HandoffRefused):
        handoff.staff_reply(conversation_id=conversation.id, staff=alice, text="not waiting, not held")
    handoff.handoff_request(conversation_id=conversation.id, actor="customer", reason="button")
    with pytest.raises(handoff.HandoffRefused):
        handoff.staff_reply(conversation_id=conversation.id, staff=alice, text="not claimed yet")
    handoff.handoff_claim(conversation_id=conversation.id, staff=alice)
    for action in (
        lambda: handoff.staff_reply(conversation_id=conversation.id, staff=bob, text="hi"),
        lambda: handoff.handoff_release(conversation_id=conversation.id, staff=bob),
        lambda: handoff.handoff_release(conversation_id=conversation.id, staff=bob, close=True),
    ):
        with pytest.raises(handoff.HandoffRefused) as refused:
            action()
        assert refused.value.code == "not_yours"
    assert Turn.objects.filter(conversation=conversation, kind="staff").count() == 0
    conversation.refresh_from_db()
    assert conversation.holder == Holder.HUMAN


@pytest.mark.parametrize(
    ("hours", "moment", "open_now"),
    [
        ("mon-fri 09:00-17:00", "2026-03-02T10:00:00+00:00", True),  # a Monday
        ("mon-fri 09:00-17:00", "2026-03-02T17:00:00+00:00", False),
        ("mon-fri 09:00-17:00", "2026-03-07T10:00:00+00:00", False),  # a Saturday
        ("08:00-20:00", "2026-03-07T10:00:00+00:00", True),
        ("", "2026-03-07T03:00:00+00:00", True),
    ],
)
def test_support_hours(hours, moment, open_now, settings):
    from datetime import datetime

    settings.HANDOFF_SUPPORT_HOURS = hours
    assert handoff.support_open(datetime.fromisoformat(moment)) is open_now


def test_outside_support_hours_the_customer_is_told_and_stays_queued(demo_data, settings):
    settings.HANDOFF_SUPPORT_HOURS = "mon-mon 00:00-00:01"
    conversation = Conversation.objects.create(session_key="s" * 32)
    frame = handoff.handoff_request(conversation_id=conversation.id, actor="customer", reason="button")
    assert frame["support_hours"] is False
    assert "away right now (support hours: mon-mon 00:00-00:01)" in frame["message"]
    conversation.refresh_from_db()
    assert conversation.holder == Holder.WAITING


def test_bad_support_hours_fail_the_check(settings):
    from chat.checks import check_support_hours

    settings.HANDOFF_SUPPORT_HOURS = "weekdays nine to five"
    assert [error.id for error in check_support_hours()] == ["chat.E005"]
