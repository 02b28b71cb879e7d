"""The base of the project's WebSocket consumers, and receiving from the channel layer with a time limit,
both stopping the layer's receive for certain.

On Python 3.11, ``asyncio.wait_for`` loses a cancellation that arrives just as the awaited thing completes
(CPython gh-86296, fixed in 3.12), and redis-py wraps every write to Redis in one. A socket that ends
right after it starts (a refused handshake, a flood refusal, a client gone at once) cancels the Redis
layer's receive exactly then: the cancellation is lost, the receive goes on polling Redis for ever on a
connection of its own, and Channels' ``await_many_dispatch``, which awaits the cancelled receive, never
returns. Every such socket leaked a task and a Redis connection and never ran its clean-up. Here a task
that outlives its cancellation is cancelled again until it ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from channels.consumer import get_handler_name
from channels.exceptions import StopConsumer
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from channels.layers import get_channel_layer

logger = logging.getLogger(__name__)

CANCEL_AGAIN_SECONDS = 0.05  # a lost cancellation is repeated this soon


async def tasks_stop(tasks: Iterable[asyncio.Future[Any]]) -> None:
    """Cancel the tasks and wait until each has ended, cancelling again any that ignored it."""
    tasks = list(tasks)
    pending = {task for task in tasks if not task.done()}
    for task in pending:
        task.cancel()
    while pending:
        _, pending = await asyncio.wait(pending, timeout=CANCEL_AGAIN_SECONDS)
        for task in pending:
            logger.debug("cancelling %r again: its cancellation was lost", task)
            task.cancel()
    for task in tasks:
        if not task.cancelled() and task.exception() is not None:
            logger.debug("a stopped task had failed", exc_info=task.exception())


async def layer_receive_within(layer: Any, channel: str, seconds: float) -> dict[str, Any] | None:
    """The channel's next message, or None when none comes within ``seconds``."""
    receiving = asyncio.ensure_future(layer.receive(channel))
    try:
        await asyncio.wait([receiving], timeout=seconds)
    finally:
        if not receiving.done():
            await tasks_stop([receiving])
    return None if receiving.cancelled() else receiving.result()


async def dispatch_until_stopped(sources: list[Callable[[], Awaitable[Any]]], dispatch: Any) -> None:
    """Channels' ``await_many_dispatch`` (the next message of any source goes to ``dispatch``, in turn),
    whose clean-up stops the sources' receives with ``tasks_stop``."""
    tasks = [asyncio.ensure_future(source()) for source in sources]
    try:
        while True:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for index, task in enumerate(tasks):
                if task.done():
                    result = task.result()
                    await dispatch(result)
                    tasks[index] = asyncio.ensure_future(sources[index]())
    finally:
        await tasks_stop(tasks)


class Socket(AsyncJsonWebsocketConsumer):
    """Channels' JSON WebSocket consumer, whose receive from the channel layer ends with the socket."""

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        # Channels' AsyncConsumer.__call__, with dispatch_until_stopped for await_many_dispatch.
        self.scope = scope
        self.channel_layer = get_channel_layer(self.channel_layer_alias)
        sources = [receive]
        if self.channel_layer is not None:
            self.channel_name = await self.channel_layer.new_channel()
            self.channel_receive = functools.partial(self.channel_layer.receive, self.channel_name)
            sources.append(self.channel_receive)
        self.base_send = send
        with contextlib.suppress(StopConsumer):
            await dispatch_until_stopped(sources, self.dispatch)

    async def dispatch(self, message: dict[str, Any]) -> None:
        """Channels' ``dispatch`` without its ``close_old_connections`` before each message. That is a crossing
        to the database thread per message (connect, every frame, disconnect, every layer message: ~150 µs
        of CPU each, queued behind the turns' crossings), for hygiene each of this project's crossings
        already does where the connection is used: ``chat.db.database_sync_to_async`` runs it before and
        after itself, and no handler here touches the database any other way."""
        handler = getattr(self, get_handler_name(message), None)
        if handler is None:
            raise ValueError(f"No handler for message type {message['type']}")
        await handler(message)

    async def websocket_disconnect(self, message: dict[str, Any]) -> None:
        """Channels' ``websocket_disconnect``, without its own ``close_old_connections`` crossing (as above)."""
        for group in self.groups:
            await self.channel_layer.group_discard(group, self.channel_name)
        await self.disconnect(message["code"])
        raise StopConsumer
