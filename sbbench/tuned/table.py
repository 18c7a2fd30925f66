"""Per-device tuned configurations: ``tuning_configs/<device>.yaml`` (layer 2).

Reads, validates and writes the files that ``sbbench tune`` (implementation tunables:
kernel tile sizes, the torch path's chunk size and threads) and ``sbbench select``
(approximation budgets) produce, and answers the run-time question "which config for
this call?" with a fixed lookup order (STYLE.md 12): the exact shape bucket, else the
nearest one, else the default.

Where the files are: ``$SBBENCH_TUNING_DIR`` when set (it replaces the shipped folder
entirely, so a test or a user sees only their own files), else the package
``sbbench.tuning_configs`` (the top-level ``tuning_configs/`` of the checkout).

The schema (every key checked on load; an error names the key path)::

    schema_version: 1
    device: cpu                       # the device profile name; equals the file name
    kernels:                          # written by `sbbench tune`
      torch:scatterbrain:             # target: a Triton kernel name, or torch:<method>
        default: {chunk_elements: 1048576}     # the untuned config (the baseline)
        buckets:                      # one per tuned shape bucket
          - shape: {seq_len: 1024, head_dim: 64, n_features: 64, bucket_size: 64,
                    dtype: float32}
            best: {chunk_elements: 262144, num_threads: 2}
            time_ms: 12.1             # median of best; p20_ms / p80_ms / n_samples
            default_time_ms: 13.0     # the default config, same measurement (optional)
            runner_ups: [{config: {...}, time_ms: 12.3}]   # within a few percent
            strategy: exhaustive
            evaluated: 14             # configs measured (cache hits included)
            pruned: 0                 # dropped by static pruning (before running)
            rejected: 0               # failed or changed the output
            pruned_configs: [{config: {...}, reason: ...}]    # optional, with reasons
            rejected_configs: [{config: {...}, reason: ...}]
    budgets:                          # written by `sbbench select`: a list of entries
      - {seq_len: 4096, head_dim: 64, max_error: 0.05, method: scatterbrain,
         n_features: 64, bucket_size: 64, n_hashes: 1, error: 0.031, time_ms: 3.2,
         exact_time_ms: 9.8}
    metadata:                         # per section: who wrote it, when, on what
      kernels: {date: ..., command: ..., versions: {...}, device_state: {...}}
      budgets: {...}

Config values are ints (tile sizes, warps, stages, chunk elements, threads) or null.
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml

from sbbench.core.errors import UserError
from sbbench.core.types import DTYPES, METHODS, Budget, Problem

SCHEMA_VERSION = 1
ENV_DIR = "SBBENCH_TUNING_DIR"
SECTIONS = ("kernels", "budgets")
TOP_KEYS = ("schema_version", "device", *SECTIONS, "metadata")
CPU_TARGET_PREFIX = "torch:"  # kernels.<target> of the torch/CPU path: torch:<method>

SHAPE_KEYS = ("seq_len", "head_dim", "n_features", "bucket_size", "dtype")
_BUCKET_REQUIRED = ("shape", "best", "time_ms")
_BUCKET_OPTIONAL = ("p20_ms", "p80_ms", "n_samples", "default_time_ms", "runner_ups",
                    "date", "strategy", "evaluated", "pruned", "rejected", "pruned_configs",
                    "rejected_configs")
_BUDGET_REQUIRED = ("seq_len", "head_dim", "max_error", "method", "n_features",
                    "bucket_size", "n_hashes", "error", "time_ms", "exact_time_ms")
# optional columns select may add: measured spread and shape details
_BUDGET_OPTIONAL = ("dtype", "causal", "batch", "heads", "error_std", "p20_ms", "p80_ms",
                    "exact_error", "memory_bytes", "energy_j", "inputs", "speedup")


class TuningFileError(UserError):
    """A tuning file breaks the schema; the message names the file and the key path."""


# ---------------------------------------------------------------------------------------
# Shape buckets
# ---------------------------------------------------------------------------------------

@dataclass(frozen=True, order=True)
class ShapeBucket:
    """The shape a tuned config is for. ``n_features`` / ``bucket_size`` are 0 for a
    method without a low-rank / sparse part."""

    seq_len: int
    head_dim: int
    n_features: int = 0
    bucket_size: int = 0
    dtype: str = "float32"

    @classmethod
    def of(cls, problem: Problem, budget: Budget | None = None) -> ShapeBucket:
        """The bucket of one call: the problem's shape and the budget's sizes."""
        return cls(problem.seq_len, problem.head_dim,
                   budget.n_features if budget else 0,
                   budget.bucket_size if budget else 0, problem.dtype)

    def as_dict(self) -> dict:
        return asdict(self)

    @property
    def label(self) -> str:
        return (f"seq_len={self.seq_len} head_dim={self.head_dim} "
                f"n_features={self.n_features} bucket_size={self.bucket_size} {self.dtype}")

    def distance(self, other: ShapeBucket) -> float:
        """How far apart two buckets are: summed |log2 ratio| of the sizes, plus a large
        penalty for another dtype (a config of another dtype is a last resort)."""
        total = 0.0 if self.dtype == other.dtype else 1000.0
        for name in ("seq_len", "head_dim", "n_features", "bucket_size"):
            a, b = getattr(self, name), getattr(other, name)
            total += abs(math.log2(max(a, 1)) - math.log2(max(b, 1)))
        return total


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
        entries = [e for e in self.budgets if method is None or e.budget.method == method]
        if causal is not None:
            entries = [e for e in entries if e.causal is None or e.causal == causal]
        if dtype is not None and any(e.dtype == dtype for e in entries):
            entries = [e for e in entries if e.dtype in (None, dtype)]
        if not entries:
            return None
        want = ShapeBucket(seq_len, head_dim)

        def dist(entry):
            return want.distance(ShapeBucket(entry.seq_len, entry.head_dim))

        closest = min(dist(e) for e in entries)
        here = [e for e in entries if dist(e) == closest]
        meeting = [e for e in here if e.error <= max_error]
        if not meeting:
            return None
        best = min(meeting, key=lambda e: e.time_ms)
        if (method is None and best.exact_time_ms is not None
                and best.exact_time_ms <= best.time_ms):
            return Budget("exact")
        return best.budget


def _where(path: Path | str | None) -> str:
    return str(path) if path else "tuning file"


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
        if item is not None and (isinstance(item, bool) or not isinstance(item, int)):
            _fail(source, f"{key}.{name}", f"must be an int or null, got {item!r}")
    return dict(value)


def _shape(source, key, value) -> ShapeBucket:
    value = _mapping(source, key, value)
    _keys(source, key, value, SHAPE_KEYS)
    dtype = value["dtype"]
    if dtype not in DTYPES:
        _fail(source, f"{key}.dtype", f"must be one of {', '.join(DTYPES)}, got {dtype!r}")
    return ShapeBucket(
        _int(source, f"{key}.seq_len", value["seq_len"]),
        _int(source, f"{key}.head_dim", value["head_dim"]),
        _int(source, f"{key}.n_features", value["n_features"], minimum=0),
        _int(source, f"{key}.bucket_size", value["bucket_size"], minimum=0),
        dtype,
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
    for name in ("strategy", "date"):
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
    sizes = {name: _int(source, f"{key}.{name}", value[name], minimum=0)
             for name in ("n_features", "bucket_size", "n_hashes")}
    try:
        budget = Budget(method, **sizes)
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


# ---------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------

def tuning_dir() -> Path:
    """The folder read and written: ``$SBBENCH_TUNING_DIR`` if set, else the shipped one."""
    override = os.environ.get(ENV_DIR)
    if override:
        return Path(override)
    import sbbench.tuning_configs as shipped

    return Path(next(iter(shipped.__path__)))


def canonical_device(device: str) -> str:
    """Profile name of ``device`` ("h100" -> "h100-sxm"; "auto" -> what is here)."""
    from sbbench.core.devices import detect_local, get_device

    if str(device).strip().lower() == "auto":
        detected = detect_local()
        if detected.name is None:
            raise UserError(f"device auto: the local {detected.describe()} has no profile "
                            f"(see `sbbench devices`), so no tuning file applies")
        return detected.name
    return get_device(device).name


def file_for(device: str, folder: Path | str | None = None) -> Path:
    """The tuning file of profile ``device`` in ``folder`` (default: :func:`tuning_dir`)."""
    return (Path(folder) if folder else tuning_dir()) / f"{device}.yaml"


_CACHE: dict[Path, tuple[float, TunedTable]] = {}


def load(device: str, *, folder: Path | str | None = None) -> TunedTable:
    """The validated tuning table of ``device`` (a profile name or alias, or "auto").

    A device without a file gives an empty table (every lookup falls back to defaults);
    a file that breaks the schema raises TuningFileError naming the key.
    """
    name = canonical_device(device)
    path = file_for(name, folder)
    try:
        mtime = path.stat().st_mtime_ns
    except FileNotFoundError:
        return TunedTable(name, None, {}, [], {})
    cached = _CACHE.get(path)
    if cached and cached[0] == mtime:
        return cached[1]
    table = _read(path, name)
    _CACHE[path] = (mtime, table)
    return table


def _read(path: Path, device: str) -> TunedTable:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise TuningFileError(f"{path}: not valid YAML: {err}") from None
    return parse(data, device=device, source=str(path), path=path)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on the folder of ``path`` (flock on the directory itself:
    no lock file is left behind), so `tune` and `select` writing one device's file at
    the same time do not lose each other's section. Best effort where flock is missing."""
    try:
        import fcntl

        fd = os.open(path.parent, os.O_RDONLY)
    except (ImportError, OSError):
        yield
        return
    try:
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


class _Dumper(yaml.SafeDumper):
    """Block style for the structure, flow style for small leaf mappings (configs, shapes)."""


def _represent_dict(dumper, data):
    leaf = all(not isinstance(v, (dict, list)) for v in data.values())
    return dumper.represent_mapping("tag:yaml.org,2002:map", data.items(),
                                    flow_style=leaf and len(data) <= 12)


def _represent_list(dumper, data):
    leaf = all(not isinstance(v, (dict, list)) for v in data)
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data,
                                     flow_style=leaf and len(data) <= 12)


_Dumper.add_representer(dict, _represent_dict)
_Dumper.add_representer(list, _represent_list)


def plain(value):
    """``value`` as plain YAML data: str subclasses (torch's version) to str, tuples to
    lists, other objects to their text."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if value is None or type(value) in (bool, int, float, str):
        return value
    if isinstance(value, bool):
        return bool(value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    return str(value)


def dumps(data: dict) -> str:
    return yaml.dump(plain(data), Dumper=_Dumper, sort_keys=False, width=100,
                     allow_unicode=True)


def write_section(device: str, section: str, data, *, metadata: dict | None = None,
                  folder: Path | str | None = None) -> Path:
    """Replace one section (``kernels`` or ``budgets``) of ``device``'s file, keeping the
    others; ``metadata`` goes to ``metadata.<section>``. For ``kernels`` the targets in
    ``data`` replace those of the same name and the other targets stay.

    The result is validated before it is written (atomically); a broken existing file is
    an error, never silently overwritten. Returns the path written.
    """
    if section not in SECTIONS:
        raise ValueError(f"section must be one of {', '.join(SECTIONS)}, got {section!r}")
    name = canonical_device(device)
    path = file_for(name, folder)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _locked(path):
        old = {}
        if path.exists():
            old = _read(path, name).raw
        new = {"schema_version": SCHEMA_VERSION, "device": name}
        for key in SECTIONS:
            if key == section:
                if key == "kernels":
                    merged = copy.deepcopy(old.get("kernels") or {})
                    merged.update(copy.deepcopy(data))
                    new[key] = merged
                else:
                    new[key] = copy.deepcopy(data)
            elif old.get(key):
                new[key] = old[key]
        meta = dict(old.get("metadata") or {})
        if metadata is not None:
            meta[section] = metadata
        if meta:
            new["metadata"] = {key: meta[key] for key in SECTIONS if key in meta}
        text = dumps(new)
        parse(yaml.safe_load(text), device=name, source=f"{path} (about to be written)")
        header = (f"# sbbench tuning configs for device {name}: written by `sbbench tune` "
                  f"(kernels) and `sbbench select` (budgets).\n# Validated on load; see "
                  f"sbbench/tuned.py for the schema.\n")
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(header + text)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
    _CACHE.pop(path, None)
    return path


# ---------------------------------------------------------------------------------------
# Run-time lookups
# ---------------------------------------------------------------------------------------

def cpu_target(method: str) -> str:
    """The ``kernels.<target>`` name of the torch path of ``method``."""
    return f"{CPU_TARGET_PREFIX}{method}"


def cpu_default(method: str) -> dict:
    """The torch path's untuned settings (num_threads null: torch's own choice)."""
    from sbbench.attention.core import CHUNK_ELEMENTS

    config = {"num_threads": None}
    if method != "performer" and method != "exact":
        config["chunk_elements"] = CHUNK_ELEMENTS
    return config


def kernel_default(kernel: str) -> dict:
    """The default config a kernel declares (``sbbench.kernels.DEFAULT_CONFIGS``); {} if
    the kernels are not importable (no triton) or do not know the name."""
    try:
        from sbbench.kernels import DEFAULT_CONFIGS
    except ImportError:
        return {}
    return dict(DEFAULT_CONFIGS.get(kernel, {}))


def lookup_kernel_config(device: str, problem: Problem, kernel: str,
                         budget: Budget | None = None, *, default: dict | None = None,
                         folder: Path | str | None = None) -> dict:
    """Tile config of ``kernel`` for this call on ``device``: exact shape bucket, then the
    nearest tuned one, then ``default`` (or the kernel's declared default)."""
    table = load(device, folder=folder)
    fallback = default if default is not None else kernel_default(kernel)
    return table.lookup(kernel, ShapeBucket.of(problem, budget), fallback).config


def lookup_cpu_config(problem: Problem, budget: Budget | None = None, *,
                      device: str = "cpu", folder: Path | str | None = None) -> dict:
    """The torch path's settings (``chunk_elements``, ``num_threads``) for this call:
    exact bucket, then nearest, then the defaults. ``budget`` None means scatterbrain."""
    method = budget.method if budget else "scatterbrain"
    table = load(device, folder=folder)
    shape = ShapeBucket.of(problem, budget)
    return table.lookup(cpu_target(method), shape, cpu_default(method)).config


def lookup_budget(device: str, seq_len: int, head_dim: int, max_error: float, *,
                  method: str | None = None, dtype: str | None = None,
                  causal: bool | None = None, folder: Path | str | None = None
                  ) -> Budget | None:
    """The cheapest budget measured on ``device`` to meet ``max_error`` (relative output
    error) at this shape (exact, else nearest measured shape); ``Budget("exact")`` where
    exact attention is faster there; None when nothing measured meets ``max_error``.
    ``dtype`` / ``causal`` narrow the entries where the file records them."""
    if not (isinstance(max_error, (int, float)) and max_error > 0):
        raise ValueError(f"max_error must be a number > 0, got {max_error!r}")
    return load(device, folder=folder).budget_for(seq_len, head_dim, max_error, method,
                                                  dtype=dtype, causal=causal)


@dataclass(frozen=True)
class TunedChoice:
    """Everything the tables say for one call on one device (``ScatterbrainAttention.
    from_tuned`` and ``config="tuned"`` read this).

    budget: the approximation budget (None: nothing measured meets ``max_error``;
    ``Budget("exact")``: exact attention is faster there). kernel_configs: tile config per
    tuned kernel name, for ``scatterbrain_forward(configs=...)`` (kernels not tuned keep
    their defaults). cpu_config: the torch path's ``chunk_elements`` / ``num_threads``
    (None threads: leave torch's setting). sources: "exact" / "nearest" / "default" per
    kernel and "cpu".
    """

    device: str
    budget: Budget | None
    kernel_configs: dict
    cpu_config: dict
    sources: dict


def tuned_choice(device: str, *, seq_len: int, head_dim: int, max_error: float,
                 dtype: str = "float32", causal: bool = False, method: str | None = None,
                 folder: Path | str | None = None) -> TunedChoice:
    """The budget meeting ``max_error`` and the implementation settings for a call of
    [*, *, seq_len, head_dim] in ``dtype`` on ``device`` ("auto", a profile or alias),
    each by the lookup order exact shape bucket -> nearest -> default."""
    table = load(device, folder=folder)
    budget = lookup_budget(table.device, seq_len, head_dim, max_error, method=method,
                           dtype=dtype, causal=causal, folder=folder)
    problem = Problem(seq_len, head_dim, dtype=dtype)
    shape = ShapeBucket.of(problem, budget if budget and budget.method != "exact" else None)
    kernel_configs, sources = {}, {}
    for name in table.targets:
        if name.startswith(CPU_TARGET_PREFIX):
            continue
        match = table.lookup(name, shape, kernel_default(name))
        kernel_configs[name], sources[name] = match.config, match.source
    cpu_method = budget.method if budget and budget.method != "exact" else "scatterbrain"
    cpu = table.lookup(cpu_target(cpu_method), shape, cpu_default(cpu_method))
    sources["cpu"] = cpu.source
    return TunedChoice(table.device, budget, kernel_configs, cpu.config, sources)
