"""Crossing from async code to the database: Channels' ``database_sync_to_async``, on the process's
database threads, with a kept connection checked once a while rather than once a crossing.

WHY MORE THAN ONE THREAD, AND ONLY ON POSTGRESQL
Channels runs every crossing on asgiref's one thread-sensitive thread. On PostgreSQL that thread spends
much of a crossing waiting for the server's answers, and while it waits no other socket's crossing can
start: under load the queue in front of it set the turn's latency. The rows are already safe to write
from many connections at once (two server processes do it: a conversation's row is locked while its
turns are numbered), so ``DATABASE_THREADS`` crossings run at once, each thread with its own kept
connection. SQLite allows one writer at a time; more threads would only wait on its lock, so it keeps one.

An evaluation run keeps its data in one open transaction on one thread (``chat.evaluation.sandbox``):
inside a ``ThreadSensitiveContext`` (or below a sync caller) a crossing stays on that context's thread,
exactly as Channels' would.

WHY THE HEALTH CHECK IS NOT A ROUND TRIP PER CROSSING
Channels treats each crossing as a request: Django's ``close_old_connections`` runs around it, and with
``CONN_HEALTH_CHECKS`` the first query after it is preceded by a ``SELECT 1``, a round trip per crossing
(four or five per turn) to learn what the previous crossing, a moment ago, already proved. Here a kept
connection gets that ``SELECT 1`` only when it was not checked for ``CHECK_EVERY_SECONDS``, or when its
socket has something to read: an idle connection is sent nothing, so a readable socket means the server
said goodbye (a restart, a failover, ``pg_terminate_backend``), which a poll of the socket, no round trip,
sees at once. A drop that sends nothing (a cable pulled) fails a crossing, as it could during one anyway;
Django closes a connection that errored and is no longer usable, and the next crossing gets a new one.
"""

from __future__ import annotations

import functools
import select
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, ParamSpec, TypeVar

from asgiref.sync import AsyncToSync, SyncToAsync
from django.conf import settings
from django.db import close_old_connections, connections

P = ParamSpec("P")
R = TypeVar("R")

CHECK_EVERY_SECONDS = 2.0


def connections_ready() -> None:
    """Django's ``close_old_connections``, then each kept connection's health check, if it is due."""
    close_old_connections()
    now = time.monotonic()
    for connection in connections.all(initialized_only=True):
        if connection.connection is None or not connection.health_check_enabled or connection.health_check_done:
            continue
        recent = now - getattr(connection, "checked_at", -CHECK_EVERY_SECONDS) < CHECK_EVERY_SECONDS
        if recent and not _server_spoke(connection.connection):
            connection.health_check_done = True  # checked a moment ago, and quiet since: the query goes ahead
        else:
            connection.close_if_health_check_failed()
            connection.checked_at = now


def _server_spoke(raw: Any) -> bool:
    """Whether an idle connection's socket is readable (the server closed it, or sent a notice): a poll,
    no round trip. False for a connection without a socket (SQLite)."""
    fileno = getattr(raw, "fileno", None)
    if fileno is None:
        return False
    try:
        readable, _, _ = select.select([fileno()], [], [], 0)
    except Exception:  # a lost socket (the driver raises its own error): let the real check decide
        return True
    return bool(readable)


class DatabaseCrossing(SyncToAsync):
    """``SyncToAsync`` with a connection that is ready before and tidied after, as a request's."""

    def thread_handler(self, loop: Any, *args: Any, **kwargs: Any) -> Any:
        connections_ready()
        try:
            return super().thread_handler(loop, *args, **kwargs)
        finally:
            close_old_connections()


@functools.cache
def _threads(count: int) -> ThreadPoolExecutor | None:
    return ThreadPoolExecutor(max_workers=count, thread_name_prefix="database") if count > 1 else None


def _pinned() -> bool:
    """Whether the caller runs in a thread-sensitive context or below a sync caller: its thread is kept."""
    return SyncToAsync.thread_sensitive_context.get(None) is not None or bool(
        getattr(AsyncToSync.executors, "current", None)
    )


def database_sync_to_async(func: Callable[P, R]) -> Callable[P, Any]:
    """``func`` run on a database thread, the connection made ready before and tidied after."""

    @functools.wraps(func)
    async def crossing(*args: P.args, **kwargs: P.kwargs) -> R:
        threads = _threads(settings.DATABASE_THREADS)
        if threads is None or _pinned():
            return await DatabaseCrossing(func)(*args, **kwargs)
        return await DatabaseCrossing(func, thread_sensitive=False, executor=threads)(*args, **kwargs)

    return crossing
