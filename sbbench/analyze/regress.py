"""Performance regression checks between two result sets (layer 4; MEASUREMENT.md
"Regression checks").

A *result set* is a list of ``records.Record`` (from a results store, or the JSON written
by ``python -m sbbench.sweep.ci_bench``) plus a little metadata (was it sampled interleaved?).
:func:`compare` matches the rows of a baseline and a current set on their key (the
Record key without ``code_version``: new code is the point of the comparison) and checks
each metric:

- ``time``: a regression only when the median grew by more than the metric's factor
  (default 1.10) **and** a one-sided Mann-Whitney U test on the samples says the current
  samples are larger (p < alpha, default 0.01). Either alone is not enough: a 30% change
  on 3 noisy samples is not evidence, and a significant 2% change is not a regression.
- ``error`` (relative output error against exact attention): seeds are fixed, so the
  error is a deterministic function of the code; it drifts when it changed by more than
  the factor and by more than ``error_atol`` (so exact attention's ~1e-7 float noise is
  not "drift"). Larger error is a regression; smaller is reported as drift, not a
  failure (regenerate the baseline).
- ``memory`` (peak bytes the call added) and ``energy`` (J per call) where both sets
  have them: no samples, so factor (and a floor) only.
- status: a point that was ok in the baseline and failed now is a regression; a key of
  the baseline missing from the current set is one too (a benchmark point vanished).

**Ratio mode** (the default for CPU and CI sets): on a machine whose speed varies
(shared CI runners, other jobs on the same cores), absolute times move together with the
machine. Each time sample is then divided by a reference measured in the same run: the
calibration kernel (a matmul of known FLOPs, ``method == "calibration"``) where the set
has one, else exact attention at the same shape. When a set was sampled interleaved
(one sample of every point per round), sample *i* is divided by the reference's sample
*i* of the same round (paired, so drift within a run cancels too); otherwise by the
reference's median. A uniform slowdown of the machine leaves every ratio unchanged.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from sbbench.core.errors import UserError
from sbbench.core.record import COLUMNS, KEY_FIELDS, Record
from sbbench.core.types import budget_label

CALIBRATION = "calibration"  # method name of the calibration kernel's row
METRICS = ("time", "error", "memory", "energy")
DEFAULT_FACTOR = 1.10
DEFAULT_ALPHA = 0.01
ERROR_ATOL = 1e-4  # relative output error; below this a change is float noise
MEMORY_ATOL_BYTES = 1 << 20
ENERGY_ATOL_J = 1e-6
# Exact Mann-Whitney distribution below this many pairs (no ties); normal beyond.
EXACT_MAX_PAIRS = 2500

# The match key: everything that identifies a point except the code that measured it.
MATCH_FIELDS: tuple[str, ...] = tuple(name for name in KEY_FIELDS if name != "code_version")
# Fields that identify a shape (the exact-attention reference of a point).
SHAPE_FIELDS: tuple[str, ...] = ("device", "backend", "seq_len", "head_dim", "batch", "heads",
                                 "dtype", "causal", "inputs", "source")


# ---------------------------------------------------------------------------------------
# Mann-Whitney U
# ---------------------------------------------------------------------------------------

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


# ---------------------------------------------------------------------------------------
# Result sets
# ---------------------------------------------------------------------------------------

@dataclass
class ResultSet:
    """Rows of one run and how they were taken.

    ``interleaved``: every point was sampled once per round, in the same rounds (sample i
    of two points were taken close in time), so ratios can be paired sample by sample.
    """

    records: list[Record]
    interleaved: bool = False
    meta: dict = field(default_factory=dict)
    label: str = ""

    @property
    def devices(self) -> set[str]:
        return {r.device for r in self.records}


def load_result_set(path: str | Path) -> ResultSet:
    """A result set from a JSON file (``{"meta": {...}, "records": [...]}`` as written by
    ``sbbench.sweep.ci_bench``, or a plain list of Record dicts) or an SQLite results store."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"result set {path} does not exist")
    with open(path, "rb") as handle:
        head = handle.read(16)
    if head.startswith(b"SQLite format 3"):
        from sbbench.sweep.store import Store

        with Store(path, readonly=True) as store:
            return ResultSet(store.records(), interleaved=False,
                             meta={"kind": "store"}, label=str(path))
    try:
        data = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UserError(f"result set {path}: neither an SQLite store nor JSON ({err})") from None
    meta: dict = {}
    if isinstance(data, dict):
        if "records" not in data:
            raise UserError(f"result set {path}: a JSON object needs a 'records' list")
        meta = dict(data.get("meta") or {})
        rows = data["records"]
    else:
        rows = data
    if not isinstance(rows, list):
        raise UserError(f"result set {path}: 'records' must be a list of rows")
    records = []
    known = set(COLUMNS)
    dropped: set[str] = set()
    for number, row in enumerate(rows):
        if not isinstance(row, dict):
            raise UserError(f"result set {path}: row {number} is not an object")
        missing = [name for name in KEY_FIELDS if name not in row]
        if missing:
            raise UserError(f"result set {path}: row {number} lacks key field(s) "
                            f"{', '.join(missing)}")
        # A baseline written by an older sbbench may hold a result column since renamed
        # or removed: keep it loadable, say what was left out.
        dropped |= set(row) - known
        try:
            records.append(Record.from_dict({k: v for k, v in row.items() if k in known}))
        except (TypeError, ValueError) as err:
            raise UserError(f"result set {path}: row {number}: {err}") from None
    if dropped:
        meta["dropped_fields"] = sorted(dropped)
    return ResultSet(records, interleaved=bool(meta.get("interleaved", False)), meta=meta,
                     label=str(path))


def match_key(record: Record) -> tuple:
    return tuple(getattr(record, name) for name in MATCH_FIELDS)


def _latest_by_key(records: list[Record]) -> dict[tuple, Record]:
    """One row per match key; a store holding several code versions of a point keeps the
    latest (by timestamp)."""
    rows: dict[tuple, Record] = {}
    for record in records:
        key = match_key(record)
        if key not in rows or (record.timestamp or "") >= (rows[key].timestamp or ""):
            rows[key] = record
    return rows


def point_label(record: Record) -> str:
    parts = [record.method]
    if record.method == CALIBRATION:
        try:
            config = json.loads(record.kernel_config or "{}")
        except json.JSONDecodeError:
            config = {}
        if config:
            parts.append(" ".join(f"{k}={v}" for k, v in config.items()))
        return " ".join(parts)
    if record.backend != "torch":
        parts[0] += f"/{record.backend}"
    if record.method != "exact" and budget_label(record) != "-":
        parts.append(budget_label(record))
    parts.append(f"L={record.seq_len} d={record.head_dim} {record.batch}x{record.heads}")
    if record.dtype != "float32":
        parts.append(record.dtype)
    if record.causal:
        parts.append("causal")
    if record.kernel_config and record.method != CALIBRATION:
        parts.append(record.kernel_config)
    return " ".join(parts)


# ---------------------------------------------------------------------------------------
# Ratio mode
# ---------------------------------------------------------------------------------------

def _shape_key(record: Record) -> tuple:
    return tuple(getattr(record, name) for name in SHAPE_FIELDS)


def _ok_samples(record: Record | None) -> list[float]:
    if record is None or record.status != "ok":
        return []
    return [float(s) for s in record.time_samples_ms or []]


def choose_reference(baseline: ResultSet, current: ResultSet, requested: str = "auto") -> str:
    """"calibration" when both sets have an ok calibration row (and ``requested`` is auto
    or calibration), else "exact"."""
    if requested not in ("auto", "calibration", "exact"):
        raise UserError(f"--reference must be auto, calibration or exact, got {requested!r}")

    def has_calibration(results: ResultSet) -> bool:
        return any(r.method == CALIBRATION and _ok_samples(r) for r in results.records)

    both = has_calibration(baseline) and has_calibration(current)
    if requested == "calibration" and not both:
        raise UserError("--reference calibration: both result sets need a calibration row "
                        "(method 'calibration'); the CI benchmark writes one")
    if requested == "exact":
        return "exact"
    return "calibration" if both else "exact"


def ratio_samples(results: ResultSet, reference: str) -> dict[tuple, tuple[list[float], str]]:
    """For every row with time samples: its samples divided by the reference's, and a note
    saying how (paired by round, or by the reference's median). Rows without a reference
    in the same set are left out, as is the reference itself."""
    rows = _latest_by_key(results.records)
    calibration = [r for r in rows.values() if r.method == CALIBRATION and _ok_samples(r)]
    if reference == "calibration" and len(calibration) > 1:
        raise UserError(f"result set {results.label} has {len(calibration)} calibration rows; "
                        f"ratio mode needs exactly one")
    exact_by_shape = {_shape_key(r): r for r in rows.values()
                      if r.method == "exact" and _ok_samples(r)}
    out: dict[tuple, tuple[list[float], str]] = {}
    for key, record in rows.items():
        samples = _ok_samples(record)
        if not samples:
            continue
        if reference == "calibration":
            ref = calibration[0] if calibration else None
            if ref is None or record is ref:
                continue
        else:
            if record.method in ("exact", CALIBRATION):
                continue
            ref = exact_by_shape.get(_shape_key(record))
            if ref is None:
                continue
        ref_samples = _ok_samples(ref)
        if results.interleaved and len(ref_samples) == len(samples):
            out[key] = ([s / r for s, r in zip(samples, ref_samples, strict=True)],
                        f"/ {ref.method} (paired by round)")
        else:
            median = statistics.median(ref_samples)
            out[key] = ([s / median for s in samples], f"/ median of {ref.method}")
    return out


def choose_mode(baseline: ResultSet, current: ResultSet, requested: str = "auto") -> str:
    """"ratio" for CPU sets and sets marked as taken on a shared machine, else "absolute"."""
    if requested not in ("auto", "ratio", "absolute"):
        raise UserError(f"--mode must be auto, ratio or absolute, got {requested!r}")
    if requested != "auto":
        return requested
    shared = any(s.meta.get("shared_machine") for s in (baseline, current))
    cpu_only = all(d == "cpu" for d in baseline.devices | current.devices)
    return "ratio" if shared or cpu_only else "absolute"


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
                  alpha: float, note: str) -> Finding:
    if len(base) < 2 or len(cur) < 2:
        return Finding(label, "time", None, None, None, None, "skipped",
                       "fewer than 2 samples on one side")
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
    return Finding(label, "time", base_median, cur_median, ratio, p, verdict, note)


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
            error_atol: float = ERROR_ATOL, allow_missing: bool = False) -> Comparison:
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
    return Comparison(findings, mode, ref, factors, alpha, len(matched))


def _point_findings(key, base: Record, cur: Record, label: str, mode: str,
                    reference: str | None, base_ratio: dict, cur_ratio: dict,
                    factors: dict[str, float], alpha: float,
                    error_atol: float) -> list[Finding]:
    findings = []
    if mode == "ratio":
        if key in base_ratio and key in cur_ratio:
            (b, how), (c, _) = base_ratio[key], cur_ratio[key]
            findings.append(_time_finding(label, b, c, factors["time"], alpha,
                                          f"time {how}"))
        elif _ok_samples(base) and _ok_samples(cur):
            is_reference = base.method == (reference or "") or (
                reference == "exact" and base.method == CALIBRATION)
            findings.append(Finding(label, "time", None, None, None, None, "skipped",
                                    "the reference of ratio mode" if is_reference else
                                    f"no {reference} row in the same run to divide by"))
    else:
        findings.append(_time_finding(label, _ok_samples(base), _ok_samples(cur),
                                      factors["time"], alpha, "absolute time (ms)"))
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
                      min(c.n_matched for c in comparisons), runs=n)


def _join(note: str, extra: str) -> str:
    return f"{note}; {extra}" if note else extra


# ---------------------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------------------

def _value(metric: str, value: float | None, mode: str) -> str:
    if value is None:
        return ""
    if metric == "time":
        return f"{value:.4g}" + ("" if mode == "ratio" else " ms")
    if metric == "memory":
        return f"{value / 2**20:.4g} MiB"
    if metric == "energy":
        return f"{value * 1e3:.4g} mJ"
    return f"{value:.4g}"


def format_table(result: Comparison, *, show_all: bool = True) -> str:
    """The findings as a table (every finding, or only those that are not ok)."""
    from tabulate import tabulate

    order = {v: i for i, v in enumerate(VERDICTS)}
    rows = [f for f in result.findings if show_all or f.verdict not in ("ok", "skipped")]
    rows.sort(key=lambda f: (order.get(f.verdict, 99), f.point, METRICS.index(f.metric)
                             if f.metric in METRICS else -1))
    table = [[f.verdict.upper() if f.failing else f.verdict, f.point, f.metric,
              _value(f.metric, f.baseline, result.mode), _value(f.metric, f.current, result.mode),
              f"x{f.ratio:.3f}" if f.ratio is not None and math.isfinite(f.ratio) else "",
              f"{f.p_value:.2g}" if f.p_value is not None else "", f.note]
             for f in rows]
    headers = ["verdict", "point", "metric", "baseline", "current", "change", "p", "note"]
    return tabulate(table, headers=headers, tablefmt="simple", disable_numparse=True)


def summary_line(result: Comparison) -> str:
    counts: dict[str, int] = {}
    for f in result.findings:
        counts[f.verdict] = counts.get(f.verdict, 0) + 1
    parts = ", ".join(f"{counts[v]} {v}" for v in VERDICTS if v in counts)
    factors = ", ".join(f"{m} x{f:g}" for m, f in result.factors.items())
    how = (f"ratio mode (time / {result.reference} measured in the same run)"
           if result.mode == "ratio" else "absolute mode")
    verdict = "REGRESSION" if not result.ok else "no regression"
    if result.runs > 1:
        verdict += f" (a regression must fail in all {result.runs} current runs)"
    return (f"{verdict}: {result.n_matched} points matched; {parts}. {how}; factors "
            f"{factors}; Mann-Whitney U one-sided, alpha {result.alpha:g}")
