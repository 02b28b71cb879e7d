"""Benchmark: the seed's conversation, many customers at once, next to a bare ``AsyncOpenAI`` loop.

    make bench                                  # the default matrix (a few minutes)
    .venv/bin/python scripts/bench.py --customers 1 100 --setups sqlite pg-redis-2
    .venv/bin/python scripts/bench.py --customers 100 --rounds 3   # medians of 3 rounds, CPU with its range
    .venv/bin/python scripts/bench.py --setups pg-redis pg-redis-2 --customers 100 --cpu-share 0.5  # scale-out

Both arms talk to the same local OpenAI-compatible test server (started here, in its own process),
which answers like the builtin model after ``--ttft-ms`` and streams a word every ``--gap-ms``:

* **bare**: an ``AsyncOpenAI`` client per customer making exactly the calls the product makes (the same
  messages, tools and streaming), with the tools answered in memory: the floor any server could reach;
* **product**: real daphne processes (one or two, customers spread over them as a balancer would) over
  real WebSockets, on SQLite + the in-memory layer or PostgreSQL + Redis (``--pg`` / ``--redis``).

Each customer plays the seed's conversation (the greeting, then three messages: 6 model calls and 2 tool
calls); a *turn* is one greeting or customer message, from send (or connect) to ``idle``. The table gives
daphne's CPU per turn from the server processes' own counters (``/proc/<pid>/stat`` utime + stime, taken
around the measured run, after a warm-up conversation; on the bare arm's rows, the CPU its clients took
in this process, for comparison), turns/s, turn p50 / p99, the p50 added over the bare loop's, errors
(error frames, failed sockets), and how busy the whole machine was meanwhile (all cores, from
``/proc/stat``: near 100 %, the machine and not the server is the limit). The per-address flood limits
are raised through the environment: every customer here comes from 127.0.0.1.

``--cpu-share F`` holds each daphne process to F of one core (a cgroup each, as root), as if each had a
core of its own: on a machine whose cores the load generator, the model server, PostgreSQL and Redis
share with the servers, one process against two then measures how the design scales out, not how many
cores are left.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
SEED = [
    "Hi there, my username is john_doe, can you help me check the status for my ticket?",
    'Sure, my username is "john_doe" and my API key is: "key"',
    "Yea it's: 12345",
]
TOOL_RESULTS = {
    "verify_user": {"success": True},
    "get_ticket_status": {"ticket_id": "12345", "status": "Open", "issue": "Billing Query"},
}
SETUPS = {  # name: (database, channel layer, server processes)
    "sqlite": ("sqlite", "memory", 1),
    "sqlite-2": ("sqlite", "memory", 2),
    "pg-redis": ("pg", "redis", 1),
    "pg-redis-2": ("pg", "redis", 2),
}
UNLIMITED = "1000000"
STREAM_HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"


# THE MODEL SERVER: the builtin model's decisions, served over loopback HTTP with a set pace.


async def serve_model(port: int, ttft: float, gap: float) -> None:
    from chat.builtin import _Completion, decide

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(re.search(rb"(?i)content-length:\s*(\d+)", head).group(1))
                body = json.loads(await reader.readexactly(length))
                tools = {tool["function"]["name"] for tool in body.get("tools") or []}
                completion = _Completion(decide(body["messages"], tools), body["messages"])
                writer.write(STREAM_HEAD)
                await asyncio.sleep(ttft)
                for word, event in _events(completion):
                    if word and gap:
                        await asyncio.sleep(gap)
                    writer.write(b"%x\r\n%s\r\n" % (len(event), event))
                    await writer.drain()
                writer.write(b"0\r\n\r\n")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", port, backlog=1024)
    async with server:
        await server.serve_forever()


def _events(completion: Any) -> list[tuple[bool, bytes]]:
    """The stream's events, each with whether it is a word (sent after a gap)."""
    words = [(True, completion._chunk({"content": w})) for w in re.findall(r"\S+\s*", completion.decision.text)]
    calls = [completion._chunk({"tool_calls": [{"index": i, **c}]}) for i, c in enumerate(completion.tool_calls)]
    ends = [completion._chunk({}, completion.finish_reason), completion._chunk({}, usage=completion.usage)]
    first = completion._chunk({"role": "assistant", "content": ""})
    return [(False, first), *words, *((False, event) for event in [*calls, *ends, b"data: [DONE]\n\n"])]


# RESULTS


@dataclass
class Run:
    turns: list[float] = field(default_factory=list)
    errors: int = 0
    elapsed: float = 0.0
    cpu_seconds: float | None = None
    machine_busy: float | None = None  # share of all the machine's cores busy during the run
    bare: Run | None = None  # ``--paired``: the bare loop's turns, taken in turn with these

    def p(self, share: float) -> float:
        ordered = sorted(self.turns) or [float("nan")]
        return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def conversations_per_customer(customers: int, minimum_turns: int) -> int:
    return max(1, -(-minimum_turns // (customers * (len(SEED) + 1))))


# THE BARE ARM


async def bare_customer(
    base_url: str, schemas: list[dict[str, Any]], run: Run, rounds: int, client: Any = None
) -> None:
    """``rounds`` conversations on a client of their own (``client``: on that one, left open)."""
    import openai

    from chat.prompts import SYSTEM_PROMPT

    own = client is None
    client = openai.AsyncOpenAI(base_url=base_url, api_key="bench", max_retries=0) if own else client
    for _ in range(rounds):
        messages: list[dict[str, Any]] = [{"role": "system", "content": SYSTEM_PROMPT}]
        for text in [None, *SEED]:
            started = time.perf_counter()
            if text is not None:
                messages.append({"role": "user", "content": text})
            try:
                await bare_turn(client, messages, schemas)
            except Exception:
                run.errors += 1
                continue
            run.turns.append(time.perf_counter() - started)
    if own:
        await client.close()


async def bare_turn(client: Any, messages: list[dict[str, Any]], schemas: list[dict[str, Any]]) -> None:
    while True:
        stream = await client.chat.completions.create(
            model="bench", messages=messages, tools=schemas, temperature=0, stream=True,
            stream_options={"include_usage": True},
        )
        text, calls = [], {}
        async for chunk in stream:
            for choice in chunk.choices[:1]:
                text.append(choice.delta.content or "")
                for part in choice.delta.tool_calls or []:
                    call = calls.setdefault(part.index, {"id": "", "name": "", "arguments": ""})
                    call["id"] = part.id or call["id"]
                    call["name"] += part.function.name or ""
                    call["arguments"] += part.function.arguments or ""
        if not calls:
            messages.append({"role": "assistant", "content": "".join(text)})
            return
        messages.append({"role": "assistant", "content": None, "tool_calls": [
            {"id": c["id"], "type": "function", "function": {"name": c["name"], "arguments": c["arguments"]}}
            for c in calls.values()
        ]})
        messages += [
            {"role": "tool", "tool_call_id": c["id"], "content": json.dumps(TOOL_RESULTS.get(c["name"], {}))}
            for c in calls.values()
        ]


# THE CLIENT ALONE (``--client-only``)


async def client_turn(model: Any, messages: list[dict[str, Any]], schemas: list[dict[str, Any]]) -> None:
    """``bare_turn`` through the product's own use of the client (``chat.llm.OpenAIChatModel``)."""

    async def shown(text: str) -> None:
        pass

    while True:
        reply = await model.complete(messages, schemas, shown)
        if not reply.tool_calls:
            messages.append({"role": "assistant", "content": reply.content})
            return
        calls = [call.as_api() for call in reply.tool_calls]
        messages.append({"role": "assistant", "content": None, "tool_calls": calls})
        messages += [
            {"role": "tool", "tool_call_id": call.id, "content": json.dumps(TOOL_RESULTS.get(call.name, {}))}
            for call in reply.tool_calls
        ]


async def client_alone(model_url: str, schemas: list[dict[str, Any]], conversations: int, rounds: int) -> dict:
    """CPU per turn of the seed conversation's model calls alone, one customer, in this process: through the
    bare loop's ``create()`` and through the product's use of the client, the tools answered in memory and
    the two taken in turn, ``rounds`` times. What the client costs a turn before any of the server's work."""
    import openai

    from chat import llm
    from chat.prompts import SYSTEM_PROMPT

    bare_client = openai.AsyncOpenAI(base_url=model_url, api_key="bench", max_retries=0)
    product = llm.OpenAIChatModel(llm.openai_client(base_url=model_url, api_key="bench"), "bench")
    arms = {
        "bare AsyncOpenAI loop (create())": lambda messages: bare_turn(bare_client, messages, schemas),
        "the product's use of the client (chat.llm)": lambda messages: client_turn(product, messages, schemas),
    }
    results: dict[str, list[float]] = {name: [] for name in arms}
    for number in range(rounds + 1):  # the first round warms both up, and is not counted
        for name, turn in arms.items():
            before, turns = time.process_time(), 0
            for _ in range(conversations):
                messages: list[dict[str, Any]] = [{"role": "system", "content": SYSTEM_PROMPT}]
                for text in [None, *SEED]:
                    if text is not None:
                        messages.append({"role": "user", "content": text})
                    await turn(messages)
                    turns += 1
            if number:
                results[name].append((time.process_time() - before) / turns * 1000)
    await bare_client.close()
    await product.client.close()
    return results


# THE PRODUCT ARM


async def product_customer(ports: list[int], number: int, run: Run, rounds: int) -> None:
    import websockets

    port = ports[number % len(ports)]  # a balancer spreading customers over the processes
    url, origin = f"ws://127.0.0.1:{port}/ws/chat/", f"http://127.0.0.1:{port}"
    for _ in range(rounds):
        try:
            started = time.perf_counter()
            async with websockets.connect(url, additional_headers={"Origin": origin}, max_queue=None) as ws:
                await until_idle(ws, run, started)
                for text in SEED:
                    started = time.perf_counter()
                    await ws.send(json.dumps({"type": "message", "text": text}))
                    await until_idle(ws, run, started)
        except Exception as error:  # a dropped socket, a timeout: counted, the run goes on
            run.errors += 1
            print(f"    customer {number}: {error!r}", file=sys.stderr)


async def until_idle(ws: Any, run: Run, started: float) -> None:
    failed = False
    while True:
        frame = json.loads(await asyncio.wait_for(ws.recv(), 60))
        if frame["type"] == "error":
            failed = True
            print(f"    error frame: {frame}", file=sys.stderr)
        if frame["type"] == "idle":
            break
    if failed:
        run.errors += 1
    else:
        run.turns.append(time.perf_counter() - started)


async def paired(model_url: str, schemas: list[dict[str, Any]], ports: list[int], rounds: int) -> Run:
    """One customer, the bare loop's conversations and the product's taken in turn (``--paired``): both
    arms measured in the same minutes, so a machine whose speed drifts (a shared VM) moves both alike."""
    import openai

    client = openai.AsyncOpenAI(base_url=model_url, api_key="bench", max_retries=0)  # one, as the product's
    await bare_customer(model_url, schemas, Run(), 1, client)  # its warm-up (the product's is done)
    run, bare = Run(), Run()
    started = time.perf_counter()
    for _ in range(rounds):
        await bare_customer(model_url, schemas, bare, 1, client)
        await product_customer(ports, 0, run, 1)
    run.elapsed, run.bare = time.perf_counter() - started, bare
    await client.close()
    return run


async def load(customers: int, rounds: int, play: Any) -> Run:
    run = Run()
    started = time.perf_counter()
    await asyncio.gather(*(play(number, run, rounds) for number in range(customers)))
    run.elapsed = time.perf_counter() - started
    return run


# PROCESSES


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for_port(port: int, process: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"{what} exited with {process.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.1)
    process.kill()
    raise SystemExit(f"{what} did not start")


def machine_ticks() -> tuple[int, int]:
    """(busy, total) CPU ticks of the whole machine, all cores, from ``/proc/stat``."""
    ticks = [int(value) for value in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = ticks[3] + ticks[4]  # idle + iowait
    return sum(ticks) - idle, sum(ticks)


def measured(load_run: Any) -> Run:
    """Run ``load(...)``, noting how busy the whole machine was meanwhile (the server, or the machine?)."""
    busy, total = machine_ticks()
    run = asyncio.run(load_run)
    busy_after, total_after = machine_ticks()
    run.machine_busy = (busy_after - busy) / max(1, total_after - total)
    return run


def cpu_seconds(pid: int) -> float:
    """utime + stime of the process, from the kernel's own counters."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def server_environment(database: str, layer: str, model_url: str, folder: str, options: argparse.Namespace) -> dict:
    env = {
        key: value for key, value in os.environ.items()
        if key not in {"DATABASE_URL", "REDIS_URL", "DJANGO_SETTINGS_MODULE", "DATABASE_TEST_NAME"}
    }
    env.update(
        CHAT_BACKEND="openai", OPENAI_BASE_URL=model_url, OPENAI_API_KEY="bench", CHAT_MODEL="bench",
        CHAT_LOG_LEVEL="WARNING", DJANGO_DEBUG="0", DJANGO_SECRET_KEY="bench-secret-key-" + "x" * 40,
        DJANGO_SECURE_SSL_REDIRECT="0",
        CHAT_MESSAGES_PER_MINUTE_PER_ADDRESS=UNLIMITED, CHAT_SOCKETS_PER_ADDRESS=UNLIMITED,
        CHAT_CONVERSATIONS_PER_HOUR_PER_ADDRESS=UNLIMITED,
        DATABASE_URL=f"sqlite:///{folder}/bench.sqlite3" if database == "sqlite" else options.pg,
    )
    if layer == "redis":
        env["REDIS_URL"] = options.redis
    return env


def prepare_stores(env: dict[str, str], database: str, layer: str, options: argparse.Namespace) -> None:
    if database == "pg":
        import psycopg

        name = options.pg.rsplit("/", 1)[1]
        with psycopg.connect(options.pg.rsplit("/", 1)[0] + "/postgres", autocommit=True) as db:
            db.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            db.execute(f'CREATE DATABASE "{name}"')
    if layer == "redis":
        import redis

        redis.Redis.from_url(options.redis).flushdb()
    for step in (["migrate", "--noinput", "-v0"], ["seed_demo", "--password", "bench-password-1"]):
        subprocess.run([sys.executable, "manage.py", *step], cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL)


def cpu_cap(pid: int, share: float) -> Path:
    """Hold the process (all its threads) to ``share`` of one core, in a control group of its own: as if
    it ran on a core of its own that fast. The group's folder, to remove once the process is gone.

    With every server process capped, the load generator, the model server, PostgreSQL and Redis keep the
    rest of the machine, so one process against two measures the design's scale-out rather than a small
    machine's cores (on 2 cores, two uncapped daphnes compete with all of those). Needs root and the
    cgroup v2 ``cpu`` controller, or v1's.
    """
    period = 10_000  # short: the process runs in 4 ms slices, not 40 ms bursts then 60 ms stalls
    quota = max(1000, round(share * period))
    v2, v1 = Path("/sys/fs/cgroup"), Path("/sys/fs/cgroup/cpu")
    if (v2 / "cgroup.controllers").exists():
        group = v2 / f"bench-daphne-{pid}"
        group.mkdir()
        (group / "cpu.max").write_text(f"{quota} {period}")
    elif (v1 / "cpu.cfs_quota_us").exists():
        group = v1 / f"bench-daphne-{pid}"
        group.mkdir()
        (group / "cpu.cfs_period_us").write_text(str(period))
        (group / "cpu.cfs_quota_us").write_text(str(quota))
    else:
        raise SystemExit("--cpu-share needs a cgroup cpu controller (/sys/fs/cgroup)")
    (group / "cgroup.procs").write_text(str(pid))
    return group


def start_servers(
    env: dict[str, str], count: int, logs: Path, cpu_share: float | None = None
) -> tuple[list[subprocess.Popen[bytes]], list[int], list[Path]]:
    """``count`` daphne processes, each held to ``cpu_share`` of a core when given (``cpu_cap``), and
    their control groups; their output goes to ``logs``/daphne-<port>.log (shown on errors)."""
    daphne = Path(sys.executable).with_name("daphne")
    servers, ports, groups = [], [], []
    for _ in range(count):
        port = free_port()
        log = (logs / f"daphne-{port}.log").open("wb")
        servers.append(subprocess.Popen(
            [str(daphne), "-b", "127.0.0.1", "-p", str(port), "supportsite.asgi:application"],
            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=log,
        ))
        ports.append(port)
        if cpu_share is not None:
            groups.append(cpu_cap(servers[-1].pid, cpu_share))
    for server, port in zip(servers, ports, strict=True):
        wait_for_port(port, server, "daphne")
    return servers, ports, groups


def measure_product(setup: str, customers: list[int], model_url: str, options: argparse.Namespace) -> dict[int, Run]:
    database, layer, processes = SETUPS[setup]
    results = {}
    with tempfile.TemporaryDirectory() as folder:
        env = server_environment(database, layer, model_url, folder, options)
        prepare_stores(env, database, layer, options)
        logs = Path(options.logs or folder)
        logs.mkdir(parents=True, exist_ok=True)
        servers, ports, groups = start_servers(env, processes, logs, options.cpu_share)
        try:
            asyncio.run(load(processes, 1, lambda n, run, rounds: product_customer(ports, n, run, rounds)))  # warm-up
            for count in customers:
                rounds = conversations_per_customer(count, options.min_turns)
                before = sum(cpu_seconds(server.pid) for server in servers)
                if count == 1 and options.paired:
                    run = measured(paired(model_url, tool_schemas(), ports, rounds))
                else:
                    run = measured(load(count, rounds, lambda n, r, k: product_customer(ports, n, r, k)))
                run.cpu_seconds = sum(cpu_seconds(server.pid) for server in servers) - before
                results[count] = run
                print(f"  {setup:<11} {count:>4} customers: {len(run.turns)} turns in {run.elapsed:.1f} s",
                      file=sys.stderr)
        finally:
            for server in servers:
                server.terminate()
            for server in servers:
                try:
                    server.wait(15)
                except subprocess.TimeoutExpired:
                    server.kill()
                    server.wait()
            for group in groups:
                group.rmdir()
            if any(run.errors for run in results.values()):
                for log in logs.glob("daphne-*.log"):
                    print(f"  the end of {log.name}:\n{log.read_text()[-3000:]}", file=sys.stderr)
    return results


def tool_schemas() -> list[dict[str, Any]]:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "supportsite.settings")
    import django

    django.setup()
    from chat.toolbox import get_toolbox

    return get_toolbox().schemas


# THE TABLE


def median(values: list[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def row(name: str, count: int, runs: list[Run], bares: list[Run] | None) -> str:
    """A row of the table: with several rounds, each figure is the median of the rounds' (the CPU with
    its range), the p50 added is each round's against that round's bare loop, errors are summed."""
    cpus = [run.cpu_seconds / len(run.turns) * 1000 for run in runs if run.cpu_seconds is not None and run.turns]
    cpu = f"{median(cpus):.1f} ms" if cpus else "—"
    if len(cpus) > 1:
        cpu += f" ({min(cpus):.1f}–{max(cpus):.1f})"
    turns_per_second = median([len(run.turns) / run.elapsed for run in runs])
    p50, p99 = median([run.p(0.5) for run in runs]), median([run.p(0.99) for run in runs])
    if bares:
        bares = [run.bare or bare for run, bare in zip(runs, bares, strict=True)]  # paired: its own bare loop
        added = f"{median([(r.p(0.5) - b.p(0.5)) * 1000 for r, b in zip(runs, bares, strict=True)]):+.1f} ms"
        ratio = f"{median([r.p(0.5) / b.p(0.5) for r, b in zip(runs, bares, strict=True)]):.2f}×"
    else:
        added, ratio = "—", "—"
    busy_shares = [run.machine_busy for run in runs if run.machine_busy is not None]
    busy = f"{median(busy_shares):.0%}" if busy_shares else "—"
    return (f"| {name} | {count} | {cpu} | {turns_per_second:.1f} | {p50 * 1000:.0f} ms | "
            f"{p99 * 1000:.0f} ms | {added} ({ratio}) | {sum(run.errors for run in runs)} | {busy} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, nargs="+", default=[1, 10, 100, 300])
    parser.add_argument("--setups", nargs="+", choices=list(SETUPS), default=["sqlite", "pg-redis", "pg-redis-2"])
    parser.add_argument("--min-turns", type=int, default=120, help="turns measured at least, per row")
    parser.add_argument("--ttft-ms", type=float, default=50.0)
    parser.add_argument("--gap-ms", type=float, default=2.0)
    parser.add_argument("--pg", default=os.environ.get("BENCH_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/bench_speed"))
    parser.add_argument("--redis", default=os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/10"))
    parser.add_argument("--logs", help="keep the daphne processes' output in this folder")
    parser.add_argument("--rounds", type=int, default=1,
                        help="measure the whole matrix this many times, each setup on fresh stores and servers, "
                             "and print the medians (rows move by 10-20%% between runs on a shared machine)")
    parser.add_argument("--cpu-share", type=float, metavar="FRACTION",
                        help="hold each daphne process to this share of one core (a cgroup each; root): "
                             "one process against two then measures scale-out, not the machine's cores")
    parser.add_argument("--paired", action="store_true",
                        help="one customer: take the bare loop's conversations and the product's in turn, and "
                             "give each product row the p50 added over its own (drift moves both arms alike)")
    parser.add_argument("--client-only", type=int, metavar="CONVERSATIONS",
                        help="no server: the CPU per turn of the model calls alone, in this process, through the "
                             "bare create() and through the product's use of the client, this many conversations "
                             "a round, the two in turn (with --rounds)")
    parser.add_argument("--serve-model", type=int, help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.serve_model:
        asyncio.run(serve_model(options.serve_model, options.ttft_ms / 1000, options.gap_ms / 1000))
        return
    model_port = free_port()
    model = subprocess.Popen([sys.executable, __file__, "--serve-model", str(model_port),
                              "--ttft-ms", str(options.ttft_ms), "--gap-ms", str(options.gap_ms)], cwd=ROOT)
    wait_for_port(model_port, model, "the model server")
    model_url = f"http://127.0.0.1:{model_port}/v1"
    try:
        print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}", file=sys.stderr)
        schemas = tool_schemas()
        if options.client_only:
            results = asyncio.run(client_alone(model_url, schemas, options.client_only, options.rounds))
            print(f"\nthe seed conversation's model calls alone (6 calls in 4 turns), one customer, "
                  f"{options.client_only} conversations a round, medians of {options.rounds} round(s)\n")
            print("| client | CPU per turn |\n| --- | --- |")
            for name, cpus in results.items():
                print(f"| {name} | {median(cpus):.2f} ms ({min(cpus):.2f}–{max(cpus):.2f}) |")
            return
        import openai  # noqa: F401 - imported before the bare arm's clock starts (about a second of CPU)

        bare: dict[int, list[Run]] = {count: [] for count in options.customers}
        product: dict[str, dict[int, list[Run]]] = {s: {c: [] for c in options.customers} for s in options.setups}
        for number in range(options.rounds):  # each round: the bare loop, then every setup afresh
            if options.rounds > 1:
                print(f"round {number + 1} of {options.rounds}", file=sys.stderr)
            for count in options.customers:
                rounds = conversations_per_customer(count, options.min_turns)
                before = time.process_time()  # this process runs only the bare clients (the model has its own)
                run = measured(load(count, rounds, lambda n, r, k: bare_customer(model_url, schemas, r, k)))
                run.cpu_seconds = time.process_time() - before
                bare[count].append(run)
            for setup in options.setups:
                for count, run in measure_product(setup, options.customers, model_url, options).items():
                    product[setup][count].append(run)
    finally:
        model.terminate()
        model.wait(10)
    print(f"\nseed conversation (greeting + {len(SEED)} messages, 6 model calls, 2 tool calls); model: first token "
          f"after {options.ttft_ms:.0f} ms, a word every {options.gap_ms:.0f} ms; {os.cpu_count()} cores; "
          f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}"
          + (f"; each daphne process held to {options.cpu_share:g} of a core" if options.cpu_share else "")
          + (f"; medians of {options.rounds} rounds" if options.rounds > 1 else "") + "\n")
    print("| arm | customers | server CPU per turn | turns/s | turn p50 | turn p99 | p50 added over bare | errors "
          "| machine busy |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for count in options.customers:
        print(row("bare AsyncOpenAI loop", count, bare[count], None))
        for setup, runs in product.items():
            print(row(setup, count, runs[count], bare[count]))


if __name__ == "__main__":
    main()
