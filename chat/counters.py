"""Exact, shared counters for the flood limits: events in a fixed window, and open sockets as leases.

Two stores with one interface, picked once per process: Redis when ``CHAT_LIMITS_REDIS_URL`` is set
(``REDIS_URL``), else the database (tables made by ``chat`` migrations 0005 and 0006, raw SQL on purpose:
no Django cache, whose ``incr`` re-sets a key's timeout and whose culling deletes counters under load).
Each call is atomic across processes and makes one round trip to Redis, or one statement per step to the
database.

An open socket is a *lease*: a member of its scope with an expiry, renewed by a heartbeat thread of the
process that holds it. The count is the members not yet expired, so the sockets of a process that died
without closing them stop counting by themselves within ``LEASE_SECONDS``.

Time is read through ``now()``, so tests can move it. Sync functions: no ORM, plain cursors.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Protocol

import redis
from django.conf import settings
from django.db import connection, connections

logger = logging.getLogger(__name__)

LEASE_SECONDS = 90  # a socket of a process that stopped renewing stops counting after this long
RENEW_SECONDS = 30  # how often a process renews the leases of its open sockets


def now() -> float:
    return time.time()


class Store(Protocol):
    def count_events(self, names: Sequence[str], window_seconds: int) -> dict[str, int]: ...
    def lease_take(self, scopes: Sequence[str], lease: str, until: float) -> dict[str, int]: ...
    def lease_renew(self, leases: Mapping[str, Sequence[str]], until: float) -> None: ...
    def lease_drop(self, scopes: Sequence[str], lease: str) -> None: ...
    def lease_count(self, scope: str) -> int: ...
    def purge(self) -> int: ...


_UPSERT = """
INSERT INTO chat_window_counter (name, window_id, count) VALUES {rows}
ON CONFLICT (name) DO UPDATE SET
  count = CASE WHEN excluded.window_id > chat_window_counter.window_id THEN 1
               ELSE chat_window_counter.count + 1 END,
  window_id = CASE WHEN excluded.window_id > chat_window_counter.window_id THEN excluded.window_id
                   ELSE chat_window_counter.window_id END
RETURNING name, count
"""


class DatabaseStore:
    """Tables ``chat_window_counter`` (one row per name: its window and count) and ``chat_socket_lease``."""

    def count_events(self, names: Sequence[str], window_seconds: int) -> dict[str, int]:
        window_id = int(now() // window_seconds)
        params = [value for name in names for value in (f"{window_seconds}:{name}", window_id)]
        with connection.cursor() as cursor:
            cursor.execute(_UPSERT.format(rows=", ".join(["(%s, %s, 1)"] * len(names))), params)
            counted = dict(cursor.fetchall())
        return {name: counted[f"{window_seconds}:{name}"] for name in names}

    def lease_take(self, scopes: Sequence[str], lease: str, until: float) -> dict[str, int]:
        # Inserted (and committed) before counting: of two racing sockets the later count sees both.
        rows = ", ".join(["(%s, %s, %s)"] * len(scopes))
        marks = ", ".join(["%s"] * len(scopes))
        with connection.cursor() as cursor:
            cursor.execute(
                f"INSERT INTO chat_socket_lease (scope, socket, expires_at) VALUES {rows}",  # noqa: S608
                [value for scope in scopes for value in (scope, lease, until)],
            )
            cursor.execute(
                f"SELECT scope, COUNT(*) FROM chat_socket_lease WHERE scope IN ({marks}) AND expires_at > %s"  # noqa: S608
                " GROUP BY scope",
                [*scopes, now()],
            )
            counted = dict(cursor.fetchall())
        return {scope: counted.get(scope, 0) for scope in scopes}

    def lease_renew(self, leases: Mapping[str, Sequence[str]], until: float) -> None:
        ids = list(leases)
        with connection.cursor() as cursor:
            for start in range(0, len(ids), 500):
                chunk = ids[start : start + 500]
                cursor.execute(
                    f"UPDATE chat_socket_lease SET expires_at = %s WHERE socket IN ({', '.join(['%s'] * len(chunk))})",  # noqa: S608
                    [until, *chunk],
                )

    def lease_drop(self, scopes: Sequence[str], lease: str) -> None:
        with connection.cursor() as cursor:
            cursor.execute("DELETE FROM chat_socket_lease WHERE socket = %s", [lease])

    def lease_count(self, scope: str) -> int:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT COUNT(*) FROM chat_socket_lease WHERE scope = %s AND expires_at > %s", [scope, now()]
            )
            return cursor.fetchone()[0]

    def purge(self) -> int:
        """Delete expired leases and counters whose window is over (an hour is the longest window)."""
        with connection.cursor() as cursor:
            cursor.execute("DELETE FROM chat_socket_lease WHERE expires_at <= %s", [now()])
            deleted = cursor.rowcount
            for window_seconds in (60, 3600):
                cursor.execute(
                    "DELETE FROM chat_window_counter WHERE name LIKE %s AND window_id < %s",
                    [f"{window_seconds}:%", int(now() // window_seconds)],
                )
                deleted += cursor.rowcount
        return deleted


class RedisStore:
    """``INCR`` on a key per window (created with its expiry in the same transaction); a sorted set per
    socket scope, scored by expiry."""

    def __init__(self, url: str) -> None:
        self.client = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)

    def count_events(self, names: Sequence[str], window_seconds: int) -> dict[str, int]:
        window_id = int(now() // window_seconds)
        pipe = self.client.pipeline(transaction=True)
        for name in names:
            key = f"chat:count:{window_seconds}:{name}:{window_id}"
            pipe.set(key, 0, ex=window_seconds + 60, nx=True)  # the expiry is set once, never moved
            pipe.incr(key)
        return dict(zip(names, pipe.execute()[1::2], strict=True))

    def lease_take(self, scopes: Sequence[str], lease: str, until: float) -> dict[str, int]:
        pipe = self.client.pipeline(transaction=True)
        for scope in scopes:
            key = f"chat:sockets:{scope}"
            pipe.zremrangebyscore(key, "-inf", now())
            pipe.zadd(key, {lease: until})
            pipe.zcard(key)
            pipe.expire(key, LEASE_SECONDS * 2)
        return dict(zip(scopes, pipe.execute()[2::4], strict=True))

    def lease_renew(self, leases: Mapping[str, Sequence[str]], until: float) -> None:
        pipe = self.client.pipeline(transaction=False)
        for lease, scopes in leases.items():
            for scope in scopes:
                pipe.zadd(f"chat:sockets:{scope}", {lease: until}, xx=True)
                pipe.expire(f"chat:sockets:{scope}", LEASE_SECONDS * 2)
        pipe.execute()

    def lease_drop(self, scopes: Sequence[str], lease: str) -> None:
        pipe = self.client.pipeline(transaction=False)
        for scope in scopes:
            pipe.zrem(f"chat:sockets:{scope}", lease)
        pipe.execute()

    def lease_count(self, scope: str) -> int:
        return self.client.zcount(f"chat:sockets:{scope}", now(), "+inf")

    def purge(self) -> int:
        return 0  # every key carries its own expiry


@functools.cache
def _store_for(redis_url: str | None) -> Store:
    return RedisStore(redis_url) if redis_url else DatabaseStore()


def store() -> Store:
    return _store_for(getattr(settings, "CHAT_LIMITS_REDIS_URL", None))


class LeaseKeeper:
    """This process's open sockets (lease -> scopes) and the daemon thread that renews them."""

    def __init__(self) -> None:
        self.leases: dict[str, tuple[str, ...]] = {}
        self.lock = threading.Lock()
        self.thread: threading.Thread | None = None

    def add(self, lease: str, scopes: Sequence[str]) -> None:
        with self.lock:
            self.leases[lease] = tuple(scopes)
            if self.thread is None or not self.thread.is_alive():
                self.thread = threading.Thread(target=self._beat, name="chat-socket-leases", daemon=True)
                self.thread.start()

    def remove(self, lease: str) -> None:
        with self.lock:
            self.leases.pop(lease, None)

    def renew(self) -> None:
        """Extend every lease of this process by ``LEASE_SECONDS`` from now, in one round trip."""
        with self.lock:
            leases = dict(self.leases)
        if leases:
            store().lease_renew(leases, now() + LEASE_SECONDS)

    def _beat(self) -> None:
        while True:
            time.sleep(RENEW_SECONDS)
            try:
                self.renew()
            except Exception:
                logger.exception("could not renew the leases of this process's open sockets")
            finally:
                connections.close_all()  # this thread's own connections: none is kept between beats


keeper = LeaseKeeper()
