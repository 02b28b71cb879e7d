"""Runs the agent for a stored conversation: the glue between the agent loop and Django.

The consumer and the ``chat`` command both come here. Every database access is a sync function
crossed once with ``database_sync_to_async``: one crossing to load a turn's context, one per model
step to store it, one per tool call. Nothing touches the database per streamed token.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils.module_loading import import_string

from chat import earlycall, handoff, llm, protocol, selectors, services
from chat.agent import (
    Bounds,
    ConfirmRequest,
    Emit,
    Message,
    ModelReply,
    StoredMessage,
    ToolCall,
    ToolOutcome,
    TurnResult,
    run_turn,
)
from chat.confirmations import ChannelConfirmer, confirmations_supersede_statement
from chat.db import database_sync_to_async
from chat.models import Conversation, Holder
from chat.protocol import CustomerError
from chat.secrets import MaskedStream, SecretKeeper
from chat.toolbox import Toolbox, ToolContext, get_toolbox
from chat.turnlock import arrivals_in_order, conversation_lock, lease_given_back

logger = logging.getLogger(__name__)

INTERNAL_ERROR = "Something went wrong on our side. Please try again in a moment."
TOO_LONG = (
    "This conversation has reached its length limit. Please start a new conversation "
    "(the \u201cNew conversation\u201d button) to go on."
)

SecretFinder = Callable[[str], list[str]]

_settling: set[asyncio.Future[None]] = set()  # writes of cancelled turns, still going on


@functools.cache
def _secret_finder_factory() -> Callable[[int], SecretFinder] | None:
    path = settings.CHAT_SECRET_FINDER
    return import_string(path) if path else None


def conversation_secret_keeper(conversation: Conversation) -> SecretKeeper:
    """The conversation's secrets for a turn: the digests of those given in it, and (through
    ``CHAT_SECRET_FINDER``) the verified customer's own keys. Sync: may query once, never per token."""
    return secret_keeper(frozenset(conversation.secret_digests), customer_secret_finder(conversation.customer_id))


def customer_secret_finder(customer_id: int | None) -> SecretFinder | None:
    """``CHAT_SECRET_FINDER``'s finder of the customer's own secrets (None: not verified, or no finder).
    Sync: may query once."""
    factory = _secret_finder_factory()
    return factory(customer_id) if factory and customer_id else None


def secret_keeper(digests: frozenset[str], customer_finder: SecretFinder | None) -> SecretKeeper:
    """A keeper of the secrets known by these digests and found by ``customer_finder``: no query."""

    def is_secret(token: str) -> bool:
        return services.secret_digest(token) in digests or bool(customer_finder and token in customer_finder(token))

    return SecretKeeper(is_secret=is_secret if digests or customer_finder else None)


class StoredTranscript:
    """The agent's ``Transcript``: appends to the conversation's turns, every secret masked first.

    Secrets learnt with the messages (a tool's secret arguments) join the keeper, and are masked in the
    earlier turns and remembered by digest in the same transaction.

    A write ``behind`` (a tool step's: the model is called again meanwhile, its wait on the database off
    the turn's path) runs as a task of its own; every later database step of the turn, this transcript's or
    its tools' (``settle``), and the turn's end wait for it first, so the turn's writes keep their order and
    a failed write fails the turn at its next step.
    """

    def __init__(self, conversation_id: uuid.UUID, keeper: SecretKeeper) -> None:
        self.conversation_id = conversation_id
        self.keeper = keeper
        self._writing: asyncio.Future[Any] | None = None

    async def settle(self) -> None:
        """Wait for a write still going on; raise what it raised."""
        writing, self._writing = self._writing, None
        if writing is not None:
            await writing

    async def settle_quietly(self) -> None:
        """``settle``, logging what the write raised (the turn is failing already)."""
        try:
            await self.settle()
        except Exception:
            logger.exception("a write of conversation %s failed", self.conversation_id)

    async def append(
        self,
        messages: list[Message],
        *,
        reply: ModelReply | None = None,
        outcomes: Mapping[str, ToolOutcome] | None = None,
        secrets: Iterable[str] = (),
        fallback: bool = False,
        behind: bool = False,
    ) -> list[Message]:
        await self.settle()
        new_secrets = self.keeper.learn(secrets)
        messages = self.keeper.mask_messages(messages)
        meta: dict[str, Any] = {"is_fallback": fallback}
        if reply is not None:
            meta.update(
                model=reply.model,
                latency_ms=reply.latency_ms,
                prompt_tokens=reply.prompt_tokens,
                completion_tokens=reply.completion_tokens,
            )
        tool_results = {
            call_id: (outcome.is_error, self.keeper.mask_frame({"result": outcome.result})["result"])
            for call_id, outcome in (outcomes or {}).items()
        }
        writing = database_sync_to_async(services.turns_append)(
            conversation_id=self.conversation_id,
            messages=messages,
            meta=meta,
            tool_results=tool_results,
            new_secrets=new_secrets,
        )
        if behind:
            self._writing = asyncio.ensure_future(writing)
            return messages
        turns = await writing
        return [StoredMessage(message, turn.seq) for message, turn in zip(messages, turns, strict=True)]

    async def record_error(self, code: str, message: str) -> int:
        await self.settle()
        turn = await database_sync_to_async(services.turn_record_error)(
            conversation_id=self.conversation_id, code=code, message=message
        )
        return turn.seq


class MaskedEmit:
    """``emit`` for a turn: every frame masked by the conversation's secrets before it leaves the server.

    Deltas are coalesced: the first piece of a reply goes at once, later pieces are held until
    ``CHAT_DELTA_COALESCE_MS`` have passed since the last delta sent (checked as each piece arrives) or
    until any other frame, so a reply costs a channel-layer message (and a masking pass) per window, not
    per token. What is sent is masked a whole token at a time (``MaskedStream``), so a secret split across
    pieces is still caught.
    """

    def __init__(self, emit: Emit, keeper: SecretKeeper) -> None:
        self.emit = emit
        self.keeper = keeper
        self.stream = MaskedStream(keeper)
        self.window = settings.CHAT_DELTA_COALESCE_MS / 1000
        self.held = ""
        self.sent_at: float | None = None

    async def __call__(self, frame: protocol.Frame) -> None:
        if frame["type"] == "delta":
            self.held += frame["text"]
            now = time.monotonic()
            if self.sent_at is None or now - self.sent_at >= self.window:
                text, self.held = self.stream.push(self.held), ""
                if text:
                    self.sent_at = now
                    await self.emit(protocol.delta(text))
            return
        rest, self.held, self.sent_at = self.stream.push(self.held) + self.stream.flush(), "", None
        if rest:
            await self.emit(protocol.delta(rest))
        await self.emit(self.keeper.mask_frame(frame))


class ConversationTools:
    """The agent's ``ToolRunner``: the deployment's toolbox, acting for one conversation."""

    def __init__(
        self, toolbox: Toolbox, context: ToolContext, before: Callable[[], Awaitable[None]] | None = None
    ) -> None:
        self.toolbox = toolbox
        self.context = context
        self.schemas = toolbox.schemas
        self.before = before  # awaited before a tool touches the database (the turn's writes in order)

    def display_arguments(self, call: ToolCall) -> dict[str, Any] | None:
        return self.toolbox.display_arguments(call)

    def arguments_to_store(self, call: ToolCall) -> str:
        return self.toolbox.arguments_to_store(call)

    async def run(self, call: ToolCall, *, approved: bool = False) -> ToolOutcome:
        if self.before is not None:
            await self.before()
        return await database_sync_to_async(self.toolbox.run)(call, self.context, approved=approved)

    async def prepare(self, call: ToolCall) -> ConfirmRequest | ToolOutcome | None:
        if not self.toolbox.asks_first(call):  # nothing to ask, nothing to read: no crossing
            return None
        if self.before is not None:
            await self.before()
        return await database_sync_to_async(self.toolbox.prepare)(call, self.context)


@dataclass
class Attached:
    conversation: Conversation
    created: bool
    replay: list[dict[str, Any]]
    waiting: bool = False  # customer messages wait for a turn (their process died before it started)


def conversation_attach(
    *,
    session_key: str,
    client_address: str | None,
    conversation_id: uuid.UUID | None = None,
    new: bool = False,
    before_start: Callable[[], None] | None = None,
) -> Attached:
    """The session's conversation to show, with its replay; a new one when asked or when it has none.

    ``before_start`` runs before a conversation is started and may refuse it by raising.
    """
    conversation = None if new else selectors.conversation_for_session(
        session_key=session_key, conversation_id=conversation_id
    )
    if conversation is None:
        if before_start is not None:
            before_start()
        conversation = services.conversation_start(session_key=session_key, client_address=client_address)
        return Attached(conversation, True, [])
    replay = selectors.conversation_replay_frames(conversation_id=conversation.id)
    if (status := handoff.status_frame(conversation)) is not None:  # the queue has moved since: where it is now
        replay.append(protocol.replayed(status))
    return Attached(conversation, False, replay, waiting=conversation.waiting_messages.exists())


@dataclass
class TurnStart:
    """What a turn starts from, read (and the customer's message taken) in one step."""

    history: list[Message]
    tools: ToolContext
    keeper: SecretKeeper
    holder: str = "agent"  # chat.models.Holder: anything but the assistant means no model call
    digests: frozenset[str] = frozenset()  # of the secrets given in the conversation before the turn
    customer_text: str | None = None  # as typed
    customer_stored: Message | None = None  # as stored (masked)
    too_long: bool = False


@dataclass(frozen=True)
class Arrival:
    """A customer message just received by a socket, not stored yet, and what that socket does with it.

    When the conversation is free at once (the usual case), the turn counts it against the flood limits
    and stores it in the one database step that starts the turn (``turn_start_arriving``). Otherwise
    ``store`` counts it and stores it to wait, so it outlives this process, before the turn waits for the
    conversation. Either way a refusal goes to ``refuse``: the message is not stored and no turn runs.
    """

    text: str
    admit: Callable[[], None]  # sync: counts the message, raises the refusal
    store: Callable[[], Awaitable[None]]  # counts and stores it to wait; raises the refusal
    refuse: Callable[[CustomerError], Awaitable[None]]


KeysRead = tuple[int | None, SecretFinder | None]  # a customer, and the finder of their keys read for them


def turn_start_arriving(
    conversation_id: uuid.UUID, arrival: Arrival, admitted: Callable[[], KeysRead] | None = None
) -> TurnStart:
    """``turn_start`` for a message that arrived at a free conversation: counted (``arrival.admit``, which
    raises the refusal; ``admitted`` is called once it did not, and may read a customer's keys for the turn)
    and then, in the turn's first transaction, queued behind any message already waiting, with a card left
    pending (its process died) dropped, as a message stored to wait drops it."""
    arrival.admit()
    keys = admitted() if admitted is not None else None
    return turn_start(
        conversation_id,
        arrival.text,
        also=[confirmations_supersede_statement(conversation_id=conversation_id)],
        keys=keys,
    )


@transaction.atomic
def turn_start(
    conversation_id: uuid.UUID,
    customer_text: str | None = None,
    *,
    also: Sequence[services.Statement] = (),
    keys: KeysRead | None = None,
) -> TurnStart:
    """One database step to start a turn: queue ``customer_text`` (when given) behind the messages already
    waiting, take the oldest waiting one, store it as the customer's turn (masked) and read the history
    before it, in one transaction. Past ``CHAT_MAX_CUSTOMER_MESSAGES`` the message is taken and not stored
    (``too_long``). Queries stay the same however long the conversation is, but for the history itself; on
    PostgreSQL they go in two round trips (``services.statements_run``), besides ``BEGIN`` and ``COMMIT``.
    ``keys``: the conversation's customer's keys, read just before in this crossing, when it is still theirs.
    """
    conversation, text, rows = services.turn_take(
        conversation_id, customer_text=customer_text, reading=selectors.HISTORY, also=also
    )
    history = selectors.history_messages(rows)
    context = ToolContext(conversation_id, conversation.customer_id, conversation.client_address)
    digests = frozenset(conversation.secret_digests)
    if keys is not None and keys[0] == conversation.customer_id:
        finder = keys[1]  # read a moment ago, in this crossing
    else:
        finder = customer_secret_finder(conversation.customer_id)
    start = TurnStart(
        history,
        context,
        secret_keeper(digests, finder),
        conversation.holder,
        digests=digests,
        customer_text=text,
    )
    if text is None or conversation.holder == Holder.CLOSED:  # a closed conversation takes no more messages
        return start
    if sum(message["role"] == "user" for message in history) >= settings.CHAT_MAX_CUSTOMER_MESSAGES:
        start.too_long = True
        return start
    (stored,) = start.keeper.mask_messages([{"role": "user", "content": text}])
    (turn,) = services.turns_insert(conversation=conversation, messages=[stored], meta={"is_fallback": False})
    start.customer_stored = StoredMessage(stored, turn.seq)
    return start


# THE TURN


def turn_bounds() -> Bounds:
    return Bounds(
        max_model_calls=settings.CHAT_MAX_MODEL_CALLS,
        max_tool_calls_per_reply=settings.CHAT_MAX_TOOL_CALLS_PER_REPLY,
        max_tool_result_chars=settings.CHAT_MAX_TOOL_RESULT_CHARS,
        history_token_budget=settings.CHAT_HISTORY_TOKEN_BUDGET,
    )


def _needs_greeting(history: list[Message]) -> bool:
    return all(message["role"] == "system" for message in history)


async def conversation_respond(
    *,
    conversation_id: uuid.UUID,
    emit: Emit,
    customer_text: str | None = None,
    arrival: Arrival | None = None,
    early_call: bool = False,
) -> TurnResult:
    """Run one turn and report it through ``emit``: answer the conversation's oldest waiting customer
    message (``customer_text``, when given, is stored to wait behind the others first; so is ``arrival``,
    a message a socket has just received), or greet when none waits and the conversation has no greeting
    yet; else do nothing.

    Turns of one conversation never overlap: a turn waits for the one before it, and only then takes its
    message, stores it as the customer's turn and shows it to the conversation's other sockets, so every
    screen shows the stored order. An ``arrival`` is stored before the turn waits, or, when there is
    nothing to wait for, in the turn's first step. A message stored by a process that died waits for the
    next turn, on any process. A message past ``CHAT_MAX_CUSTOMER_MESSAGES`` is refused
    (``conversation_too_long``) without a model call. Every frame is masked by the conversation's secrets
    (``chat.secrets``) before it is emitted.

    ``early_call``: every listener of the conversation is a customer socket of this process, so the model
    may be called for an ``arrival`` (or the greeting) while the turn's first step runs, on what this
    process expects that step to read (``chat.earlycall``).
    """
    model = llm.get_chat_model()
    early: earlycall.EarlyCall | None = None
    text = arrival.text if arrival is not None else None
    expected = earlycall.expected(conversation_id, text) if early_call and customer_text is None else None
    if expected is None:
        earlycall.forget(conversation_id)
    ended = False

    def call_early(customer_finder: SecretFinder | None = None) -> None:
        nonlocal early
        if not ended:
            keeper = secret_keeper(expected.digests, customer_finder)
            early = earlycall.EarlyCall(model, expected.request(text, keeper), get_toolbox().schemas)

    admitted = None
    if expected is not None:
        if arrival is None:
            call_early()  # the greeting: nothing to admit, nothing to mask
        else:
            loop = asyncio.get_running_loop()

            def admitted() -> KeysRead:  # on the database thread, once the flood limits took the message
                finder = customer_secret_finder(expected.customer_id)  # the keys now, which the turn reuses
                with contextlib.suppress(RuntimeError):  # the loop closed (the server stops): no early call
                    loop.call_soon_threadsafe(call_early, finder)
                return expected.customer_id, finder
    stored = False
    gate = arrivals_in_order(conversation_id) if arrival is not None else None
    if gate is not None:
        await gate.acquire()  # a message received after this one is stored after it

    def in_order() -> None:
        nonlocal gate
        if gate is not None:
            gate.release()
            gate = None

    async def store_before_waiting() -> None:
        nonlocal stored
        try:
            await arrival.store()
            stored = True
        finally:
            in_order()

    held = False
    try:
        async with conversation_lock(
            conversation_id, before_waiting=store_before_waiting if arrival else None, release_behind=True
        ):
            held = True
            try:
                if arrival is not None and not stored:
                    try:
                        turn = await database_sync_to_async(turn_start_arriving)(conversation_id, arrival, admitted)
                    except CustomerError as refusal:  # over a flood limit: not stored, no turn
                        in_order()
                        await arrival.refuse(refusal)
                        return TurnResult("error", 0)
                    except Exception:
                        stored = await _kept(arrival)
                        raise
                    finally:
                        in_order()
                else:
                    turn = await database_sync_to_async(turn_start)(conversation_id, customer_text)
                emit = MaskedEmit(emit, turn.keeper)
                if turn.customer_text is None and not _needs_greeting(turn.history):
                    return TurnResult("answered", 0)
                if turn.too_long:
                    await emit(protocol.error("conversation_too_long", TOO_LONG, refused=True))
                    return TurnResult("error", 0)
                if turn.holder != "agent":  # a person is awaited or holds it: enforced here, never in the prompt
                    if turn.customer_text is None:
                        return TurnResult("held", 0)
                    return await handoff.customer_message_while_held(
                        holder=turn.holder, stored=turn.customer_stored, emit=emit
                    )
                transcript = StoredTranscript(conversation_id, turn.keeper)
                # Until verified, a key typed again (after a failed attempt) must reach verify_user.
                read_typed = turn.tools.customer_id is None
                try:
                    result = await run_turn(
                        model=earlycall.EarlyModel(model, early) if early is not None else model,
                        tools=ConversationTools(get_toolbox(), turn.tools, before=transcript.settle),
                        transcript=transcript,
                        history=turn.history,
                        emit=emit,
                        customer_text=turn.customer_text,
                        customer_stored=turn.customer_stored,
                        bounds=turn_bounds(),
                        model_reads_typed_text=read_typed,
                        # A tool that changes data waits here, lock held, for the customer's own answer.
                        confirmer=ChannelConfirmer(conversation_id, emit, turn.keeper.mask_frame),
                    )
                except Exception:
                    await transcript.settle_quietly()  # stored before the conversation is let go
                    raise
                except BaseException:  # cancelled (the server stops): the write goes on, and says if it fails
                    settling = asyncio.ensure_future(transcript.settle_quietly())
                    _settling.add(settling)
                    settling.add_done_callback(_settling.discard)
                    raise
                await transcript.settle()
                await handoff.after_turn(conversation_id=conversation_id, result=result, emit=emit)
                if _expectable(turn, result, read_typed):  # as stored: what the next turn reads
                    earlycall.expect(conversation_id, turn.history, turn.tools.customer_id, turn.digests)
                return result
            except Exception:
                logger.exception("turn failed in conversation %s", conversation_id)
                row = await _record_internal_error(conversation_id)
                await emit(protocol.error("internal_error", INTERNAL_ERROR, **row))
                return TurnResult("error", 0)
    except CustomerError as refusal:
        if held or arrival is None:
            raise
        await arrival.refuse(refusal)  # refused before waiting: the running turn will say idle
        return TurnResult("error", 0)
    except Exception:
        if arrival is not None and not stored and not held:
            await _kept(arrival)  # the conversation could not be taken (its lease's store failed)
        raise
    finally:
        in_order()
        ended = True
        if early is not None:
            early.cancel()  # not taken: the turn did not call the model, or asked something else
        # Once the conversation is free here (its lease still being given back, which whatever asks here
        # next waits for), so a socket hearing idle finds it free (a refusal right after it says idle too);
        # the next turn's first frame needs a database step first, so it never overtakes.
        if held or arrival is None:
            await emit(protocol.idle())
        await lease_given_back(conversation_id)  # behind the idle, and before the turn ends


def _expectable(turn: TurnStart, result: TurnResult, read_typed: bool) -> bool:
    """Whether the history a turn leaves (``run_turn`` extends ``turn.history`` in place) is what the next
    turn will read, and may be sent early (``chat.earlycall``): an answered turn that learnt no secret (the
    model's copy is then masked everywhere, the stored turns only from where each was given), whose
    customer's message the model read as stored, or as typed (``read_typed``) where that is how it was
    stored."""
    typed = {"role": "user", "content": turn.customer_text}
    return (
        result.outcome == "answered"
        and not turn.keeper.known
        and (not read_typed or turn.customer_stored in (None, typed))
    )


async def _kept(arrival: Arrival) -> bool:
    """Store a message whose turn failed before storing it, to wait for the next turn: nothing the customer
    sent is lost to a failure on our side, if the database takes it at all."""
    try:
        await arrival.store()
    except Exception:
        logger.exception("could not keep a customer message whose turn failed to start")
        return False
    return True


async def _record_internal_error(conversation_id: uuid.UUID) -> dict[str, int]:
    """Leave reviewers a trace of the failure, if the database still answers: the error frame's row key."""
    try:
        turn = await database_sync_to_async(services.turn_record_error)(
            conversation_id=conversation_id, code="internal_error", message=INTERNAL_ERROR
        )
    except Exception:
        logger.exception("could not record the failure in conversation %s", conversation_id)
        return {}
    return {"seq": turn.seq}
