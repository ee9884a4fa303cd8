"""Honest before → after: n, the paired difference with its 95% interval, and a verdict.

Every held-out metric is a mean of per-row scores (1/0 for an exact match, 1/0.5/0 for a pair ranked
right, tied or wrong, a reward per answer). Before and after training score the *same* rows, so the
difference is measured row by row (paired): d_i = after_i - before_i. Its mean is the change; the
interval is Student's t interval of that mean. For 0/1 scores this is the paired-proportions (Wald)
interval, sound at the n the toy task uses (1,000 rows); what it cannot give is an exact answer for a
handful of rows, and it does not pretend to: with fewer than 2 rows there is no interval.

Why not a bootstrap: the t interval is deterministic and needs no random stream; at n = 1,000 a
percentile bootstrap of a mean agrees with it to the third decimal.

The verdict reads the interval, never the point estimate: "rose" when all of it is above zero, "fell"
when all of it is below, "no significant change" otherwise. Stdlib only: the plan layer may read it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from statistics import NormalDist, fmean

ROSE, FELL, FLAT = "rose", "fell", "no significant change"
CONFIDENCE = 0.95


def t_quantile(p: float, df: int) -> float:
    """Student's t quantile: exact for 1 and 2 degrees of freedom, a fourth-order Cornish-Fisher
    expansion of the normal quantile above (within 1e-3 of the tables from df 4 on, 4e-3 at df 3;
    the suite's intervals have hundreds of degrees of freedom)."""
    if df < 1:
        raise ValueError("t_quantile needs at least one degree of freedom")
    if df == 1:
        return math.tan(math.pi * (p - 0.5))
    if df == 2:
        return (2 * p - 1) * math.sqrt(2 / (4 * p * (1 - p)))
    z = NormalDist().inv_cdf(p)
    v = float(df)
    return (
        z
        + (z**3 + z) / (4 * v)
        + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * v**2)
        + (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / (384 * v**3)
        + (79 * z**9 + 776 * z**7 + 1482 * z**5 - 1920 * z**3 - 945 * z) / (92160 * v**4)
    )


def mean_interval(scores: Sequence[float], confidence: float = CONFIDENCE) -> tuple[float, float] | None:
    """The t interval of the mean of `scores`; None with fewer than two scores."""
    n = len(scores)
    if n < 2:
        return None
    mean = fmean(scores)
    variance = sum((s - mean) ** 2 for s in scores) / (n - 1)
    half = t_quantile(0.5 + confidence / 2, n - 1) * math.sqrt(variance / n)
    return mean - half, mean + half


def verdict(low: float, high: float) -> str:
    if low > 0:
        return ROSE
    if high < 0:
        return FELL
    return FLAT


def compare(before: Sequence[float], after: Sequence[float], confidence: float = CONFIDENCE) -> dict:
    """The paired comparison of per-row scores measured on the same rows before and after training:
    {n, before, after, difference, interval: [low, high] | None, confidence, verdict | None}."""
    if len(before) != len(after):
        raise ValueError(f"paired scores differ in length: {len(before)} before, {len(after)} after")
    n = len(before)
    differences = [a - b for b, a in zip(before, after)]
    result = {
        "n": n,
        "before": fmean(before) if n else None,
        "after": fmean(after) if n else None,
        "difference": fmean(differences) if n else None,
        "interval": None,
        "confidence": confidence,
        "verdict": None,
    }
    interval = mean_interval(differences, confidence)
    if interval is not None:
        result["interval"] = [interval[0], interval[1]]
        result["verdict"] = verdict(*interval)
    return result


def describe(comparison: dict, digits: int = 3) -> str:
    """One short text for a line of output: '+0.030 [+0.012, +0.048], n=1000, rose'."""
    if comparison.get("difference") is None:
        return "n=0"
    text = f"{comparison['difference']:+.{digits}f}"
    if comparison.get("interval"):
        low, high = comparison["interval"]
        text += f" [{low:+.{digits}f}, {high:+.{digits}f}]"
    text += f", n={comparison['n']}"
    if comparison.get("verdict"):
        text += f", {comparison['verdict']}"
    return text


def before_after(entry: dict, digits: int = 3) -> str:
    """One held-out metric of a summary as a line of output:
    'exact_match 0.790 → 0.820 (+0.030 [-0.012, +0.072], n=100, no significant change)'.
    An entry without the paired fields (summaries written before them) shows the two values alone."""
    text = f"{entry.get('name')} {entry['before']:.{digits}f} → {entry['after']:.{digits}f}"
    if isinstance(entry.get("difference"), (int, float)):
        text += f" ({describe(entry, digits)})"
    return text


def interval_text(interval: Sequence[float] | None, digits: int = 3, signed: bool = False) -> str:
    """'[0.744, 0.896]' (signed: '[-0.012, +0.072]'); '' without an interval."""
    if not interval:
        return ""
    form = f"{'+' if signed else ''}.{digits}f"
    return f"[{interval[0]:{form}}, {interval[1]:{form}}]"


def change_text(entry: dict, digits: int = 3) -> str:
    """A table cell: '+0.030 [-0.012, +0.072]'; after − before alone for a summary written without the
    interval; '' when the metric was not measured after."""
    difference, before, after = entry.get("difference"), entry.get("before"), entry.get("after")
    if not isinstance(difference, (int, float)):
        if not (isinstance(before, (int, float)) and isinstance(after, (int, float))):
            return ""
        difference = after - before
    return f"{difference:+.{digits}f} {interval_text(entry.get('interval'), digits, signed=True)}".strip()
