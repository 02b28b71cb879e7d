"""Chat models behind the agent's ``ChatModel`` interface. The only module that imports ``openai``.

Both backends go through the official ``openai`` client, so they share every line of parsing:
``openai`` talks to any OpenAI-compatible endpoint over HTTP; ``builtin`` talks to the deterministic
model in ``chat.builtin`` through an in-process transport, with no network and no key.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx2
import openai
from django.conf import settings

from chat.agent import ModelError, ModelReply, ToolCall

logger = logging.getLogger(__name__)

TIMEOUT = functools.partial(
    ModelError, "model_timeout", "The assistant took too long to answer. Please try again in a moment."
)
UNREACHABLE = functools.partial(
    ModelError, "model_unavailable", "The assistant can't be reached right now. Please try again shortly."
)
BUSY = functools.partial(
    ModelError, "model_busy", "The assistant is very busy right now. Please try again in a minute."
)
MISCONFIGURED = functools.partial(
    ModelError, "model_unavailable", "The assistant isn't available right now. Our team has been notified."
)
FAILED = functools.partial(ModelError, "model_error", "The assistant ran into a problem answering. Please try again.")
GARBLED = functools.partial(
    ModelError, "model_bad_reply", "The assistant's answer got garbled on the way. Please try again."
)
CUT_OFF = functools.partial(ModelError, "model_incomplete", "The assistant's answer was cut off. Please try again.")


# When the model call in progress must have answered: no retry may wait past it.
_deadline: contextvars.ContextVar[float | None] = contextvars.ContextVar("model_deadline", default=None)


class _NoTimeToRetry(Exception):
    def __init__(self, status: int | None, timed_out: bool) -> None:
        super().__init__(f"no time left to retry (status {status})")
        self.status = status
        self.timed_out = timed_out


class BoundedRetriesClient(openai.AsyncOpenAI):
    """The ``openai`` client, whose retries never wait past the reply's deadline.

    The client honours a server's ``Retry-After`` (up to two minutes); a customer must not wait that
    long. When the wait would end after the deadline, the call fails at once, as busy (429) or
    unavailable, instead of sleeping into a timeout. Overrides a private hook of the client; the
    end-to-end tests of a huge ``Retry-After`` fail if a new client version stops calling it.
    """

    async def _sleep_for_retry(
        self, *, retries_taken: int, max_retries: int, options: Any, response: httpx2.Response | None
    ) -> None:
        headers = response.headers if response is not None else None
        delay = self._calculate_retry_timeout(max_retries - retries_taken, options, headers)
        deadline = _deadline.get()
        if deadline is not None and time.monotonic() + delay >= deadline:
            failure = sys.exc_info()[1]  # called while handling the failed attempt's exception
            timed_out = isinstance(failure, httpx2.TimeoutException | openai.APITimeoutError)
            raise _NoTimeToRetry(response.status_code if response is not None else None, timed_out)
        await asyncio.sleep(delay)


class OpenAIChatModel:
    """A model served by an OpenAI-compatible ``/chat/completions`` endpoint, streamed by default."""

    def __init__(
        self, client: openai.AsyncOpenAI, name: str, *, stream: bool = True, reply_timeout: float = 120.0
    ) -> None:
        self.client = client
        self.name = name
        self.stream = stream
        self.reply_timeout = reply_timeout

    async def complete(
        self,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]],
        on_delta: Callable[[str], Awaitable[None]],
    ) -> ModelReply:
        started = time.monotonic()
        deadline = _deadline.set(started + self.reply_timeout)
        try:
            async with asyncio.timeout(self.reply_timeout):
                if self.stream:
                    reply = await self._streamed(messages, tools, on_delta)
                else:
                    reply = await self._whole(messages, tools, on_delta)
        except TimeoutError as error:
            raise TIMEOUT() from error
        except _NoTimeToRetry as error:
            logger.warning("the model endpoint asked to wait past the reply's deadline (%s)", error.status)
            raise _no_time_to_retry_error(error) from error
        except openai.APIError as error:
            raise _model_error(error) from error
        except (ValueError, KeyError, TypeError, AttributeError, httpx2.HTTPError) as error:
            logger.warning("unreadable model response: %r", error)
            raise GARBLED() from error
        finally:
            _deadline.reset(deadline)
        reply.latency_ms = int((time.monotonic() - started) * 1000)
        if not reply.content and not reply.tool_calls:
            raise ModelError("model_empty_reply", "The assistant gave an empty answer. Please try again.")
        return reply

    def _request(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]]) -> dict[str, Any]:
        request: dict[str, Any] = {"model": self.name, "messages": messages, "temperature": 0}
        if tools:
            request["tools"] = tools
        return request

    async def _whole(self, messages, tools, on_delta) -> ModelReply:
        completion = await self.client.chat.completions.create(**self._request(messages, tools))
        if not completion.choices:
            raise ValueError("a completion with no choices")
        message = completion.choices[0].message
        calls = [
            ToolCall(c.id or f"call_{index}", c.function.name, c.function.arguments or "")
            for index, c in enumerate(message.tool_calls or [])
        ]
        if message.content:
            await on_delta(message.content)
        usage = completion.usage
        return ModelReply(
            content=message.content or "",
            tool_calls=calls,
            model=completion.model or self.name,
            prompt_tokens=usage.prompt_tokens if usage else None,
            completion_tokens=usage.completion_tokens if usage else None,
        )

    async def _streamed(self, messages, tools, on_delta) -> ModelReply:
        stream = await self.client.chat.completions.create(
            **self._request(messages, tools), stream=True, stream_options={"include_usage": True}
        )
        text: list[str] = []
        calls: dict[int, dict[str, str]] = {}
        reply = ModelReply(content="", model=self.name)
        finished = False
        try:
            async with stream:  # closes the response even when ``on_delta`` fails or is cancelled
                async for chunk in stream:
                    reply.model = chunk.model or reply.model
                    if chunk.usage:
                        reply.prompt_tokens = chunk.usage.prompt_tokens
                        reply.completion_tokens = chunk.usage.completion_tokens
                    for choice in chunk.choices[:1]:
                        delta = choice.delta
                        if delta.content:
                            text.append(delta.content)
                            await on_delta(delta.content)
                        for part in delta.tool_calls or []:
                            call = calls.setdefault(part.index, {"id": "", "name": "", "arguments": ""})
                            call["id"] = part.id or call["id"]
                            if part.function:
                                call["name"] += part.function.name or ""
                                call["arguments"] += part.function.arguments or ""
                        finished = finished or choice.finish_reason is not None
        except openai.APIConnectionError as error:
            # The endpoint answered, then the connection dropped mid-stream: the answer was cut off.
            if isinstance(error, openai.APITimeoutError):
                raise
            raise CUT_OFF() from error
        if not finished:
            content_type = stream.response.headers.get("content-type", "")
            if not text and not calls and "event-stream" not in content_type:
                raise GARBLED()  # not a stream at all, e.g. an HTML error page from a proxy
            raise CUT_OFF()
        reply.content = "".join(text)
        reply.tool_calls = [
            ToolCall(call["id"] or f"call_{index}", call["name"], call["arguments"])
            for index, call in sorted(calls.items())
        ]
        return reply


def _no_time_to_retry_error(error: _NoTimeToRetry) -> ModelError:
    if error.timed_out:
        return TIMEOUT()
    if error.status == 429:
        return BUSY()
    return UNREACHABLE() if error.status is None else FAILED()


def _model_error(error: openai.APIError) -> ModelError:
    if isinstance(error, openai.APITimeoutError):
        return TIMEOUT()
    if isinstance(error, openai.APIConnectionError):
        return UNREACHABLE()
    if isinstance(error, openai.RateLimitError):
        return BUSY()
    if isinstance(error, openai.AuthenticationError | openai.PermissionDeniedError | openai.NotFoundError):
        logger.error("the model endpoint refused our configuration: %s", error)
        return MISCONFIGURED()
    if isinstance(error, openai.APIStatusError):
        logger.warning("the model endpoint answered %s", error.status_code)
        return FAILED()
    if isinstance(error, openai.APIResponseValidationError):
        return GARBLED()
    logger.warning("the model endpoint reported an error: %s", error)  # e.g. an error event mid-stream
    return FAILED()


def openai_client(*, base_url: str | None, api_key: str | None, transport: Any = None) -> openai.AsyncOpenAI:
    return BoundedRetriesClient(
        base_url=base_url,
        api_key=api_key or "not-needed",
        timeout=settings.CHAT_TIMEOUT_SECONDS,
        max_retries=0 if transport else settings.CHAT_MAX_RETRIES,
        http_client=httpx2.AsyncClient(transport=transport) if transport else None,
    )


@functools.cache
def get_chat_model() -> OpenAIChatModel:
    """The process's model: one client, made once, shared by every conversation."""
    if settings.CHAT_BACKEND == "builtin":
        from chat.builtin import BuiltinTransport

        client = openai_client(base_url="http://builtin.invalid/v1", api_key=None, transport=BuiltinTransport())
    else:
        client = openai_client(base_url=settings.OPENAI_BASE_URL, api_key=settings.OPENAI_API_KEY)
    return OpenAIChatModel(
        client, settings.CHAT_MODEL, stream=settings.CHAT_STREAM, reply_timeout=settings.CHAT_REPLY_TIMEOUT_SECONDS
    )
