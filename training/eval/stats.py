"""95 % intervals for the figures we report: one accuracy (Wilson) and a paired difference of two arms.

Every accuracy in a results table carries its n and an interval; a difference between two arms scored on
the same questions is paired (each question scored by both), so its interval comes from the per-question
differences, not from two independent intervals.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

Z95 = 1.959964


def wilson(hits: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a proportion hits / n (a sane interval near 0 and 1, unlike the normal one)."""
    if n <= 0:
        raise ValueError("n must be positive")
    p = hits / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def accuracy(hits: Sequence[bool]) -> dict[str, float | int]:
    """{"n", "accuracy", "lo", "hi"}: an accuracy with its 95 % Wilson interval."""
    n = len(hits)
    k = sum(bool(h) for h in hits)
    lo, hi = wilson(k, n)
    return {"n": n, "accuracy": round(k / n, 4), "lo": round(lo, 4), "hi": round(hi, 4)}


def paired_difference(a: Sequence[bool], b: Sequence[bool], z: float = Z95) -> dict[str, float | int]:
    """Mean of a - b over the same questions with its 95 % interval (normal on the paired differences).

    Returns {"n", "diff", "lo", "hi", "a_only", "b_only"} (the last two: questions only one arm got right)."""
    if len(a) != len(b) or not a:
        raise ValueError("paired difference needs two equally long, non-empty lists of hits")
    d = [float(x) - float(y) for x, y in zip(a, b)]
    n = len(d)
    mean = sum(d) / n
    var = sum((x - mean) ** 2 for x in d) / max(n - 1, 1)
    half = z * math.sqrt(var / n)
    return {
        "n": n,
        "diff": round(mean, 4),
        "lo": round(mean - half, 4),
        "hi": round(mean + half, 4),
        "a_only": sum(1 for x in d if x > 0),
        "b_only": sum(1 for x in d if x < 0),
    }


def fmt_acc(r: dict) -> str:
    """ "57.3 % [54.2, 60.3] (n = 1152)" for an `accuracy` result."""
    return f"{100 * r['accuracy']:.1f} % [{100 * r['lo']:.1f}, {100 * r['hi']:.1f}] (n = {r['n']})"


def fmt_diff(r: dict) -> str:
    """ "+12.4 points [9.1, 15.7]" for a `paired_difference` result."""
    return f"{100 * r['diff']:+.1f} points [{100 * r['lo']:+.1f}, {100 * r['hi']:+.1f}]"
