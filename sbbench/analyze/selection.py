"""Budget selection from sweep results (layer 4): Pareto fronts, the cheapest budget per
error target, and where exact attention is simply faster.

Input: the DataFrame of ``records.Record`` rows (``Store.to_dataframe()``). Only measured
rows with status ok, a time and an output error count; cost-model rows have no error.

1. :func:`candidates`: one row per shape x candidate. A *shape* is (device, dtype,
   causal, seq_len, head_dim, batch, heads); a *candidate* is (method, backend,
   n_features, bucket_size, n_hashes, sparse, sink, window, kernel_config): the bucket
   kind and the sink and window keys are budget axes like the others. A store holding several code
   versions of a point keeps the latest row. Measured on several input regimes, a
   candidate's error is the worst regime's (a budget must meet its target on every
   input measured) and its time the median over regimes. Exact attention's error
   (float32 vs the float64 reference, ~1e-7) is kept; where missing it is 0.
2. :func:`pareto_fronts`: per shape, the candidates no other candidate beats in every
   objective: error and time (``on_front``), and error, time, peak memory and energy
   where every candidate of the shape has them (``on_front_all``).
3. :func:`cheapest_meeting`: per shape and error target (default 1%, 2%, 5%, 10%
   relative output error) the fastest candidate whose error is <= the target. Exact
   attention meets every target, so where it is the fastest it is the answer.
4. ``analyze.thresholds.exact_thresholds``: per shape family (all but seq_len), the sequence length
   below which exact attention is simply faster than every approximation measured (and,
   per target, faster than every approximation meeting it), with a log-log
   interpolated crossover estimate.
5. :func:`budget_entries`: the ``budgets:`` section of ``tuning_configs/<device>.yaml``
   (``tuned.write_section``): one entry per (seq_len, head_dim, dtype, causal) and target.

``sbbench select`` (cli/select.py) writes the entries and ``reports/<device>/budgets.md``
(analyze/selection_report.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from sbbench.analyze.results import with_key_defaults
from sbbench.core.errors import UserError
from sbbench.core.types import METHOD_ORDER

DEFAULT_TARGETS = (0.01, 0.02, 0.05, 0.10)
# Statistic of the per-head errors a budget is selected on: heads differ ~10x in how
# approximable they are, so the default asks that 90% of the heads meet the target.
ERROR_STATS = ("p90", "p50", "max", "mean")
DEFAULT_ERROR_STAT = "p90"
SHAPE = ["device", "dtype", "causal", "seq_len", "head_dim", "batch", "heads"]
FAMILY = ["device", "dtype", "causal", "head_dim", "batch", "heads"]  # SHAPE but seq_len
CANDIDATE = ["method", "backend", "n_features", "bucket_size", "n_hashes", "sparse", "sink",
             "window", "kernel_config"]
BUDGET = ["method", "n_features", "bucket_size", "n_hashes", "sparse", "sink", "window"]
OBJECTIVES = ["error", "time_ms", "memory_bytes", "energy_j"]
E2E_PREFIX = "e2e:"  # inputs of end-to-end rows (models.e2e.e2e_records)


# ---------------------------------------------------------------------------------------
# Candidates
# ---------------------------------------------------------------------------------------

def candidates(frame: pd.DataFrame, *, device: str | None = None,
               error_stat: str = DEFAULT_ERROR_STAT) -> pd.DataFrame:
    """One row per shape x candidate with columns SHAPE + CANDIDATE + error, error_std,
    time_ms, p20_ms, p80_ms, memory_bytes, energy_j, inputs, code_version, n_rows.

    ``error`` is ``error_stat`` of the per-head output errors (p90, p50, max or mean;
    rows measured before per-head errors were kept fall back to the whole-tensor error
    ``error_mean``)."""
    if error_stat not in ERROR_STATS:
        raise UserError(f"error statistic must be one of {', '.join(ERROR_STATS)}, "
                        f"got {error_stat!r}")
    columns = SHAPE + CANDIDATE + ["error", "error_std", "time_ms", "p20_ms", "p80_ms",
                                   "memory_bytes", "energy_j", "inputs", "code_version",
                                   "n_rows"]
    if frame is None or frame.empty:
        return pd.DataFrame(columns=columns)
    rows = frame
    if device is not None:
        rows = rows[rows["device"] == device]
    rows = rows[(rows["source"] == "measured") & (rows["status"] == "ok")
                & rows["time_median_ms"].notna() & (rows["time_median_ms"] > 0)]
    rows = with_key_defaults(rows.copy())
    column = "error_mean" if error_stat == "mean" else f"error_{error_stat}"
    if column in rows and column != "error_mean":
        stat = pd.to_numeric(rows[column], errors="coerce")
        rows["error_mean"] = stat.where(stat.notna(), rows["error_mean"])
    is_exact = rows["method"] == "exact"
    rows.loc[is_exact & rows["error_mean"].isna(), "error_mean"] = 0.0
    rows = rows[rows["error_mean"].notna()]
    if rows.empty:
        return pd.DataFrame(columns=columns)
    end_to_end = rows["inputs"].astype(str).str.startswith(E2E_PREFIX)
    if end_to_end.any() and not end_to_end.all():
        raise UserError("the store mixes end-to-end rows (sbbench e2e --store) with per-call "
                        "rows (sbbench sweep): their times and errors measure different "
                        "things; keep them in separate stores")
    # Several code versions of one point: keep the latest measurement.
    point = SHAPE + CANDIDATE + ["inputs"]
    rows = rows.sort_values("timestamp", kind="stable").drop_duplicates(point, keep="last")
    memory = (rows["peak_memory_delta_bytes"] if "peak_memory_delta_bytes" in rows
              else pd.Series(np.nan, index=rows.index))
    rows = rows.assign(memory_bytes=pd.to_numeric(memory, errors="coerce"),
                       energy_j=pd.to_numeric(rows["energy_j"], errors="coerce"))
    out = []
    for key, group in rows.groupby(SHAPE + CANDIDATE, sort=False, dropna=False):
        worst = group.loc[group["error_mean"].idxmax()]
        out.append(dict(
            zip(SHAPE + CANDIDATE, key, strict=True),
            error=float(worst["error_mean"]),
            error_std=_float(worst["error_std"]),
            time_ms=float(group["time_median_ms"].median()),
            p20_ms=_float(group["time_p20_ms"].median()),
            p80_ms=_float(group["time_p80_ms"].median()),
            memory_bytes=_float(group["memory_bytes"].max()),
            energy_j=_float(group["energy_j"].median()),
            inputs=",".join(sorted(set(group["inputs"]))),
            code_version=",".join(sorted(set(group["code_version"]))),
            n_rows=len(group),
        ))
    result = pd.DataFrame(out, columns=columns)
    result["causal"] = result["causal"].astype(bool)
    return _sorted(result)


def _float(value) -> float | None:
    if value is None:
        return None
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(value) else value


def _sorted(frame: pd.DataFrame) -> pd.DataFrame:
    if frame.empty:
        return frame
    order = frame["method"].map(METHOD_ORDER).fillna(99)
    return (frame.assign(_order=order)
            .sort_values(SHAPE + ["_order", "n_features", "bucket_size", "n_hashes",
                                  "sparse", "sink", "window", "backend"], kind="stable")
            .drop(columns="_order").reset_index(drop=True))


# ---------------------------------------------------------------------------------------
# Pareto fronts
# ---------------------------------------------------------------------------------------

def pareto_mask(values) -> np.ndarray:
    """values: [n, k] costs to minimise -> [n] bool, True where no other row is <= in
    every column and < in at least one. Equal rows do not dominate each other."""
    values = np.asarray(values, dtype=float)
    if values.ndim != 2:
        raise ValueError(f"values must be [n, k], got shape {values.shape}")
    if np.isnan(values).any():
        raise ValueError("pareto_mask: values contain NaN (drop the unmeasured objective)")
    n = len(values)
    keep = np.ones(n, dtype=bool)
    for i in range(n):
        no_worse = (values <= values[i]).all(axis=1)
        better = (values < values[i]).any(axis=1)
        if (no_worse & better).any():
            keep[i] = False
    return keep


def measured_objectives(group: pd.DataFrame) -> list[str]:
    """error and time always; memory and energy where every candidate has them."""
    return [name for name in OBJECTIVES
            if name in ("error", "time_ms") or group[name].notna().all()]


def pareto_fronts(cands: pd.DataFrame) -> pd.DataFrame:
    """``cands`` with two bool columns: ``on_front`` (error vs time) and ``on_front_all``
    (error, time, and memory / energy where measured for the whole shape), and
    ``front_objectives`` naming the objectives of the second."""
    if cands.empty:
        return cands.assign(on_front=pd.Series(dtype=bool), on_front_all=pd.Series(dtype=bool),
                            front_objectives=pd.Series(dtype=str))
    parts = []
    for _, group in cands.groupby(SHAPE, sort=False, dropna=False):
        objectives = measured_objectives(group)
        parts.append(group.assign(
            on_front=pareto_mask(group[["error", "time_ms"]].to_numpy()),
            on_front_all=pareto_mask(group[objectives].to_numpy()),
            front_objectives=",".join(objectives)))
    return pd.concat(parts).sort_index()


# ---------------------------------------------------------------------------------------
# Error targets
# ---------------------------------------------------------------------------------------

def check_targets(targets) -> tuple[float, ...]:
    values = tuple(sorted({float(t) for t in targets}))
    if not values or any(not (0 < t and math.isfinite(t)) for t in values):
        raise UserError(f"error targets must be numbers > 0, got {list(targets)}")
    return values


def parse_targets(text: str) -> tuple[float, ...]:
    """"1%,2%,0.05" -> (0.01, 0.02, 0.05): percentages or fractions."""
    values = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            values.append(float(part[:-1]) / 100 if part.endswith("%") else float(part))
        except ValueError:
            raise UserError(f"--targets: {part!r} is not a number or a percentage") from None
    return check_targets(values)


def cheapest_meeting(cands: pd.DataFrame, targets=DEFAULT_TARGETS) -> pd.DataFrame:
    """Per shape and target: the fastest candidate with error <= target (ties: lower
    error), with exact attention's time at that shape (``exact_time_ms``, NaN if not
    measured) and ``met`` False where no candidate meets the target."""
    targets = check_targets(targets)
    rows = []
    for key, group in cands.groupby(SHAPE, sort=False, dropna=False):
        exact = group[group["method"] == "exact"]
        exact_ms = float(exact["time_ms"].min()) if not exact.empty else math.nan
        exact_error = float(exact["error"].min()) if not exact.empty else math.nan
        approx = group[group["method"] != "exact"]
        closest = (approx.sort_values(["error", "time_ms"], kind="stable").iloc[0]
                   if not approx.empty else None)
        for target in targets:
            meeting = group[group["error"] <= target]
            approx_meeting = approx[approx["error"] <= target]
            # the approximation a user would look at: the fastest meeting the target,
            # else the most accurate measured ("not reachable: best X at budget Y")
            shown = (approx_meeting.sort_values(["time_ms", "error"], kind="stable").iloc[0]
                     if not approx_meeting.empty else closest)
            base = dict(zip(SHAPE, key, strict=True), max_error=target, exact_time_ms=exact_ms,
                        exact_error=exact_error, reachable=not approx_meeting.empty,
                        best_approx=(_candidate_label(shown) if shown is not None else ""),
                        best_approx_error=(float(shown["error"]) if shown is not None
                                           else math.nan),
                        best_approx_time_ms=(float(shown["time_ms"]) if shown is not None
                                             else math.nan))
            if meeting.empty:
                rows.append({**base, "met": False})
                continue
            best = meeting.sort_values(["time_ms", "error"], kind="stable").iloc[0]
            rows.append({**base, **{name: best[name] for name in CANDIDATE},
                         "error": best["error"], "error_std": best["error_std"],
                         "time_ms": best["time_ms"], "p20_ms": best["p20_ms"],
                         "p80_ms": best["p80_ms"], "memory_bytes": best["memory_bytes"],
                         "energy_j": best["energy_j"], "inputs": best["inputs"],
                         "met": True})
    columns = SHAPE + ["max_error", "met"] + CANDIDATE + [
        "error", "error_std", "time_ms", "p20_ms", "p80_ms", "memory_bytes", "energy_j",
        "inputs", "exact_time_ms", "exact_error", "reachable", "best_approx",
        "best_approx_error", "best_approx_time_ms"]
    return pd.DataFrame(rows, columns=columns)


def _candidate_label(row) -> str:
    """"scatterbrain f=32 bucket=64 hashes=1 kmeans sink=4" (method and budget of a
    candidate row)."""
    from sbbench.core.types import budget_label as label

    budget = label({name: row[name] for name in BUDGET})
    return row["method"] if budget == "-" else f"{row['method']} {budget}"


# ---------------------------------------------------------------------------------------
# Where exact attention is faster
# ---------------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------
# The budgets section
# ---------------------------------------------------------------------------------------

def representative_shapes(choices: pd.DataFrame) -> pd.DataFrame:
    """The choices of one (batch, heads) per (device, dtype, causal, seq_len, head_dim):
    the largest batch * heads measured (the run-time lookup is by seq_len and head_dim,
    and times of different batch sizes must not compete)."""
    if choices.empty:
        return choices
    keys = ["device", "dtype", "causal", "seq_len", "head_dim"]
    size = choices["batch"] * choices["heads"]
    largest = choices.assign(_size=size).groupby(keys, dropna=False)["_size"].transform("max")
    chosen = choices[size == largest]
    # Two (batch, heads) of one size (2x4 and 4x2): keep the first measured.
    first = chosen.drop_duplicates(keys)[keys + ["batch", "heads"]]
    return chosen.merge(first, on=keys + ["batch", "heads"]).reset_index(drop=True)


def budget_entries(choices: pd.DataFrame) -> list[dict]:
    """Entries for ``tuned.write_section(device, "budgets", entries)``: one per shape and
    met target, in the schema of tuned.py (required keys, plus dtype, causal, batch,
    heads, error_std, p20_ms, p80_ms, exact_error, memory_bytes, energy_j, inputs,
    speedup where known)."""
    entries = []
    for row in representative_shapes(choices[choices["met"]]).itertuples(index=False):
        method = row.method
        exact_ms = _float(row.exact_time_ms)
        entry = dict(seq_len=int(row.seq_len), head_dim=int(row.head_dim),
                     max_error=float(row.max_error), method=str(method),
                     n_features=int(row.n_features), bucket_size=int(row.bucket_size),
                     n_hashes=int(row.n_hashes), error=_round(row.error),
                     time_ms=_round(row.time_ms), exact_time_ms=_round(exact_ms),
                     dtype=str(row.dtype), causal=bool(row.causal), batch=int(row.batch),
                     heads=int(row.heads))
        optional = dict(error_std=_float(row.error_std), p20_ms=_float(row.p20_ms),
                        p80_ms=_float(row.p80_ms), exact_error=_float(row.exact_error),
                        memory_bytes=_float(row.memory_bytes), energy_j=_float(row.energy_j))
        for name, value in optional.items():
            if value is not None and value >= 0:
                entry[name] = int(value) if name == "memory_bytes" else _round(value)
        if row.sparse:  # the sparse part's kind and extra keys (none without one)
            entry.update(sparse=str(row.sparse), sink=int(row.sink), window=int(row.window))
        entry["inputs"] = str(row.inputs)
        entry["reachable"] = bool(row.reachable)
        if row.best_approx:
            entry["best_approx"] = str(row.best_approx)
            entry["best_approx_error"] = _round(row.best_approx_error)
        if exact_ms:
            entry["speedup"] = _round(exact_ms / float(row.time_ms))
        entries.append(entry)
    return entries


def _round(value, digits: int = 6):
    """Significant digits, so the YAML stays readable (None stays None)."""
    value = _float(value)
    if value is None or value == 0:
        return value
    return float(f"{value:.{digits}g}")


# ---------------------------------------------------------------------------------------
# Everything at once
# ---------------------------------------------------------------------------------------

@dataclass
class Selection:
    targets: tuple[float, ...]
    candidates: pd.DataFrame
    fronts: pd.DataFrame
    choices: pd.DataFrame
    thresholds: list  # [analyze.thresholds.Threshold]
    entries: list[dict]
    notes: list[str] = field(default_factory=list)
    error_stat: str = DEFAULT_ERROR_STAT


def select(frame: pd.DataFrame, *, device: str, targets=DEFAULT_TARGETS,
           error_stat: str = DEFAULT_ERROR_STAT) -> Selection:
    """Run the whole selection on the measured rows of ``device``; UserError if none."""
    from sbbench.analyze.thresholds import exact_thresholds

    targets = check_targets(targets)
    if frame is None or frame.empty or device not in set(frame["device"]):
        present = sorted(set(frame["device"])) if frame is not None and not frame.empty else []
        raise UserError(f"the store has no rows for device {device!r}"
                        + (f"; it has: {', '.join(present)}" if present else "; it is empty")
                        + " (run `sbbench sweep` first)")
    cands = candidates(frame, device=device, error_stat=error_stat)
    if cands.empty:
        raise UserError(f"the store has no measured ok rows with a time and an error for "
                        f"{device!r} (cost-model rows have no error: run a measured sweep)")
    notes = []
    no_exact = cands.groupby(SHAPE, dropna=False)["method"].apply(lambda m: "exact" not in set(m))
    for key in no_exact[no_exact].index:
        shape = dict(zip(SHAPE, key, strict=True))
        notes.append(f"no exact row at {_shape_text(shape)}: exact_time_ms "
                     f"is null there and exact cannot be chosen")
    choices = cheapest_meeting(cands, targets)
    for row in choices[~choices["met"]].itertuples(index=False):
        notes.append(f"nothing measured meets max_error {row.max_error:g} at "
                     f"{_shape_text(row._asdict())}")
    unreachable = choices[choices["met"] & ~choices["reachable"].astype(bool)]
    if not unreachable.empty:
        what = ("end-to-end error" if cands["inputs"].astype(str).str.startswith(
            E2E_PREFIX).all() else f"{error_stat} of the per-head errors")
        notes.append(f"{len(unreachable)} of {len(choices)} (shape, target) pairs are not "
                     f"reachable by any approximation measured ({what}): exact attention "
                     f"is the answer there")
    return Selection(targets, cands, pareto_fronts(cands), choices,
                     exact_thresholds(cands, targets), budget_entries(choices), notes,
                     error_stat)


def _shape_text(row: dict) -> str:
    causal = ", causal" if row.get("causal") else ""
    return (f"seq_len {row['seq_len']}, head_dim {row['head_dim']}, {row['batch']}x"
            f"{row['heads']}, {row['dtype']}{causal}")
