"""Benchmark: the seed's conversation, many at once, against a real daphne over real WebSockets.

    make bench                      # or: .venv/bin/python scripts/bench.py --conversations 50 --concurrency 10

It starts daphne on a free loopback port with the builtin model (no pauses between words), on a fresh
SQLite file unless DATABASE_URL is set, and plays the seed's four customer messages in every
conversation. It prints throughput and the latency of each customer message (send → `idle`) and of
its first streamed piece, then the cost of one API-key check (HMAC) next to Django's password hasher.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import websockets

ROOT = Path(__file__).resolve().parent.parent
SEED = [
    "Hi there, my username is john_doe, can you help me check the status for my ticket?",
    'Sure, my username is "john_doe" and my API key is: "key"',
    "Yea it's: 12345",
    "That's it, thanks.",
]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(env: dict[str, str], port: int) -> subprocess.Popen[bytes]:
    python = sys.executable
    for step in (["migrate", "--noinput", "-v0"], ["seed_demo", "--password", "bench-password-1"]):
        subprocess.run([python, "manage.py", *step], cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL)
    daphne = Path(python).with_name("daphne")
    server = subprocess.Popen(
        [str(daphne), "-b", "127.0.0.1", "-p", str(port), "supportsite.asgi:application"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return server
        except OSError:
            time.sleep(0.1)
    server.kill()
    raise SystemExit("daphne did not start")


def session_cookie(base: str) -> str:
    with urllib.request.urlopen(base + "/") as response:  # noqa: S310 - our own loopback server
        for header in response.headers.get_all("Set-Cookie"):
            if header.startswith("sessionid="):
                return header.split(";", 1)[0]
    raise SystemExit("the chat page set no session cookie")


async def until_idle(ws: websockets.ClientConnection, started: float) -> float | None:
    """Read frames until ``idle``; returns when the first delta came (seconds after ``started``)."""
    first = None
    while True:
        frame = json.loads(await asyncio.wait_for(ws.recv(), 30))
        if frame["type"] == "delta" and first is None:
            first = time.perf_counter() - started
        if frame["type"] == "error":
            raise RuntimeError(frame)
        if frame["type"] == "idle":
            return first


async def conversation(port: int, results: dict[str, list[float]]) -> None:
    base = f"http://127.0.0.1:{port}"
    cookie = await asyncio.to_thread(session_cookie, base)
    headers = {"Origin": base, "Cookie": cookie}
    async with websockets.connect(f"ws://127.0.0.1:{port}/ws/chat/", additional_headers=headers) as ws:
        await until_idle(ws, time.perf_counter())  # the greeting
        for text in SEED:
            started = time.perf_counter()
            await ws.send(json.dumps({"type": "message", "text": text}))
            first = await until_idle(ws, started)
            results["turn"].append(time.perf_counter() - started)
            if first is not None:
                results["first_delta"].append(first)


async def run(port: int, conversations: int, concurrency: int) -> tuple[dict[str, list[float]], float]:
    results: dict[str, list[float]] = {"turn": [], "first_delta": []}
    limit = asyncio.Semaphore(concurrency)

    async def one() -> None:
        async with limit:
            await conversation(port, results)

    started = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(conversations)))
    return results, time.perf_counter() - started


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def key_check_costs() -> tuple[float, float]:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "supportsite.settings")
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()
    from django.contrib.auth.hashers import make_password

    from tickets.services import apikey_digest

    rounds = 2000
    started = time.perf_counter()
    for _ in range(rounds):
        apikey_digest("sk_" + "x" * 43)
    hmac_cost = (time.perf_counter() - started) / rounds
    started = time.perf_counter()
    for _ in range(3):
        make_password("sk_" + "x" * 43)
    return hmac_cost, (time.perf_counter() - started) / 3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--conversations", type=int, default=40)
    parser.add_argument("--concurrency", type=int, default=10)
    options = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        env = {**os.environ, "CHAT_BACKEND": "builtin", "CHAT_BUILTIN_DELAY_MS": "0", "CHAT_LOG_LEVEL": "WARNING"}
        env.setdefault("DATABASE_URL", f"sqlite:///{folder}/bench.sqlite3")
        port = free_port()
        server = start_server(env, port)
        try:
            results, elapsed = asyncio.run(run(port, options.conversations, options.concurrency))
        finally:
            server.terminate()
            server.wait(10)
    turns = results["turn"]
    print(f"database: {env['DATABASE_URL'].split(':', 1)[0]}, channel layer: "
          f"{'redis' if env.get('REDIS_URL') else 'in-memory'}, cores: {os.cpu_count()}")
    print(f"{options.conversations} seed conversations ({len(turns)} customer messages, 2 tool calls each "
          f"conversation), {options.concurrency} at a time: {elapsed:.2f} s")
    print(f"  throughput: {len(turns) / elapsed:.1f} customer messages/s, "
          f"{options.conversations / elapsed:.2f} conversations/s")
    print(f"  reply latency (send → idle): p50 {statistics.median(turns) * 1000:.0f} ms, "
          f"p95 {percentile(turns, 0.95) * 1000:.0f} ms, max {max(turns) * 1000:.0f} ms")
    firsts = results["first_delta"]
    print(f"  first streamed piece: p50 {statistics.median(firsts) * 1000:.0f} ms, "
          f"p95 {percentile(firsts, 0.95) * 1000:.0f} ms")
    hmac_cost, hasher_cost = key_check_costs()
    print(f"API key check: HMAC-SHA256 {hmac_cost * 1e6:.1f} µs vs Django's default password hasher "
          f"{hasher_cost * 1000:.0f} ms ({hasher_cost / hmac_cost:,.0f}× slower)")


if __name__ == "__main__":
    main()
