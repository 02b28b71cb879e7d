"""The builtin model through the real runtime: the seed's conversation and its variations, stored."""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.contrib.auth.models import User

from chat import builtin, llm
from chat.models import Turn
from chat.prompts import SYSTEM_PROMPT
from tests.support.driver import Chat
from tests.support.seed import SEED_MESSAGES

pytestmark = pytest.mark.django_db(transaction=True)

CREDENTIALS = 'Sure, my username is "john_doe" and my API key is: "key"'
# The demo key is the word "key": every place it stands as a word is masked, quoted or not.
MASKED_CREDENTIALS = 'Sure, my username is "john_doe" and my API **** is: "****"'
TICKET_12345 = {"ticket_id": "12345", "status": "Open", "issue": "Billing Query"}


def said(frames: list[dict[str, Any]]) -> list[str]:
    return [f["text"] for f in frames if f["type"] == "message" and f["role"] == "assistant"]


def tool_steps(frames: list[dict[str, Any]]) -> list[tuple[str, str, Any]]:
    """(status, name, arguments or result) of each tool frame."""
    return [
        (f["status"], f["name"], f["arguments"] if f["status"] == "started" else f["result"])
        for f in frames
        if f["type"] == "tool"
    ]


async def verified_chat() -> Chat:
    chat = await Chat.start(client_address="127.0.0.1")
    await chat.greet()
    await chat.say(CREDENTIALS)
    assert await chat.customer() == "john_doe"
    return chat


def assert_stored_well(turns: list[Turn]) -> None:
    assert [t.seq for t in turns] == list(range(len(turns)))
    assert (turns[0].role, turns[0].content) == ("system", SYSTEM_PROMPT)
    for turn in turns:
        if turn.role == "user":
            assert '"key"' not in turn.content and "'key'" not in turn.content
        for call in turn.tool_calls or []:
            arguments = json.loads(call["function"]["arguments"])
            assert arguments.get("api_key", "****") == "****"
        if turn.role == "assistant":
            assert turn.model == builtin.MODEL_NAME
            assert turn.latency_ms is not None
            assert turn.prompt_tokens > 0 and turn.completion_tokens > 0
        if turn.role == "tool":
            assert turn.tool_call_id and turn.name in {"verify_user", "get_ticket_status"}


async def test_the_seed_conversation(demo_data):
    chat = await Chat.start(client_address="127.0.0.1")
    greeting = await chat.greet()
    assert said(greeting) == [builtin.GREETING]
    assert greeting[0] == {"type": "typing"}
    assert "".join(f["text"] for f in greeting if f["type"] == "delta") == builtin.GREETING

    first = await chat.say(SEED_MESSAGES[0])
    assert tool_steps(first) == []
    assert said(first) == [builtin.ASK_KEY.format(username="john_doe")]

    second = await chat.say(SEED_MESSAGES[1])
    assert tool_steps(second) == [
        ("started", "verify_user", {"username": "john_doe", "api_key": "****"}),
        ("done", "verify_user", {"success": True}),
    ]
    assert said(second) == [builtin.VERIFIED.format(username="john_doe")]
    assert '"key"' not in json.dumps(second)
    assert await chat.customer() == "john_doe"

    third = await chat.say(SEED_MESSAGES[2])
    assert tool_steps(third) == [
        ("started", "get_ticket_status", {"ticket_id": "12345"}),
        ("done", "get_ticket_status", TICKET_12345),
    ]
    [answer] = said(third)
    assert "12345" in answer and "Open" in answer and "Billing Query" in answer

    fourth = await chat.say(SEED_MESSAGES[3])
    assert tool_steps(fourth) == [] and said(fourth) == [builtin.GOODBYE]

    turns = await chat.turns()
    assert_stored_well(turns)
    assert [t.role for t in turns] == [
        "system", "assistant",
        "user", "assistant",
        "user", "assistant", "tool", "assistant",
        "user", "assistant", "tool", "assistant",
        "user", "assistant",
    ]  # fmt: skip
    assert turns[4].content == MASKED_CREDENTIALS
    verify_call = turns[5].tool_calls[0]
    assert verify_call["function"]["name"] == "verify_user"
    assert json.loads(verify_call["function"]["arguments"]) == {"username": "john_doe", "api_key": "****"}
    assert json.loads(turns[10].content) == TICKET_12345
    assert turns[10].tool_call_id == turns[9].tool_calls[0]["id"]
    assert json.loads(turns[9].tool_calls[0]["function"]["arguments"]) == {"ticket_id": "12345"}


async def test_a_wrong_key_is_not_verified_and_is_masked_too(demo_data):
    chat = await Chat.start(client_address="127.0.0.1")
    await chat.greet()
    frames = await chat.say('my username is "john_doe" and my API key is: "nope"')
    assert tool_steps(frames) == [
        ("started", "verify_user", {"username": "john_doe", "api_key": "****"}),
        ("done", "verify_user", {"success": False}),
    ]
    assert said(frames) == [builtin.NOT_VERIFIED]
    assert await chat.customer() is None
    turns = await chat.turns()
    assert_stored_well(turns)
    assert not any('"nope"' in t.content or "nope" in json.dumps(t.tool_calls) for t in turns)


async def test_an_unknown_ticket(demo_data):
    chat = await verified_chat()
    frames = await chat.say("Can you check ticket 99999?")
    assert tool_steps(frames)[1] == (
        "error",
        "get_ticket_status",
        {"error": "No ticket 99999 was found for this customer."},
    )
    [answer] = said(frames)
    assert "couldn't find a ticket 99999" in answer


async def test_another_customers_ticket_is_not_shown(demo_data):
    chat = await verified_chat()
    frames = await chat.say("And ticket 24680?")
    assert tool_steps(frames)[1][0] == "error"
    [answer] = said(frames)
    assert "couldn't find a ticket 24680" in answer and "Password reset" not in answer


async def test_a_ticket_asked_for_before_verification_gets_a_request_for_credentials(demo_data):
    chat = await Chat.start(client_address="127.0.0.1")
    await chat.greet()
    frames = await chat.say("What's the status of ticket 12345?")
    assert tool_steps(frames) == []
    assert said(frames) == [builtin.ASK_CREDENTIALS]
    assert "Open" not in json.dumps(frames)


async def test_several_tickets_in_one_message_are_two_calls_in_one_response(demo_data):
    chat = await verified_chat()
    frames = await chat.say("Please check 12345 and 67890.")
    assert [step for step in tool_steps(frames) if step[0] == "started"] == [
        ("started", "get_ticket_status", {"ticket_id": "12345"}),
        ("started", "get_ticket_status", {"ticket_id": "67890"}),
    ]
    [answer] = said(frames)
    assert "12345 is currently Open" in answer and "67890 is currently Closed" in answer
    turns = await chat.turns()
    assert_stored_well(turns)
    call_turn = next(t for t in reversed(turns) if t.tool_calls)
    assert len(call_turn.tool_calls) == 2
    results = [t for t in turns if t.seq > call_turn.seq and t.role == "tool"]
    assert [t.tool_call_id for t in results] == [c["id"] for c in call_turn.tool_calls]


async def test_credentials_and_a_ticket_in_one_message_verify_then_look_up(demo_data):
    chat = await Chat.start(client_address="127.0.0.1")
    await chat.greet()
    frames = await chat.say('My username is john_doe and my API key is "key". What about ticket 12345?')
    assert tool_steps(frames) == [
        ("started", "verify_user", {"username": "john_doe", "api_key": "****"}),
        ("done", "verify_user", {"success": True}),
        ("started", "get_ticket_status", {"ticket_id": "12345"}),
        ("done", "get_ticket_status", TICKET_12345),
    ]
    [answer] = said(frames)
    assert "Open" in answer and "Billing Query" in answer
    assert_stored_well(await chat.turns())


async def test_a_request_it_cannot_serve_says_what_it_can_do(demo_data):
    chat = await Chat.start(client_address="127.0.0.1")
    await chat.greet()
    frames = await chat.say("Can you book me a flight to Lisbon?")
    assert tool_steps(frames) == []
    [answer] = said(frames)
    assert answer.startswith(builtin.CAPABILITIES)
    assert "username and API key" in answer


async def test_jane_sees_her_ticket_and_not_johns(demo_data):
    chat = await Chat.start(client_address="127.0.0.1")
    await chat.greet()
    await chat.say('username: jane_roe, api key: "jane-key"')
    assert await chat.customer() == "jane_roe"
    frames = await chat.say("24680 and 12345 please")
    [answer] = said(frames)
    assert "24680 is currently In progress" in answer and "couldn't find a ticket 12345" in answer
    assert "Billing Query" not in answer


async def test_non_streaming_mode(demo_data, settings):
    settings.CHAT_STREAM = False
    llm.configured_chat_model.cache_clear()
    chat = await Chat.start(client_address="127.0.0.1")
    greeting = await chat.greet()
    assert [f["text"] for f in greeting if f["type"] == "delta"] == [builtin.GREETING]  # one piece
    await chat.say(CREDENTIALS)
    frames = await chat.say("Yea it's: 12345")
    assert tool_steps(frames)[1] == ("done", "get_ticket_status", TICKET_12345)
    assert_stored_well(await chat.turns())


async def test_streaming_mode_sends_the_reply_in_several_deltas(demo_data, settings):
    settings.CHAT_DELTA_COALESCE_MS = 0  # a piece per word, as the model streams them
    chat = await Chat.start(client_address="127.0.0.1")
    greeting = await chat.greet()
    deltas = [f["text"] for f in greeting if f["type"] == "delta"]
    assert len(deltas) > 5 and "".join(deltas) == builtin.GREETING


async def test_deltas_are_coalesced_the_first_piece_at_once(demo_data, settings):
    """Streamed faster than the window, the reply goes as its first word, then the rest in one piece."""
    settings.CHAT_DELTA_COALESCE_MS = 10_000
    chat = await Chat.start(client_address="127.0.0.1")
    greeting = await chat.greet()
    deltas = [f["text"] for f in greeting if f["type"] == "delta"]
    assert deltas == ["Hello, ", builtin.GREETING.removeprefix("Hello, ")]


async def test_verification_holds_across_turns_and_is_per_conversation(demo_data):
    chat = await verified_chat()
    other = await Chat.start(client_address="127.0.0.1")
    await other.greet()
    frames = await other.say("Yea it's: 12345")
    assert "Open" not in json.dumps(frames)
    assert await other.customer() is None
    assert await User.objects.filter(username="john_doe").aexists()
    frames = await chat.say("Yea it's: 12345")
    assert tool_steps(frames)[1][2] == TICKET_12345


@pytest.mark.parametrize(
    ("text", "username", "api_key"),
    [
        ("My username is john_doe. My API key is key.", "john_doe", "key"),
        ("username: jane_roe, api key: jane-key!", "jane_roe", "jane-key"),
        ('My API key is "key." and my username is "john_doe".', "john_doe", "key."),  # quoted: kept exactly
        (SEED_MESSAGES[1], "john_doe", "key"),
    ],
)
def test_credentials_are_read_without_the_punctuation_that_ends_the_sentence(text, username, api_key):
    decision = builtin.decide([{"role": "user", "content": text}], {"verify_user", "get_ticket_status"})
    assert decision.tool_calls == [("verify_user", {"username": username, "api_key": api_key})]


async def test_unquoted_credentials_ending_a_sentence_verify(demo_data):
    chat = await Chat.start(client_address="127.0.0.1")
    await chat.greet()
    frames = await chat.say("My username is john_doe. My API key is key.")
    assert tool_steps(frames)[1] == ("done", "verify_user", {"success": True})
    assert await chat.customer() == "john_doe"
