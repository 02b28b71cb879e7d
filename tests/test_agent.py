"""The agent loop on its own: a scripted model, an in-memory transcript, fake tools. No database."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Iterable
from typing import Any

import pytest

from chat.agent import FALLBACK_REPLY, Bounds, ModelError, ModelReply, ToolCall, ToolOutcome, run_turn
from chat.secrets import MASK, mask_messages, mask_text
from tests.support.models import ScriptedModel

SYSTEM = {"role": "system", "content": "You are a support agent."}
VERIFY_SCHEMA = {"type": "function", "function": {"name": "verify_user", "parameters": {"type": "object"}}}
TICKET_SCHEMA = {"type": "function", "function": {"name": "get_ticket_status", "parameters": {"type": "object"}}}


class MemoryTranscript:
    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []
        self.appends: list[dict[str, Any]] = []
        self.errors: list[tuple[str, str]] = []

    async def append(
        self, messages, *, reply=None, outcomes=None, secrets: Iterable[str] = (), fallback=False, behind=False
    ) -> list[dict[str, Any]]:
        stored = mask_messages(copy.deepcopy(messages), secrets)
        self.messages.extend(stored)
        self.appends.append(
            {"messages": stored, "reply": reply, "outcomes": outcomes, "secrets": list(secrets), "fallback": fallback}
        )
        return stored

    async def record_error(self, code: str, message: str) -> None:
        self.errors.append((code, message))


class FakeTools:
    """A ``ToolRunner`` whose tools are plain callables taking the parsed arguments."""

    def __init__(self, **tools: Callable[..., ToolOutcome]) -> None:
        self.tools = tools
        self.schemas = [VERIFY_SCHEMA, TICKET_SCHEMA]
        self.ran: list[ToolCall] = []

    def display_arguments(self, call: ToolCall) -> dict[str, Any] | None:
        arguments = json.loads(call.arguments)
        return {key: MASK if key == "api_key" else value for key, value in arguments.items()}

    def arguments_to_store(self, call: ToolCall) -> str:
        return call.arguments

    async def run(self, call: ToolCall) -> ToolOutcome:
        self.ran.append(call)
        return self.tools[call.name](**json.loads(call.arguments))


def verify_user(username: str, api_key: str) -> ToolOutcome:
    result = {"success": username == "john_doe" and api_key == "key"}
    return ToolOutcome(json.dumps(result), is_error=False, result=result, secrets=(api_key,))


def get_ticket_status(ticket_id: str) -> ToolOutcome:
    result = {"ticket_id": ticket_id, "status": "Open", "issue": "Billing Query"}
    return ToolOutcome(json.dumps(result), is_error=False, result=result)


def call(call_id: str, name: str, **arguments: Any) -> ToolCall:
    return ToolCall(call_id, name, json.dumps(arguments))


def assert_valid_history(messages: list[dict[str, Any]]) -> None:
    """Every assistant tool call is followed at once by exactly one result per call id."""
    index = 0
    while index < len(messages):
        message = messages[index]
        assert message["role"] != "tool", f"a tool result without its call at {index}"
        index += 1
        if message["role"] == "assistant" and message.get("tool_calls"):
            wanted = [c["id"] for c in message["tool_calls"]]
            answered = [m["tool_call_id"] for m in messages[index : index + len(wanted)] if m["role"] == "tool"]
            assert answered == wanted
            index += len(wanted)


class Frames(list):
    async def __call__(self, frame: dict[str, Any]) -> None:
        self.append(frame)

    def of(self, kind: str) -> list[dict[str, Any]]:
        """The frames of that type; for ``message``, the assistant's only (the customer's is shown first)."""
        return [frame for frame in self if frame["type"] == kind and frame.get("role") != "user"]


async def turn(model, *, history=None, text=None, tools=None, transcript=None, frames=None, max_calls=8):
    history = history if history is not None else [dict(SYSTEM)]
    result = await run_turn(
        model=model,
        tools=tools or FakeTools(verify_user=verify_user, get_ticket_status=get_ticket_status),
        transcript=transcript or MemoryTranscript(),
        history=history,
        emit=frames if frames is not None else Frames(),
        customer_text=text,
        bounds=Bounds(max_model_calls=max_calls),
    )
    return result, history


async def test_greeting_is_one_model_call_with_only_the_system_message():
    model = ScriptedModel(ModelReply("Hello! How can I help?"))
    transcript, frames = MemoryTranscript(), Frames()
    result, history = await turn(model, transcript=transcript, frames=frames)
    assert result.outcome == "answered" and result.model_calls == 1
    assert model.calls == 1
    assert model.requests[0] == [SYSTEM]
    assert model.tools_offered[0] == [VERIFY_SCHEMA, TICKET_SCHEMA]
    assert transcript.messages == [{"role": "assistant", "content": "Hello! How can I help?"}]
    assert history == [SYSTEM, {"role": "assistant", "content": "Hello! How can I help?"}]
    assert frames.of("message") == [{"type": "message", "role": "assistant", "text": "Hello! How can I help?"}]


async def test_plain_answer_stores_the_question_then_the_answer_with_its_reply_metadata():
    reply = ModelReply("We open at nine.", model="m-1", latency_ms=12, prompt_tokens=30, completion_tokens=5)
    model = ScriptedModel(reply)
    transcript = MemoryTranscript()
    result, history = await turn(model, text="When do you open?", transcript=transcript)
    assert result.outcome == "answered"
    assert model.requests[0] == [SYSTEM, {"role": "user", "content": "When do you open?"}]
    assert transcript.messages == [
        {"role": "user", "content": "When do you open?"},
        {"role": "assistant", "content": "We open at nine."},
    ]
    assert transcript.appends[0]["reply"] is None
    assert transcript.appends[1]["reply"] is reply
    assert history[-1] == {"role": "assistant", "content": "We open at nine."}


async def test_deltas_are_emitted_in_order_before_the_whole_message():
    model = ScriptedModel(ModelReply("Your ticket is open."))
    frames = Frames()
    await turn(model, text="status?", frames=frames)
    deltas = frames.of("delta")
    assert [d["text"] for d in deltas] == ["Your ", "ticket ", "is ", "open."]
    assert frames.index(deltas[-1]) < frames.index(frames.of("message")[0])


async def test_a_tool_call_then_an_answer():
    model = ScriptedModel(
        ModelReply("", [call("c1", "get_ticket_status", ticket_id="12345")]),
        ModelReply("Ticket 12345 is Open."),
    )
    tools = FakeTools(verify_user=verify_user, get_ticket_status=get_ticket_status)
    transcript, frames = MemoryTranscript(), Frames()
    result, history = await turn(model, text="12345 please", tools=tools, transcript=transcript, frames=frames)

    assert result.outcome == "answered" and result.model_calls == 2
    assert [c.name for c in tools.ran] == ["get_ticket_status"]
    second = model.requests[1]
    assert second[-2]["tool_calls"][0]["function"] == {
        "name": "get_ticket_status",
        "arguments": '{"ticket_id": "12345"}',
    }
    assert second[-1] == {
        "role": "tool",
        "tool_call_id": "c1",
        "content": '{"ticket_id": "12345", "status": "Open", "issue": "Billing Query"}',
    }
    assert [m["role"] for m in transcript.messages] == ["user", "assistant", "tool", "assistant"]
    assert_valid_history(history)
    tool_frames = frames.of("tool")
    assert [(f["status"], f["id"]) for f in tool_frames] == [("started", "c1"), ("done", "c1")]
    assert tool_frames[0]["arguments"] == {"ticket_id": "12345"}
    assert tool_frames[1]["result"]["status"] == "Open"


async def test_several_tool_calls_in_one_response_run_in_order_and_each_is_answered():
    calls = [call(f"c{n}", "get_ticket_status", ticket_id=t) for n, t in enumerate(["111", "222", "333"])]
    model = ScriptedModel(ModelReply("", calls), ModelReply("All three are open."))
    tools = FakeTools(verify_user=verify_user, get_ticket_status=get_ticket_status)
    transcript = MemoryTranscript()
    _, history = await turn(model, text="111, 222 and 333", tools=tools, transcript=transcript)

    assert [json.loads(c.arguments)["ticket_id"] for c in tools.ran] == ["111", "222", "333"]
    step = transcript.appends[1]["messages"]  # the call and all its results, stored together
    assert [m["role"] for m in step] == ["assistant", "tool", "tool", "tool"]
    assert [m["tool_call_id"] for m in step[1:]] == ["c0", "c1", "c2"]
    assert [json.loads(m["content"])["ticket_id"] for m in step[1:]] == ["111", "222", "333"]
    assert_valid_history(history)
    assert_valid_history(model.requests[1])


async def test_text_spoken_alongside_tool_calls_is_kept_and_shown():
    model = ScriptedModel(
        ModelReply("Let me check.", [call("c1", "get_ticket_status", ticket_id="1")]), ModelReply("It is open.")
    )
    transcript, frames = MemoryTranscript(), Frames()
    await turn(model, text="ticket 1", transcript=transcript, frames=frames)
    assert transcript.messages[1]["content"] == "Let me check."
    assert [f["text"] for f in frames.of("message")] == ["Let me check.", "It is open."]


async def test_the_model_call_bound_ends_with_a_polite_fallback_and_a_valid_history():
    model = ScriptedModel(*(ModelReply("", [call(f"c{n}", "get_ticket_status", ticket_id=str(n))]) for n in range(3)))
    transcript, frames = MemoryTranscript(), Frames()
    result, history = await turn(model, text="loop forever", transcript=transcript, frames=frames, max_calls=3)

    assert result.outcome == "fallback" and result.model_calls == 3
    assert model.calls == 3
    assert history[-1] == {"role": "assistant", "content": FALLBACK_REPLY}
    assert transcript.appends[-1]["fallback"] is True
    assert all(a["fallback"] is False for a in transcript.appends[:-1])
    assert frames.of("message")[-1] == {
        "type": "message",
        "role": "assistant",
        "text": FALLBACK_REPLY,
        "fallback": True,
    }
    assert_valid_history(history)
    assert_valid_history(transcript.messages)
    assert sum(1 for m in transcript.messages if m["role"] == "tool") == 3


async def test_a_model_error_is_recorded_and_emitted_and_the_next_turn_works():
    model = ScriptedModel(
        ModelReply("", [call("c1", "get_ticket_status", ticket_id="12345")]),
        ModelError("model_busy", "The assistant is very busy right now."),
        ModelReply("Ticket 12345 is Open."),
    )
    transcript, frames = MemoryTranscript(), Frames()
    history = [dict(SYSTEM)]
    result, _ = await turn(model, history=history, text="12345?", transcript=transcript, frames=frames)

    assert result.outcome == "error" and result.model_calls == 2
    assert transcript.errors == [("model_busy", "The assistant is very busy right now.")]
    assert frames.of("error") == [
        {"type": "error", "code": "model_busy", "message": "The assistant is very busy right now."}
    ]
    assert frames.of("message") == []
    # Whole steps only: the question, then the tool call with its result; no assistant text.
    assert [m["role"] for m in transcript.messages] == ["user", "assistant", "tool"]
    assert_valid_history(history)

    result, _ = await turn(model, history=history, text="Try again?", transcript=transcript)
    assert result.outcome == "answered"
    assert model.requests[-1][-1] == {"role": "user", "content": "Try again?"}
    assert_valid_history(model.requests[-1])
    assert history[-1] == {"role": "assistant", "content": "Ticket 12345 is Open."}


async def test_a_model_error_on_the_first_call_stores_only_the_question():
    model = ScriptedModel(ModelError("model_timeout", "Too slow."))
    transcript = MemoryTranscript()
    history = [dict(SYSTEM)]
    result, _ = await turn(model, history=history, text="hello", transcript=transcript)
    assert result.outcome == "error"
    assert transcript.messages == [{"role": "user", "content": "hello"}]
    assert history == [SYSTEM, {"role": "user", "content": "hello"}]


# SECRETS

SEED_CREDENTIALS = 'Sure, my username is "john_doe" and my API key is: "key"'


def test_mask_text_masks_every_whole_token_quoted_or_not():
    assert mask_text(SEED_CREDENTIALS, ["key"]) == 'Sure, my username is "john_doe" and my API **** is: "****"'
    assert mask_text("my key is 'key'", ["key"]) == "my **** is '****'"
    assert mask_text('"sk_live_abc" or sk_live_abc', ["sk_live_abc"]) == '"****" or ****', "typed twice, both masked"
    assert mask_text("keys and monkey stay", ["key"]) == "keys and monkey stay"
    assert mask_text("nothing secret here", ["key"]) == "nothing secret here"
    assert mask_text("the key: sk_live_abc.", ["sk_live_abc"]) == "the key: ****."
    assert mask_text("sk_live_abcdef is not sk_live_abc", ["sk_live_abc"]) == "sk_live_abcdef is not ****"
    assert mask_text("empty secrets are ignored", [""]) == "empty secrets are ignored"


def test_mask_messages_masks_argument_values_never_argument_keys():
    messages = [
        {"role": "user", "content": SEED_CREDENTIALS},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [call("c1", "verify_user", username="john_doe", api_key="key").as_api()],
        },
        {"role": "tool", "tool_call_id": "c1", "content": '{"success": true}'},
    ]
    masked = mask_messages(messages, ["key"])
    assert masked[0]["content"] == 'Sure, my username is "john_doe" and my API **** is: "****"'
    arguments = json.loads(masked[1]["tool_calls"][0]["function"]["arguments"])
    assert arguments == {"username": "john_doe", "api_key": MASK}
    assert masked[2] == messages[2]
    # The input is not changed in place.
    assert messages[0]["content"] == SEED_CREDENTIALS
    assert json.loads(messages[1]["tool_calls"][0]["function"]["arguments"])["api_key"] == "key"


async def test_the_history_sent_to_the_model_after_verification_is_masked():
    model = ScriptedModel(
        ModelReply("", [call("c1", "verify_user", username="john_doe", api_key="key")]),
        ModelReply("You're verified."),
    )
    transcript, frames = MemoryTranscript(), Frames()
    _, history = await turn(model, text=SEED_CREDENTIALS, transcript=transcript, frames=frames)

    after = model.requests[1]
    assert after[1] == {"role": "user", "content": 'Sure, my username is "john_doe" and my API **** is: "****"'}
    assert json.loads(after[2]["tool_calls"][0]["function"]["arguments"]) == {"username": "john_doe", "api_key": MASK}
    assert '"key"' not in json.dumps(after)
    assert history[1]["content"].endswith('"****"')
    # Stored: the step is masked, and the transcript is told which secret to mask in earlier turns.
    step = transcript.appends[1]
    assert step["secrets"] == ["key"]
    assert json.loads(step["messages"][0]["tool_calls"][0]["function"]["arguments"])["api_key"] == MASK
    started = frames.of("tool")[0]
    assert started["arguments"] == {"username": "john_doe", "api_key": MASK}


@pytest.mark.parametrize("max_calls", [1, 2])
async def test_the_bound_counts_model_calls(max_calls):
    replies = [ModelReply("", [call(f"c{n}", "get_ticket_status", ticket_id="1")]) for n in range(max_calls)]
    model = ScriptedModel(*replies, ModelReply("never reached"))
    result, _ = await turn(model, text="go", max_calls=max_calls)
    assert result.outcome == "fallback"
    assert model.calls == max_calls


async def test_the_customers_message_is_stored_before_anyone_is_shown_it():
    transcript = MemoryTranscript()
    shown_when_stored: list[bool] = []

    class Watching(Frames):
        async def __call__(self, frame: dict[str, Any]) -> None:
            if frame["type"] == "message" and frame["role"] == "user":
                shown_when_stored.append(any(m["content"] == frame["text"] for m in transcript.messages))
            await super().__call__(frame)

    await turn(ScriptedModel(ModelReply("Hi.")), text="hello there", transcript=transcript, frames=Watching())
    assert shown_when_stored == [True]
