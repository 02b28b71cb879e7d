"""A conversation driven through ``chat.runtime`` exactly as the consumer drives it, collecting its frames."""

from __future__ import annotations

import uuid
from typing import Any

from asgiref.sync import async_to_sync
from channels.db import database_sync_to_async

from chat.models import Conversation, Turn
from chat.runtime import conversation_attach, conversation_respond
from tests.support.seed import SEED_MESSAGES

Frame = dict[str, Any]


class Chat:
    """One browser session's conversation. ``respond`` runs a turn and returns its frames; ``say`` also
    checks the turn ended well (an ``idle`` last, no ``error``)."""

    def __init__(self, conversation_id: uuid.UUID, session_key: str) -> None:
        self.id = self.conversation_id = conversation_id
        self.session_key = session_key
        self.frames: list[Frame] = []

    @classmethod
    async def start(
        cls, *, client_address: str | None = "198.51.100.7", session_key: str | None = None, greet: bool = False
    ) -> Chat:
        session_key = session_key or uuid.uuid4().hex
        attached = await database_sync_to_async(conversation_attach)(
            session_key=session_key, client_address=client_address, new=True
        )
        chat = cls(attached.conversation.id, session_key)
        if greet:
            await chat.respond(None)
        return chat

    async def emit(self, frame: Frame) -> None:
        self.frames.append(frame)

    async def respond(self, text: str | None) -> list[Frame]:
        start = len(self.frames)
        await conversation_respond(conversation_id=self.id, emit=self.emit, customer_text=text)
        return self.frames[start:]

    async def say(self, text: str | None) -> list[Frame]:
        frames = await self.respond(text)
        assert frames[-1] == {"type": "idle"}
        assert not [f for f in frames if f["type"] == "error"], frames
        return frames

    async def greet(self) -> list[Frame]:
        return await self.say(None)

    async def turns(self) -> list[Turn]:
        return [t async for t in Turn.objects.filter(conversation_id=self.id).order_by("seq")]

    async def customer(self) -> str | None:
        conversation = await Conversation.objects.select_related("customer").aget(id=self.id)
        return conversation.customer.username if conversation.customer else None


def run_conversation(messages: list[str] = SEED_MESSAGES, session_key: str | None = None) -> uuid.UUID:
    """A whole conversation through the real runtime, from sync test code: greeting, then each message.
    Needs the ``runtime_on_test_connection`` fixture in a test that is not transactional."""
    attached = conversation_attach(session_key=session_key or uuid.uuid4().hex, client_address="127.0.0.1", new=True)

    async def ignore(frame: Frame) -> None:
        return None

    async def talk() -> None:
        await conversation_respond(conversation_id=attached.conversation.id, emit=ignore)
        for text in messages:
            await conversation_respond(conversation_id=attached.conversation.id, emit=ignore, customer_text=text)

    async_to_sync(talk)()
    return attached.conversation.id
