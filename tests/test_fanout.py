"""Who hears a turn's frames (``chat.fanout``): straight to the customer's socket while it is the group's only
member, without asking the layer who listens per frame, and through the layer as soon as anyone else joins,
mid-reply included.

Runs on the defaults (in-memory layer) and on Redis (``REDIS_URL``), through the whole ASGI stack.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from chat import fanout
from chat.agent import Message, ModelReply
from chat.consumers import ChatConsumer, conversation_group
from tests.support.history import stored_turns
from tests.support.sockets import (
    TIMEOUT,
    assistant_texts,
    new_session_key,
    of_type,
    open_chat,
    operator_socket,
    say,
    staff_headers,
    until_idle,
)

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("no_turn_left_running")]


@pytest.fixture
def operators(demo_data) -> None:
    from chat.operators.access import roles_ensure

    roles_ensure()


@pytest.fixture
def members_read(monkeypatch) -> list[str]:
    """The groups whose members the fanout read from the layer, in order."""
    read: list[str] = []
    members = fanout._members

    async def counted(layer: Any, group: str) -> set[str] | None:
        read.append(group)
        return await members(layer, group)

    monkeypatch.setattr(fanout, "_members", counted)
    return read


class PausingModel:
    """Greets; to a customer's message says "one ", waits for ``go``, then "two three." (a word per delta)."""

    name = "pausing"

    def __init__(self) -> None:
        self.paused = asyncio.Event()
        self.go = asyncio.Event()

    async def complete(
        self, messages: list[Message], tools: list[Message], on_delta: Callable[[str], Awaitable[None]]
    ) -> ModelReply:
        if messages[-1]["role"] != "user":
            await on_delta("Hello!")
            return ModelReply("Hello!")
        await on_delta("one ")
        self.paused.set()
        await self.go.wait()
        for word in ("two ", "three."):
            await on_delta(word)
        return ModelReply("one two three.")


async def until(condition: Callable[[], bool]) -> None:
    """Poll the fanout's state (nothing signals it) until ``condition`` holds."""

    async def polled() -> None:
        while not condition():  # noqa: ASYNC110 - no event to wait on: a socket's handler sets plain state
            await asyncio.sleep(0.005)

    await asyncio.wait_for(polled(), timeout=TIMEOUT)


async def test_a_conversation_heard_only_by_its_customer_reads_its_listeners_once(chat_model, members_read):
    customer, conversation_id = await open_chat(None)
    await until_idle(customer)  # the greeting: its first frame reads the group's members
    for text in ("Hello", "What can you do?", "My ticket is 12345"):
        frames = await say(customer, text)
        assert assistant_texts(frames)
    await customer.disconnect()
    assert members_read == [conversation_group(conversation_id)]  # not once per frame, nor once per turn


async def test_someone_watching_from_elsewhere_is_read_again_at_each_turn_until_they_leave(
    chat_model, operators, members_read
):
    customer, conversation_id = await open_chat(None)
    await until_idle(customer)
    operator = operator_socket(conversation_id, await staff_headers("operator"))
    assert (await operator.connect(timeout=TIMEOUT))[0]
    frames = await say(customer, "Hello")
    assert of_type(await until_idle(operator), "message")[-1]["text"] == assistant_texts(frames)[-1]
    await say(customer, "What can you do?")
    assert assistant_texts(await until_idle(operator))
    await operator.disconnect()
    await say(customer, "Thanks")
    await say(customer, "Bye")
    await customer.disconnect()
    # The greeting's read; two turns watched, read each; the first turn after the operator left finds the
    # customer alone, and the last needs no read.
    assert len(members_read) == 4


async def test_an_operator_who_starts_watching_mid_reply_gets_the_rest_of_it_deltas_included(
    operators, settings
):
    from chat import llm

    settings.CHAT_DELTA_COALESCE_MS = 0  # every word its own delta
    model = PausingModel()
    with llm.chat_model_override(model):
        customer, conversation_id = await open_chat(None)
        await until_idle(customer)  # the greeting
        await customer.send_json_to({"type": "message", "text": "Hello"})
        await asyncio.wait_for(model.paused.wait(), timeout=TIMEOUT)

        operator = operator_socket(conversation_id, await staff_headers("operator"))
        assert (await operator.connect(timeout=TIMEOUT))[0]
        group = conversation_group(conversation_id)
        await until(lambda: not fanout.known_ours(group))  # the customer's process heard it join
        model.go.set()

        watched = await until_idle(operator)
        heard = await until_idle(customer)
    await operator.disconnect()
    await customer.disconnect()

    assert [f["text"] for f in of_type(watched, "delta")] == ["two ", "three."]
    assert assistant_texts(watched) == ["one two three."]
    assert "".join(f["text"] for f in of_type(heard, "delta")) == "one two three."
    assert assistant_texts(heard) == ["one two three."]


async def test_a_join_heard_while_the_members_are_read_is_not_forgotten(chat_model, operators, monkeypatch):
    """The members read just before an operator joined answer "only the customer"; the join, heard while
    that answer was on its way, wins: the turn goes through the layer and the operator hears it."""
    members = fanout._members
    headers = await staff_headers("operator")
    operators_: list[Any] = []

    async def read_then_operator_joins(layer: Any, group: str) -> set[str] | None:
        before = await members(layer, group)
        operator = operator_socket(uuid.UUID(group.removeprefix("conversation.")), headers)
        assert (await operator.connect(timeout=TIMEOUT))[0]
        operators_.append(operator)
        await until(lambda: fanout._local[group].joins_heard > 0)
        return before

    monkeypatch.setattr(fanout, "_members", read_then_operator_joins)
    customer, _ = await open_chat(None)  # its greeting's first frame reads the members
    greeting = await until_idle(customer)
    (operator,) = operators_
    watched = await until_idle(operator)
    await operator.disconnect()
    await customer.disconnect()
    assert assistant_texts(watched) == assistant_texts(greeting) != []


async def test_a_turn_whose_customer_left_sends_nothing_through_the_layer_while_nobody_listens(
    settings, members_read
):
    """With none of this process's sockets in the group no join is heard here: who listens is read before
    each frame but a delta, and while nobody does the frames go nowhere (no group send per delta)."""
    from channels.layers import get_channel_layer

    from chat import consumers, llm

    settings.CHAT_DELTA_COALESCE_MS = 0
    model = PausingModel()
    with llm.chat_model_override(model):
        customer, conversation_id = await open_chat(None)
        await until_idle(customer)
        group = conversation_group(conversation_id)
        await customer.send_json_to({"type": "message", "text": "Hello"})
        while (await customer.receive_json_from(timeout=TIMEOUT)).get("text") != "one ":
            pass  # the customer leaves once the reply has begun on its screen
        await customer.disconnect()
        await until(lambda: group not in fanout._local)

        layer = get_channel_layer()
        sent: list[str] = []
        group_send = layer.group_send

        async def counted(group_: str, message: dict[str, Any]) -> None:
            sent.append(group_)
            await group_send(group_, message)

        layer.group_send = counted
        members_read.clear()
        model.go.set()
        await asyncio.wait_for(asyncio.gather(*consumers.running_turns), timeout=TIMEOUT)

    assert group not in sent
    assert members_read == [group] * 3  # the first delta after the customer left, the answer, idle
    assert [text for role, text in await stored_turns(conversation_id) if role == "assistant"][-1] == "one two three."


async def test_a_frame_handed_straight_to_a_connecting_socket_comes_after_its_replay(chat_model, monkeypatch):
    """A turn of the conversation running in this process hands its frames straight to the socket: one that
    comes while the socket sends its conversation frame and replay waits for them, so the page never gets a
    live frame in the middle of the history it is redrawing."""
    session_key = await new_session_key()
    first, conversation_id = await open_chat(session_key)
    await until_idle(first)
    await say(first, "Hello")
    await first.disconnect()
    live = {"type": "delta", "text": "live "}
    replay = ChatConsumer._live_replay

    async def replay_while_a_turn_speaks(self: ChatConsumer, frames: list[dict[str, Any]]) -> list[dict[str, Any]]:
        await fanout.ConversationFanout(self.channel_layer, self.group, origin="a turn")(live)
        return await replay(self, frames)

    monkeypatch.setattr(ChatConsumer, "_live_replay", replay_while_a_turn_speaks)
    second, resumed_id = await open_chat(session_key)
    frames = await until_idle(second)
    await second.disconnect()
    replayed = [frame for frame in frames if frame.get("replay")]
    assert resumed_id == conversation_id and len(replayed) >= 3, frames  # greeting, "Hello", its answer
    assert frames.count(live) == 1, frames
    assert frames.index(live) > frames.index(replayed[-1]), frames
