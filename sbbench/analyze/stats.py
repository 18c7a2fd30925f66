"""The Mann-Whitney U test (layer 4): does one sample of timings tend to be larger than
another? Exact distribution for small samples without ties, normal approximation with
tie and continuity corrections otherwise (as scipy's ``mannwhitneyu``)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

# Exact Mann-Whitney distribution below this many pairs (no ties); normal beyond.
EXACT_MAX_PAIRS = 2500


@dataclass(frozen=True)
class MannWhitney:
    """U statistic of the first sample, its p-value, and how p was computed."""

    u: float
    p: float
    method: str  # "exact" | "normal"


def _midranks(values: Sequence[float]) -> tuple[list[float], list[int]]:
    """Ranks 1..n (ties get the mean of their ranks) and the sizes of the tie groups."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    ties = []
    start = 0
    while start < len(order):
        stop = start
        while stop + 1 < len(order) and values[order[stop + 1]] == values[order[start]]:
            stop += 1
        rank = (start + stop) / 2 + 1
        for position in range(start, stop + 1):
            ranks[order[position]] = rank
        ties.append(stop - start + 1)
        start = stop + 1
    return ranks, ties


def _u_distribution(m: int, n: int) -> list[int]:
    """counts[u] = number of the C(m+n, m) arrangements of two samples (sizes m, n, no
    ties) whose U equals u: the coefficients of the Gaussian binomial [m+n choose m]_q =
    prod_{i=1..m} (1 - q^(n+i)) / (1 - q^i), each partial product a polynomial."""
    if m > n:
        m, n = n, m
    poly = [1] + [0] * (m * n)
    degree = 0
    for i in range(1, m + 1):
        degree += n
        for j in range(degree, n + i - 1, -1):  # multiply by (1 - q^(n+i))
            poly[j] -= poly[j - n - i]
        for j in range(i, degree + 1):  # divide by (1 - q^i)
            poly[j] += poly[j - i]
    return poly


def _normal_sf(z: float) -> float:
    return 0.5 * math.erfc(z / math.sqrt(2.0))


def mann_whitney_u(x: Sequence[float], y: Sequence[float], *,
                   alternative: str = "greater", exact: bool | None = None) -> MannWhitney:
    """Mann-Whitney U test of x against y.

    alternative: "greater" (x tends to be larger than y), "less", or "two-sided".
    U is the statistic of x: the number of pairs (x_i, y_j) with x_i > y_j, ties counted
    one half. ``exact=None`` uses the exact distribution when there are no ties and
    len(x) * len(y) <= EXACT_MAX_PAIRS, else the normal approximation with the tie
    correction of the variance and a continuity correction of 0.5 (as scipy's
    ``mannwhitneyu(..., method="asymptotic")``; two-sided p = 2 * the smaller tail).
    """
    if alternative not in ("greater", "less", "two-sided"):
        raise ValueError(f"alternative must be greater, less or two-sided, got {alternative!r}")
    n1, n2 = len(x), len(y)
    if n1 == 0 or n2 == 0:
        raise ValueError("Mann-Whitney U needs at least one value in each sample")
    values = [float(v) for v in x] + [float(v) for v in y]
    if any(math.isnan(v) for v in values):
        raise ValueError("Mann-Whitney U: samples contain NaN")
    ranks, ties = _midranks(values)
    u = sum(ranks[:n1]) - n1 * (n1 + 1) / 2
    has_ties = any(t > 1 for t in ties)
    if exact is None:
        exact = not has_ties and n1 * n2 <= EXACT_MAX_PAIRS
    if exact and has_ties:
        raise ValueError("the exact Mann-Whitney distribution here assumes no ties")
    if exact:
        counts = _u_distribution(n1, n2)
        total = math.comb(n1 + n2, n1)
        k = int(round(u))
        upper = sum(counts[k:]) / total  # P(U >= u)
        lower = sum(counts[: k + 1]) / total  # P(U <= u)
        p = {"greater": upper, "less": lower,
             "two-sided": min(1.0, 2 * min(upper, lower))}[alternative]
        return MannWhitney(u, p, "exact")
    n = n1 + n2
    mean = n1 * n2 / 2
    tie_term = sum(t ** 3 - t for t in ties) / (n * (n - 1)) if n > 1 else 0.0
    variance = n1 * n2 / 12 * ((n + 1) - tie_term)
    if variance <= 0:  # every value equal: no evidence either way
        return MannWhitney(u, 1.0, "normal")
    sd = math.sqrt(variance)
    upper = _normal_sf((u - mean - 0.5) / sd)
    lower = _normal_sf((mean - u - 0.5) / sd)
    p = {"greater": upper, "less": lower,
         "two-sided": min(1.0, 2 * min(upper, lower))}[alternative]
    return MannWhitney(u, min(1.0, p), "normal")
