"""A hostile model against the running product (real daphne, real openai client, a scripted loopback
endpoint): it echoes a realistic key, calls verify_user with broken JSON, under a made-up name and with the
key as the username, then verifies; the customer types the key twice, quoted and not. Afterwards the raw
key is searched for in the database file, the exports, the operator pages, the operators' search, the
model's later requests and the frames sent once it was known: every count must be 0.

    .venv/bin/python scripts/attack_secrets.py
"""

from __future__ import annotations

import glob
import io
import json
import os
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORK = tempfile.mkdtemp(prefix="attack-secrets-")
DB = f"{WORK}/db.sqlite3"
PORT = 18766
sys.path.insert(0, ROOT)
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "supportsite.settings")
os.environ["DATABASE_URL"] = f"sqlite:///{DB}"


def setup() -> str:
    import django

    django.setup()
    from django.contrib.auth.models import User
    from django.core.management import call_command

    from tickets.services import apikey_rotate

    call_command("migrate", verbosity=0)
    call_command("seed_demo", password="attack-pass-1", stdout=io.StringIO())  # noqa: S106 - a throwaway DB
    return apikey_rotate(customer=User.objects.get(username="john_doe"))[1]


def hostile_script(fake, key: str) -> None:
    from tests.support.fake_openai import chunk, stream_reply, text_deltas

    def call(number: int, name: str, arguments: str):
        part = {"index": 0, "id": f"c{number}", "type": "function", "function": {"name": name, "arguments": arguments}}
        return stream_reply([chunk({"tool_calls": [part]})], finish_reason="tool_calls")

    echo = stream_reply([chunk({"content": f"Checking your key {key} now. "})])
    echo.pieces = echo.pieces[:-2] + call(1, "verify_user", '{"username": "john_doe", "api_key": "' + key).pieces
    fake.script(
        stream_reply(text_deltas("Hello! Username and API key please?")),
        echo,  # the echo, then a call whose arguments are broken JSON
        call(2, "verifyUser", json.dumps({"username": "john_doe", "api_key": key})),
        call(3, "verify_user", json.dumps({"username": key, "api_key": key})),
        call(4, "verify_user", json.dumps({"username": "john_doe", "api_key": key})),
        stream_reply(text_deltas("Verified! Your key ", key[:10], key[10:], " is safe with me.")),
        stream_reply(text_deltas(f"Yes, it was {key}.")),
    )


def chat(key: str) -> tuple[list[dict], int]:
    from websockets.sync.client import connect

    frames: list[dict] = []

    def until_idle(ws) -> None:
        while (frame := json.loads(ws.recv(timeout=20)))["type"] != "idle":
            frames.append(frame)

    with connect(f"ws://127.0.0.1:{PORT}/ws/chat/", additional_headers={"Origin": f"http://127.0.0.1:{PORT}"}) as ws:
        until_idle(ws)
        ws.send(json.dumps({"type": "message", "text": f'I am john_doe, key "{key}" (again: {key})'}))
        until_idle(ws)
        known_from = len(frames)
        ws.send(json.dumps({"type": "message", "text": f"Was it {key}?"}))
        until_idle(ws)
    return frames, known_from


def hits(key: str, fake, frames: list[dict], known_from: int) -> dict[str, object]:
    from django.contrib.auth.models import User
    from django.core.management import call_command
    from django.db import connection
    from django.test import Client

    from chat.models import Conversation
    from tickets.models import VerificationAttempt

    exports = io.StringIO()
    call_command("export_transcripts", stdout=exports)
    call_command("export_transcripts", "--format", "csv", stdout=exports)
    client = Client(HTTP_HOST="127.0.0.1")
    client.force_login(User.objects.get(username="admin"))
    conversation = Conversation.objects.get()
    urls = (f"/operators/conversations/{conversation.id}/", f"/admin/chat/conversation/{conversation.id}/change/")
    pages = "".join(client.get(url).content.decode() for url in urls)
    search = client.get("/operators/", {"q": key}).content.decode()
    usernames = list(VerificationAttempt.objects.values_list("username", flat=True))
    connection.close()
    database = b"".join(open(name, "rb").read() for name in glob.glob(DB + "*"))  # noqa: SIM115
    return {
        "database file (+wal)": database.count(key.encode()),
        "exports (jsonl+csv)": exports.getvalue().count(key),
        "operator timeline + admin page": pages.count(key),
        "operators' search finds the conversation": int(str(conversation.id) in search),
        "later model requests": [json.dumps(request.json).count(key) for request in fake.requests[2:]],
        "frames after the key became known": json.dumps(frames[known_from:]).count(key),
        "VerificationAttempt usernames": sum(key in username for username in usernames),
        "(verified as)": str(conversation.customer),
        "(masks shown on the operator pages)": pages.count("****"),
    }


def main() -> None:
    key = setup()
    from tests.support.fake_openai import FakeOpenAI

    fake = FakeOpenAI().start()
    hostile_script(fake, key)
    env = {**os.environ, "OPENAI_BASE_URL": fake.base_url, "OPENAI_API_KEY": "x", "CHAT_MODEL": "fake"}
    daphne = os.path.join(os.path.dirname(sys.executable), "daphne")
    with open(f"{WORK}/daphne.log", "w") as log:
        server = subprocess.Popen(
            [daphne, "-b", "127.0.0.1", "-p", str(PORT), "supportsite.asgi:application"],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
        )
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", PORT), 0.2).close()
                break
            except OSError:
                time.sleep(0.1)
        frames, known_from = chat(key)
    finally:
        server.terminate()
        server.wait()
    print(json.dumps(hits(key, fake, frames, known_from), indent=1))
    fake.stop()


if __name__ == "__main__":
    main()
