"""A turn's first model call starts while the turn's first database step runs (``chat.earlycall``): on what
this process expects the step to read, taken only when the turn then asks exactly that; never for a
refused message, and never with a secret the turn itself would mask."""

from __future__ import annotations

import asyncio
import json
import threading

import pytest
from django.contrib.auth.models import User

from chat import consumers, earlycall, fanout, runtime, services
from chat.protocol import CustomerError
from tests.support.models import say_text
from tests.support.seed import SEED_MESSAGES, seed_demo
from tests.support.sockets import assistant_texts, attached, new_session_key, of_type, open_chat, say, until_idle
from tickets.services import apikey_issue

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("no_turn_left_running")]

KEY = "key"  # john_doe's, in the demo data


@pytest.fixture
def taken(monkeypatch) -> list[int]:
    """How many early calls their turns took."""
    counted: list[int] = []
    original = earlycall.EarlyCall.take

    async def take(self, on_delta):
        counted.append(1)
        return await original(self, on_delta)

    monkeypatch.setattr(earlycall.EarlyCall, "take", take)
    return counted


@pytest.fixture
def held_first_step(monkeypatch) -> threading.Event:
    """The first step of a turn answering a message waits (on its database thread, the message counted
    against the flood limits and not yet stored) until the event is set."""
    go_on = threading.Event()
    original = runtime.turn_start

    def waiting(conversation_id, customer_text=None, **kwargs):
        if customer_text is not None:  # not the greeting's
            assert go_on.wait(10), "the test never let the turn's first step go on"
        return original(conversation_id, customer_text, **kwargs)

    monkeypatch.setattr(runtime, "turn_start", waiting)
    return go_on


async def test_the_model_is_asked_while_the_turns_first_step_runs_and_nothing_shows_before_it(
    chat_model, held_first_step
):
    communicator = await attached(await new_session_key())
    chat_model.entered.clear()
    await communicator.send_json_to({"type": "message", "text": "Hello there"})
    await asyncio.wait_for(chat_model.entered.wait(), 5)  # asked with the step still held
    assert not held_first_step.is_set()
    assert await communicator.receive_nothing(timeout=0.2)  # its reply is held: nothing before the step
    held_first_step.set()
    frames = await until_idle(communicator)
    assert frames[0] == {"type": "typing"}  # the turn's first frame, once its step is done (the sender's own
    assert of_type(frames, "delta")  # message is not echoed back to it); the reply's deltas after it
    assert len(assistant_texts(frames)) == 1
    assert chat_model.calls == 2  # the greeting's and this one's: asked once
    assert chat_model.requests[-1][-1] == {"role": "user", "content": "Hello there"}
    await communicator.disconnect()


@pytest.mark.parametrize("budget", [12000, 120])  # 120: every request trimmed, the expected history too
async def test_the_seed_conversation_asks_what_it_asked_without_early_calls(chat_model, taken, settings, budget):
    """The first call of every turn but the one right after the key was checked (a secret learnt: the
    model's copy of the history is masked everywhere, the stored one from where the key was given) made
    early; each call made once, each asking exactly what it asked without early calls."""
    settings.CHAT_HISTORY_TOKEN_BUDGET = budget
    await asyncio.to_thread(seed_demo)

    async def conversation() -> list[str]:
        communicator = await attached(await new_session_key())
        replies = []
        for text in SEED_MESSAGES[:3]:
            replies += assistant_texts(await say(communicator, text))
        await communicator.disconnect()
        return replies

    early_replies = await conversation()
    early_requests, chat_model.requests = chat_model.requests, []
    assert len(taken) == 3
    if budget == 12000:  # trimmed to the last message, the builtin model no longer sees who was verified
        assert len(early_requests) == 6
        assert any("12345" in reply and "Open" in reply for reply in early_replies), early_replies
    else:
        assert max(map(len, early_requests)) <= 3  # the system prompt and the newest group or two: trimmed

    settings.CHAT_EARLY_MODEL_CALL = False
    assert await conversation() == early_replies
    assert len(taken) == 3  # none more
    assert chat_model.requests == early_requests


async def test_a_verified_conversations_key_typed_again_reaches_the_model_masked_early_or_not(chat_model, taken):
    await asyncio.to_thread(seed_demo)
    communicator = await attached(await new_session_key())
    await say(communicator, f"I am john_doe, my API key is {KEY}")
    await say(communicator, "Thanks")  # the turn after the key was learnt: not early
    assert len(taken) == 2  # the greeting and the key's message
    asked = chat_model.calls
    frames = await say(communicator, f"Again: my key is {KEY}, is ticket 12345 open?")
    assert len(taken) == 3  # verified: called early, its customer's message masked
    assert "Open" in assistant_texts(frames)[-1]
    for request in chat_model.requests[asked:]:  # every call this message caused
        typed = [message["content"] for message in request if message["role"] == "user"][-1]
        assert typed == "Again: my **** is ****, is ticket 12345 open?", typed
    await communicator.disconnect()


async def test_a_key_issued_since_the_last_turn_is_masked_in_the_early_call_too(chat_model, taken):
    """The customer's keys are read once the message is admitted, not taken from the turn before."""
    await asyncio.to_thread(seed_demo)
    communicator = await attached(await new_session_key())
    await say(communicator, f"I am john_doe, my API key is {KEY}")
    await say(communicator, "Thanks")
    customer = await asyncio.to_thread(User.objects.get, username="john_doe")
    _, new_key = await asyncio.to_thread(apikey_issue, customer=customer)
    asked = chat_model.calls
    await say(communicator, f"Support gave me a new one: {new_key}")
    assert len(taken) == 3
    sent = json.dumps(chat_model.requests[asked:])
    assert new_key not in sent
    assert "Support gave me a new one: ****" in sent
    await communicator.disconnect()


async def test_a_verified_early_turn_reads_its_customers_keys_once(chat_model, taken, monkeypatch):
    """Read once the message is admitted, for the early call; the turn's first step, in the same crossing,
    uses them rather than asking the database again."""
    await asyncio.to_thread(seed_demo)
    communicator = await attached(await new_session_key())
    await say(communicator, f"I am john_doe, my API key is {KEY}")
    await say(communicator, "Thanks")
    reads: list[int] = []
    original = runtime.customer_secret_finder

    def counted(customer_id):
        if customer_id is not None:
            reads.append(customer_id)
        return original(customer_id)

    monkeypatch.setattr(runtime, "customer_secret_finder", counted)
    await say(communicator, "Is ticket 12345 open?")
    assert len(taken) == 3  # called early
    assert len(reads) == 1
    await communicator.disconnect()


async def test_an_early_call_that_asked_something_else_is_dropped_and_the_model_asked_afresh(chat_model, taken):
    communicator, conversation_id = await open_chat(await new_session_key())
    await until_idle(communicator)
    # The conversation changes behind this process's back (another process, an import): not what it expects.
    await asyncio.to_thread(
        services.turns_append, conversation_id=conversation_id,
        messages=[{"role": "assistant", "content": "A note written elsewhere."}],
    )
    chat_model.script(say_text("Stale answer."), say_text("Fresh answer."))
    frames = await say(communicator, "Hello there")
    assert assistant_texts(frames) == ["Fresh answer."]
    assert "Stale" not in "".join(frame["text"] for frame in of_type(frames, "delta"))
    assert len(taken) == 1  # the greeting's only
    early, fresh = chat_model.requests[-2:]
    assert {"role": "assistant", "content": "A note written elsewhere."} not in early
    assert {"role": "assistant", "content": "A note written elsewhere."} in fresh
    assert early[-1] == fresh[-1] == {"role": "user", "content": "Hello there"}
    await communicator.disconnect()


async def test_a_refused_message_is_never_sent_to_the_model_and_the_next_one_is_answered(
    chat_model, taken, monkeypatch
):
    communicator = await attached(await new_session_key())
    calls = chat_model.calls

    def refuse(**kwargs):
        raise CustomerError("too_many_messages", "Slow down.", refused=True)

    monkeypatch.setattr("chat.limits.message_admit", refuse)
    frames = await say(communicator, "Hello there")
    assert [frame["type"] for frame in frames] == ["error", "idle"]
    assert chat_model.calls == calls  # not even early
    monkeypatch.undo()
    frames = await say(communicator, "Hello again")
    assert len(assistant_texts(frames)) == 1
    assert chat_model.calls == calls + 1
    assert len(taken) == 1  # the greeting's: the refused message had taken what was expected
    await communicator.disconnect()


@pytest.mark.parametrize("budget", [12000, 30])  # 30: the model is sent only the newest message
async def test_a_message_past_the_conversations_length_is_never_sent_to_the_model(
    chat_model, taken, settings, budget
):
    settings.CHAT_MAX_CUSTOMER_MESSAGES = 2
    settings.CHAT_HISTORY_TOKEN_BUDGET = budget
    communicator = await attached(await new_session_key())
    await say(communicator, "Hello there")
    await say(communicator, "Hello again")
    calls = chat_model.calls
    frames = await say(communicator, "And once more")
    assert of_type(frames, "error")[0]["code"] == "conversation_too_long"
    assert chat_model.calls == calls
    assert len(taken) == 3  # the greeting's and the two messages'
    await communicator.disconnect()


async def test_a_socket_connecting_to_the_conversation_forgets_what_was_expected(chat_model, taken, monkeypatch):
    """A second tab may come verified (a signed-in page): what was expected is forgotten until the next
    answered turn, even when its join leaves every listener known to be this process's (its own ``listen``
    came before the first tab heard the join: here, joins are never heard)."""
    monkeypatch.setattr(fanout, "joined", lambda group, channel_name: None)
    session_key = await new_session_key()
    first = await attached(session_key)
    second, conversation_id = await open_chat(session_key)
    await until_idle(second)
    assert fanout.known_ours(consumers.conversation_group(conversation_id))
    await say(first, "Hello there")
    await until_idle(second)
    assert len(taken) == 1  # the greeting's
    await say(second, "Hello again")
    await until_idle(first)
    assert len(taken) == 2  # what that answered turn left was expected again
    await first.disconnect()
    await second.disconnect()


async def test_what_is_expected_is_forgotten_when_the_conversations_last_socket_here_closes(chat_model):
    session_key = await new_session_key()
    first, conversation_id = await open_chat(session_key)
    await until_idle(first)
    await say(first, "Hello there")
    assert conversation_id in earlycall._expected
    second = await attached(session_key)
    await say(second, "Hello again")
    await first.disconnect()
    assert conversation_id in earlycall._expected  # the second tab still listens
    await second.disconnect()
    assert conversation_id not in earlycall._expected
