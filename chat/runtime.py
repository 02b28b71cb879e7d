"""Runs the agent for a stored conversation: the glue between the agent loop and Django.

The consumer and the ``chat`` command both come here. Every database access is a sync function
crossed once with ``database_sync_to_async``: one crossing to load a turn's context, one per model
step to store it, one per tool call. Nothing touches the database per streamed token.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import uuid
import weakref
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import redis.asyncio
import redis.asyncio.lock
import redis.exceptions
from channels.db import database_sync_to_async
from django.conf import settings
from django.utils.module_loading import import_string

from chat import llm, selectors, services
from chat.agent import Emit, Message, ModelReply, ToolCall, ToolOutcome, TurnResult, mask_messages, mask_text, run_turn
from chat.models import Conversation
from chat.toolbox import Toolbox, ToolContext

logger = logging.getLogger(__name__)

INTERNAL_ERROR = "Something went wrong on our side. Please try again in a moment."
TOO_LONG = (
    "This conversation has reached its length limit. Please start a new conversation "
    "(the \u201cNew conversation\u201d button) to go on."
)

SecretFinder = Callable[[str], list[str]]


@functools.cache
def get_toolbox() -> Toolbox:
    return Toolbox(import_string(path) for path in settings.CHAT_TOOLS)


@functools.cache
def _secret_finder_factory() -> Callable[[int], SecretFinder] | None:
    path = settings.CHAT_SECRET_FINDER
    return import_string(path) if path else None


def secret_finder(customer_id: int | None) -> SecretFinder | None:
    """What finds the verified customer's secrets in free text (``CHAT_SECRET_FINDER``); sync, may query."""
    factory = _secret_finder_factory()
    return factory(customer_id) if factory and customer_id is not None else None


class StoredTranscript:
    """The agent's ``Transcript``: appends to the conversation's turns.

    With ``find_secrets``, the verified customer's secrets found in what the customer or the model
    wrote are masked before it is stored (and in the earlier turns that hold them).
    """

    def __init__(self, conversation_id: uuid.UUID, find_secrets: SecretFinder | None = None) -> None:
        self.conversation_id = conversation_id
        self.find_secrets = find_secrets

    async def append(
        self,
        messages: list[Message],
        *,
        reply: ModelReply | None = None,
        secrets: Iterable[str] = (),
        fallback: bool = False,
    ) -> None:
        if self.find_secrets is not None:
            found = [
                secret
                for message in messages
                if message.get("role") in ("user", "assistant") and isinstance(message.get("content"), str)
                for secret in self.find_secrets(message["content"])
            ]
            messages = mask_messages(messages, found)
            secrets = [*secrets, *found]
        meta: dict[str, Any] = {"is_fallback": fallback}
        if reply is not None:
            meta.update(
                model=reply.model,
                latency_ms=reply.latency_ms,
                prompt_tokens=reply.prompt_tokens,
                completion_tokens=reply.completion_tokens,
            )
        await database_sync_to_async(services.turns_append)(
            conversation_id=self.conversation_id, messages=messages, meta=meta, secrets=list(secrets)
        )

    async def record_error(self, code: str, message: str) -> None:
        await database_sync_to_async(services.turn_record_error)(
            conversation_id=self.conversation_id, code=code, message=message
        )


class ConversationTools:
    """The agent's ``ToolRunner``: the deployment's toolbox, acting for one conversation."""

    def __init__(self, toolbox: Toolbox, context: ToolContext) -> None:
        self.toolbox = toolbox
        self.context = context
        self.schemas = toolbox.schemas

    def display_arguments(self, call: ToolCall) -> dict[str, Any] | None:
        return self.toolbox.display_arguments(call)

    async def run(self, call: ToolCall) -> ToolOutcome:
        return await database_sync_to_async(self.toolbox.run)(call, self.context)


@dataclass
class Attached:
    conversation: Conversation
    created: bool
    replay: list[dict[str, Any]]


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
    return Attached(conversation, False, selectors.conversation_replay_frames(conversation_id=conversation.id))


@dataclass
class TurnContext:
    history: list[Message]
    tools: ToolContext
    find_secrets: SecretFinder | None


def _turn_context(conversation_id: uuid.UUID) -> TurnContext:
    """What a turn starts from, read at once; the connection is checked first (a restarted database)."""
    conversation = Conversation.objects.get(id=conversation_id)
    history = selectors.conversation_history(conversation_id=conversation_id)
    context = ToolContext(conversation_id, conversation.customer_id, conversation.client_address)
    return TurnContext(history, context, secret_finder(conversation.customer_id))


# ONE TURN AT A TIME
#
# Inside a process an ``asyncio.Lock`` per conversation queues turns in arrival order. When the channel
# layer is Redis, several server processes may serve one conversation (two tabs behind a balancer), so
# the turn also holds a lease in that Redis: a key that only its holder may delete, renewed while the
# turn runs and expiring on its own if the process dies. Across processes the lease gives exclusion,
# not strict arrival order: waiters in different processes poll for it.

LEASE_SECONDS = 15  # how long a dead process's turn can block its conversation
LEASE_POLL_SECONDS = 0.05

_locks: weakref.WeakValueDictionary[uuid.UUID, asyncio.Lock] = weakref.WeakValueDictionary()


def _lease_redis_url() -> str | None:
    """The Redis of the channel layer, if it is one: the lease lives wherever the sockets can meet."""
    layer = settings.CHANNEL_LAYERS.get("default", {})
    if "redis" not in layer.get("BACKEND", "").lower():
        return None
    host: Any = (layer.get("CONFIG", {}).get("hosts") or [None])[0]
    if isinstance(host, dict):
        host = host.get("address")
    if isinstance(host, list | tuple):
        host = f"redis://{host[0]}:{host[1]}"
    return host if isinstance(host, str) else None


_lease_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, redis.asyncio.Redis] = (
    weakref.WeakKeyDictionary()
)


def _lease_client(url: str) -> redis.asyncio.Redis:
    """One Redis client (and connection pool) per event loop, shared by every turn: no client per turn."""
    loop = asyncio.get_running_loop()
    client = _lease_clients.get(loop)
    if client is None:
        client = _lease_clients[loop] = redis.asyncio.Redis.from_url(url)
    return client


def _lease_name(conversation_id: uuid.UUID) -> str:
    return f"chat:turn-lease:{conversation_id.hex}"


async def conversation_busy(conversation_id: uuid.UUID) -> bool:
    """Whether a turn of the conversation is running, in this process or (with Redis) any other."""
    lock = _locks.get(conversation_id)
    if lock is not None and lock.locked():
        return True
    url = _lease_redis_url()
    if url is None:
        return False
    return bool(await _lease_client(url).exists(_lease_name(conversation_id)))


@asynccontextmanager
async def _redis_lease(url: str, conversation_id: uuid.UUID) -> AsyncIterator[None]:
    lease = _lease_client(url).lock(
        _lease_name(conversation_id), timeout=LEASE_SECONDS, sleep=LEASE_POLL_SECONDS, thread_local=False
    )
    await lease.acquire()
    renewal = asyncio.create_task(_renew(lease, conversation_id))
    try:
        yield
    finally:
        renewal.cancel()
        try:
            await lease.release()
        except redis.exceptions.LockError:
            logger.warning("the turn lease of conversation %s had expired", conversation_id)


async def _renew(lease: redis.asyncio.lock.Lock, conversation_id: uuid.UUID) -> None:
    while True:
        await asyncio.sleep(LEASE_SECONDS / 3)
        try:
            await lease.reacquire()
        except redis.exceptions.LockError:
            logger.warning("lost the turn lease of conversation %s", conversation_id)
            return


@asynccontextmanager
async def conversation_lock(conversation_id: uuid.UUID) -> AsyncIterator[None]:
    """One turn at a time per conversation: in arrival order in this process, exclusive across processes."""
    lock = _locks.get(conversation_id)
    if lock is None:
        lock = _locks[conversation_id] = asyncio.Lock()
    async with lock:
        url = _lease_redis_url()
        if url is None:
            yield
            return
        async with _redis_lease(url, conversation_id):
            yield


# THE TURN


def _needs_greeting(history: list[Message]) -> bool:
    return all(message["role"] == "system" for message in history)


async def conversation_respond(
    *, conversation_id: uuid.UUID, emit: Emit, customer_text: str | None = None
) -> TurnResult:
    """Run one turn (the greeting when ``customer_text`` is None) and report it through ``emit``.

    Turns of one conversation never overlap: a turn waits for the one before it, and only then is the
    customer's message shown to the conversation's other sockets, so every screen shows the same order.
    A greeting asked for a conversation that already has one does nothing. A message past
    ``CHAT_MAX_CUSTOMER_MESSAGES`` is refused (``conversation_too_long``) without a model call. Once the
    conversation is verified, the customer's secrets in the message are masked before anyone sees it.
    """
    async with conversation_lock(conversation_id):
        try:
            turn = await database_sync_to_async(_turn_context)(conversation_id)
            history = turn.history
            if customer_text is None and not _needs_greeting(history):
                return TurnResult("answered", 0)
            if customer_text is not None:
                if sum(message["role"] == "user" for message in history) >= settings.CHAT_MAX_CUSTOMER_MESSAGES:
                    await emit({"type": "error", "code": "conversation_too_long", "message": TOO_LONG, "refused": True})
                    return TurnResult("error", 0)
                if turn.find_secrets is not None:
                    customer_text = mask_text(customer_text, turn.find_secrets(customer_text))
                await emit({"type": "message", "role": "user", "text": customer_text})
            await emit({"type": "typing"})
            return await run_turn(
                model=llm.get_chat_model(),
                tools=ConversationTools(get_toolbox(), turn.tools),
                transcript=StoredTranscript(conversation_id, turn.find_secrets),
                history=history,
                emit=emit,
                customer_text=customer_text,
                max_model_calls=settings.CHAT_MAX_MODEL_CALLS,
                max_tool_calls_per_reply=settings.CHAT_MAX_TOOL_CALLS_PER_REPLY,
                max_tool_result_chars=settings.CHAT_MAX_TOOL_RESULT_CHARS,
                history_token_budget=settings.CHAT_HISTORY_TOKEN_BUDGET,
            )
        except Exception:
            logger.exception("turn failed in conversation %s", conversation_id)
            await _record_internal_error(conversation_id)
            await emit({"type": "error", "code": "internal_error", "message": INTERNAL_ERROR})
            return TurnResult("error", 0)
        finally:
            await emit({"type": "idle"})


async def _record_internal_error(conversation_id: uuid.UUID) -> None:
    """Leave reviewers a trace of the failure, if the database still answers."""
    try:
        await database_sync_to_async(services.turn_record_error)(
            conversation_id=conversation_id, code="internal_error", message=INTERNAL_ERROR
        )
    except Exception:
        logger.exception("could not record the failure in conversation %s", conversation_id)
