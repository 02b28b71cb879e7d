"""``OpenAIChatModel`` against a loopback OpenAI-compatible server, and one real turn through it."""

from __future__ import annotations

import json
import socket
from typing import Any

import pytest
from channels.db import database_sync_to_async
from django.contrib.auth.models import User
from django.contrib.sessions.backends.db import SessionStore

from chat import llm
from chat.agent import ModelError, ModelReply
from chat.llm import OpenAIChatModel, openai_client
from chat.models import Conversation, Turn
from chat.runtime import conversation_attach, conversation_respond
from tests.support import live
from tests.support.browser import ARTIFACTS, ChatServer, daphne_environment, free_port
from tests.support.fake_openai import (
    MODEL,
    FakeOpenAI,
    Reply,
    chunk,
    completion,
    error_reply,
    stream_reply,
    text_deltas,
    tool_call,
)

MESSAGES = [{"role": "system", "content": "Be helpful."}, {"role": "user", "content": "Hello"}]
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_ticket_status",
            "description": "Get a ticket's status.",
            "parameters": {
                "type": "object",
                "properties": {"ticket_id": {"type": "string"}},
                "required": ["ticket_id"],
                "additionalProperties": False,
            },
        },
    }
]
USAGE = {"prompt_tokens": 42, "completion_tokens": 9, "total_tokens": 51}


@pytest.fixture
def fake():
    with FakeOpenAI() as server:
        yield server


@pytest.fixture
async def make_model(fake, settings):
    """A factory of models, each on a fresh client to the fake server; clients are closed afterwards."""
    settings.CHAT_MAX_RETRIES = 0
    settings.CHAT_TIMEOUT_SECONDS = 5
    clients = []

    def make(*, stream: bool = True, reply_timeout: float = 5, base_url: str | None = None) -> OpenAIChatModel:
        client = openai_client(base_url=base_url or fake.base_url, api_key="test")
        clients.append(client)
        return OpenAIChatModel(client, "test-model", stream=stream, reply_timeout=reply_timeout)

    yield make
    for client in clients:
        await client.close()


class Deltas(list):
    async def __call__(self, text: str) -> None:
        self.append(text)


async def complete(model: OpenAIChatModel, tools=TOOLS) -> tuple[ModelReply, Deltas]:
    deltas = Deltas()
    reply = await model.complete(MESSAGES, tools, deltas)
    return reply, deltas


async def fails(model: OpenAIChatModel) -> ModelError:
    with pytest.raises(ModelError) as caught:
        await complete(model)
    return caught.value


# STREAMING


async def test_streamed_text_arrives_in_order_and_assembles(fake, make_model):
    fake.script(stream_reply(text_deltas("Your ", "ticket ", "is ", "Open."), usage=USAGE))
    reply, deltas = await complete(make_model())
    assert deltas == ["Your ", "ticket ", "is ", "Open."]
    assert reply.content == "Your ticket is Open."
    assert reply.tool_calls == []
    assert (reply.prompt_tokens, reply.completion_tokens) == (42, 9)
    assert reply.model == MODEL
    assert reply.latency_ms >= 0


async def test_the_request_carries_model_messages_tools_and_temperature_zero(fake, make_model):
    fake.script(stream_reply(text_deltas("Hi")), stream_reply(text_deltas("Hi")))
    model = make_model()
    await complete(model)
    await complete(model, tools=[])
    first, without_tools = fake.requests
    assert first.method == "POST" and first.path == "/v1/chat/completions"
    assert first.headers["authorization"] == "Bearer test"
    assert first.json["model"] == "test-model"
    assert first.json["temperature"] == 0
    assert first.json["messages"] == MESSAGES
    assert first.json["tools"] == TOOLS
    assert first.json["stream"] is True
    assert first.json["stream_options"] == {"include_usage": True}
    assert "tools" not in without_tools.json


async def test_tool_call_deltas_are_assembled_by_index(fake, make_model):
    def part(index: int, arguments: str, *, call_id: str | None = None, name: str | None = None) -> dict[str, Any]:
        piece: dict[str, Any] = {"index": index, "function": {"arguments": arguments}}
        if call_id:
            piece.update(id=call_id, type="function")
            piece["function"]["name"] = name
        return chunk({"tool_calls": [piece]})

    fake.script(
        stream_reply(
            [
                chunk({"role": "assistant", "content": None}),
                part(0, "", call_id="call_a", name="get_ticket_status"),
                part(0, '{"ticket'),
                part(1, "", call_id="call_b", name="get_ticket_status"),
                part(0, '_id": "12'),
                part(1, '{"ticket_id": '),
                part(0, '345"}'),
                part(1, '"67890"}'),
            ],
            finish_reason="tool_calls",
            usage=USAGE,
        )
    )
    reply, deltas = await complete(make_model())
    assert deltas == []
    assert reply.content == ""
    assert [(c.id, c.name, json.loads(c.arguments)) for c in reply.tool_calls] == [
        ("call_a", "get_ticket_status", {"ticket_id": "12345"}),
        ("call_b", "get_ticket_status", {"ticket_id": "67890"}),
    ]
    assert reply.completion_tokens == 9


async def test_text_and_a_tool_call_in_one_stream(fake, make_model):
    call = tool_call("call_1", "get_ticket_status", {"ticket_id": "1"})
    fake.script(stream_reply([*text_deltas("Let me ", "check."), chunk({"tool_calls": [{"index": 0, **call}]})]))
    reply, deltas = await complete(make_model())
    assert deltas == ["Let me ", "check."]
    assert reply.content == "Let me check."
    assert [c.as_api() for c in reply.tool_calls] == [call]


# WHOLE REPLIES


async def test_a_whole_reply_with_text(fake, make_model):
    fake.script(completion("Hello! How can I help?", usage=USAGE))
    reply, deltas = await complete(make_model(stream=False))
    assert reply.content == "Hello! How can I help?"
    assert deltas == ["Hello! How can I help?"]
    assert (reply.model, reply.prompt_tokens, reply.completion_tokens) == (MODEL, 42, 9)
    request = fake.requests[0].json
    assert "stream" not in request or request["stream"] is False
    assert request["temperature"] == 0 and request["tools"] == TOOLS and request["messages"] == MESSAGES


async def test_a_whole_reply_with_tool_calls(fake, make_model):
    calls = [
        tool_call("call_1", "get_ticket_status", {"ticket_id": "12345"}),
        tool_call("call_2", "get_ticket_status", {"ticket_id": "67890"}),
    ]
    fake.script(completion(None, calls))
    reply, deltas = await complete(make_model(stream=False))
    assert deltas == [] and reply.content == ""
    assert [c.as_api() for c in reply.tool_calls] == calls


async def test_whole_reply_tool_calls_without_ids_get_distinct_ids(fake, make_model):
    calls = [
        tool_call("", "get_ticket_status", {"ticket_id": "1"}),
        tool_call("", "get_ticket_status", {"ticket_id": "2"}),
    ]
    for call in calls:
        del call["id"]  # some OpenAI-compatible servers leave it out
    fake.script(completion(None, calls))
    reply, _ = await complete(make_model(stream=False))
    assert [c.id for c in reply.tool_calls] == ["call_0", "call_1"]


# ERRORS


@pytest.mark.parametrize(
    ("status", "code"),
    [
        (500, "model_error"),
        (502, "model_error"),
        (400, "model_error"),
        (429, "model_busy"),
        (401, "model_unavailable"),
        (403, "model_unavailable"),
        (404, "model_unavailable"),
    ],
)
@pytest.mark.parametrize("stream", [True, False])
async def test_error_statuses_map_to_codes_with_readable_messages(fake, make_model, status, code, stream):
    fake.script(error_reply(status, "internal detail: quota of org-123 exceeded"))
    error = await fails(make_model(stream=stream))
    assert error.code == code
    assert error.message.startswith("The assistant ")
    assert "org-123" not in error.message and str(status) not in error.message
    assert len(fake.requests) == 1  # no retries when CHAT_MAX_RETRIES is 0


async def test_a_busy_endpoint_is_retried_when_retries_are_allowed(fake, make_model, settings):
    settings.CHAT_MAX_RETRIES = 1
    fake.script(error_reply(429, headers={"retry-after-ms": "1"}), stream_reply(text_deltas("Done.")))
    reply, _ = await complete(make_model())
    assert reply.content == "Done."
    assert len(fake.requests) == 2


@pytest.mark.parametrize(
    "reply",
    [
        Reply(body=b"<html>Bad gateway</html>", content_type="text/html"),
        Reply(body=b"{not json", content_type="application/json"),
        Reply(body=b'{"object": "chat.completion", "choices": []}'),
    ],
    ids=["html", "broken-json", "no-choices"],
)
async def test_a_whole_reply_that_is_not_a_completion_is_a_bad_reply(fake, make_model, reply):
    fake.script(reply)
    error = await fails(make_model(stream=False))
    assert error.code == "model_bad_reply"
    assert error.message == "The assistant's answer got garbled on the way. Please try again."


async def test_a_stream_with_an_event_that_is_not_json_is_a_bad_reply(fake, make_model):
    fake.script(stream_reply([*text_deltas("Hel"), "{this is not json"]))
    error = await fails(make_model())
    assert error.code == "model_bad_reply"


async def test_a_stream_that_stops_halfway_is_incomplete(fake, make_model):
    fake.script(stream_reply(text_deltas("Your ticket ", "is"), finish_reason=None, done=False))
    deltas = Deltas()
    with pytest.raises(ModelError) as caught:
        await make_model().complete(MESSAGES, TOOLS, deltas)
    assert caught.value.code == "model_incomplete"
    assert caught.value.message == "The assistant's answer was cut off. Please try again."
    assert deltas == ["Your ticket ", "is"]


async def test_a_stream_whose_connection_drops_halfway_is_incomplete(fake, make_model):
    fake.script(stream_reply(text_deltas("Your ticket ", "is"), finish_reason=None, done=False, drop=True))
    error = await fails(make_model())
    assert error.code == "model_incomplete"


async def test_tool_calls_cut_off_before_the_finish_are_not_run(fake, make_model):
    part = {
        "index": 0,
        "id": "call_1",
        "type": "function",
        "function": {"name": "get_ticket_status", "arguments": '{"tic'},
    }
    fake.script(stream_reply([chunk({"tool_calls": [part]})], finish_reason=None, done=False))
    error = await fails(make_model())
    assert error.code == "model_incomplete"


async def test_an_error_event_inside_a_stream_is_a_model_error(fake, make_model):
    fake.script(stream_reply([*text_deltas("Hel"), json.dumps({"error": {"message": "overloaded"}})]))
    error = await fails(make_model())
    assert error.code == "model_error"  # the endpoint failed; nothing got garbled
    assert error.message == "The assistant ran into a problem answering. Please try again."


async def test_an_empty_reply_is_an_error(fake, make_model):
    fake.script(stream_reply(text_deltas()))
    error = await fails(make_model())
    assert error.code == "model_empty_reply"


async def test_a_slow_endpoint_times_out(fake, make_model, settings):
    settings.CHAT_TIMEOUT_SECONDS = 0.2
    fake.script(Reply(body=b"{}", hold_after=0))
    error = await fails(make_model())
    assert error.code == "model_timeout"
    assert error.message == "The assistant took too long to answer. Please try again in a moment."


async def test_a_stream_that_stalls_times_out(fake, make_model, settings):
    settings.CHAT_TIMEOUT_SECONDS = 0.2
    fake.script(stream_reply(text_deltas("Your ", "ticket"), hold_after=2))
    error = await fails(make_model())
    assert error.code == "model_timeout"


async def test_a_reply_that_trickles_past_the_whole_reply_timeout_times_out(fake, make_model):
    fake.script(stream_reply(text_deltas("Your ", "ticket"), hold_after=2))
    error = await fails(make_model(reply_timeout=0.2))
    assert error.code == "model_timeout"


async def test_an_endpoint_nobody_listens_on_is_unavailable(make_model):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    error = await fails(make_model(base_url=f"http://127.0.0.1:{port}/v1"))
    assert error.code == "model_unavailable"
    assert error.message == "The assistant can't be reached right now. Please try again shortly."


async def test_an_endpoint_nobody_listens_on_is_unavailable_when_no_retry_fits_the_deadline(make_model, settings):
    settings.CHAT_MAX_RETRIES = 2  # the client's first retry waits longer than the reply may take
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    error = await fails(make_model(base_url=f"http://127.0.0.1:{port}/v1", reply_timeout=0.3))
    assert error.code == "model_unavailable"


async def test_an_endpoint_that_hangs_up_without_answering_is_unavailable(fake, make_model):
    fake.script(Reply(hang_up=True))
    error = await fails(make_model())
    assert error.code == "model_unavailable"


# A WHOLE TURN


@pytest.mark.django_db(transaction=True)
async def test_the_openai_backend_drives_the_real_loop_tools_and_database(fake, settings, demo_data):
    settings.CHAT_BACKEND = "openai"
    settings.OPENAI_BASE_URL = fake.base_url
    settings.OPENAI_API_KEY = "test"
    settings.CHAT_MODEL = "test-model"
    settings.CHAT_MAX_RETRIES = 0
    settings.CHAT_STREAM = True
    llm.configured_chat_model.cache_clear()
    verify = {"index": 0, **tool_call("call_v", "verify_user", {"username": "john_doe", "api_key": "key"})}
    lookup = {"index": 0, **tool_call("call_t", "get_ticket_status", {"ticket_id": "12345"})}
    fake.script(
        stream_reply([chunk({"tool_calls": [verify]})], finish_reason="tool_calls", usage=USAGE),
        stream_reply([chunk({"tool_calls": [lookup]})], finish_reason="tool_calls", usage=USAGE),
        stream_reply(text_deltas("Ticket 12345 is ", "Open: Billing Query."), usage=USAGE),
    )
    attached = await database_sync_to_async(conversation_attach)(session_key="k" * 32, client_address="127.0.0.1")
    frames: list[dict[str, Any]] = []

    async def emit(frame: dict[str, Any]) -> None:
        frames.append(frame)

    text = 'My username is "john_doe" and my API key is: "key". Ticket 12345?'
    result = await conversation_respond(conversation_id=attached.conversation.id, emit=emit, customer_text=text)

    assert result.outcome == "answered" and result.model_calls == 3
    assert fake.unused == 0 and len(fake.requests) == 3
    first, second, third = (request.json for request in fake.requests)
    assert first["model"] == "test-model" and first["temperature"] == 0
    assert [tool["function"]["name"] for tool in first["tools"]] == [
        "verify_user", "get_ticket_status", "list_my_tickets", "create_ticket", "add_ticket_comment", "request_human"
    ]
    assert first["messages"][0]["role"] == "system"
    assert second["messages"][-1] == {"role": "tool", "tool_call_id": "call_v", "content": '{"success": true}'}
    assert second["messages"][1]["content"] == 'My username is "john_doe" and my API **** is: "****". Ticket 12345?'
    assert json.loads(second["messages"][2]["tool_calls"][0]["function"]["arguments"])["api_key"] == "****"
    assert json.loads(third["messages"][-1]["content"]) == {
        "ticket_id": "12345",
        "status": "Open",
        "issue": "Billing Query",
    }
    assert '"key"' not in json.dumps(third["messages"])

    conversation = await Conversation.objects.select_related("customer").aget(id=attached.conversation.id)
    assert conversation.customer == await User.objects.aget(username="john_doe")
    deltas = [f["text"] for f in frames if f["type"] == "delta"]
    assert "".join(deltas) == "Ticket 12345 is Open: Billing Query." and len(deltas) > 1
    assert all(piece.endswith(" ") for piece in deltas[:-1]), "once secrets are known, deltas go a word at a time"
    assert [f for f in frames if f["type"] == "message"][-1]["text"] == "Ticket 12345 is Open: Billing Query."
    assert frames[-1] == {"type": "idle"}
    turns = [turn async for turn in Turn.objects.filter(conversation=conversation).order_by("seq")]
    assert [t.role for t in turns] == ["system", "user", "assistant", "tool", "assistant", "tool", "assistant"]
    assert all(t.model == MODEL and t.prompt_tokens == 42 for t in turns if t.role == "assistant")
    assert '"key"' not in turns[1].content


# THE CLIENT'S LIFE


@pytest.mark.django_db(transaction=True)
def test_daphne_on_the_openai_backend_answers_and_stops_without_leaving_its_client_open(fake):
    """The client's aiohttp connections are closed before daphne's event loop stops, not left for
    aiohttp to report at every stop ("Unclosed client session")."""
    fake.script(stream_reply(text_deltas("Hello ", "from the endpoint.")))
    port = free_port()
    ARTIFACTS.mkdir(exist_ok=True)
    log = ARTIFACTS / f"openai-daphne-{port}.log"
    log.write_bytes(b"")
    environment = daphne_environment() | {
        "CHAT_BACKEND": "openai", "OPENAI_BASE_URL": fake.base_url, "OPENAI_API_KEY": "test", "CHAT_MODEL": MODEL,
    }
    server = ChatServer(port=port, environment=environment, log=log)
    server.start()
    try:
        session = SessionStore()
        session.create()
        with live.socket(server, session.session_key) as ws:
            frames = live.until_idle(ws)
    finally:
        server.stop()
    assert [f["text"] for f in frames if f["type"] == "message"] == ["Hello from the endpoint."]
    output = log.read_text()
    assert "Unclosed" not in output, output
    log.unlink()
