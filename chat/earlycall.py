"""A turn's first model call, started while the turn's first database step runs.

A turn's first step (``runtime.turn_start``) counts the customer's message, stores it and reads the history
the model is then called with: a crossing to a database thread and, on PostgreSQL, four round trips, a few
milliseconds on every turn's path before the model is even asked. Yet the process that ran a
conversation's previous turn knows what that step will read: the history as that turn left it, and the
message just received. So the model is called at once with that (``EarlyCall``), side by side with the
step, and the turn's own first model call takes the early call's reply (``EarlyModel``) when, and only
when, it asks exactly the same: the same messages, tools and model, as built from what the step really
read. Otherwise the early call is cancelled and the model is called afresh: a wasted request, never a
wrong answer. Nothing of the early call is shown before the turn's own call takes it (its deltas are
held), so every frame still follows the step that stores what it shows.

An early call sends the model nothing a turn would not send it:

* the history this process expects (``expect``): the one its own last turn of the conversation left, as
  stored, all of which the model was sent in that turn (or the system prompt of a conversation it has
  just started). A socket connecting to the conversation (it may come verified, from a signed-in page)
  forgets it, and so does every turn that starts;
* the customer's message as the turn will give it to the model: as typed in a conversation not verified
  (its turns send it so: a key given again must reach ``verify_user``); in a verified one, masked by the
  conversation's secrets and by its customer's keys, which are read from the database once the message is
  admitted, in the turn's first crossing, and which that step then masks with too (not read twice);
* only while every listener of the conversation is a customer socket of this process (the caller says so,
  from ``fanout``): no turn of another process can have changed it (verified it, learnt a secret) meanwhile.

A message is sent early only once the flood limits admitted it (the turn's first step tells the event loop
from its database thread, and goes on storing it meanwhile), and never past the conversation's length
limit: a refused message is never sent to the model, early or not. A message that must wait for a running
turn is never sent early. A turn that does not call the model after all (a person took the conversation
meanwhile) cancels its early call: a wasted request at most per answered turn, since the expectation is
taken by the first message that uses it, and only an answered turn leaves a new one.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from django.conf import settings

from chat.agent import ChatModel, Message, ModelReply
from chat.history import trim_history
from chat.secrets import SecretKeeper

# Conversations whose next turn this process expects (the least recently used go first); each holds at most
# what the model is sent (the history trimmed to CHAT_HISTORY_TOKEN_BUDGET), and is forgotten when the
# conversation's last socket here closes.
EXPECTED_KEPT = 1024


@dataclass(frozen=True)
class Expected:
    """What a conversation's next turn will read, as this process's last turn of it left it."""

    history: list[Message]  # as stored and trimmed: the model was sent all of it in that turn
    customer_messages: int  # in the whole history (the length limit counts them)
    customer_id: int | None  # verified as this customer
    digests: frozenset[str]  # of the secrets given in it

    def request(self, text: str | None, keeper: SecretKeeper) -> list[Message]:
        """What the turn answering ``text`` (None: the greeting) will ask the model: the customer's message
        as typed when the conversation is not verified, else masked by ``keeper`` (this conversation's
        secrets and its customer's keys, read now), as the turn stores it and the model reads it."""
        history = self.history
        if text is not None:
            message = {"role": "user", "content": text}
            if self.customer_id is not None:
                (message,) = keeper.mask_messages([message])
            history = [*history, message]
        return trim_history(history, settings.CHAT_HISTORY_TOKEN_BUDGET)


_expected: OrderedDict[uuid.UUID, Expected] = OrderedDict()


def expect(
    conversation_id: uuid.UUID, history: list[Message], customer_id: int | None, digests: frozenset[str]
) -> None:
    """What the conversation's next turn will read, as this process just left it: kept as the model is sent
    it (trimming the trimmed history with the next message in keeps what trimming the whole would)."""
    asked = sum(message["role"] == "user" for message in history)
    history = trim_history(history, settings.CHAT_HISTORY_TOKEN_BUDGET)
    _expected[conversation_id] = Expected(list(history), asked, customer_id, frozenset(digests))
    _expected.move_to_end(conversation_id)
    while len(_expected) > EXPECTED_KEPT:
        _expected.popitem(last=False)


def expected(conversation_id: uuid.UUID, text: str | None) -> Expected | None:
    """What is expected of the conversation's next turn, answering ``text`` (None: the greeting of a
    conversation just started); None when nothing is, or when the message will be refused for the
    conversation's length (never a model call for it). Takes it: one early call per answered turn at most."""
    expectation = _expected.pop(conversation_id, None)
    if expectation is None or not settings.CHAT_EARLY_MODEL_CALL:
        return None
    if text is not None and expectation.customer_messages >= settings.CHAT_MAX_CUSTOMER_MESSAGES:
        return None
    return expectation


def forget(conversation_id: uuid.UUID) -> None:
    _expected.pop(conversation_id, None)


class EarlyCall:
    """One model call started before its turn knows it will make it; its deltas held until ``take``."""

    def __init__(self, model: ChatModel, messages: list[Message], tools: list[Message]) -> None:
        self.model = model
        self.messages = messages
        self.tools = tools
        self.taken = False
        self._held: list[str] = []
        self._on_delta: Callable[[str], Awaitable[None]] | None = None
        self._task = asyncio.ensure_future(model.complete(messages, tools, self._delta))
        self._task.add_done_callback(_retrieved)

    async def _delta(self, text: str) -> None:
        if self._on_delta is None:
            self._held.append(text)
        else:
            await self._on_delta(text)

    def asks(self, model: ChatModel, messages: list[Message], tools: list[Message]) -> bool:
        """Whether a call of ``model`` with these is the one already made."""
        return model is self.model and (tools is self.tools or tools == self.tools) and messages == self.messages

    async def take(self, on_delta: Callable[[str], Awaitable[None]]) -> ModelReply:
        """The call's reply, its deltas so far given to ``on_delta`` first, the rest as they come."""
        self.taken = True
        try:
            while self._held:
                await on_delta(self._held.pop(0))
            self._on_delta = on_delta  # no await since the last held piece: none can be skipped
            return await self._task
        except BaseException:
            self._task.cancel()
            raise

    def cancel(self) -> None:
        """Drop the call, unless its turn took it (a no-op once done)."""
        if not self.taken:
            self._task.cancel()


def _retrieved(task: asyncio.Future[Any]) -> None:
    """A failed call nobody took is not an error of its own (the turn's call, made afresh, reports one)."""
    if not task.cancelled():
        task.exception()


class EarlyModel:
    """The turn's ``ChatModel``: its first call takes the early call's reply when it asks exactly the same,
    else cancels it and calls the model afresh."""

    def __init__(self, model: ChatModel, early: EarlyCall) -> None:
        self.model = model
        self.name = model.name
        self.early: EarlyCall | None = early

    async def complete(
        self, messages: list[Message], tools: list[Message], on_delta: Callable[[str], Awaitable[None]]
    ) -> ModelReply:
        early, self.early = self.early, None
        if early is not None:
            if early.asks(self.model, messages, tools):
                return await early.take(on_delta)
            early.cancel()
        return await self.model.complete(messages, tools, on_delta)
