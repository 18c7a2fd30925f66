"""Performance regression checks between two result sets (layer 4; docs/measurement.md).

A *result set* (``analyze.results``) is a list of ``Record`` from a results store, or the
JSON written by ``python -m sbbench.sweep.ci_bench``, plus a little metadata (was it
sampled interleaved?). :func:`compare` matches the rows of a baseline and a current set
on their key (the Record key without ``code_version``: new code is the point of the
comparison) and checks each metric:

- ``time``: a regression only when the median grew by more than the metric's factor
  (default 1.10) **and** a one-sided Mann-Whitney U test on the samples says the current
  samples are larger (p < alpha, default 0.01). Either alone is not enough: a 30% change
  on 3 noisy samples is not evidence, and a significant 2% change is not a regression.
  In ratio mode (CPU and CI sets) the samples are times divided by a reference measured
  in the same run (``analyze.results``), so a uniformly slower machine is no regression.
  On a shared machine the load also moves between the points of a run, which a test
  within one point cannot see: a change must further exceed the pair's own run-to-run
  noise, measured on its other methods' points (``analyze.noise_gate``).
- ``error`` (relative output error against exact attention): seeds are fixed, so the
  error is a deterministic function of the code; it drifts when it changed by more than
  the factor and by more than ``error_atol`` (so exact attention's ~1e-7 float noise is
  not "drift"). Larger error is a regression; smaller is reported as drift, not a
  failure (regenerate the baseline).
- ``memory`` (peak bytes the call added) and ``energy`` (J per call) where both sets
  have them: no samples, so factor (and a floor) only.
- status: a point that was ok in the baseline and failed now is a regression; a key of
  the baseline missing from the current set is one too (a benchmark point vanished).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, replace

from sbbench.analyze.noise_gate import (  # noqa: F401 - re-exported
    NOISE_FLOOR,
    NOISE_MIN_POINTS,
    NOISE_Z,
    _join,
    gate_by_noise,
)
from sbbench.analyze.results import (  # noqa: F401 - re-exported: the old import path
    CALIBRATION,
    MATCH_FIELDS,
    SHAPE_FIELDS,
    ResultSet,
    _latest_by_key,
    _ok_samples,
    choose_mode,
    choose_reference,
    load_result_set,
    match_key,
    point_label,
    ratio_samples,
)
from sbbench.analyze.stats import (  # noqa: F401 - re-exported: the old import path
    EXACT_MAX_PAIRS,
    MannWhitney,
    _u_distribution,
    mann_whitney_u,
)
from sbbench.core.errors import UserError
from sbbench.core.format import mebibytes, millijoules, number, text_table, time_ms
from sbbench.core.record import Record

METRICS = ("time", "error", "memory", "energy")
DEFAULT_FACTOR = 1.10
DEFAULT_ALPHA = 0.01
ERROR_ATOL = 1e-4  # relative output error; below this a change is float noise
MEMORY_ATOL_BYTES = 1 << 20
ENERGY_ATOL_J = 1e-6


# ---------------------------------------------------------------------------------------
# The comparison
# ---------------------------------------------------------------------------------------

VERDICTS = ("regression", "missing", "unconfirmed", "drift", "improved", "ok", "new", "fixed",
            "skipped")
FAILING = ("regression", "missing")


@dataclass(frozen=True)
class Finding:
    """One metric of one point: baseline and current value, their ratio, p and verdict."""

    point: str
    metric: str
    baseline: float | None
    current: float | None
    ratio: float | None  # current / baseline
    p_value: float | None
    verdict: str  # one of VERDICTS
    note: str = ""
    group: str = ""  # the point's method: the noise gate measures a point against the others

    @property
    def failing(self) -> bool:
        return self.verdict in FAILING


@dataclass
class Comparison:
    findings: list[Finding]
    mode: str
    reference: str | None
    factors: dict[str, float]
    alpha: float
    n_matched: int
    runs: int = 1  # current runs merged by ``confirm``
    noise: float | None = None  # run-to-run scatter of the time changes (log), if gated

    @property
    def regressions(self) -> list[Finding]:
        return [f for f in self.findings if f.failing]

    @property
    def ok(self) -> bool:
        return not self.regressions


def parse_metric_factors(text: str | None, default: float = DEFAULT_FACTOR) -> dict[str, float]:
    """"time=1.1,error=1.2" -> {metric: factor} for every metric (``default`` elsewhere)."""
    factors = dict.fromkeys(METRICS, float(default))
    if not text:
        return factors
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        name, sep, value = part.partition("=")
        name = name.strip()
        if not sep or name not in METRICS:
            raise UserError(f"--metric-factor: {part!r} is not METRIC=FACTOR with METRIC one "
                            f"of {', '.join(METRICS)}")
        try:
            factors[name] = float(value)
        except ValueError:
            raise UserError(f"--metric-factor: {value!r} is not a number") from None
    return factors


def check_factors(factors: dict[str, float], alpha: float) -> None:
    for name, factor in factors.items():
        if not (factor > 1.0 and math.isfinite(factor)):
            raise UserError(f"the factor for {name} must be a number > 1, got {factor}")
    if not 0.0 < alpha < 1.0:
        raise UserError(f"--alpha must be in (0, 1), got {alpha}")


def _time_finding(label: str, base: list[float], cur: list[float], factor: float,
                  alpha: float, note: str, group: str = "") -> Finding:
    if len(base) < 2 or len(cur) < 2:
        return Finding(label, "time", None, None, None, None, "skipped",
                       "fewer than 2 samples on one side", group)
    base_median, cur_median = statistics.median(base), statistics.median(cur)
    ratio = cur_median / base_median if base_median > 0 else math.inf
    slower = mann_whitney_u(cur, base, alternative="greater")
    faster = mann_whitney_u(cur, base, alternative="less")
    if ratio > factor and slower.p < alpha:
        verdict, p = "regression", slower.p
    elif ratio < 1 / factor and faster.p < alpha:
        verdict, p = "improved", faster.p
    else:
        verdict = "ok"
        p = slower.p if ratio >= 1 else faster.p
        if ratio > factor:
            note = (note + "; " if note else "") + f"larger than x{factor:g} but not significant"
        elif slower.p < alpha and ratio > 1:
            note = (note + "; " if note else "") + f"significant but within x{factor:g}"
    return Finding(label, "time", base_median, cur_median, ratio, p, verdict, note, group)


def _scalar_finding(label: str, metric: str, base: float | None, cur: float | None,
                    factor: float, atol: float, *, smaller_is_drift: bool,
                    note: str = "") -> Finding | None:
    if base is None or cur is None or _nan(base) or _nan(cur):
        return None
    ratio = cur / base if base > 0 else (math.inf if cur > 0 else 1.0)
    grew = cur > base * factor and cur - base > atol
    shrank = cur * factor < base and base - cur > atol
    if grew:
        verdict = "regression"
    elif shrank:
        verdict = "drift" if smaller_is_drift else "improved"
    else:
        verdict = "ok"
    return Finding(label, metric, base, cur, ratio, None, verdict, note)


def _nan(value) -> bool:
    return isinstance(value, float) and math.isnan(value)


def compare(baseline: ResultSet, current: ResultSet, *, factors: dict[str, float] | None = None,
            alpha: float = DEFAULT_ALPHA, mode: str = "auto", reference: str = "auto",
            error_atol: float = ERROR_ATOL, allow_missing: bool = False,
            noise_z: float = NOISE_Z) -> Comparison:
    """Compare ``current`` with ``baseline`` point by point (see the module doc)."""
    factors = {**dict.fromkeys(METRICS, DEFAULT_FACTOR), **(factors or {})}
    check_factors(factors, alpha)
    base_rows, cur_rows = _latest_by_key(baseline.records), _latest_by_key(current.records)
    matched = [key for key in base_rows if key in cur_rows]
    if not matched:
        raise UserError(
            f"no point of {current.label or 'the current set'} matches one of "
            f"{baseline.label or 'the baseline'} (devices {sorted(baseline.devices)} vs "
            f"{sorted(current.devices)}); compare runs of the same benchmark and device")
    mode = choose_mode(baseline, current, mode)
    ref = choose_reference(baseline, current, reference) if mode == "ratio" else None
    base_ratio = ratio_samples(baseline, ref) if ref else {}
    cur_ratio = ratio_samples(current, ref) if ref else {}
    findings: list[Finding] = []
    for key in base_rows:
        base = base_rows[key]
        label = point_label(base)
        cur = cur_rows.get(key)
        if cur is None:
            findings.append(Finding(label, "status", None, None, None, None,
                                    "skipped" if allow_missing else "missing",
                                    "in the baseline, not in the current set"))
            continue
        if base.status != "ok" or cur.status != "ok":
            if base.status == "ok":
                findings.append(Finding(label, "status", None, None, None, None, "regression",
                                        f"ok -> {cur.status}: {cur.reason}"[:200]))
            elif cur.status == "ok":
                findings.append(Finding(label, "status", None, None, None, None, "fixed",
                                        f"{base.status} -> ok"))
            continue
        findings.extend(_point_findings(key, base, cur, label, mode, ref, base_ratio,
                                        cur_ratio, factors, alpha, error_atol))
    for key, cur in cur_rows.items():
        if key not in base_rows:
            findings.append(Finding(point_label(cur), "status", None, None, None, None, "new",
                                    "not in the baseline"))
    findings, noise = gate_by_noise(findings, noise_z)
    return Comparison(findings, mode, ref, factors, alpha, len(matched), noise=noise)


def _point_findings(key, base: Record, cur: Record, label: str, mode: str,
                    reference: str | None, base_ratio: dict, cur_ratio: dict,
                    factors: dict[str, float], alpha: float,
                    error_atol: float) -> list[Finding]:
    findings = []
    if mode == "ratio":
        if key in base_ratio and key in cur_ratio:
            (b, how), (c, _) = base_ratio[key], cur_ratio[key]
            findings.append(_time_finding(label, b, c, factors["time"], alpha,
                                          f"time {how}", base.method))
        elif _ok_samples(base) and _ok_samples(cur):
            is_reference = base.method == (reference or "") or (
                reference == "exact" and base.method == CALIBRATION)
            findings.append(Finding(label, "time", None, None, None, None, "skipped",
                                    "the reference of ratio mode" if is_reference else
                                    f"no {reference} row in the same run to divide by"))
    else:
        findings.append(_time_finding(label, _ok_samples(base), _ok_samples(cur),
                                      factors["time"], alpha, "absolute time (ms)",
                                      base.method))
    scalars = [
        ("error", base.error_mean, cur.error_mean, error_atol, True),
        ("memory", base.peak_memory_delta_bytes, cur.peak_memory_delta_bytes,
         MEMORY_ATOL_BYTES, False),
        ("energy", base.energy_j, cur.energy_j, ENERGY_ATOL_J, False),
    ]
    for metric, b_value, c_value, atol, drift in scalars:
        finding = _scalar_finding(label, metric, b_value, c_value, factors[metric], atol,
                                  smaller_is_drift=drift)
        if finding is not None:
            findings.append(finding)
    return findings


def confirm(comparisons: list[Comparison]) -> Comparison:
    """Merge the comparisons of several current runs against one baseline: a point and
    metric fails only if it failed in every run; failing in some is "unconfirmed".

    A confirmation run on failure (as ``.ci/run`` does) turns a noise event of one run
    (probability p) into one of two independent runs (about p^2), while a real
    regression fails both.
    """
    if not comparisons:
        raise ValueError("confirm needs at least one comparison")
    if len(comparisons) == 1:
        return comparisons[0]
    n = len(comparisons)
    failing: dict[tuple, int] = {}
    for result in comparisons:
        for f in result.findings:
            if f.failing:
                failing[(f.point, f.metric)] = failing.get((f.point, f.metric), 0) + 1
    merged, seen = [], set()
    for result in comparisons:
        for f in result.findings:
            key = (f.point, f.metric)
            if key in seen:
                continue
            count = failing.get(key, 0)
            if count and not f.failing:
                continue  # shown from the run where it failed
            seen.add(key)
            if count == n:
                merged.append(replace(f, note=_join(f.note, f"failed in all {n} runs")))
            elif count:
                merged.append(replace(f, verdict="unconfirmed",
                                      note=_join(f.note, f"{f.verdict} in {count} of {n} runs")))
            else:
                merged.append(f)
    first = comparisons[0]
    return Comparison(merged, first.mode, first.reference, first.factors, first.alpha,
                      min(c.n_matched for c in comparisons), runs=n, noise=first.noise)


# ---------------------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------------------

def _value(metric: str, value: float | None, mode: str) -> str:
    if value is None:
        return ""
    if metric == "time":
        return number(value, 4) if mode == "ratio" else time_ms(value)
    if metric == "memory":
        return mebibytes(value)
    if metric == "energy":
        return millijoules(value)
    return number(value, 4)


def format_table(result: Comparison, *, show_all: bool = True) -> str:
    """The findings as a table (every finding, or only those that are not ok)."""
    order = {v: i for i, v in enumerate(VERDICTS)}
    rows = [f for f in result.findings if show_all or f.verdict not in ("ok", "skipped")]
    rows.sort(key=lambda f: (order.get(f.verdict, 99), f.point, METRICS.index(f.metric)
                             if f.metric in METRICS else -1))
    table = [[f.verdict.upper() if f.failing else f.verdict, f.point, f.metric,
              _value(f.metric, f.baseline, result.mode), _value(f.metric, f.current, result.mode),
              f"x{f.ratio:.3f}" if f.ratio is not None and math.isfinite(f.ratio) else "",
              number(f.p_value, 2), f.note]
             for f in rows]
    headers = ["verdict", "point", "metric", "baseline", "current", "change", "p", "note"]
    return text_table(headers, table)


def summary_line(result: Comparison) -> str:
    counts: dict[str, int] = {}
    for f in result.findings:
        counts[f.verdict] = counts.get(f.verdict, 0) + 1
    parts = ", ".join(f"{counts[v]} {v}" for v in VERDICTS if v in counts)
    factors = ", ".join(f"{m} x{f:g}" for m, f in result.factors.items())
    how = ("ratio mode (each sample / the calibration kernel sampled right after it)"
           if result.reference == "paired" else
           f"ratio mode (time / {result.reference} measured in the same run)"
           if result.mode == "ratio" else "absolute mode")
    verdict = "REGRESSION" if not result.ok else "no regression"
    if result.runs > 1:
        verdict += f" (a regression must fail in all {result.runs} current runs)"
    noise = ("" if result.noise is None else
             f"; run-to-run noise of this pair +-{math.expm1(result.noise) * 100:.0f}%")
    return (f"{verdict}: {result.n_matched} points matched; {parts}. {how}; factors "
            f"{factors}; Mann-Whitney U one-sided, alpha {result.alpha:g}{noise}")
