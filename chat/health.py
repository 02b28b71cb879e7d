"""``/healthz`` for load balancers and uptime monitors: 200 when this process can serve customers.

It answers GET and HEAD, needs no login and names no host, user or password: only ``ok`` or ``failing``
per dependency. The database must answer ``SELECT 1``; Redis, when ``REDIS_URL`` is set, must answer
``PING``. The model endpoint is left out on purpose: a model outage must not take every server out of
the load balancer (the chat page says it itself, see ``chat.modelstatus``).
"""

from __future__ import annotations

import logging

import redis
from django.conf import settings
from django.db import connection
from django.http import HttpRequest, JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_http_methods

logger = logging.getLogger(__name__)
TIMEOUT_SECONDS = 2


def database_ok() -> bool:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            return cursor.fetchone() == (1,)
    except Exception:
        logger.exception("health check: the database does not answer")
        return False


def redis_ok(url: str) -> bool:
    try:
        client = redis.Redis.from_url(url, socket_timeout=TIMEOUT_SECONDS, socket_connect_timeout=TIMEOUT_SECONDS)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:
        logger.exception("health check: Redis does not answer")
        return False


@never_cache
@require_http_methods(["GET", "HEAD"])
def healthz(request: HttpRequest) -> JsonResponse:
    """``{"status": "ok" | "failing", "database": ..., "redis": ... | "not configured"}``; 503 when failing."""
    checks = {"database": "ok" if database_ok() else "failing"}
    redis_url = settings.CHAT_LIMITS_REDIS_URL
    checks["redis"] = ("ok" if redis_ok(redis_url) else "failing") if redis_url else "not configured"
    healthy = "failing" not in checks.values()
    return JsonResponse({"status": "ok" if healthy else "failing", **checks}, status=200 if healthy else 503)
