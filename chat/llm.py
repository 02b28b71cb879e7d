"""Chat models behind the agent's ``ChatModel`` interface. The only module that imports ``openai``.

Both backends go through the official ``openai`` client, so they share every line of parsing:
``openai`` talks to any OpenAI-compatible endpoint over HTTP; ``builtin`` talks to the deterministic
model in ``chat.builtin`` through an in-process transport, with no network and no key.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import json
import logging
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any

import aiohttp
import httpx2
import openai
from django.conf import settings
from openai.types.chat import ChatCompletion

from chat import modelstatus
from chat.agent import ChatModel, ModelError, ModelReply, ToolCall

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
            raise _NoTimeToRetry(response.status_code if response is not None else None, _timed_out(failure))
        await asyncio.sleep(delay)


REPLY_CUT_NOTE = "\n[cut: the assistant's reply was longer than {limit} characters]"


class OpenAIChatModel:
    """A model served by an OpenAI-compatible ``/chat/completions`` endpoint, streamed by default.

    A reply's text is read up to ``max_reply_chars`` (None: unbounded): a longer one is cut there with a
    note, and the rest of its stream is not read, so one reply can never outgrow a frame, a row or a replay.
    """

    def __init__(
        self,
        client: openai.AsyncOpenAI,
        name: str,
        *,
        stream: bool = True,
        reply_timeout: float = 120.0,
        max_reply_chars: int | None = None,
    ) -> None:
        self.client = client
        self.name = name
        self.stream = stream
        self.reply_timeout = reply_timeout
        self.max_reply_chars = max_reply_chars

    async def complete(
        self,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]],
        on_delta: Callable[[str], Awaitable[None]],
    ) -> ModelReply:
        started = time.monotonic()
        deadline = _deadline.set(started + self.reply_timeout)
        try:
            reply = await self._complete_or_model_error(messages, tools, on_delta)
        except ModelError as error:
            await modelstatus.record(reachable=error.code not in modelstatus.DOWN_CODES)
            raise
        finally:
            _deadline.reset(deadline)
        await modelstatus.record(reachable=True)
        reply.latency_ms = int((time.monotonic() - started) * 1000)
        if not reply.content and not reply.tool_calls:
            raise ModelError("model_empty_reply", "The assistant gave an empty answer. Please try again.")
        return reply

    async def _complete_or_model_error(self, messages, tools, on_delta) -> ModelReply:
        """The reply, or the ``ModelError`` every failure of the endpoint becomes."""
        try:
            async with asyncio.timeout(self.reply_timeout):
                if self.stream:
                    return await self._streamed(messages, tools, on_delta)
                return await self._whole(messages, tools, on_delta)
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

    async def probe(self) -> bool:
        """Whether the endpoint answers at all (``GET /models``: any answer but a 5xx or 429 counts)."""
        try:
            await self.client.with_options(max_retries=0, timeout=5).models.list()
        except openai.APIStatusError as error:
            return error.status_code < 500 and error.status_code != 429
        except Exception:
            return False
        return True

    def _cut(self, content: str) -> str:
        return self._piece(content, 0) + self._note(len(content))

    def _piece(self, content: str, before: int) -> str:
        """What of a piece arriving after ``before`` characters fits under the cap."""
        if self.max_reply_chars is None:
            return content
        return content[: max(0, self.max_reply_chars - before)]

    def _note(self, length: int) -> str:
        over = self.max_reply_chars is not None and length > self.max_reply_chars
        return REPLY_CUT_NOTE.format(limit=self.max_reply_chars) if over else ""

    async def _post(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]], *, stream: bool) -> Any:
        """``POST /chat/completions`` through the client's own ``post``: its retries, errors, SSE decoding
        and response models, without ``create``'s per-call walk of every message and tool through the
        parameter types (0.13 ms per message). The body is JSON we built: the tool schemas and the system
        prompt serialised once per process, the rest of the messages once per call."""
        return await self.client.post(
            "/chat/completions",
            content=request_body(self.name, messages, tools, stream=stream),
            options={"headers": {"Content-Type": "application/json"}, "security": {"bearer_auth": True}},
            cast_to=ChatCompletion,
            stream=stream,
            stream_cls=openai.AsyncStream[object],  # chunks as parsed JSON, read with .get
        )

    async def _whole(self, messages, tools, on_delta) -> ModelReply:
        completion = await self._post(messages, tools, stream=False)
        if not completion.choices:
            raise ValueError("a completion with no choices")
        message = completion.choices[0].message
        calls = [
            ToolCall(c.id or f"call_{index}", c.function.name, c.function.arguments or "")
            for index, c in enumerate(message.tool_calls or [])
        ]
        content = self._cut(message.content or "")
        if content:
            await on_delta(content)
        usage = completion.usage
        return ModelReply(
            content=content,
            tool_calls=calls,
            model=completion.model or self.name,
            prompt_tokens=usage.prompt_tokens if usage else None,
            completion_tokens=usage.completion_tokens if usage else None,
        )

    async def _streamed(self, messages, tools, on_delta) -> ModelReply:
        stream = await self._post(messages, tools, stream=True)
        text: list[str] = []
        length = 0
        calls: dict[int, dict[str, str]] = {}
        reply = ModelReply(content="", model=self.name)
        finished = False
        try:
            async with stream:  # closes the response even when ``on_delta`` fails or is cancelled
                async for chunk in stream:  # plain JSON objects: a model per chunk cost ~64 µs
                    if self.max_reply_chars is not None and length > self.max_reply_chars:
                        # Enough read: the rest of an oversized reply is dropped unread, and so are tool
                        # calls it may have begun (never run on half-read arguments).
                        finished = True
                        calls.clear()
                        break
                    reply.model = chunk.get("model") or reply.model
                    if usage := chunk.get("usage"):
                        reply.prompt_tokens = usage.get("prompt_tokens")
                        reply.completion_tokens = usage.get("completion_tokens")
                    for choice in (chunk.get("choices") or [])[:1]:
                        delta = choice.get("delta") or {}
                        if content := delta.get("content"):
                            piece = self._piece(content, length)
                            length += len(content)
                            if piece:
                                text.append(piece)
                                await on_delta(piece)
                        for part in delta.get("tool_calls") or []:
                            call = calls.setdefault(part["index"], {"id": "", "name": "", "arguments": ""})
                            call["id"] = part.get("id") or call["id"]
                            if function := part.get("function"):
                                call["name"] += function.get("name") or ""
                                call["arguments"] += function.get("arguments") or ""
                        finished = finished or choice.get("finish_reason") is not None
        except openai.APIConnectionError as error:
            # The endpoint answered, then the connection dropped mid-stream: the answer was cut off.
            if _timed_out(error):
                raise
            raise CUT_OFF() from error
        if not finished:
            content_type = stream.response.headers.get("content-type", "")
            if not text and not calls and "event-stream" not in content_type:
                raise GARBLED()  # not a stream at all, e.g. an HTML error page from a proxy
            raise CUT_OFF()
        reply.content = "".join(text) + self._note(length)
        reply.tool_calls = [
            ToolCall(call["id"] or f"call_{index}", call["name"], call["arguments"])
            for index, call in sorted(calls.items())
        ]
        return reply


def _json(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()


@functools.lru_cache(maxsize=64)
def _serialised(value: _Identity) -> bytes:
    return _json(value.value)


def _cached_json(value: Any) -> bytes:
    """``value`` as JSON, made once per object: for values that live as long as the process and are never
    changed in place (the toolbox's schemas). The cache holds the object, so its id is never reused."""
    return _serialised(_Identity(value))


class _Identity:
    """Hashes and compares by the identity of the wrapped object (lists and dicts are unhashable)."""

    def __init__(self, value: Any) -> None:
        self.value = value

    def __hash__(self) -> int:
        return id(self.value)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Identity) and other.value is self.value


def request_body(name: str, messages: list[dict[str, Any]], tools: list[dict[str, Any]], *, stream: bool) -> bytes:
    """The ``/chat/completions`` request as JSON bytes, as ``create`` would send it."""
    head: dict[str, Any] = {"model": name, "temperature": 0}
    if stream:
        head.update(stream=True, stream_options={"include_usage": True})
    parts = [_json(head)[:-1]]
    if tools:
        parts.append(b',"tools":' + _cached_json(tools))
    system = [_system_json(messages[0])] if messages and messages[0].get("role") == "system" else []
    rest = [_json(message) for message in messages[len(system):]]
    parts.append(b',"messages":[' + b",".join([*system, *rest]) + b"]}")
    return b"".join(parts)


@functools.lru_cache(maxsize=16)
def _system_prompt_json(content: str) -> bytes:
    return _json({"role": "system", "content": content})


def _system_json(message: dict[str, Any]) -> bytes:
    if set(message) == {"role", "content"} and isinstance(message["content"], str):
        return _system_prompt_json(message["content"])
    return _json(message)


def _no_time_to_retry_error(error: _NoTimeToRetry) -> ModelError:
    if error.timed_out:
        return TIMEOUT()
    if error.status == 429:
        return BUSY()
    return UNREACHABLE() if error.status is None else FAILED()


def _timed_out(error: BaseException | None) -> bool:
    """Whether the endpoint really took too long. The client's aiohttp transport reports every connection
    error (refused, reset, closed before answering) as a connect *timeout* too; its cause tells them apart."""
    if not isinstance(error, httpx2.TimeoutException | openai.APITimeoutError):
        return False
    cause: BaseException | None = error
    while cause is not None:
        if isinstance(cause, aiohttp.ServerTimeoutError):
            return True
        if isinstance(cause, aiohttp.ClientConnectionError):
            return False
        cause = cause.__cause__
    return True


def _model_error(error: openai.APIError) -> ModelError:
    if _timed_out(error):
        return TIMEOUT()
    if isinstance(error, openai.APIConnectionError):  # a timeout that was none is one of these
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
    """The official client over its aiohttp transport (``openai[aiohttp]``), which reads a stream for ~2 ms
    less CPU per call than the default one; ``transport`` (the builtin model) keeps the default client."""
    return BoundedRetriesClient(
        base_url=base_url,
        api_key=api_key or "not-needed",
        timeout=settings.CHAT_TIMEOUT_SECONDS,
        max_retries=0 if transport else settings.CHAT_MAX_RETRIES,
        http_client=httpx2.AsyncClient(transport=transport) if transport else openai.DefaultAioHttpClient(),
    )


_override: ChatModel | None = None


def get_chat_model() -> ChatModel:
    """The model every turn uses: the configured one, or the one ``chat_model_override`` put in place."""
    return _override if _override is not None else configured_chat_model()


@contextmanager
def chat_model_override(model: ChatModel) -> Iterator[ChatModel]:
    """Every turn in the process uses ``model`` inside the block (tests, the evaluation harness)."""
    global _override
    previous, _override = _override, model
    try:
        yield model
    finally:
        _override = previous


async def configured_chat_model_close() -> None:
    """Close the process's model client and its pooled connections, if one was made (the next turn makes
    a new one): at the end of a command, of an evaluation's event loop, or of the server."""
    if configured_chat_model.cache_info().currsize:
        model = configured_chat_model()
        configured_chat_model.cache_clear()
        await model.client.close()


@functools.cache
def configured_chat_model() -> OpenAIChatModel:
    """The process's model from settings: one client, made once, shared by every conversation.
    ``configured_chat_model.cache_clear()`` builds it anew (after the settings change)."""
    if settings.CHAT_BACKEND == "builtin":
        from chat.builtin import BuiltinTransport

        client = openai_client(base_url="http://builtin.invalid/v1", api_key=None, transport=BuiltinTransport())
    else:
        client = openai_client(base_url=settings.OPENAI_BASE_URL, api_key=settings.OPENAI_API_KEY)
    return OpenAIChatModel(
        client,
        settings.CHAT_MODEL,
        stream=settings.CHAT_STREAM,
        reply_timeout=settings.CHAT_REPLY_TIMEOUT_SECONDS,
        max_reply_chars=settings.CHAT_MAX_REPLY_CHARS,
    )
