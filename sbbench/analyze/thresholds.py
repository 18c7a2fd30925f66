"""Where exact attention is simply faster (layer 4): per shape family, along seq_len, the
length below which exact attention beats every approximation measured (or every one
meeting an error target), with a log-log interpolated crossover.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

from sbbench.analyze.selection import DEFAULT_TARGETS, FAMILY, check_targets


@dataclass(frozen=True)
class Threshold:
    """Exact vs the best approximation along seq_len, for one shape family.

    ``exact_faster_below``: the shortest measured seq_len from which on an approximation
    is faster at every longer measured length (exact is faster below it); None if exact
    is faster at the longest length measured. ``crossover``: log-log interpolation of
    where time(best approximation) / time(exact) crosses 1, between the last length
    where exact wins and ``exact_faster_below``; None when exact never loses or wins.
    ``monotone``: False when exact wins again above a length where it lost (noise, or a
    real bump: the rows say which). A ratio is inf where no approximation qualifies.
    """

    family: dict
    criterion: str  # "any budget" or "max_error <= x"
    seq_lens: tuple[int, ...]
    ratios: tuple[float | None, ...]  # best approximation / exact, per seq_len
    exact_faster_below: int | None
    crossover: float | None
    monotone: bool

    def describe(self) -> str:
        if not self.seq_lens:
            return "exact attention not measured in this family"
        if all(math.isinf(r) for r in self.ratios):
            return "no approximation qualifies at any measured length: exact"
        longest, shortest = self.seq_lens[-1], self.seq_lens[0]
        if self.exact_faster_below is None:
            return f"exact is faster at every measured length (up to {longest})"
        if self.exact_faster_below == shortest:
            return f"an approximation is faster at every measured length (from {shortest})"
        text = f"exact is faster below {self.exact_faster_below}"
        if self.crossover is not None:
            text += f" (crossover ~{self.crossover:.0f})"
        if not self.monotone:
            text += "; not monotone, see the ratios"
        return text


def threshold_along(seq_lens, exact_ms, approx_ms, *, family: dict | None = None,
                    criterion: str = "any budget") -> Threshold:
    """The Threshold of one family from per-length exact and best-approximation times.

    A length without an exact time is left out; a length with exact but no qualifying
    approximation (NaN/None: none measured, or none meets the target) counts as exact
    being faster there (ratio inf).
    """
    points = []
    for length, exact, approx in zip(seq_lens, exact_ms, approx_ms, strict=True):
        if not (_finite(exact) and float(exact) > 0):
            continue
        ratio = float(approx) / float(exact) if _finite(approx) else math.inf
        points.append((int(length), ratio))
    points.sort()
    lengths = tuple(p[0] for p in points)
    ratios = tuple(p[1] for p in points)
    if not points:
        return Threshold(family or {}, criterion, (), (), None, None, True)
    exact_wins = [r >= 1.0 for r in ratios]
    below = None
    for i in range(len(points) - 1, -1, -1):  # walk down from the longest length
        if exact_wins[i]:
            break
        below = lengths[i]
    monotone = all(not exact_wins[j] or all(exact_wins[:j]) for j in range(len(points)))
    crossover = None
    if below is not None and below != lengths[0]:
        i = lengths.index(below)
        (l0, r0), (l1, r1) = (lengths[i - 1], ratios[i - 1]), (lengths[i], ratios[i])
        if math.isfinite(r0) and r0 > 0 and r1 > 0 and r0 != r1:
            t = math.log(r0) / (math.log(r0) - math.log(r1))
            crossover = math.exp(math.log(l0) + t * (math.log(l1) - math.log(l0)))
    return Threshold(family or {}, criterion, lengths, ratios, below, crossover, monotone)


def _finite(value) -> bool:
    try:
        return value is not None and math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def exact_thresholds(cands: pd.DataFrame, targets=DEFAULT_TARGETS) -> list[Threshold]:
    """Per family: the Threshold against every approximation ("any budget"), and against
    the approximations meeting each target."""
    targets = check_targets(targets)
    out = []
    for key, group in cands.groupby(FAMILY, sort=False, dropna=False):
        family = dict(zip(FAMILY, key, strict=True))
        criteria = [("any budget", math.inf)] + [(f"max_error <= {t:g}", t) for t in targets]
        for criterion, limit in criteria:
            lengths, exact_ms, approx_ms = [], [], []
            for length, at in group.groupby("seq_len"):
                exact = at[at["method"] == "exact"]
                approx = at[(at["method"] != "exact") & (at["error"] <= limit)]
                lengths.append(length)
                exact_ms.append(exact["time_ms"].min() if not exact.empty else math.nan)
                approx_ms.append(approx["time_ms"].min() if not approx.empty else math.nan)
            out.append(threshold_along(lengths, exact_ms, approx_ms, family=family,
                                       criterion=criterion))
    return out
