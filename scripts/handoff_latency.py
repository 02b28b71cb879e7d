"""Time from a staff reply to the customer's screen: p50 and p99 over N replies.

Starts daphne (one process, or two: the staff member's POSTs go to one, the customer's socket is on the
other, so every reply crosses the channel layer), migrates the database and seeds the demo data, puts a
conversation in the hands of the demo "staff" account, then N times: POST a reply to
``/operators/inbox/<id>/reply/`` and wait for its ``message`` frame on the customer's socket. The clock
runs from just before the POST is sent to the frame's arrival (the POST's own round trip included).

    .venv/bin/python scripts/handoff_latency.py --processes 1 --replies 200
    DATABASE_URL=postgres://postgres@127.0.0.1:5432/handoff_bench REDIS_URL=redis://127.0.0.1:6379/9 \\
        .venv/bin/python scripts/handoff_latency.py --processes 2 --replies 200

Two processes need ``REDIS_URL`` (the in-memory layer does not leave its process). Without
``DATABASE_URL`` a throw-away SQLite file is used.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import secrets
import sys
import tempfile
import time
import urllib.request
from http.cookies import SimpleCookie
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--processes", type=int, choices=(1, 2), default=1)
    parser.add_argument("--replies", type=int, default=200)
    options = parser.parse_args()
    if options.processes == 2 and not os.environ.get("REDIS_URL"):
        parser.error("two processes need REDIS_URL")
    scratch = tempfile.mkdtemp(prefix="handoff-latency-")
    os.environ.setdefault("DATABASE_URL", f"sqlite:///{scratch}/db.sqlite3")
    os.environ.update(DJANGO_SETTINGS_MODULE="supportsite.settings", CHAT_BACKEND="builtin", CHAT_BUILTIN_DELAY_MS="0")
    os.environ.pop("DJANGO_ALLOWED_HOSTS", None)

    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    with open(os.devnull, "w") as quiet:
        call_command("seed_demo", password=secrets.token_urlsafe(16), stdout=quiet)  # nobody logs in with it
    figures = measure(options.processes, options.replies, Path(scratch))
    print(json.dumps(figures, indent=2))


def measure(processes: int, replies: int, scratch: Path) -> dict[str, object]:
    from django.conf import settings
    from django.contrib.auth.models import User
    from django.test import Client
    from tests.browser_server import ChatServer, free_port
    from websockets.sync.client import connect as ws_connect

    from chat import handoff
    from chat.operators.access import roles_ensure
    from tests.test_hardening_processes import greeted_conversation

    roles_ensure()
    servers = []
    for number in range(processes):
        port = free_port()
        server = ChatServer(port=port, environment=dict(os.environ), log=scratch / f"daphne-{number}.log")
        server.start()
        servers.append(server)
    staff_server, customer_server = servers[0], servers[-1]
    try:
        session_key, conversation_id = greeted_conversation()
        staff = User.objects.get(username="staff")
        handoff.handoff_request(conversation_id=conversation_id, actor="customer", reason="latency")
        handoff.handoff_claim(conversation_id=conversation_id, staff=staff)
        client = Client()
        client.force_login(staff)
        staff_session = client.cookies[settings.SESSION_COOKIE_NAME].value
        cookie = f"{settings.SESSION_COOKIE_NAME}={staff_session}"
        with urllib.request.urlopen(urllib.request.Request(  # noqa: S310 - loopback
            f"{staff_server.url}/operators/inbox/", headers={"Cookie": cookie}
        )) as response:
            csrf = SimpleCookie(response.headers.get("Set-Cookie", ""))[settings.CSRF_COOKIE_NAME].value
        headers = {"Origin": customer_server.url, "Cookie": f"{settings.SESSION_COOKIE_NAME}={session_key}"}
        seconds: list[float] = []
        with ws_connect(f"ws://127.0.0.1:{customer_server.port}/ws/chat/", additional_headers=headers) as customer:
            while json.loads(customer.recv(timeout=10))["type"] != "idle":
                pass  # the replay
            for number in range(replies):
                text = f"reply {number}"
                request = urllib.request.Request(  # noqa: S310 - loopback
                    f"{staff_server.url}/operators/inbox/{conversation_id}/reply/",
                    data=f"text={text.replace(' ', '+')}".encode(), method="POST",
                    headers={"Cookie": f"{cookie}; {settings.CSRF_COOKIE_NAME}={csrf}", "X-CSRFToken": csrf,
                             "Accept": "application/json"},
                )
                started = time.perf_counter()
                with urllib.request.urlopen(request, timeout=10):  # noqa: S310 - loopback
                    pass
                while True:
                    frame = json.loads(customer.recv(timeout=10))
                    if frame.get("role") == "staff" and frame.get("text") == text:
                        break
                seconds.append(time.perf_counter() - started)
    finally:
        for server in servers:
            server.stop()
    return {
        "processes": processes,
        "replies": len(seconds),
        "database": settings.DATABASES["default"]["ENGINE"].rsplit(".", 1)[-1],
        "channel_layer": settings.CHANNEL_LAYERS["default"]["BACKEND"].rsplit(".", 1)[-1],
        "p50_ms": round(percentile(seconds, 0.5) * 1000, 1),
        "p99_ms": round(percentile(seconds, 0.99) * 1000, 1),
        "max_ms": round(max(seconds) * 1000, 1),
    }


if __name__ == "__main__":
    main()
