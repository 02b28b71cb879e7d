"""The customers of a run: scripted (a list of messages) or simulated by a model, as in τ-bench.

The simulated customer is played by any OpenAI-compatible model named by ``EVAL_USER_MODEL``
(``EVAL_USER_BASE_URL``, ``EVAL_USER_API_KEY``), through the official ``openai`` client. It is told its
persona and goal, reads the agent's replies, and writes ``###STOP###`` when it is done.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

import openai
from django.conf import settings

from chat.evaluation.scenarios import Customer

STOP = "###STOP###"
CUSTOMER_PROMPT = """\
You are a customer of a company, chatting with its support agent on the company's website.
You are not an assistant: play the customer, and write only the customer's next message.

Who you are: {persona}
What you want from this chat: {goal}

- Write one short message at a time, the way a person types in a chat.
- Give only details your goal gives you; if asked for one you do not have, say you do not have it.
- Do not reveal everything at once: answer what the agent asks.
- When your goal is met, or the agent cannot help, write only {stop} to end the chat."""


@dataclass(frozen=True)
class Exchange:
    speaker: Literal["agent", "customer"]
    text: str


class CustomerPlayer(Protocol):
    async def next_message(self, conversation: list[Exchange]) -> str | None:
        """The customer's next message after ``conversation``, or None when the customer is done."""


class ScriptedCustomer:
    def __init__(self, messages: list[str]) -> None:
        self.messages = list(messages)

    async def next_message(self, conversation: list[Exchange]) -> str | None:
        return self.messages.pop(0) if self.messages else None


class SimulatedCustomer:
    def __init__(self, client: openai.AsyncOpenAI, model: str, customer: Customer) -> None:
        self.client = client
        self.model = model
        self.system = CUSTOMER_PROMPT.format(persona=customer.persona, goal=customer.goal, stop=STOP)
        self.turns_left = customer.max_turns

    async def next_message(self, conversation: list[Exchange]) -> str | None:
        if self.turns_left <= 0:
            return None
        self.turns_left -= 1
        completion = await self.client.chat.completions.create(
            model=self.model, messages=self._messages(conversation), temperature=0
        )
        text = (completion.choices[0].message.content or "").strip() if completion.choices else ""
        if not text or STOP in text:
            return None
        return text

    def _messages(self, conversation: list[Exchange]) -> list[dict[str, str]]:
        """The chat from the customer's side: the agent speaks as ``user``, the customer as ``assistant``."""
        messages = [{"role": "system", "content": self.system}]
        for exchange in conversation:
            role = "user" if exchange.speaker == "agent" else "assistant"
            messages.append({"role": role, "content": exchange.text})
        if len(messages) == 1:
            messages.append({"role": "user", "content": "(The chat window opens.)"})
        return messages


def customer_client() -> openai.AsyncOpenAI | None:
    """A client for the simulated customers' model, or None when ``EVAL_USER_MODEL`` is not set.

    Made per suite run, inside its event loop, and closed by the caller at its end.
    """
    if not settings.EVAL_USER_MODEL:
        return None
    return openai.AsyncOpenAI(
        base_url=settings.EVAL_USER_BASE_URL,
        api_key=settings.EVAL_USER_API_KEY or "not-needed",
        timeout=settings.CHAT_TIMEOUT_SECONDS,
        max_retries=settings.CHAT_MAX_RETRIES,
    )


def customer_player(customer: Customer, client: openai.AsyncOpenAI | None) -> CustomerPlayer:
    """Who plays this scenario's customer: its script, or ``client``'s model (required for a simulated one)."""
    if not customer.simulated:
        return ScriptedCustomer(customer.messages)
    if client is None:
        raise ValueError("a simulated customer needs EVAL_USER_MODEL")
    return SimulatedCustomer(client, settings.EVAL_USER_MODEL, customer)
