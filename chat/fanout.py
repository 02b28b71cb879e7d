"""A conversation's frames to its listeners: straight to this process's sockets when they are all of its
listeners, else through the channel layer's group.

Every frame through the layer costs a group send (four Redis round trips with ``channels_redis``) and a
receive per listening socket; at a hundred customers per process the Redis layer's per-process queue
overflowed and dropped frames. Most conversations have one listener, the customer's socket, on the
process running the turn: its frames need no layer at all. The group stays the source of truth for who
listens (operators watching live join it too), so the layer is skipped only when every member of the
group is a customer socket registered here.

WHO LISTENS, WITHOUT ASKING REDIS PER FRAME
Reading the group's members is a Redis round trip. It was made before every frame but a delta (five or six
a turn, a millisecond of a turn's latency), to catch a listener joining from elsewhere (an operator, a tab
on another process). Instead every socket joining a conversation's group says so to the group
(``group_join``: a ``chat.joined`` event, after its ``group_add``). While a process has a socket in the
group it hears every such event, so once a read of the members has found only this process's customer
sockets, that stays known (``_Listeners.only_ours``) until one joins from elsewhere: a turn then reads the
members once, at its first frame, and only when that is not known. Knowledge ends with the process's last
socket in the group (it hears nothing more), and a read whose answer raced a join heard meanwhile counts
for nothing. A listener joining from elsewhere gets the turn's frames from the moment its event is heard
(a few milliseconds after it joined, deltas included); they went through the layer from the next frame
but a delta before.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from channels.layers import BaseChannelLayer, InMemoryChannelLayer

logger = logging.getLogger(__name__)

Deliver = Callable[[dict[str, Any]], Awaitable[None]]
JOINED = "chat.joined"  # the event a socket joining a conversation's group sends it


@dataclass(eq=False)
class _Listeners:
    """This process's customer sockets in one group, and what is known of the group's other members."""

    sockets: dict[str, Deliver] = field(default_factory=dict)  # channel name -> how to hand it an event
    only_ours: bool = False  # the members were read since these sockets listen: all ours, and none joined since
    joins_heard: int = 0  # joins from elsewhere heard


# group -> this process's sockets listening to it
_local: dict[str, _Listeners] = {}


async def group_join(layer: BaseChannelLayer, group: str, channel_name: str) -> None:
    """Join a conversation's group and tell its members, so a process delivering its frames straight to its
    own sockets sends them through the layer from now on. Every socket joining a conversation's group joins
    through here (and has a ``chat_joined`` handler)."""
    await layer.group_add(group, channel_name)
    await layer.group_send(group, {"type": JOINED, "channel": channel_name})


def listen(group: str, channel_name: str, deliver: Deliver) -> None:
    """Register a socket of this process as a listener of ``group`` (after joining the layer's group)."""
    _local.setdefault(group, _Listeners()).sockets[channel_name] = deliver


def unlisten(group: str, channel_name: str) -> None:
    listeners = _local.get(group)
    if listeners is not None:
        listeners.sockets.pop(channel_name, None)
        if not listeners.sockets:  # nobody here hears joins any more: what was known is forgotten
            del _local[group]


def listened_here(group: str) -> bool:
    """Whether a customer socket of this process listens to ``group``."""
    return group in _local


def joined(group: str, channel_name: str) -> None:
    """A socket joined ``group`` (its ``chat.joined`` event, heard by a socket of this process)."""
    listeners = _local.get(group)
    if listeners is not None and channel_name not in listeners.sockets:
        listeners.only_ours = False
        listeners.joins_heard += 1


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


def known_ours(group: str) -> bool:
    """Whether every member of the group is known to be a customer socket of this process (no round trip)."""
    listeners = _local.get(group)
    return listeners is not None and listeners.only_ours


async def _read_ours(layer: BaseChannelLayer, group: str) -> bool:
    """``known_ours``, the members read from the layer (and what they say remembered) when it is not known."""
    listeners = _local.get(group)
    if listeners is None:
        return False
    if listeners.only_ours:
        return True
    heard = listeners.joins_heard
    members = await _members(layer, group)
    if members is None or _local.get(group) is not listeners or listeners.joins_heard != heard:
        return False  # the layer cannot say, or the sockets or the members changed while it was read
    listeners.only_ours = members <= listeners.sockets.keys()
    return listeners.only_ours


class ConversationFanout:
    """``emit`` for one turn: its frames to every listener of the conversation's group.

    While the group's members are all this process's customer sockets, frames go straight to them: that is
    read from the layer at the turn's first frame when not already known, and a join from elsewhere heard
    during the turn ends it. Once a frame of the turn has gone through the layer, the rest do too, so no
    socket receives a frame before an earlier one still queued in the layer. A socket that fails to take a
    frame (it is closing) does not fail the turn.

    When none of this process's sockets listens (the customer left mid-turn), no join can be heard here:
    who listens is read before each frame but a delta, and while nobody does the frames go nowhere, rather
    than a group send each for a conversation nobody watches.
    """

    def __init__(self, layer: BaseChannelLayer, group: str, origin: str) -> None:
        self.layer = layer
        self.group = group
        self.origin = origin
        self.via_layer = False
        self.checked = False
        self.unheard: bool | None = None  # read with none of ours listening: nobody listens at all

    async def __call__(self, frame: dict[str, Any]) -> None:
        event = {"type": "chat.frame", "frame": frame, "origin": self.origin}
        if not self.via_layer:
            if self.group not in _local:
                if frame.get("type") != "delta" or self.unheard is None:
                    members = await _members(self.layer, self.group)
                    self.unheard = members is not None and not members
                    self.via_layer = not self.unheard
                if self.unheard:
                    return
            elif self.checked:
                self.via_layer = not known_ours(self.group)
            else:
                self.via_layer = not await _read_ours(self.layer, self.group)
                self.checked = True
        if self.via_layer:
            await self.layer.group_send(self.group, event)
            return
        for channel_name, deliver in list(_local[self.group].sockets.items()):
            try:
                await deliver(event)
            except Exception:
                logger.debug("socket %s did not take a frame; it is closing", channel_name, exc_info=True)
