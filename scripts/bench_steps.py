"""A turn's database steps, timed in-process (CPU and wall), without sockets, threads or a model.

    .venv/bin/python scripts/bench_steps.py                      # SQLite, in a temporary folder
    .venv/bin/python scripts/bench_steps.py --pg postgres://postgres@127.0.0.1:5432/bench_steps
    .venv/bin/python scripts/bench_steps.py --checkout /tmp/older  # an older commit's code, same steps

``scripts/bench.py`` measures whole turns, where a step's few hundred microseconds drown in the run's
noise; this times the steps a turn crosses to the database for, each repeated ``--repeat`` times on
fresh conversations, so two commits can be compared step by step. Each figure is beyond the cost of
starting the conversation it runs in (timed on its own, first). The database is created afresh
(PostgreSQL: dropped and created; it must not be one you keep).
"""

from __future__ import annotations

import argparse
import functools
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STEP = [
    {"role": "assistant", "content": "Hi! Your username and API key, please?"},
    {"role": "user", "content": "john_doe and key"},
    {"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "type": "function", "function": {
        "name": "verify_user", "arguments": '{"username": "john_doe", "api_key": "key"}'}}]},
    {"role": "tool", "tool_call_id": "c1", "content": '{"success": true}'},
]


def prepared(checkout: Path, url: str) -> None:
    """A fresh database with the demo data, and Django set up on ``checkout``'s code."""
    os.environ.update(
        DATABASE_URL=url, DJANGO_DEBUG="0", DJANGO_SECRET_KEY="bench-steps-" + "x" * 40,
        CHAT_MESSAGES_PER_MINUTE="1000000", CHAT_MESSAGES_PER_MINUTE_PER_ADDRESS="1000000",
        DJANGO_SETTINGS_MODULE="supportsite.settings",
    )
    os.environ.pop("REDIS_URL", None)
    if url.startswith("postgres"):
        import psycopg

        server, name = url.rsplit("/", 1)
        with psycopg.connect(server + "/postgres", autocommit=True) as db:
            db.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            db.execute(f'CREATE DATABASE "{name}"')
    for step in (["migrate", "-v0"], ["seed_demo", "--password", "bench-password-1"]):
        subprocess.run([sys.executable, "manage.py", *step], cwd=checkout, check=True, stdout=subprocess.DEVNULL)
    sys.path.insert(0, str(checkout))
    os.chdir(checkout)
    import django

    django.setup()


def steps() -> dict[str, Callable[[], object]]:
    from chat import limits, runtime, services
    from chat.agent import ToolCall
    from chat.toolbox import Toolbox, ToolContext
    from tickets import tools

    def start():
        return services.conversation_start(session_key=uuid.uuid4().hex, client_address="198.51.100.7")

    verify = Toolbox([tools.verify_user])
    call = ToolCall("c1", "verify_user", '{"username": "john_doe", "api_key": "key"}')
    done = [{"role": "assistant", "content": "Done."}]

    def verification():
        conversation = start()
        verify.run(call, ToolContext(conversation.id, None, conversation.client_address))

    def appends(**learning):
        conversation = start()
        services.turns_append(conversation_id=conversation.id, messages=STEP)
        services.turns_append(conversation_id=conversation.id, messages=done, **learning)

    def message():
        conversation = start()
        admit = functools.partial(limits.message_admit, session_key="s" * 32, client_address="198.51.100.7")
        if hasattr(runtime, "turn_start_arriving"):
            async def never(*args):
                raise AssertionError("stored on its own")

            runtime.turn_start_arriving(conversation.id, runtime.Arrival("Where is my ticket?", admit, never, never))
        else:  # before f365186: stored in a step of its own, then taken by the turn's start
            from chat.consumers import customer_message_arrive

            customer_message_arrive(session_key="s" * 32, client_address="198.51.100.7",
                                    conversation_id=conversation.id, text="Where is my ticket?")
            runtime.turn_start(conversation.id)

    return {
        "a conversation's start": start,
        "verify_user (by key, succeeds)": verification,
        "two appends, the second learning a key": functools.partial(appends, new_secrets=["key"]),
        "the same two appends, plain": appends,
        "a customer message: stored, turn start": message,
    }


def timed(step: Callable[[], object], repeat: int) -> tuple[float, float]:
    """(CPU, wall) milliseconds per call, after a warm-up."""
    for _ in range(min(20, repeat)):
        step()
    cpu, wall = time.process_time(), time.perf_counter()
    for _ in range(repeat):
        step()
    return (time.process_time() - cpu) * 1000 / repeat, (time.perf_counter() - wall) * 1000 / repeat


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pg", help="a PostgreSQL database URL to create afresh (default: SQLite)")
    parser.add_argument("--checkout", type=Path, default=ROOT, help="whose code to time (default: this one)")
    parser.add_argument("--repeat", type=int, default=400)
    options = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        prepared(options.checkout.resolve(), options.pg or f"sqlite:///{folder}/steps.sqlite3")
        named = steps()
        base = timed(named.pop("a conversation's start"), options.repeat)
        print(f"{options.checkout} on {'PostgreSQL' if options.pg else 'SQLite'}, {options.repeat} times each\n")
        print("| step | CPU | wall |\n| --- | --- | --- |")
        print(f"| a conversation's start | {base[0]:.3f} ms | {base[1]:.3f} ms |")
        for name, step in named.items():
            cpu, wall = timed(step, options.repeat)
            print(f"| {name} (beyond the start) | {cpu - base[0]:.3f} ms | {wall - base[1]:.3f} ms |")


if __name__ == "__main__":
    main()
