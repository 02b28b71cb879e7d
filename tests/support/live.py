"""Talking to a real daphne over a real WebSocket (the ``websockets`` client), from sync test code."""

from __future__ import annotations

import json
import uuid
from typing import Any

from django.conf import settings as django_settings
from django.contrib.sessions.backends.db import SessionStore
from websockets.sync.client import ClientConnection
from websockets.sync.client import connect as ws_connect

from chat import services
from chat.builtin import GREETING
from tests.support.browser import ChatServer

TIMEOUT = 40  # more than turnlock.LEASE_SECONDS, a killed process's turn lease (with Redis)


def greeted_conversation() -> tuple[str, uuid.UUID]:
    """A session whose conversation already has its greeting, so a socket resumes it at once."""
    session = SessionStore()
    session.create()
    conversation = services.conversation_start(session_key=session.session_key, client_address="127.0.0.1")
    services.turns_append(conversation_id=conversation.id, messages=[{"role": "assistant", "content": GREETING}])
    return session.session_key, conversation.id


def socket(server: ChatServer, session_key: str) -> ClientConnection:
    headers = {"Origin": server.url, "Cookie": f"{django_settings.SESSION_COOKIE_NAME}={session_key}"}
    return ws_connect(f"ws://127.0.0.1:{server.port}/ws/chat/", additional_headers=headers, open_timeout=TIMEOUT)


def frames_until(ws: ClientConnection, done: Any) -> list[dict[str, Any]]:
    frames = []
    while True:
        frames.append(json.loads(ws.recv(timeout=TIMEOUT)))
        if done(frames[-1]):
            return frames


def until_idle(ws: ClientConnection) -> list[dict[str, Any]]:
    return frames_until(ws, lambda frame: frame["type"] == "idle")


def say(ws: ClientConnection, text: str) -> list[dict[str, Any]]:
    ws.send(json.dumps({"type": "message", "text": text}))
    return frames_until(ws, lambda frame: frame["type"] == "idle")


def resumed(ws: ClientConnection) -> list[dict[str, Any]]:
    frames = frames_until(ws, lambda frame: frame["type"] == "idle")
    assert frames[0]["type"] == "conversation" and frames[0]["resumed"] is True
    return frames
