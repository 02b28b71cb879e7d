"""Flood limits: messages, open sockets and new conversations per browser session and per client address.

The counters live in Django's default cache (Redis when ``REDIS_URL`` is set, else the database cache),
so every server process counts against the same numbers. Windows are fixed (the current minute or
hour). The database cache's increments are not atomic across processes, so concurrent bursts may be
counted a little low; Redis counts exactly. A cache that fails lets the traffic through, logged: the
limits protect the service and must not be what takes it down. Sync functions: call them from async
code through ``database_sync_to_async``, once per event.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from django.conf import settings
from django.core.cache import cache

logger = logging.getLogger(__name__)

RATE_LIMITED = "You're sending messages faster than we can answer. Please wait a minute, then try again."
TOO_MANY_CONNECTIONS = "This chat is open in too many windows. Please close some of them, then reload this page."
TOO_MANY_CONVERSATIONS = (
    "You've started many conversations recently. Please continue this one, or wait a while before starting another."
)
# A socket counter outlives a server process killed without closing its sockets for at most this long.
SOCKET_COUNT_SECONDS = 6 * 3600
CLOSE_CODE = 4429  # 4000-4999: the application's own close codes; 429 as in HTTP's Too Many Requests


class Refused(Exception):
    """A request over a limit; ``frame`` is what the customer is sent."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message

    def frame(self) -> dict[str, object]:
        return {"type": "error", "code": self.code, "message": self.message, "refused": True}


def _fail_open(action: Callable[[], int]) -> int:
    try:
        return action()
    except Exception:
        logger.exception("the flood limits' cache failed; letting the request through")
        return 0


def _count_in_window(name: str, window_seconds: int) -> int:
    """This event's number in the current window of ``name``."""
    key = f"chat:limit:{name}:{int(time.time() // window_seconds)}"

    def count() -> int:
        cache.add(key, 0, timeout=window_seconds + 5)
        return cache.incr(key)

    return _fail_open(count)


def _over(counts: list[tuple[str, int, int]], window_seconds: int) -> bool:
    """Counts every (scope, key, limit) event; True when any is over its limit. A None key is not counted."""
    over = False
    for scope, key, limit in counts:
        if key and _count_in_window(f"{scope}:{key}", window_seconds) > limit:
            over = True
    return over


def message_admit(*, session_key: str, client_address: str | None) -> None:
    """Count a customer message; raise ``Refused`` (``rate_limited``) when over this minute's limits."""
    counts = [
        ("messages:session", session_key, settings.CHAT_MESSAGES_PER_MINUTE),
        ("messages:address", client_address, settings.CHAT_MESSAGES_PER_MINUTE_PER_ADDRESS),
    ]
    if _over(counts, 60):
        raise Refused("rate_limited", RATE_LIMITED)


def conversation_start_admit(*, session_key: str, client_address: str | None) -> None:
    """Count a new conversation; raise ``Refused`` (``rate_limited``) when over this hour's limits."""
    counts = [
        ("conversations:session", session_key, settings.CHAT_CONVERSATIONS_PER_HOUR),
        ("conversations:address", client_address, settings.CHAT_CONVERSATIONS_PER_HOUR_PER_ADDRESS),
    ]
    if _over(counts, 3600):
        raise Refused("rate_limited", TOO_MANY_CONVERSATIONS)


def _socket_keys(session_key: str, client_address: str | None) -> list[tuple[str, int]]:
    keys = [(f"chat:sockets:session:{session_key}", settings.CHAT_SOCKETS_PER_SESSION)]
    if client_address:
        keys.append((f"chat:sockets:address:{client_address}", settings.CHAT_SOCKETS_PER_ADDRESS))
    return keys


def socket_open(*, session_key: str, client_address: str | None) -> None:
    """Count an open socket; raise ``Refused`` (``too_many_connections``), not counted, when over a limit.

    Every socket admitted must be given back with ``socket_close``.
    """
    counted: list[str] = []
    over = False
    for key, limit in _socket_keys(session_key, client_address):

        def count(key: str = key) -> int:
            cache.add(key, 0, timeout=SOCKET_COUNT_SECONDS)
            return cache.incr(key)

        number = _fail_open(count)
        if number:
            counted.append(key)
        over = over or number > limit
    if over:
        _give_back(counted)
        raise Refused("too_many_connections", TOO_MANY_CONNECTIONS)


def socket_close(*, session_key: str, client_address: str | None) -> None:
    """Give back a socket that ``socket_open`` admitted."""
    _give_back([key for key, _ in _socket_keys(session_key, client_address)])


def _give_back(keys: list[str]) -> None:
    for key in keys:
        try:
            if cache.decr(key) < 0:
                cache.set(key, 0, timeout=SOCKET_COUNT_SECONDS)
        except ValueError:
            pass  # expired meanwhile: nothing to give back
        except Exception:
            logger.exception("the flood limits' cache failed to count a closed socket")
