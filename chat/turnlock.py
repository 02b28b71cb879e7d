"""One turn at a time per conversation.

Inside a process an ``asyncio.Lock`` per conversation queues turns in arrival order. When several server
processes may serve one conversation (two tabs behind a balancer), the turn also holds a lease in Redis
(``CHAT_TURN_LEASE_URL``, by default ``REDIS_URL``): a key that only its holder may delete, renewed while
the turn runs and expiring on its own if the process dies. Across processes the lease gives exclusion,
not strict arrival order: waiters in different processes poll for it.

A turn may give its lease back behind it (``release_behind``): the round trip is then off the turn's path
(its ``idle`` goes at once), the turn awaits ``lease_given_back`` after that, so the release is done before
the turn's coroutine ends (a loop made for one call, as ``async_to_sync``'s, would drop it), and whatever
in this process asks about the conversation meanwhile (a turn, ``conversation_busy``) waits for the
release first, so it never finds the conversation held by a turn that is over.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
import weakref
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import redis.asyncio
import redis.asyncio.lock
import redis.exceptions
from django.conf import settings

logger = logging.getLogger(__name__)

LEASE_SECONDS = 15  # how long a dead process's turn can block its conversation
LEASE_POLL_SECONDS = 0.05
POOL_WAIT_SECONDS = 20  # a command waiting this long for a free connection fails

_locks: weakref.WeakValueDictionary[uuid.UUID, asyncio.Lock] = weakref.WeakValueDictionary()
_arrival_gates: weakref.WeakValueDictionary[uuid.UUID, asyncio.Lock] = weakref.WeakValueDictionary()
_releasing: dict[uuid.UUID, asyncio.Future[None]] = {}  # per conversation: its lease being given back
_holders: Counter[uuid.UUID] = Counter()  # per conversation: turns of this process holding or awaiting the lock
_lease_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, redis.asyncio.Redis] = (
    weakref.WeakKeyDictionary()
)


def _lease_client() -> redis.asyncio.Redis | None:
    """One Redis client (and connection pool) per event loop, shared by every turn; None without Redis.

    Its pool holds ``REDIS_MAX_CONNECTIONS`` and a command past them waits for a free one: redis-py's
    default pool holds 100 and raises ``MaxConnectionsError`` past them, which failed turns of a process
    serving 300 customers at once.
    """
    url = settings.CHAT_TURN_LEASE_URL
    if not url:
        return None
    loop = asyncio.get_running_loop()
    client = _lease_clients.get(loop)
    if client is None:
        pool = redis.asyncio.BlockingConnectionPool.from_url(
            url, max_connections=settings.REDIS_MAX_CONNECTIONS, timeout=POOL_WAIT_SECONDS
        )
        client = _lease_clients[loop] = redis.asyncio.Redis(connection_pool=pool)
    return client


def arrivals_in_order(conversation_id: uuid.UUID) -> asyncio.Lock:
    """Held by a message this process received for the conversation until the message is stored (to wait,
    or by its turn's first step): messages received here are stored in the order they came, whichever
    path each takes, and so answered in that order."""
    gate = _arrival_gates.get(conversation_id)
    if gate is None:
        gate = _arrival_gates[conversation_id] = asyncio.Lock()
    return gate


def _lease_name(conversation_id: uuid.UUID) -> str:
    return f"chat:turn-lease:{conversation_id.hex}"


async def conversation_busy(conversation_id: uuid.UUID) -> bool:
    """Whether a turn of the conversation is running, in this process or (with Redis) any other."""
    lock = _locks.get(conversation_id)
    if lock is not None and lock.locked():
        return True
    client = _lease_client()
    if client is None:
        return False
    await lease_given_back(conversation_id)
    return bool(await client.exists(_lease_name(conversation_id)))


async def lease_given_back(conversation_id: uuid.UUID) -> None:
    """Once this process's turn that just ended has given the conversation's lease back."""
    releasing = _releasing.get(conversation_id)
    if releasing is not None and releasing.get_loop() is asyncio.get_running_loop():
        await asyncio.shield(releasing)  # a waiter cancelled does not cancel the release


async def conversation_wait_free(conversation_id: uuid.UUID) -> None:
    """Return once no turn of the conversation runs anywhere; takes neither the lock nor a lease."""
    while await conversation_busy(conversation_id):
        lock = _locks.get(conversation_id)
        if lock is not None and lock.locked():
            async with lock:  # queued behind the running turn: woken when it ends, in order
                pass
        else:
            await asyncio.sleep(LEASE_POLL_SECONDS)  # another process holds the lease: nothing to wait on


@asynccontextmanager
async def conversation_lock(
    conversation_id: uuid.UUID,
    *,
    before_waiting: Callable[[], Awaitable[None]] | None = None,
    release_behind: bool = False,
) -> AsyncIterator[None]:
    """One turn at a time per conversation: in arrival order in this process, exclusive across processes.

    ``before_waiting`` runs only when the conversation is not free at once (a turn of this process holds or
    awaits it, or another process holds the lease), before waiting; what it raises is raised, nothing held.
    With ``release_behind`` the Redis lease is given back behind the block: the caller must await
    ``lease_given_back`` before it returns.
    """
    lock = _locks.get(conversation_id)
    if lock is None:
        lock = _locks[conversation_id] = asyncio.Lock()
    busy = _holders[conversation_id] > 0
    _holders[conversation_id] += 1  # from now on, a message arriving after this one waits behind it
    try:
        if before_waiting is not None and busy:
            await before_waiting()
            before_waiting = None
        async with lock:
            client = _lease_client()
            if client is None:
                yield
                return
            try:
                async with _redis_lease(client, conversation_id, before_waiting):
                    yield
            finally:  # however the block ended
                if not release_behind:
                    await lease_given_back(conversation_id)
    finally:
        _holders[conversation_id] -= 1
        if not _holders[conversation_id]:
            del _holders[conversation_id]


@asynccontextmanager
async def _redis_lease(
    client: redis.asyncio.Redis,
    conversation_id: uuid.UUID,
    before_waiting: Callable[[], Awaitable[None]] | None = None,
) -> AsyncIterator[None]:
    lease = client.lock(
        _lease_name(conversation_id), timeout=LEASE_SECONDS, sleep=LEASE_POLL_SECONDS, thread_local=False
    )
    await lease_given_back(conversation_id)
    if before_waiting is None or not await lease.acquire(blocking=False):
        if before_waiting is not None:
            await before_waiting()  # another process's turn holds the conversation
        await lease.acquire()
    renewal = asyncio.create_task(_renew(lease, conversation_id))
    try:
        yield
    finally:
        renewal.cancel()
        releasing = _releasing[conversation_id] = asyncio.ensure_future(_release(lease, conversation_id))

        def forget(done: asyncio.Future[None]) -> None:
            if _releasing.get(conversation_id) is done:
                del _releasing[conversation_id]

        releasing.add_done_callback(forget)


async def _release(lease: redis.asyncio.lock.Lock, conversation_id: uuid.UUID) -> None:
    try:
        await lease.release()
    except redis.exceptions.LockError:
        logger.warning("the turn lease of conversation %s had expired", conversation_id)
    except Exception:  # Redis unreachable: the lease expires by itself within LEASE_SECONDS
        logger.exception("could not give back the turn lease of conversation %s", conversation_id)


async def _renew(lease: redis.asyncio.lock.Lock, conversation_id: uuid.UUID) -> None:
    while True:
        await asyncio.sleep(LEASE_SECONDS / 3)
        try:
            await lease.reacquire()
        except redis.exceptions.LockError:
            logger.warning("lost the turn lease of conversation %s", conversation_id)
            return
