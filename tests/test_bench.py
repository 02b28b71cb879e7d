"""The benchmark still runs: both arms, a real daphne, its table with every column. A smoke run of a few
turns, asserting what it printed, never how fast (speed is measured with ``make bench``, not in tests)."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_the_benchmark_runs_both_arms_and_prints_its_table_of_medians():
    result = subprocess.run(
        [sys.executable, "scripts/bench.py", "--setups", "sqlite", "--customers", "1", "--min-turns", "4",
         "--ttft-ms", "5", "--gap-ms", "0", "--rounds", "2"],
        cwd=ROOT, capture_output=True, text=True, timeout=240,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [[cell.strip() for cell in line.split("|")[1:-1]] for line in result.stdout.splitlines()
            if line.startswith("| ")]
    header, _, bare, product = rows
    assert header[-1] == "machine busy" and len(header) == 9
    assert bare[:2] == ["bare AsyncOpenAI loop", "1"] and product[:2] == ["sqlite", "1"]
    assert "medians of 2 rounds" in result.stdout
    for measured in (bare, product):
        cpu, low, high = re.fullmatch(r"([\d.]+) ms \(([\d.]+)–([\d.]+)\)", measured[2]).groups()
        assert 0 < float(low) <= float(cpu) <= float(high), measured  # CPU per turn: the rounds' median, range
        assert float(measured[3]) > 0  # turns/s
        assert measured[7] == "0", result.stderr[-3000:]  # errors
        assert 0 <= int(measured[8].removesuffix("%")) <= 100
    assert product[6].endswith("×)")  # the p50 added over the bare loop's


def test_the_client_alone_is_timed_through_the_bare_loop_and_through_the_products_use_of_it():
    result = subprocess.run(
        [sys.executable, "scripts/bench.py", "--client-only", "1", "--rounds", "2", "--ttft-ms", "0", "--gap-ms", "0"],
        cwd=ROOT, capture_output=True, text=True, timeout=240,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [[cell.strip() for cell in line.split("|")[1:-1]] for line in result.stdout.splitlines()
            if line.startswith("| ")]
    assert [row[0] for row in rows[2:]] == [
        "bare AsyncOpenAI loop (create())", "the product's use of the client (chat.llm)"
    ]
    for _, cpu in rows[2:]:
        middle, low, high = map(float, re.fullmatch(r"([\d.]+) ms \(([\d.]+)–([\d.]+)\)", cpu).groups())
        assert 0 < low <= middle <= high, cpu
    assert "medians of 2 round(s)" in result.stdout


def test_the_step_timer_times_each_database_step_of_a_turn():
    result = subprocess.run(
        [sys.executable, "scripts/bench_steps.py", "--repeat", "3"], cwd=ROOT, capture_output=True, text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [[cell.strip() for cell in line.split("|")[1:-1]] for line in result.stdout.splitlines()
            if line.startswith("| ")]
    assert [row[0] for row in rows[2:]] == [
        "a conversation's start",
        "verify_user (by key, succeeds) (beyond the start)",
        "two appends, the second learning a key (beyond the start)",
        "the same two appends, plain (beyond the start)",
        "a customer message: stored, turn start (beyond the start)",
    ]
    assert all(re.fullmatch(r"-?[\d.]+ ms", cell) for row in rows[2:] for cell in row[1:]), rows


def _bench_module():
    spec = importlib.util.spec_from_file_location("bench_script", ROOT / "scripts" / "bench.py")
    module = sys.modules[spec.name] = importlib.util.module_from_spec(spec)  # its dataclasses look it up
    spec.loader.exec_module(module)
    return module


def _can_cap() -> bool:
    """Whether this machine lets us make a cgroup with a cpu controller (root, v2 or v1's ``cpu``)."""
    for parent, control in ((Path("/sys/fs/cgroup"), "cpu.max"), (Path("/sys/fs/cgroup/cpu"), "cpu.cfs_quota_us")):
        if not (parent / ("cgroup.controllers" if control == "cpu.max" else control)).exists():
            continue
        probe = parent / f"bench-probe-{os.getpid()}"
        try:
            probe.mkdir()
        except OSError:
            return False
        try:
            return (probe / control).exists()
        finally:
            probe.rmdir()
    return False


CAN_CAP = _can_cap()


@pytest.mark.skipif(not CAN_CAP, reason="holding a process to a share of a core needs root and a cgroup cpu controller")
def test_a_server_process_held_to_a_share_of_a_core_gets_no_more():
    """``--cpu-share``: the process (a busy loop here, a daphne in the benchmark) runs at the share it was
    given, and its control group goes once it is gone."""
    bench = _bench_module()
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        group = bench.cpu_cap(spinner.pid, 0.2)
        assert (group / "cgroup.procs").read_text().split() == [str(spinner.pid)]
        cpu, started = bench.cpu_seconds(spinner.pid), time.monotonic()
        time.sleep(1.0)
        share = (bench.cpu_seconds(spinner.pid) - cpu) / (time.monotonic() - started)
    finally:
        spinner.kill()
        spinner.wait()
    throttled = dict(line.split() for line in (group / "cpu.stat").read_text().splitlines())["nr_throttled"]
    group.rmdir()
    assert share < 0.35, f"held to 0.2 of a core, it took {share:.2f}"
    assert int(throttled) > 0
    assert not group.exists()
