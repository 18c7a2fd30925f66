"""Sweep grids: YAML files of axes (``sbbench/data/grids/*.yaml``) expanded into points.

A grid names the axes of a sweep: shapes (``seq_len``, ``head_dim``, ``batch``, ``heads``,
``dtype``, ``causal``), methods and backends, and the approximation budgets
(``n_features``, ``bucket_size``, ``n_hashes``, and the sparse part's ``sparse`` bucket
kind, ``sink`` and ``window`` keys: the names of ``Budget`` and of the result columns),
plus how each point is measured (``seeds``, ``input_kind``, ``temperature``,
``warmup_ms``, ``rep_ms``). The old keys ``features``, ``hashes`` and ``inputs`` are still
read, with a one-line note on stderr. Command-line flags override axes. Expansion crosses
each method only with the budget axes it uses:

    exact               one point per shape (always on the torch backend: SDPA)
    performer           x n_features
    lsh                 x bucket_size x n_hashes x sink x window
    scatterbrain        x n_features x bucket_size x n_hashes x sparse x sink x window
                        (n_features 0: the sparse support alone, no low-rank part; the
                        other methods skip 0)
    scatterbrain_local  x n_features x bucket_size x sink x window (fixed blocks: one
                        round, sparse "local")
    scatterbrain_centroids  as scatterbrain, n_features = key centroids (0 skipped: it
                        would be scatterbrain's f=0); torch backend only (its triton
                        points are dropped, with a note)

``sparse`` (lsh hash buckets, kmeans query clusters) crosses only the methods that can
choose their kind (scatterbrain); unset, each method keeps its default kind. A kind no
method of the grid takes is refused. Sparse budgets with ``bucket_size >= seq_len`` or
``sink + window >= seq_len``, and key-centroid budgets with ``n_features >= seq_len``, are
dropped (the support, or the centroids, would be every key: exact attention at a higher
cost); ``expand`` says how many.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import yaml

from sbbench.core.errors import UserError
from sbbench.core.types import DTYPES, METHODS, SPARSE_KINDS_OF, Budget, Problem, budget_label
from sbbench.measure.inputs import capture_shape, is_capture_kind
from sbbench.sweep.grid_budgets import backends_for, budgets_for, check_features, check_sparse

__all__ = ["budgets_for"]  # re-exported: its home is grid_budgets
GRID_DIR = Path(__file__).resolve().parent.parent / "data" / "grids"
BACKENDS = ("torch", "triton")
INPUT_KINDS = ("gaussian", "clustered")


@dataclass(frozen=True)
class Grid:
    """The axes of one sweep; every tuple is crossed with the others (see module doc)."""

    name: str
    description: str = ""
    seq_len: tuple[int, ...] = (1024,)
    head_dim: tuple[int, ...] = (64,)
    batch: tuple[int, ...] = (1,)
    heads: tuple[int, ...] = (4,)
    dtype: tuple[str, ...] = ("float32",)
    causal: tuple[bool, ...] = (False,)
    methods: tuple[str, ...] = METHODS
    backends: tuple[str, ...] = ("torch",)
    n_features: tuple[int, ...] = (64,)
    bucket_size: tuple[int, ...] = (64,)
    n_hashes: tuple[int, ...] = (1,)
    sparse: tuple[str, ...] = ()  # bucket kinds; () = each method's default kind
    sink: tuple[int, ...] = (0,)
    window: tuple[int, ...] = (0,)
    seeds: tuple[int, ...] = (0, 1)  # accuracy is averaged over these seeds
    input_kind: str = "clustered"  # synthetic Q/K/V regime (measure.inputs.make_qkv kind)
    temperature: float = 1.0  # softmax temperature of the inputs (entropy regime)
    warmup_ms: float = 25.0
    rep_ms: float = 100.0

    @property
    def inputs_label(self) -> str:
        """The ``inputs`` column of the rows: kind and temperature."""
        return f"{self.input_kind}:t={self.temperature:g}"

    # The old axis names, for callers not yet moved to the new ones.
    @property
    def features(self) -> tuple[int, ...]:
        return self.n_features

    @property
    def hashes(self) -> tuple[int, ...]:
        return self.n_hashes

    @property
    def inputs(self) -> str:
        return self.input_kind


@dataclass(frozen=True)
class Point:
    """One measurement: a shape, a method with its budget, a backend, a kernel config."""

    problem: Problem
    budget: Budget
    backend: str = "torch"
    kernel_config: str = ""  # JSON of tile sizes; "" = the backend's default

    def label(self) -> str:
        p, b = self.problem, self.budget
        parts = [f"{b.method}/{self.backend}", f"seq={p.seq_len}", f"d={p.head_dim}"]
        if b.method != "exact":
            parts.append(budget_label(b))
        if p.batch != 1 or p.heads != 4:
            parts.append(f"bxh={p.batch}x{p.heads}")
        if p.dtype != "float32":
            parts.append(p.dtype)
        if p.causal:
            parts.append("causal")
        return " ".join(parts)

    def to_json(self) -> str:
        return json.dumps({"problem": self.problem.as_dict(), "budget": self.budget.as_dict(),
                           "backend": self.backend, "kernel_config": self.kernel_config})

    @classmethod
    def from_json(cls, text: str) -> Point:
        data = json.loads(text)
        return cls(Problem(**data["problem"]), Budget(**data["budget"]), data["backend"],
                   data.get("kernel_config", ""))


@dataclass
class Expansion:
    points: list[Point] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)  # why axes combinations were left out


# ---------------------------------------------------------------------------------------
# Loading and validation
# ---------------------------------------------------------------------------------------

_INT_AXES = ("seq_len", "head_dim", "batch", "heads", "n_features", "bucket_size",
             "n_hashes")
_KEYS = tuple(f.name for f in fields(Grid) if f.name != "name")
# Keys of earlier grid files: still read, with a note.
OLD_KEYS = {"features": "n_features", "hashes": "n_hashes", "inputs": "input_kind"}
_ZERO_AXES = ("sink", "window")  # ints >= 0
SPARSE_KINDS = tuple(dict.fromkeys(k for kinds in SPARSE_KINDS_OF.values() for k in kinds))


def shipped_grids() -> list[str]:
    return sorted(p.stem for p in GRID_DIR.glob("*.yaml"))


def load_grid(name_or_path: str) -> Grid:
    """A shipped grid by name (``quick``, ``full``) or a YAML file by path."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if path.is_dir():
            raise UserError(f"grid {name_or_path} is a directory; give a grid YAML file or "
                            f"a shipped grid name ({', '.join(shipped_grids())})")
        if not path.is_file():
            raise UserError(f"grid file {name_or_path} does not exist")
        name = path.stem
    else:
        path = GRID_DIR / f"{name_or_path}.yaml"
        if not path.is_file():
            raise UserError(f"unknown grid {name_or_path!r}; shipped grids: "
                            f"{', '.join(shipped_grids())} (or give a path to a YAML file)")
        name = name_or_path
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise UserError(f"grid {path}: not valid YAML ({first})") from None
    return grid_from_dict(name, data if data is not None else {}, where=f"grid {path}")


def grid_from_dict(name: str, data: dict, *, where: str = "grid", stream=None) -> Grid:
    """A Grid from a mapping of axes; an old key (``OLD_KEYS``) is renamed, with a
    one-line note on ``stream`` (stderr)."""
    if not isinstance(data, dict):
        raise UserError(f"{where}: expected a mapping of axes, got {type(data).__name__}")
    data = dict(data)
    for old, new in OLD_KEYS.items():
        if old not in data:
            continue
        if new in data:
            raise UserError(f"{where}: both {old!r} and {new!r}; keep only {new!r}")
        data[new] = data.pop(old)
        print(f"sbbench: note: {where}: key {old!r} is now {new!r} (the old name still "
              f"works)", file=stream if stream is not None else sys.stderr)
    unknown = [key for key in data if key not in _KEYS]
    if unknown:
        raise UserError(f"{where}: unknown key {unknown[0]!r}; valid keys: {', '.join(_KEYS)}")
    values = {key: _check_value(key, value, where) for key, value in data.items()}
    return Grid(name=name, **values)


def _check_value(key: str, value, where: str):
    """Normalise one axis (scalar or list) and check its type and range."""
    if key in ("description", "input_kind"):
        if not isinstance(value, str):
            raise UserError(f"{where}: {key} must be a string, got {value!r}")
        if key == "input_kind" and value not in INPUT_KINDS and not is_capture_kind(value):
            raise UserError(f"{where}: input_kind must be one of {', '.join(INPUT_KINDS)}, "
                            f"or qkv:FILE[#layer=N] / qkv:minilm (captured Q/K/V), "
                            f"got {value!r}")
        return value
    if key in ("temperature", "warmup_ms", "rep_ms"):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            raise UserError(f"{where}: {key} must be a positive number, got {value!r}")
        return float(value)
    if key == "seeds":
        if isinstance(value, int) and not isinstance(value, bool):
            if value < 1:
                raise UserError(f"{where}: seeds must be a count >= 1 or a list of seeds, "
                                f"got {value!r}")
            return tuple(range(value))
        items = _as_list(key, value, where)
        if not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in items):
            raise UserError(f"{where}: seeds must be a count or a list of ints >= 0, "
                            f"got {value!r}")
        return tuple(dict.fromkeys(items))
    items = _as_list(key, value, where)
    if key in _INT_AXES:
        low = 0 if key == "n_features" else 1  # n_features 0: scatterbrain without low rank
        for item in items:
            if isinstance(item, bool) or not isinstance(item, int) or item < low:
                raise UserError(f"{where}: {key} must hold ints >= {low}, got {item!r}")
    elif key in _ZERO_AXES:
        for item in items:
            if isinstance(item, bool) or not isinstance(item, int) or item < 0:
                raise UserError(f"{where}: {key} must hold ints >= 0, got {item!r}")
    elif key == "causal":
        if not all(isinstance(item, bool) for item in items):
            raise UserError(f"{where}: causal must hold true/false, got {value!r}")
    else:
        choices = {"dtype": DTYPES, "methods": METHODS, "backends": BACKENDS,
                   "sparse": SPARSE_KINDS}[key]
        for item in items:
            if item not in choices:
                raise UserError(f"{where}: {key} has {item!r}; valid: {', '.join(choices)}")
    return tuple(dict.fromkeys(items))  # drop repeats, keep order


def _as_list(key: str, value, where: str) -> list:
    items = value if isinstance(value, list) else [value]
    if not items:
        raise UserError(f"{where}: {key} is empty")
    return items


# ---------------------------------------------------------------------------------------
# Command-line overrides
# ---------------------------------------------------------------------------------------

# flag (without dashes) -> grid axis (the flags keep their short names)
OVERRIDE_FLAGS = {
    "seq-len": "seq_len", "head-dim": "head_dim", "batch": "batch", "heads": "heads",
    "dtype": "dtype", "causal": "causal", "methods": "methods", "backends": "backends",
    "features": "n_features", "bucket-size": "bucket_size", "hashes": "n_hashes",
    "sparse": "sparse", "sink": "sink", "window": "window",
    "seeds": "seeds", "inputs": "input_kind", "temperature": "temperature",
    "warmup-ms": "warmup_ms", "rep-ms": "rep_ms",
}


def parse_flag(flag: str, text: str):
    """Parse a flag's text (``1024,4096``; ``true,false``; ``3``) into a grid value."""
    key = OVERRIDE_FLAGS[flag]
    where = f"--{flag}"
    parts = [part.strip() for part in text.split(",") if part.strip()]
    if not parts:
        raise UserError(f"{where} is empty")
    if key in _INT_AXES or key in _ZERO_AXES or key == "seeds":
        try:
            values = [int(part) for part in parts]
        except ValueError:
            raise UserError(f"{where} takes comma-separated integers, got {text!r}") from None
        if key == "seeds":
            if len(values) != 1:
                raise UserError(f"{where} takes the number of seeds, got {text!r}")
            return values[0]
        return values
    if key in ("temperature", "warmup_ms", "rep_ms"):
        try:
            return float(text)
        except ValueError:
            raise UserError(f"{where} takes a number, got {text!r}") from None
    if key == "causal":
        table = {"true": True, "false": False, "1": True, "0": False}
        try:
            return [table[part.lower()] for part in parts]
        except KeyError:
            raise UserError(f"{where} takes true/false values, got {text!r}") from None
    if key == "input_kind":
        return text.strip()
    return parts


def apply_overrides(grid: Grid, overrides: dict[str, str | None]) -> Grid:
    """Replace the axes given on the command line ({flag: text}; None = not given)."""
    changes = {}
    for flag, text in overrides.items():
        if text is None:
            continue
        key = OVERRIDE_FLAGS[flag]
        changes[key] = _check_value(key, parse_flag(flag, text), f"--{flag}")
    if not changes:
        return grid
    grid = replace(grid, **changes)
    check_features(grid)  # n_features against the methods, as the overrides leave them
    return grid


# ---------------------------------------------------------------------------------------
# Expansion (the budgets of each method: ``grid_budgets``)
# ---------------------------------------------------------------------------------------

def _fit_to_capture(grid: Grid, result: Expansion) -> Grid:
    """On captured inputs the capture sets heads, head_dim and causal (a decoder's
    attention is causal, an encoder's is not), and sequence lengths longer than the
    captured tokens are dropped (with a note)."""
    if not is_capture_kind(grid.input_kind):
        return grid
    heads, head_dim, tokens, causal = capture_shape(grid.input_kind)
    if set(grid.causal) != {causal}:
        result.dropped.append(f"causal {'/'.join(str(c).lower() for c in grid.causal)}: "
                              f"the capture is {'causal' if causal else 'not causal'}, "
                              f"so its points are too")
    seq_lens = tuple(n for n in grid.seq_len if n <= tokens)
    if len(seq_lens) < len(grid.seq_len):
        result.dropped.append(f"seq_len > {tokens} (the captured tokens): "
                              f"{', '.join(str(n) for n in grid.seq_len if n > tokens)}")
    if not seq_lens:
        raise UserError(f"{grid.input_kind} holds {tokens} tokens: every seq_len of the grid "
                        f"is longer; use --seq-len {tokens} or less")
    return replace(grid, seq_len=seq_lens, heads=(heads,), head_dim=(head_dim,),
                   causal=(causal,))


def expand(grid: Grid) -> Expansion:
    """All points of the grid, ordered by shape then method (exact first, so the other
    methods of a shape can be compared against its time)."""
    result = Expansion()
    too_large, torch_only = 0, {}
    check_sparse(grid)
    check_features(grid)
    grid = _fit_to_capture(grid, result)
    for dtype in grid.dtype:
        for causal in grid.causal:
            for batch in grid.batch:
                for heads in grid.heads:
                    for head_dim in grid.head_dim:
                        for seq_len in grid.seq_len:
                            problem = Problem(seq_len=seq_len, head_dim=head_dim, batch=batch,
                                              heads=heads, dtype=dtype, causal=causal)
                            for method in METHODS:
                                if method not in grid.methods:
                                    continue
                                backends = backends_for(method, grid)
                                unrun = len(grid.backends) - len(backends)
                                for budget in budgets_for(method, grid):
                                    if budget.covers_every_key(seq_len):
                                        too_large += 1
                                        continue
                                    if unrun and method != "exact":
                                        torch_only[method] = torch_only.get(method, 0) + unrun
                                    for backend in backends:
                                        result.points.append(Point(problem, budget, backend))
    if too_large:
        result.dropped.append(f"{too_large} sparse budget(s) with bucket_size >= seq_len, "
                              f"sink + window >= seq_len or key centroids >= seq_len")
    for method, count in torch_only.items():
        result.dropped.append(f"{count} {method} point(s) on triton: it runs on the torch "
                              f"backend only (the Triton kernels compute Performer features)")
    if "exact" not in grid.methods:
        result.dropped.append("no exact points: speedup vs exact is known only for shapes "
                              "whose exact row is already in the store")
    return result
