"""The schema of ``tuning_configs/<device>.yaml``: value types and validation (layer 2).

The files hold what ``sbbench tune`` (implementation tunables: kernel tile sizes, the
torch path's chunk size and threads) and ``sbbench select`` (approximation budgets)
produce. :func:`parse` turns loaded YAML into a :class:`TunedTable` or raises
:class:`TuningFileError` naming the file and the key path; files.py reads and writes
them, lookup.py answers "which config for this call?".

The schema, key by key, with an example: docs/tuning_files.md (every key is checked on
load; an error names the key path).

Config values are ints (tile sizes, warps, stages, chunk elements, threads) or null.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from sbbench.core.errors import UserError
from sbbench.core.types import DTYPES, METHODS, Budget
from sbbench.tuned.shape import SHAPE_KEYS, SHAPE_OPTIONAL, SPARSE_KINDS, ShapeBucket

SCHEMA_VERSION = 1
SECTIONS = ("kernels", "budgets")
TOP_KEYS = ("schema_version", "device", *SECTIONS, "metadata")
CPU_TARGET_PREFIX = "torch:"  # kernels.<target> of the torch/CPU path: torch:<method>

_BUCKET_REQUIRED = ("shape", "best", "time_ms")
_BUCKET_OPTIONAL = ("p20_ms", "p80_ms", "n_samples", "default_time_ms", "runner_ups",
                    "date", "strategy", "evaluated", "pruned", "rejected", "pruned_configs",
                    "rejected_configs", "inputs")
_BUDGET_REQUIRED = ("seq_len", "head_dim", "max_error", "method", "n_features",
                    "bucket_size", "n_hashes", "error", "time_ms", "exact_time_ms")
# optional columns select may add: the sparse part's kind, sink and window (absent: the
# method's default kind, 0, 0), measured spread and shape details
_BUDGET_OPTIONAL = ("sparse", "sink", "window", "dtype", "causal", "batch", "heads",
                    "error_std", "p20_ms", "p80_ms", "exact_error", "memory_bytes",
                    "energy_j", "inputs", "speedup", "reachable", "best_approx",
                    "best_approx_error", "error_stat")


class TuningFileError(UserError):
    """A tuning file breaks the schema; the message names the file and the key path."""


# ---------------------------------------------------------------------------------------
# Validated contents
# ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class TunedBucket:
    shape: ShapeBucket
    best: dict
    time_ms: float
    raw: dict = field(repr=False, compare=False, default_factory=dict)


@dataclass(frozen=True)
class TunedTarget:
    name: str
    default: dict
    buckets: tuple[TunedBucket, ...]


@dataclass(frozen=True)
class BudgetEntry:
    seq_len: int
    head_dim: int
    max_error: float
    budget: Budget
    error: float
    time_ms: float
    exact_time_ms: float | None
    dtype: str | None = None  # None: the entry does not say
    causal: bool | None = None
    # False: no approximation measured meets max_error (the entry is exact attention);
    # best_approx / best_approx_error say how close the best one came
    reachable: bool | None = None
    best_approx: str | None = None
    best_approx_error: float | None = None


@dataclass(frozen=True)
class Match:
    """A lookup's answer: the config and where it came from (``source`` is "exact",
    "nearest" or "default"; ``shape`` the tuned bucket used, None for the default)."""

    config: dict
    source: str
    shape: ShapeBucket | None = None


@dataclass
class TunedTable:
    """One device's validated tuning file (empty when the device has none)."""

    device: str
    path: Path | None
    targets: dict[str, TunedTarget]
    budgets: list[BudgetEntry]
    raw: dict

    def target_names(self) -> list[str]:
        return list(self.targets)

    def lookup(self, target: str, shape: ShapeBucket, default: dict | None = None) -> Match:
        """Config for ``target`` at ``shape``: exact bucket, else nearest, else default.

        ``default`` (when given) wins over the file's own ``default`` in the last step,
        so a caller that knows the kernel's declared default can insist on it.
        """
        entry = self.targets.get(target)
        if entry is None or not entry.buckets:
            fallback = default if default is not None else (entry.default if entry else {})
            return Match(dict(fallback), "default")
        for bucket in entry.buckets:
            if bucket.shape == shape:
                return Match(dict(bucket.best), "exact", bucket.shape)
        nearest = min(entry.buckets, key=lambda b: shape.distance(b.shape))  # first on ties
        return Match(dict(nearest.best), "nearest", nearest.shape)

    def nearest_entries(self, seq_len: int, head_dim: int, method: str | None = None, *,
                        dtype: str | None = None, causal: bool | None = None
                        ) -> list[BudgetEntry]:
        """The budget entries of ``method`` (None: any) measured at the exact (seq_len,
        head_dim), else at the nearest shape measured (same head_dim preferred); [] when
        the table has none. ``causal`` (when given) keeps only entries of that kind;
        ``dtype`` prefers entries of that dtype when there are any."""
        entries = [e for e in self.budgets if method is None or e.budget.method == method]
        if causal is not None:
            entries = [e for e in entries if e.causal is None or e.causal == causal]
        if dtype is not None and any(e.dtype == dtype for e in entries):
            entries = [e for e in entries if e.dtype in (None, dtype)]
        if not entries:
            return []
        want = ShapeBucket(seq_len, head_dim)

        def dist(entry):
            return want.distance(ShapeBucket(entry.seq_len, entry.head_dim))

        closest = min(dist(e) for e in entries)
        return [e for e in entries if dist(e) == closest]

    def budget_for(self, seq_len: int, head_dim: int, max_error: float,
                   method: str | None = None, *, dtype: str | None = None,
                   causal: bool | None = None) -> Budget | None:
        """The cheapest measured budget whose error is <= ``max_error`` at the exact
        (seq_len, head_dim), else the nearest one measured (same head_dim preferred).

        ``causal`` (when given) keeps only entries of that kind; ``dtype`` prefers entries
        of that dtype when there are any. Returns ``Budget("exact")`` where exact attention
        was measured faster than that budget (short sequences), and None when no entry
        meets ``max_error``.
        """
        here = self.nearest_entries(seq_len, head_dim, method, dtype=dtype, causal=causal)
        meeting = [e for e in here if e.error <= max_error]
        if not meeting:
            return None
        best = min(meeting, key=lambda e: e.time_ms)
        if (method is None and best.exact_time_ms is not None
                and best.exact_time_ms <= best.time_ms):
            return Budget("exact")
        return best.budget


def _fail(source: str, key: str, message: str):
    raise TuningFileError(f"{source}: {key}: {message}")


def _int(source, key, value, minimum=1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        _fail(source, key, f"must be an int >= {minimum}, got {value!r}")
    return value


def _number(source, key, value, *, positive=False, nullable=False) -> float | None:
    if value is None and nullable:
        return None
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < 0 or (positive and value == 0):
        kind = "> 0" if positive else ">= 0"
        _fail(source, key, f"must be a finite number {kind}{' or null' if nullable else ''}, "
                           f"got {value!r}")
    return float(value)


def _mapping(source, key, value) -> dict:
    if not isinstance(value, dict):
        _fail(source, key, f"must be a mapping, got {value!r}")
    return value


def _list(source, key, value) -> list:
    if not isinstance(value, list):
        _fail(source, key, f"must be a list, got {value!r}")
    return value


def _keys(source, key, value: dict, required, optional=()) -> None:
    valid = (*required, *optional)
    for name in value:
        if name not in valid:
            _fail(source, f"{key}.{name}", f"unknown key (valid: {', '.join(valid)})")
    for name in required:
        if name not in value:
            _fail(source, f"{key}.{name}", "missing")


def _config(source, key, value) -> dict:
    value = _mapping(source, key, value)
    for name, item in value.items():
        if not isinstance(name, str) or not name:
            _fail(source, f"{key}", f"config names must be strings, got {name!r}")
        # tile sizes, warps, stages, chunk elements and threads are all counts: a 0 or a
        # negative value would fail (or hang) far from the file that holds it
        if item is not None and (isinstance(item, bool) or not isinstance(item, int)
                                 or item < 1):
            _fail(source, f"{key}.{name}", f"must be an int or null (a count >= 1), got {item!r}")
    return dict(value)


def _shape(source, key, value) -> ShapeBucket:
    value = _mapping(source, key, value)
    _keys(source, key, value, SHAPE_KEYS, SHAPE_OPTIONAL)
    dtype = value["dtype"]
    if dtype not in DTYPES:
        _fail(source, f"{key}.dtype", f"must be one of {', '.join(DTYPES)}, got {dtype!r}")
    sparse = value.get("sparse") or ""  # absent / "" / null: the default kind
    if sparse and sparse not in SPARSE_KINDS:
        _fail(source, f"{key}.sparse", f"must be one of {', '.join(SPARSE_KINDS)}, got "
                                       f"{sparse!r}")
    return ShapeBucket(
        _int(source, f"{key}.seq_len", value["seq_len"]),
        _int(source, f"{key}.head_dim", value["head_dim"]),
        _int(source, f"{key}.n_features", value["n_features"], minimum=0),
        _int(source, f"{key}.bucket_size", value["bucket_size"], minimum=0),
        dtype, sparse,
        _int(source, f"{key}.sink", value.get("sink", 0), minimum=0),
        _int(source, f"{key}.window", value.get("window", 0), minimum=0),
    )


def _config_list(source, key, value, extra: str) -> None:
    for i, item in enumerate(_list(source, key, value)):
        where = f"{key}[{i}]"
        item = _mapping(source, where, item)
        _keys(source, where, item, ("config", extra))
        _config(source, f"{where}.config", item["config"])
        if extra == "time_ms":
            _number(source, f"{where}.time_ms", item["time_ms"], positive=True)
        elif not isinstance(item[extra], str):
            _fail(source, f"{where}.{extra}", f"must be a string, got {item[extra]!r}")


def _bucket(source, key, value) -> TunedBucket:
    value = _mapping(source, key, value)
    _keys(source, key, value, _BUCKET_REQUIRED, _BUCKET_OPTIONAL)
    shape = _shape(source, f"{key}.shape", value["shape"])
    best = _config(source, f"{key}.best", value["best"])
    time_ms = _number(source, f"{key}.time_ms", value["time_ms"], positive=True)
    for name in ("p20_ms", "p80_ms", "default_time_ms"):
        if name in value:
            _number(source, f"{key}.{name}", value[name], positive=True, nullable=True)
    for name in ("n_samples", "evaluated", "pruned", "rejected"):
        if name in value:
            _int(source, f"{key}.{name}", value[name], minimum=0)
    for name in ("strategy", "date", "inputs"):
        if name in value and not isinstance(value[name], str):
            _fail(source, f"{key}.{name}", f"must be a string, got {value[name]!r}")
    if "runner_ups" in value:
        _config_list(source, f"{key}.runner_ups", value["runner_ups"], "time_ms")
    for name in ("pruned_configs", "rejected_configs"):
        if name in value:
            _config_list(source, f"{key}.{name}", value[name], "reason")
    return TunedBucket(shape, best, time_ms, value)


def _target(source, key, value) -> tuple[dict, tuple[TunedBucket, ...]]:
    value = _mapping(source, key, value)
    _keys(source, key, value, ("default", "buckets"))
    default = _config(source, f"{key}.default", value["default"])
    buckets = tuple(_bucket(source, f"{key}.buckets[{i}]", b)
                    for i, b in enumerate(_list(source, f"{key}.buckets", value["buckets"])))
    seen: dict[ShapeBucket, int] = {}
    for i, bucket in enumerate(buckets):
        if bucket.shape in seen:
            _fail(source, f"{key}.buckets[{i}].shape",
                  f"same shape as buckets[{seen[bucket.shape]}] ({bucket.shape.label})")
        seen[bucket.shape] = i
    return default, buckets


def _budget_entry(source, key, value) -> BudgetEntry:
    value = _mapping(source, key, value)
    _keys(source, key, value, _BUDGET_REQUIRED, _BUDGET_OPTIONAL)
    method = value["method"]
    if method not in METHODS:
        _fail(source, f"{key}.method", f"must be one of {', '.join(METHODS)}, got {method!r}")
    sizes = {name: _int(source, f"{key}.{name}", value.get(name, 0), minimum=0)
             for name in ("n_features", "bucket_size", "n_hashes", "sink", "window")}
    sparse = value.get("sparse") or None  # "" (no sparse part) reads as absent
    if sparse is not None and not isinstance(sparse, str):
        _fail(source, f"{key}.sparse", f"must be a string, got {sparse!r}")
    try:
        budget = Budget(method, sparse=sparse, **sizes)
    except ValueError as err:
        _fail(source, key, str(err))
    dtype, causal = value.get("dtype"), value.get("causal")
    if dtype is not None and dtype not in DTYPES:
        _fail(source, f"{key}.dtype", f"must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if causal is not None and not isinstance(causal, bool):
        _fail(source, f"{key}.causal", f"must be true or false, got {causal!r}")
    return BudgetEntry(
        seq_len=_int(source, f"{key}.seq_len", value["seq_len"]),
        head_dim=_int(source, f"{key}.head_dim", value["head_dim"]),
        max_error=_number(source, f"{key}.max_error", value["max_error"], positive=True),
        budget=budget,
        error=_number(source, f"{key}.error", value["error"]),
        time_ms=_number(source, f"{key}.time_ms", value["time_ms"], positive=True),
        exact_time_ms=_number(source, f"{key}.exact_time_ms", value["exact_time_ms"],
                              positive=True, nullable=True),
        dtype=dtype,
        causal=causal,
        reachable=value.get("reachable"),
        best_approx=value.get("best_approx"),
        best_approx_error=value.get("best_approx_error"),
    )


def parse(data, *, device: str, source: str = "tuning file", path: Path | None = None
          ) -> TunedTable:
    """Validate loaded YAML -> TunedTable. Raises TuningFileError naming the key."""
    if data is None:
        data = {}
    data = _mapping(source, "(top level)", data)
    for name in data:
        if name not in TOP_KEYS:
            _fail(source, str(name), f"unknown top-level key (valid: {', '.join(TOP_KEYS)})")
    version = data.get("schema_version", SCHEMA_VERSION)
    if version != SCHEMA_VERSION:
        _fail(source, "schema_version", f"this sbbench reads version {SCHEMA_VERSION}, "
                                        f"got {version!r}")
    if "device" in data and data["device"] != device:
        _fail(source, "device", f"the file is for {data['device']!r} but was loaded as "
                                f"{device!r} (the file name is the device name)")
    targets = {}
    kernels = _mapping(source, "kernels", data.get("kernels") or {})
    for name, value in kernels.items():
        if not isinstance(name, str) or not name:
            _fail(source, "kernels", f"target names must be strings, got {name!r}")
        if name.startswith(CPU_TARGET_PREFIX) and name[len(CPU_TARGET_PREFIX):] not in METHODS:
            _fail(source, f"kernels.{name}", f"torch targets are torch:<method>, method one "
                                             f"of {', '.join(METHODS)}")
        default, buckets = _target(source, f"kernels.{name}", value)
        targets[name] = TunedTarget(name, default, buckets)
    budgets = [_budget_entry(source, f"budgets[{i}]", entry)
               for i, entry in enumerate(_list(source, "budgets", data.get("budgets") or []))]
    metadata = _mapping(source, "metadata", data.get("metadata") or {})
    for name, value in metadata.items():
        if name not in SECTIONS:
            _fail(source, f"metadata.{name}", f"unknown section (valid: {', '.join(SECTIONS)})")
        _mapping(source, f"metadata.{name}", value)
    return TunedTable(device, path, targets, budgets, data)
