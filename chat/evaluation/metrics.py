"""pass^k, τ-bench's reliability figure, and the other figures of a suite run."""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence


def pass_hat(counts: Sequence[tuple[int, int]], k: int) -> float:
    """τ-bench's unbiased pass^k: the mean over tasks of C(c, k) / C(n, k), for c successes in n runs.

    It is the chance that k runs of a task drawn at random all succeed; pass^1 is the plain success rate.
    Every task needs at least k runs.
    """
    if not counts:
        raise ValueError("pass^k of no tasks")
    if k < 1 or any(n < k or not 0 <= c <= n for n, c in counts):
        raise ValueError(f"pass^{k} needs 0 <= successes <= runs and at least {k} runs per task")
    return sum(math.comb(c, k) / math.comb(n, k) for n, c in counts) / len(counts)


def pass_hat_table(counts: Sequence[tuple[int, int]], k: int) -> dict[str, float]:
    """``{"1": pass^1, …, "k": pass^k}``, rounded to four places."""
    return {str(i): round(pass_hat(counts, i), 4) for i in range(1, k + 1)}


def percentile(values: Iterable[int], fraction: float) -> int | None:
    """The nearest-rank percentile (``fraction`` from 0 to 1) of ``values``, or None when there are none."""
    ordered = sorted(values)
    if not ordered:
        return None
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]


def median(values: Iterable[int]) -> int | None:
    ordered = list(values)
    return int(statistics.median(ordered)) if ordered else None
