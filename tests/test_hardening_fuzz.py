"""Bad input, fuzzed with Hypothesis: browser frames (the parser and the live socket), tool arguments
(arbitrary JSON and text through ``Toolbox.run``), and random conversations with a random model, after
which the stored history must still be exactly what the model API accepts."""

from __future__ import annotations

import json
import uuid

import pytest
from asgiref.sync import async_to_sync
from channels import DEFAULT_CHANNEL_LAYER
from channels.layers import channel_layers
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from chat import selectors
from chat.agent import ModelError, ModelReply, ToolCall
from chat.frames import parse_client_frame
from chat.history import messages_valid_for_api, trim_history
from chat.protocol import CustomerError
from chat.services import conversation_start
from chat.toolbox import ToolContext, get_toolbox
from tests.support.driver import Chat
from tests.support.history import assert_valid_api_history, stored_messages
from tests.support.models import calls
from tests.support.sockets import open_chat, until_idle

FUZZ = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)
SOME = settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=50),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)
odd_text = st.one_of(
    st.text(max_size=200),
    st.text(alphabet=st.characters(codec="utf-8"), max_size=50),
    st.sampled_from(["\x00", "a\x00b", "\u202e12345", "١٢٣٤٥", "１２３４５", "12345\u200b", "🎫" * 30, "x" * 5000]),
)
frame_texts = st.one_of(
    odd_text,
    json_values.map(json.dumps),
    st.builds(lambda text: json.dumps({"type": "message", "text": text}), odd_text),
    st.builds(lambda text, extra: json.dumps({"type": "message", "text": text, **extra}), odd_text, st.dictionaries(
        st.sampled_from(["customer_id", "verified", "role", "conversation"]), json_values, max_size=2)),
)


# FRAMES


@FUZZ
@given(text=st.one_of(st.none(), frame_texts))
def test_the_frame_parser_accepts_only_real_messages_and_never_crashes(text):
    try:
        frame = parse_client_frame(text)
    except CustomerError as error:
        assert error.code in {"bad_frame", "unknown_type", "bad_text", "empty_message", "message_too_long"}
        assert error.message and len(error.message) < 300
        return
    assert frame.text and frame.text == frame.text.strip()
    assert not any(ord(char) < 32 and char not in "\t\n\r" for char in frame.text)
    assert len(frame.text) <= 4000


@pytest.fixture
def quick_model(chat_model, settings):
    settings.CHAT_MESSAGES_PER_MINUTE = 10**6
    settings.CHAT_CONVERSATIONS_PER_HOUR = 10**6
    model = chat_model.script()
    return model


@pytest.mark.django_db(transaction=True)
@SOME
@given(texts=st.lists(frame_texts.filter(bool), min_size=1, max_size=8))
def test_the_socket_answers_every_frame_and_stays_usable(quick_model, texts):
    async def session() -> None:
        channel_layers.backends.clear()
        communicator, conversation_id = await open_chat(None)
        await until_idle(communicator)
        for text in texts:
            await communicator.send_to(text_data=text)
            try:
                parse_client_frame(text)
            except CustomerError as error:
                frame = await communicator.receive_json_from(timeout=10)
                assert frame == {"type": "error", "code": error.code, "message": error.message, "refused": True}
                assert await communicator.receive_json_from(timeout=10) == {"type": "idle"}
                continue
            frames = await until_idle(communicator)
            assert not [f for f in frames if f["type"] == "error"], frames
        await communicator.send_json_to({"type": "message", "text": "still there?"})
        assert (await until_idle(communicator))[-2]["text"] == "OK."
        await communicator.disconnect()
        assert_valid_api_history(await stored_messages(conversation_id))
        layer = channel_layers.backends.pop(DEFAULT_CHANNEL_LAYER, None)
        if hasattr(layer, "close_pools"):
            await layer.close_pools()

    async_to_sync(session)()


# TOOL ARGUMENTS

JOHNS = ("Billing Query", "Technical Support")


@pytest.fixture
def contexts(demo_data):
    from django.contrib.auth.models import User

    jane = User.objects.get(username="jane_roe").id
    unverified = conversation_start(session_key="f" * 32)
    verified = conversation_start(session_key="g" * 32)
    return ToolContext(unverified.id, None, None), ToolContext(verified.id, jane, None)


@pytest.mark.django_db
@FUZZ
@given(
    name=st.one_of(st.sampled_from(["get_ticket_status", "verify_user"]), st.text(max_size=30)),
    arguments=st.one_of(
        json_values.map(json.dumps),
        odd_text,
        st.builds(lambda v: json.dumps({"ticket_id": v}), st.one_of(odd_text, json_values)),
        st.builds(lambda v, extra: json.dumps({"ticket_id": "12345", **extra}), odd_text, st.dictionaries(
            st.sampled_from(["customer_id", "verified", "owner", "username"]), json_values, min_size=1, max_size=2)),
    ),
)
@example(name="get_ticket_status", arguments=json.dumps({"ticket_id": "١٢٣٤٥"}))  # Arabic-Indic digits
@example(name="get_ticket_status", arguments=json.dumps({"ticket_id": "２４６８０"}))  # full-width digits
@example(name="get_ticket_status", arguments=json.dumps({"ticket_id": "24680\x00"}))
def test_tools_survive_any_arguments_and_leak_nothing(contexts, name, arguments):
    for context in contexts:
        outcome = get_toolbox().run(ToolCall("call_1", name, arguments), context)
        result = json.loads(outcome.content)  # always JSON the model can read
        assert isinstance(result, dict)
        assert not any(issue in outcome.content for issue in JOHNS), "never another customer's ticket"
        if "status" in result:
            assert context.customer_id is not None and result["ticket_id"] == "24680"
            assert json.loads(arguments)["ticket_id"].strip().lstrip("#").strip() == "24680"
        if result.get("success") is True:
            pytest.fail(f"verified with made-up arguments: {arguments!r}")


# RANDOM CONVERSATIONS

model_steps = st.one_of(
    st.builds(ModelReply, st.text(min_size=1, max_size=40)),
    st.lists(
        st.tuples(
            st.sampled_from(["get_ticket_status", "verify_user", "nope"]),
            st.one_of(
                st.builds(lambda t: {"ticket_id": t}, st.sampled_from(["12345", "24680", "x"])),
                st.just({"username": "jane_roe", "api_key": "jane-key"}),
                st.just({"username": "john_doe", "api_key": "wrong"}),
                st.text(max_size=20),
            ),
        ),
        min_size=1,
        max_size=12,
    ).map(lambda specs: calls(*specs)),
    st.just(ModelError("model_timeout", "The assistant took too long to answer.")),
    st.just(RuntimeError("a bug")),
)


@pytest.mark.django_db(transaction=True)
@SOME
@given(
    turns=st.lists(st.tuples(st.text(min_size=1, max_size=60), st.lists(model_steps, max_size=4)), max_size=5),
    budget=st.integers(min_value=0, max_value=3000),
)
def test_any_sequence_of_turns_stores_a_valid_api_history(chat_model, settings, demo_data, turns, budget):
    settings.CHAT_MAX_MODEL_CALLS = 4
    settings.CHAT_MAX_TOOL_CALLS_PER_REPLY = 8
    settings.CHAT_HISTORY_TOKEN_BUDGET = budget
    model = chat_model.script()

    async def conversation() -> uuid.UUID:
        chat = await Chat.start(client_address=None, greet=True)
        for text, steps in turns:
            model.queue(*steps)
            await chat.respond(text)
            model.replies.clear()
        return chat.id

    conversation_id = async_to_sync(conversation)()
    raw = async_to_sync(stored_messages)(conversation_id)
    assert_valid_api_history(raw)
    assert messages_valid_for_api(raw) == raw
    assert selectors.conversation_history(conversation_id=conversation_id) == raw
    for request in model.requests:
        assert_valid_api_history(request)
    assert_valid_api_history(trim_history(raw, budget))
