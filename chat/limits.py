"""Flood limits: messages, open sockets and new conversations per browser session and per client address.

The counts live in ``chat.counters`` (Redis when ``REDIS_URL`` is set, else the database), exact over
their whole window and atomic across server processes. Windows are fixed (the current minute or hour).
An open socket is a lease that its process renews: given back on close, and by expiry when the process
died. A store that fails lets the traffic through, logged: the limits protect the service and must not
be what takes it down. Sync functions: call them from async code through ``database_sync_to_async``,
once per event (one round trip each for messages and conversations).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from typing import TypeVar

from django.conf import settings

from chat import counters
from chat.protocol import CustomerError

logger = logging.getLogger(__name__)

RATE_LIMITED = "You're sending messages faster than we can answer. Please wait a minute, then try again."
TOO_MANY_CONNECTIONS = "This chat is open in too many windows. Please close some of them, then reload this page."
TOO_MANY_CONVERSATIONS = (
    "You've started many conversations recently. Please continue this one, or wait a while before starting another."
)
CLOSE_CODE = 4429  # 4000-4999: the application's own close codes; 429 as in HTTP's Too Many Requests

T = TypeVar("T")


def _refusal(code: str, message: str) -> CustomerError:
    return CustomerError(code, message, refused=True)


def _fail_open(action: Callable[[], T], fallback: T) -> T:
    try:
        return action()
    except Exception:
        logger.exception("the flood limits' store failed; letting the request through")
        return fallback


def _over(counts: list[tuple[str, str | None, int]], window_seconds: int) -> bool:
    """Counts one event for every (scope, key, limit) at once; True when any is over. A None key is not counted."""
    limits = {f"{scope}:{key}": limit for scope, key, limit in counts if key}
    numbers = _fail_open(lambda: counters.store().count_events(list(limits), window_seconds), {})
    return any(numbers.get(name, 0) > limit for name, limit in limits.items())


def message_admit(*, session_key: str, client_address: str | None) -> None:
    """Count a customer message; raise a refusal (``rate_limited``) when over this minute's limits."""
    counts = [
        ("messages:session", session_key, settings.CHAT_MESSAGES_PER_MINUTE),
        ("messages:address", client_address, settings.CHAT_MESSAGES_PER_MINUTE_PER_ADDRESS),
    ]
    if _over(counts, 60):
        raise _refusal("rate_limited", RATE_LIMITED)


def conversation_start_admit(*, session_key: str, client_address: str | None) -> None:
    """Count a new conversation; raise a refusal (``rate_limited``) when over this hour's limits."""
    counts = [
        ("conversations:session", session_key, settings.CHAT_CONVERSATIONS_PER_HOUR),
        ("conversations:address", client_address, settings.CHAT_CONVERSATIONS_PER_HOUR_PER_ADDRESS),
    ]
    if _over(counts, 3600):
        raise _refusal("rate_limited", TOO_MANY_CONVERSATIONS)


def _socket_scopes(session_key: str, client_address: str | None) -> dict[str, int]:
    scopes = {f"session:{session_key}": settings.CHAT_SOCKETS_PER_SESSION}
    if client_address:
        scopes[f"address:{client_address}"] = settings.CHAT_SOCKETS_PER_ADDRESS
    return scopes


def socket_open(*, session_key: str, client_address: str | None) -> str:
    """Take a lease for an open socket and return it; raise a refusal (``too_many_connections``), with
    nothing held, when over a limit.

    Give the lease back with ``socket_close``; if the process dies first, it expires by itself.
    """
    scopes = _socket_scopes(session_key, client_address)
    lease = uuid.uuid4().hex
    store = counters.store()
    numbers = _fail_open(lambda: store.lease_take(list(scopes), lease, counters.now() + counters.LEASE_SECONDS), {})
    if any(numbers.get(scope, 0) > limit for scope, limit in scopes.items()):
        socket_close(lease=lease, session_key=session_key, client_address=client_address)
        raise _refusal("too_many_connections", TOO_MANY_CONNECTIONS)
    counters.keeper.add(lease, list(scopes))
    return lease


def socket_close(*, lease: str, session_key: str, client_address: str | None) -> None:
    """Give back the lease ``socket_open`` took; harmless twice."""
    counters.keeper.remove(lease)
    _fail_open(lambda: counters.store().lease_drop(list(_socket_scopes(session_key, client_address)), lease), None)


def counters_purge() -> int:
    """Delete expired leases and finished windows' counters (the database store keeps them as rows)."""
    return counters.store().purge()
