"""Result sets (layer 4): the rows of one run, loaded from a results store or the JSON
of ``sbbench.sweep.ci_bench``, matched across runs by their key without the code version,
and their times as ratios to a reference measured in the same run (ratio mode).

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
import sqlite3
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from sbbench.core.errors import UserError
from sbbench.core.record import ADDED_KEY_FIELDS, COLUMNS, KEY_FIELDS, Record, default_sparse
from sbbench.core.types import budget_label

CALIBRATION = "calibration"  # method name of the calibration kernel's row

# The match key: everything that identifies a point except the code that measured it.
MATCH_FIELDS: tuple[str, ...] = tuple(name for name in KEY_FIELDS if name != "code_version")
# Fields that identify a shape (the exact-attention reference of a point).
SHAPE_FIELDS: tuple[str, ...] = ("device", "backend", "seq_len", "head_dim", "batch", "heads",
                                 "dtype", "causal", "inputs", "source")


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

        try:
            with Store(path, readonly=True) as store:
                records = store.records()
        except (ValueError, TypeError, KeyError, sqlite3.DatabaseError) as err:
            raise UserError(f"result set {path}: cannot read the store ({err}); is it a "
                            f"results store written by `sbbench sweep`?") from None
        for number, record in enumerate(records):
            check_numbers(record, f"result set {path}: row {number}")
        return ResultSet(records, interleaved=False, meta={"kind": "store"}, label=str(path))
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
        # (a row of an older sbbench lacks the newer key fields: they take their defaults)
        missing = [name for name in KEY_FIELDS
                   if name not in row and name not in ADDED_KEY_FIELDS]
        if missing:
            raise UserError(f"result set {path}: row {number} lacks key field(s) "
                            f"{', '.join(missing)}")
        # A baseline written by an older sbbench may hold a result column since renamed
        # or removed: keep it loadable, say what was left out.
        dropped |= set(row) - known
        try:
            record = Record.from_dict({k: v for k, v in row.items() if k in known})
        except (TypeError, ValueError) as err:
            raise UserError(f"result set {path}: row {number}: {err}") from None
        check_numbers(record, f"result set {path}: row {number}")
        records.append(record)
    if dropped:
        meta["dropped_fields"] = sorted(dropped)
    return ResultSet(records, interleaved=bool(meta.get("interleaved", False)), meta=meta,
                     label=str(path))


def with_key_defaults(frame):
    """``frame`` with the sparse, sink and window columns (rows of an older file lack
    them: the method's default kind, 0 and 0; core.record.default_sparse)."""
    import pandas as pd

    defaults = frame["method"].map(default_sparse)
    sparse = frame["sparse"] if "sparse" in frame else pd.Series("", index=frame.index)
    frame["sparse"] = sparse.where(sparse.notna() & (sparse != ""), defaults).astype(str)
    for name in ("sink", "window"):
        values = frame[name] if name in frame else pd.Series(0, index=frame.index)
        frame[name] = pd.to_numeric(values, errors="coerce").fillna(0).astype(int)
    return frame


# Result fields a comparison computes with: a number or None (not measured).
NUMBER_FIELDS = ("time_median_ms", "time_p20_ms", "time_p80_ms", "error_mean", "error_std",
                 "peak_memory_delta_bytes", "energy_j")


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_numbers(record: Record, where: str) -> None:
    """UserError (one line) unless the record's samples are a list of numbers and its
    compared results numbers or null: a hand-edited or corrupt baseline must not reach
    the statistics as text."""
    samples = record.time_samples_ms
    if samples is None:
        samples = record.time_samples_ms = []
    if not isinstance(samples, list):
        raise UserError(f"{where}: time_samples_ms must be a list of numbers, got "
                        f"{type(samples).__name__} {str(samples)[:40]!r}")
    for i, value in enumerate(samples):
        if not _is_number(value) or not value >= 0 or math.isinf(value):
            raise UserError(f"{where}: time_samples_ms[{i}] is {str(value)[:40]!r}, not a "
                            f"number; fix or regenerate this result set")
    for name in NUMBER_FIELDS:
        value = getattr(record, name)
        if value is not None and (not _is_number(value) or math.isinf(value)):
            raise UserError(f"{where}: {name} is {str(value)[:40]!r}, not a number or null; "
                            f"fix or regenerate this result set")


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


def _shape_key(record: Record) -> tuple:
    return tuple(getattr(record, name) for name in SHAPE_FIELDS)


def _ok_samples(record: Record | None) -> list[float]:
    if record is None or record.status != "ok":
        return []
    return [float(s) for s in record.time_samples_ms or []]


def _paired(record: Record) -> bool:
    samples, reference = _ok_samples(record), record.reference_samples_ms or []
    return bool(samples) and len(reference) == len(samples) and min(reference) > 0


def choose_reference(baseline: ResultSet, current: ResultSet, requested: str = "auto") -> str:
    """What ratio mode divides by: "paired" when every timed row of both sets carries the
    calibration kernel sampled right after each of its samples (CPU sweeps), else
    "calibration" when both sets have an ok calibration row (the CI benchmark), else
    "exact" (exact attention of the same shape, same run). ``requested`` forces one."""
    if requested not in ("auto", "paired", "calibration", "exact"):
        raise UserError(f"--reference must be auto, paired, calibration or exact, got "
                        f"{requested!r}")

    def has_calibration(results: ResultSet) -> bool:
        return any(r.method == CALIBRATION and _ok_samples(r) for r in results.records)

    def all_paired(results: ResultSet) -> bool:
        timed = [r for r in results.records if _ok_samples(r) and r.method != CALIBRATION]
        return bool(timed) and all(_paired(r) for r in timed)

    both = has_calibration(baseline) and has_calibration(current)
    paired = all_paired(baseline) and all_paired(current)
    if requested == "calibration" and not both:
        raise UserError("--reference calibration: both result sets need a calibration row "
                        "(method 'calibration'); the CI benchmark writes one")
    if requested == "paired" and not paired:
        raise UserError("--reference paired: every timed row of both sets needs reference "
                        "samples (CPU sweeps of sbbench >= schema 4 record them)")
    if requested != "auto":
        return requested
    return "paired" if paired else "calibration" if both else "exact"


def ratio_samples(results: ResultSet, reference: str) -> dict[tuple, tuple[list[float], str]]:
    """For every row with time samples: its samples divided by the reference's, and a note
    saying how (paired by round, or by the reference's median). Rows without a reference
    in the same set are left out, as is the reference itself."""
    rows = _latest_by_key(results.records)
    if reference == "paired":
        return {key: ([s / r for s, r in zip(_ok_samples(record),
                                               record.reference_samples_ms, strict=True)],
                      "/ calibration kernel sampled right after each sample")
                for key, record in rows.items() if _paired(record)}
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
        if results.interleaved and len(ref_samples) == len(samples) and min(ref_samples) > 0:
            out[key] = ([s / r for s, r in zip(samples, ref_samples, strict=True)],
                        f"/ {ref.method} (paired by round)")
        else:
            median = statistics.median(ref_samples)
            if not median > 0:
                continue
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
