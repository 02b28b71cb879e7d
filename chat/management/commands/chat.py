"""``python manage.py chat``: talk to the agent in a terminal, or replay a file of customer messages.

The conversation is real: stored like any other and visible to operators. A change the agent wants to
make (a confirmation card) is asked as a yes/no question; when replaying, the next line answers it if it
is "yes" or "no" (anything else, or no line left, is a no).
"""

from __future__ import annotations

import asyncio
import json
import sys
import uuid
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import connection

from chat import llm
from chat.confirmations import confirmation_decide
from chat.db import database_sync_to_async
from chat.runtime import conversation_attach, conversation_respond

ANSWERS = {"yes": True, "y": True, "no": False, "n": False}


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
        self.conversation_id: uuid.UUID | None = None
        if messages is None:
            self.stderr.write("Type your message and press Enter. Ctrl-D (end of input) or Ctrl-C quits.")
        try:
            asyncio.run(self._chat(messages))
        except KeyboardInterrupt:
            self.stderr.write("")  # past the ^C the terminal echoed
        self._where_stored()

    def _where_stored(self) -> None:
        """Tell where the conversation is kept (whatever ended the chat: the end of input, Ctrl-C)."""
        if self.conversation_id is None:
            return
        database = connection.settings_dict
        where = f"{database['ENGINE'].rsplit('.', 1)[-1]} database {database['NAME']}"
        self.stderr.write(
            f"Conversation {self.conversation_id} is stored in the {where}: operators see it at "
            f"/operators/conversations/{self.conversation_id}/ and `manage.py export_transcripts` exports it."
        )

    def _read(self, path: str) -> list[str]:
        try:
            return Path(path).read_text(encoding="utf-8").splitlines()
        except OSError as error:
            raise CommandError(f"Cannot read {path}: {error.strerror}") from error

    async def _chat(self, messages: list[str] | None) -> None:
        try:
            await self._converse(messages)
        finally:
            await llm.configured_chat_model_close()

    async def _converse(self, messages: list[str] | None) -> None:
        attached = await database_sync_to_async(conversation_attach)(
            session_key=f"terminal-{uuid.uuid4().hex[:24]}", client_address=None
        )
        conversation_id = self.conversation_id = attached.conversation.id
        self._messages = messages
        await conversation_respond(conversation_id=conversation_id, emit=self._print)
        while True:
            text = self._next_message(messages)
            if text is None:
                break
            await conversation_respond(conversation_id=conversation_id, emit=self._print, customer_text=text)

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
        elif kind == "handoff":
            self.stdout.write(f"support: {frame['message']}")
        elif kind == "confirm":
            await self._confirm(frame)
        elif kind == "confirmation":
            self.stdout.write(f"confirmation: {frame['state']}")

    async def _confirm(self, frame: dict[str, Any]) -> None:
        """The customer's answer to a card, given as the page's click would be."""
        self.stdout.write(f"confirm: {frame['summary']} {frame['arguments']} (yes/no)")
        messages = self._messages
        if messages is None:
            try:
                answer = (await asyncio.to_thread(input, "yes/no: ")).strip().lower()
            except (EOFError, KeyboardInterrupt):
                answer = "no"
        else:
            answer = messages[0].strip().lower() if messages and messages[0].strip().lower() in ANSWERS else ""
            if answer:
                self.stdout.write(f"user: {messages.pop(0)}")
        await database_sync_to_async(confirmation_decide)(
            conversation_id=self.conversation_id, confirm_id=uuid.UUID(frame["id"]), approve=ANSWERS.get(answer, False)
        )
