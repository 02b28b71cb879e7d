"""Whether the model endpoint can answer: what the chat page's header shows instead of a hopeful "Online".

The truth is this server process's last model call (``record``, called by ``chat.llm``): a call that could
not reach the endpoint (unreachable, timed out, busy) makes it "down"; any answer makes it "up". A change
is pushed to every open customer socket as ``{"type": "status", "model": "up" | "down"}`` (the sockets
join ``STATUS_GROUP``; with Redis, those of every process). While it is down, the process asks the
endpoint again every ``CHAT_MODEL_PROBE_SECONDS`` (a ``GET /models``, which costs no tokens), so the
header recovers by itself even when nobody writes. Before any call, the endpoint is assumed up.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Literal

from channels.layers import get_channel_layer
from django.conf import settings

from chat import protocol

logger = logging.getLogger(__name__)

STATUS_GROUP = "chat.model-status"
# Codes of ``chat.llm``'s errors that mean the endpoint cannot answer at all (not a bad single reply).
DOWN_CODES = frozenset({"model_unavailable", "model_timeout", "model_busy"})

_reachable: bool | None = None
_probe: asyncio.Task[None] | None = None


def model_state() -> Literal["up", "down"]:
    return "down" if _reachable is False else "up"


def status_frame() -> dict[str, Any]:
    return protocol.model_status(model_state())


async def record(*, reachable: bool) -> None:
    """The outcome of a model call (or probe); a change is pushed to every customer page."""
    global _reachable
    changed = (_reachable is not False) != reachable
    _reachable = reachable
    if not reachable:
        _ensure_probe()
    if changed:
        logger.warning("the model endpoint is %s", model_state())
        await _broadcast()


def forget() -> None:
    """Back to "assumed up", no probe (for tests)."""
    global _reachable, _probe
    _reachable = None
    if _probe is not None and not _probe.done():
        _probe.cancel()
    _probe = None


async def _broadcast() -> None:
    layer = get_channel_layer()
    if layer is None:
        return
    try:
        await layer.group_send(STATUS_GROUP, {"type": "chat.frame", "frame": status_frame()})
    except Exception:  # the status is a courtesy: a layer failure must not fail the customer's turn
        logger.exception("could not push the model status")


def _ensure_probe() -> None:
    global _probe
    loop = asyncio.get_running_loop()
    if _probe is not None and not _probe.done() and _probe.get_loop() is loop:
        return
    _probe = loop.create_task(_probe_until_reachable(), name="model-status-probe")


async def _probe_until_reachable() -> None:
    from chat.llm import get_chat_model  # the model imports this module

    while _reachable is False:
        await asyncio.sleep(settings.CHAT_MODEL_PROBE_SECONDS)
        if _reachable is not False:
            return  # a customer's call got through meanwhile
        if await get_chat_model().probe():
            await record(reachable=True)
            return
