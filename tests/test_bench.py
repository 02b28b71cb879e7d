"""The benchmark still runs: both arms, a real daphne, its table with every column. A smoke run of a few
turns, asserting what it printed, never how fast (speed is measured with ``make bench``, not in tests)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

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
