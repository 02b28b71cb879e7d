"""``python manage.py chat``: talk to the agent in a terminal, or replay a file of customer messages.

The conversation is real: stored like any other and visible to operators.
"""

from __future__ import annotations

import asyncio
import json
import sys
import uuid
from pathlib import Path
from typing import Any

from channels.db import database_sync_to_async
from django.core.management.base import BaseCommand, CommandError, CommandParser

from chat.runtime import conversation_attach, conversation_respond


class Command(BaseCommand):
    help = "Chat with the support agent in the terminal (or --replay a file of customer messages)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--replay", metavar="FILE", help="Customer messages, one per line ('-' for stdin).")

    def handle(self, *args: object, replay: str | None = None, **options: object) -> None:
        if replay:
            lines = sys.stdin if replay == "-" else self._read(replay)
            messages = [line.strip() for line in lines if line.strip()]
        else:
            messages = None
        asyncio.run(self._chat(messages))

    def _read(self, path: str) -> list[str]:
        try:
            return Path(path).read_text(encoding="utf-8").splitlines()
        except OSError as error:
            raise CommandError(f"Cannot read {path}: {error.strerror}") from error

    async def _chat(self, messages: list[str] | None) -> None:
        attached = await database_sync_to_async(conversation_attach)(
            session_key=f"terminal-{uuid.uuid4().hex[:24]}", client_address=None
        )
        conversation_id = attached.conversation.id
        await conversation_respond(conversation_id=conversation_id, emit=self._print)
        while True:
            text = self._next_message(messages)
            if text is None:
                break
            await conversation_respond(conversation_id=conversation_id, emit=self._print, customer_text=text)
        self.stderr.write(f"(conversation {conversation_id} is stored)")

    def _next_message(self, messages: list[str] | None) -> str | None:
        if messages is not None:
            if not messages:
                return None
            text = messages.pop(0)
            self.stdout.write(f"user: {text}")
            return text
        try:
            text = input("user: ").strip()
        except (EOFError, KeyboardInterrupt):
            return None
        return text or self._next_message(messages)

    async def _print(self, frame: dict[str, Any]) -> None:
        kind = frame["type"]
        if kind == "message" and frame.get("role") == "assistant":
            self.stdout.write(f"assistant: {frame['text']}")
        elif kind == "tool" and frame["status"] == "started":
            self.stdout.write(f"assistant: call function {frame['name']}, with arguments {frame['arguments']}")
        elif kind == "tool":
            self.stdout.write(f"function response: {json.dumps(frame['result'])}")
        elif kind == "error":
            self.stdout.write(f"error: {frame['message']}")
