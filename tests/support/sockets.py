"""A socket to ``/ws/chat/`` through the whole ASGI stack (Channels' communicator), and reading its frames."""

from __future__ import annotations

import uuid
from typing import Any

from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.conf import settings
from django.contrib.sessions.backends.db import SessionStore

from supportsite.asgi import application

ORIGIN = (b"origin", b"http://127.0.0.1")
TIMEOUT = 10  # seconds a single frame may take; generous for PostgreSQL/Redis on a busy CI box


@database_sync_to_async
def new_session_key() -> str:
    session = SessionStore()
    session.create()
    return session.session_key


def an_address() -> str:
    """A client address of this test alone (the counters may be in Redis, shared by runs)."""
    raw = uuid.uuid4().bytes
    return f"2001:db8:{raw[0]:x}{raw[1]:02x}:{raw[2]:x}{raw[3]:02x}::{raw[4]:x}"


async def connect(
    session_key: str | None,
    *,
    new: bool = False,
    origin: tuple[bytes, bytes] | None = ORIGIN,
    address: str | None = None,
) -> tuple[WebsocketCommunicator, bool, Any]:
    """A socket handshake (``address``: the client's, as daphne would give it)."""
    headers = [origin] if origin else []
    if session_key:
        headers.append((b"cookie", f"{settings.SESSION_COOKIE_NAME}={session_key}".encode()))
    communicator = WebsocketCommunicator(application, "/ws/chat/?new=1" if new else "/ws/chat/", headers=headers)
    if address:
        communicator.scope["client"] = (address, 50000)
    connected, detail = await communicator.connect(timeout=TIMEOUT)
    return communicator, connected, detail


async def attached(session_key: str | None, *, address: str | None = None, new: bool = False) -> WebsocketCommunicator:
    """A connected socket whose conversation frame and first turn (greeting or replay) are read."""
    communicator, connected, detail = await connect(session_key, address=address, new=new)
    assert connected, detail
    first = await communicator.receive_json_from(timeout=TIMEOUT)
    assert first["type"] == "conversation", first
    await until_idle(communicator)
    return communicator


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
def staff_headers(username: str | None) -> list[tuple[bytes, bytes]]:
    """An allowed Origin and, for a username, the cookie of a session logged in as that user."""
    from django.contrib.auth.models import User
    from django.test import Client

    headers = [ORIGIN]
    if username:
        client = Client()
        client.force_login(User.objects.get(username=username))
        headers.append((b"cookie", f"{settings.SESSION_COOKIE_NAME}={client.session.session_key}".encode()))
    return headers


def operator_socket(conversation_id: uuid.UUID, headers: list[tuple[bytes, bytes]]) -> WebsocketCommunicator:
    """The live operator socket of a conversation (not yet connected)."""
    return WebsocketCommunicator(application, f"/ws/operators/conversations/{conversation_id}/", headers=headers)


@database_sync_to_async
def watched_conversation() -> uuid.UUID:
    """The demo data, the staff roles, and a conversation for an operator to watch."""
    from chat.operators.access import roles_ensure
    from chat.services import conversation_start
    from tests.support.seed import seed_demo

    seed_demo()
    roles_ensure()
    return conversation_start(session_key="w" * 32).id
