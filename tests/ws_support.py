"""Helpers for driving ``/ws/chat/`` through the whole ASGI stack with Channels' communicator."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.conf import settings
from django.contrib.sessions.backends.db import SessionStore

from chat.agent import ModelError, ModelReply
from chat.models import Turn
from supportsite.asgi import application

ORIGIN = (b"origin", b"http://127.0.0.1")
TIMEOUT = 10  # seconds a single frame may take; generous for PostgreSQL/Redis on a busy CI box


@database_sync_to_async
def new_session_key() -> str:
    session = SessionStore()
    session.create()
    return session.session_key


async def connect(
    session_key: str | None, *, new: bool = False, origin: tuple[bytes, bytes] | None = ORIGIN
) -> tuple[WebsocketCommunicator, bool, Any]:
    headers = [origin] if origin else []
    if session_key:
        headers.append((b"cookie", f"{settings.SESSION_COOKIE_NAME}={session_key}".encode()))
    communicator = WebsocketCommunicator(application, "/ws/chat/?new=1" if new else "/ws/chat/", headers=headers)
    connected, detail = await communicator.connect(timeout=TIMEOUT)
    return communicator, connected, detail


async def open_chat(session_key: str | None, *, new: bool = False) -> tuple[WebsocketCommunicator, uuid.UUID]:
    """A connected socket and its conversation id (the first frame)."""
    communicator, connected, detail = await connect(session_key, new=new)
    assert connected, detail
    first = await communicator.receive_json_from(timeout=TIMEOUT)
    assert first["type"] == "conversation", first
    return communicator, uuid.UUID(first["id"])


async def until_idle(communicator: WebsocketCommunicator) -> list[dict[str, Any]]:
    """Every frame up to and including the next ``idle``."""
    frames = []
    while True:
        frame = await communicator.receive_json_from(timeout=TIMEOUT)
        frames.append(frame)
        if frame["type"] == "idle":
            return frames


async def say(communicator: WebsocketCommunicator, text: str) -> list[dict[str, Any]]:
    await communicator.send_json_to({"type": "message", "text": text})
    return await until_idle(communicator)


def of_type(frames: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [frame for frame in frames if frame["type"] == kind]


def assistant_texts(frames: list[dict[str, Any]]) -> list[str]:
    return [f["text"] for f in frames if f["type"] == "message" and f.get("role") == "assistant"]


@database_sync_to_async
def stored_turns(conversation_id: uuid.UUID) -> list[tuple[str, str]]:
    """(role, content) of every turn after the system prompt, in order."""
    turns = Turn.objects.filter(conversation_id=conversation_id).exclude(role=Turn.Role.SYSTEM).order_by("seq")
    return [(turn.role, turn.content) for turn in turns]


@database_sync_to_async
def stored_error_codes(conversation_id: uuid.UUID) -> list[str]:
    turns = Turn.objects.filter(conversation_id=conversation_id, role=Turn.Role.ERROR).order_by("seq")
    return [turn.error_code for turn in turns]


class ScriptedModel:
    """A ``ChatModel`` for tests: delegates to ``inner`` (the builtin model), optionally held at a gate
    or made to fail, and counts its calls."""

    name = "scripted"

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.calls = 0
        self.gate: asyncio.Event | None = None
        self.entered = asyncio.Event()  # set when a call has reached the gate
        self.failures: list[ModelError] = []

    async def complete(
        self, messages: list[dict[str, Any]], tools: list[dict[str, Any]], on_delta: Callable[[str], Awaitable[None]]
    ) -> ModelReply:
        self.calls += 1
        self.entered.set()
        if self.gate is not None:
            await self.gate.wait()
        if self.failures:
            raise self.failures.pop(0)
        return await self.inner.complete(messages, tools, on_delta)

    def hold(self) -> None:
        self.gate = asyncio.Event()
        self.entered.clear()

    def release(self) -> None:
        assert self.gate is not None
        self.gate.set()
        self.gate = None
