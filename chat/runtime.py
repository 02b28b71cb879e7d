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
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from channels.db import database_sync_to_async
from django.conf import settings
from django.utils.module_loading import import_string

from chat import selectors, services
from chat.agent import Emit, Message, ModelReply, ToolCall, ToolOutcome, TurnResult, run_turn
from chat.llm import get_chat_model
from chat.models import Conversation
from chat.toolbox import ToolContext, Toolbox

logger = logging.getLogger(__name__)

INTERNAL_ERROR = "Something went wrong on our side. Please try again in a moment."


@functools.cache
def get_toolbox() -> Toolbox:
    return Toolbox(import_string(path) for path in settings.CHAT_TOOLS)


class StoredTranscript:
    """The agent's ``Transcript``: appends to the conversation's turns."""

    def __init__(self, conversation_id: uuid.UUID) -> None:
        self.conversation_id = conversation_id

    async def append(
        self,
        messages: list[Message],
        *,
        reply: ModelReply | None = None,
        secrets: Iterable[str] = (),
        fallback: bool = False,
    ) -> None:
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
    *, session_key: str, client_address: str | None, conversation_id: uuid.UUID | None = None, new: bool = False
) -> Attached:
    """The session's conversation to show, with its replay; a new one when asked or when it has none."""
    conversation = None if new else selectors.conversation_for_session(
        session_key=session_key, conversation_id=conversation_id
    )
    if conversation is None:
        conversation = services.conversation_start(session_key=session_key, client_address=client_address)
        return Attached(conversation, True, [])
    return Attached(conversation, False, selectors.conversation_replay_frames(conversation_id=conversation.id))


def _turn_context(conversation_id: uuid.UUID) -> tuple[list[Message], ToolContext]:
    conversation = Conversation.objects.get(id=conversation_id)
    history = selectors.conversation_history(conversation_id=conversation_id)
    context = ToolContext(conversation_id, conversation.customer_id, conversation.client_address)
    return history, context


_locks: weakref.WeakValueDictionary[uuid.UUID, asyncio.Lock] = weakref.WeakValueDictionary()


def conversation_busy(conversation_id: uuid.UUID) -> bool:
    lock = _locks.get(conversation_id)
    return lock is not None and lock.locked()


@asynccontextmanager
async def conversation_lock(conversation_id: uuid.UUID) -> AsyncIterator[None]:
    """One turn at a time per conversation in this process; waiters go in arrival order."""
    lock = _locks.get(conversation_id)
    if lock is None:
        lock = _locks[conversation_id] = asyncio.Lock()
    async with lock:
        yield


async def conversation_respond(
    *, conversation_id: uuid.UUID, emit: Emit, customer_text: str | None = None
) -> TurnResult:
    """Run one turn (the greeting when ``customer_text`` is None) and report it through ``emit``."""
    async with conversation_lock(conversation_id):
        await emit({"type": "typing"})
        try:
            history, context = await database_sync_to_async(_turn_context)(conversation_id)
            return await run_turn(
                model=get_chat_model(),
                tools=ConversationTools(get_toolbox(), context),
                transcript=StoredTranscript(conversation_id),
                history=history,
                emit=emit,
                customer_text=customer_text,
                max_model_calls=settings.CHAT_MAX_MODEL_CALLS,
            )
        except Exception:
            logger.exception("turn failed in conversation %s", conversation_id)
            await emit({"type": "error", "code": "internal_error", "message": INTERNAL_ERROR})
            return TurnResult("error", 0)
        finally:
            await emit({"type": "idle"})
