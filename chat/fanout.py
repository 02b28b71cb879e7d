"""A conversation's frames to its listeners: straight to this process's sockets when they are all of its
listeners, else through the channel layer's group.

Every frame through the layer costs a group send (four Redis round trips with ``channels_redis``) and a
receive per listening socket; at a hundred customers per process the Redis layer's per-process queue
overflowed and dropped frames. Most conversations have one listener, the customer's socket, on the
process running the turn: its frames need no layer at all. The group stays the source of truth for who
listens (operators watching live join it too), so the layer is skipped only when every member of the
group is a customer socket registered here.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from channels.layers import BaseChannelLayer, InMemoryChannelLayer

logger = logging.getLogger(__name__)

Deliver = Callable[[dict[str, Any]], Awaitable[None]]

# group -> channel name -> how to hand that socket an event, for the sockets of this process
_local: dict[str, dict[str, Deliver]] = {}


def listen(group: str, channel_name: str, deliver: Deliver) -> None:
    """Register a socket of this process as a listener of ``group`` (after joining the layer's group)."""
    _local.setdefault(group, {})[channel_name] = deliver


def unlisten(group: str, channel_name: str) -> None:
    sockets = _local.get(group)
    if sockets is not None:
        sockets.pop(channel_name, None)
        if not sockets:
            del _local[group]


async def _members(layer: BaseChannelLayer, group: str) -> set[str] | None:
    """The channels in the layer's group; None when the layer cannot say (then always use the layer)."""
    if isinstance(layer, InMemoryChannelLayer):
        return set(layer.groups.get(group, {}))
    try:
        from channels_redis.core import RedisChannelLayer
    except ImportError:  # pragma: no cover - channels_redis is a dependency
        return None
    if isinstance(layer, RedisChannelLayer):
        # The group's sorted set, as channels_redis stores it (one round trip, read-only).
        connection = layer.connection(layer.consistent_hash(group))
        return {member.decode() for member in await connection.zrange(layer._group_key(group), 0, -1)}
    return None


class ConversationFanout:
    """``emit`` for one turn: its frames to every listener of the conversation's group.

    Before each frame other than a delta it checks who listens; while they are all this process's customer
    sockets, frames go straight to them. Once a frame of the turn has gone through the layer, the rest do
    too, so no socket receives a frame before an earlier one still queued in the layer. A socket that fails
    to take a frame (it is closing) does not fail the turn.
    """

    def __init__(self, layer: BaseChannelLayer, group: str, origin: str) -> None:
        self.layer = layer
        self.group = group
        self.origin = origin
        self.via_layer = False
        self.checked = False

    async def __call__(self, frame: dict[str, Any]) -> None:
        event = {"type": "chat.frame", "frame": frame, "origin": self.origin}
        if not self.via_layer and (frame.get("type") != "delta" or not self.checked):
            members = await _members(self.layer, self.group)
            self.via_layer = members is None or not members <= _local.get(self.group, {}).keys()
            self.checked = True
        if self.via_layer:
            await self.layer.group_send(self.group, event)
            return
        for channel_name, deliver in list(_local.get(self.group, {}).items()):
            try:
                await deliver(event)
            except Exception:
                logger.debug("socket %s did not take a frame; it is closing", channel_name, exc_info=True)
