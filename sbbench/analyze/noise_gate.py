"""The run-to-run noise gate of `sbbench check` (layer 4; docs/measurement.md).

Mann-Whitney (``analyze.regress``) sees the samples of one point within one run; on a
shared machine the load moves between the runs and between the points of a run (seconds
apart), which no within-point test can see. The other points of the same pair measure
that: their log time changes scatter by 1.4826 x their median absolute deviation (at
least NOISE_FLOOR). A time regression (or improvement) stands only if its change is
larger than ``z`` times the scatter of the pair's points of the *other* methods
(``Finding.group``): a change of the code usually moves every shape of one method, and
those points must not widen their own yardstick (with one method slowed on 2 of 8
points, counting them doubled the scatter in some pairs of reports/check). Where the
other methods have fewer than NOISE_MIN_POINTS points, all points are used.

A method whose every point is flagged (slower by the factor and significant) but whose
points each stay inside the gate still fails when the mean of its k log changes exceeds
``z`` x scatter / sqrt(k): the load's shifts of separate points partly average out, a
change of the method's code does not.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import replace

NOISE_Z = 3.5  # chosen on the kept stores of reports/check (see there)
NOISE_FLOOR = 0.05  # log scale: 5% (a handful of points can look unusually calm)
NOISE_MIN_POINTS = 4
_MOVES = ("regression", "improved")


def gate_by_noise(findings: list, z: float) -> tuple[list, float | None]:
    """The findings with time moves inside the pair's noise set to "ok" (see the module
    doc), and the scatter over all points (the summary's figure; None when not gated).
    Needs NOISE_MIN_POINTS timed points; ``z`` <= 0 turns the gate off."""
    timed = [f for f in findings if f.metric == "time" and f.ratio
             and math.isfinite(f.ratio) and f.ratio > 0]
    if z <= 0 or len(timed) < NOISE_MIN_POINTS:
        return findings, None
    overall = _scatter([math.log(f.ratio) for f in timed])

    def noise_of(group: str) -> float:
        others = [math.log(g.ratio) for g in timed if g.group != group] if group else []
        return _scatter(others) if len(others) >= NOISE_MIN_POINTS else overall

    method_wide = _method_wide(timed, z, noise_of)
    out = []
    for f in findings:
        if f.metric == "time" and f.verdict in _MOVES:
            bound = math.exp(z * noise_of(f.group))
            if f.group in method_wide and method_wide[f.group][0] == f.verdict:
                f = replace(f, note=_join(f.note, method_wide[f.group][1]))
            elif 1 / bound < f.ratio < bound:
                f = replace(f, verdict="ok", note=_join(
                    f.note, f"within this pair's run-to-run noise (x{bound:.2f})"))
        out.append(f)
    return out, overall


def _method_wide(timed: list, z: float, noise_of) -> dict[str, tuple[str, str]]:
    """{method: (verdict, note)} for the methods whose every timed point (two or more)
    moved the same way and whose mean log change exceeds z x noise / sqrt(points)."""
    by_group: dict[str, list] = {}
    for f in timed:
        if f.group:
            by_group.setdefault(f.group, []).append(f)
    out = {}
    for group, points in by_group.items():
        verdicts = {f.verdict for f in points}
        if len(points) < 2 or len(verdicts) != 1 or not verdicts <= set(_MOVES):
            continue
        mean = statistics.fmean(math.log(f.ratio) for f in points)
        bound = z * noise_of(group) / math.sqrt(len(points))
        if abs(mean) > bound:
            out[group] = (points[0].verdict,
                          f"all {len(points)} points of {group} moved: mean x"
                          f"{math.exp(mean):.2f} beyond the pair's noise (x"
                          f"{math.exp(bound if mean > 0 else -bound):.2f} for "
                          f"{len(points)} points)")
    return out


def _scatter(changes: list[float]) -> float:
    """1.4826 x the median absolute deviation of log changes, at least NOISE_FLOOR."""
    center = statistics.median(changes)
    return max(1.4826 * statistics.median(abs(c - center) for c in changes), NOISE_FLOOR)


def _join(note: str, extra: str) -> str:
    return f"{note}; {extra}" if note else extra
