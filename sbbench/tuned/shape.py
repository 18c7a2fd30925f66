"""The shape bucket a tuned implementation config is for (layer 2).

A bucket is the call's shape (seq_len, head_dim, dtype) and the budget's sizes that set
the work of each kernel or loop: ``n_features``, ``bucket_size``, the sparse part's kind
(``sparse``: "lsh" hash buckets, "kmeans" query clusters, "local" blocks; "" where there
are no buckets, bucket_size 0), and the fixed keys every query also attends to (``sink``,
``window``). The last three are written to a tuning file only where they are not the
defaults ("lsh" with buckets, 0, 0), so files written before they existed read the same.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from sbbench.core.types import SPARSE_KINDS_OF, Budget, Problem

SHAPE_KEYS = ("seq_len", "head_dim", "n_features", "bucket_size", "dtype")
SHAPE_OPTIONAL = ("sparse", "sink", "window")  # absent: "lsh" ("" without buckets), 0, 0
SPARSE_KINDS = tuple(dict.fromkeys(k for kinds in SPARSE_KINDS_OF.values() for k in kinds))
DEFAULT_SPARSE = SPARSE_KINDS[0]  # "lsh"
DTYPE_PENALTY = 1000.0  # a config of another dtype is a last resort
SPARSE_PENALTY = 100.0  # one of another bucket kind comes before it


@dataclass(frozen=True, order=True)
class ShapeBucket:
    """The shape a tuned config is for. ``n_features`` / ``bucket_size`` are 0 for a
    method without a low-rank / sparse part; ``sparse`` is the bucket kind ("" without
    buckets: set so whatever is passed; None or "" with buckets: "lsh")."""

    seq_len: int
    head_dim: int
    n_features: int = 0
    bucket_size: int = 0
    dtype: str = "float32"
    sparse: str = DEFAULT_SPARSE
    sink: int = 0
    window: int = 0

    def __post_init__(self) -> None:
        kind = (self.sparse or DEFAULT_SPARSE) if self.bucket_size else ""
        if kind and kind not in SPARSE_KINDS:
            raise ValueError(f"ShapeBucket.sparse must be one of {', '.join(SPARSE_KINDS)}, "
                             f"got {self.sparse!r}")
        object.__setattr__(self, "sparse", kind)  # frozen: normalise once

    @classmethod
    def of(cls, problem: Problem, budget: Budget | None = None) -> ShapeBucket:
        """The bucket of one call: the problem's shape and the budget's sizes, bucket
        kind, sink and window."""
        if budget is None:
            return cls(problem.seq_len, problem.head_dim, dtype=problem.dtype)
        return cls(problem.seq_len, problem.head_dim, budget.n_features, budget.bucket_size,
                   problem.dtype, budget.sparse or "", budget.sink, budget.window)

    def as_dict(self) -> dict:
        """The bucket as a tuning file writes it (sparse, sink, window only where they are
        not the defaults: a file without them means the defaults)."""
        data = asdict(self)
        for name, value in self.extras().items():
            if not value:
                data.pop(name)
        return data

    def extras(self) -> dict:
        """sparse / sink / window, each falsy where it is the default."""
        return {"sparse": "" if self.sparse in ("", DEFAULT_SPARSE) else self.sparse,
                "sink": self.sink, "window": self.window}

    @property
    def label(self) -> str:
        extra = "".join(f" {name}={value}" for name, value in self.extras().items() if value)
        return (f"seq_len={self.seq_len} head_dim={self.head_dim} "
                f"n_features={self.n_features} bucket_size={self.bucket_size}{extra} "
                f"{self.dtype}")

    def distance(self, other: ShapeBucket) -> float:
        """How far apart two buckets are: summed |log2 ratio| of the sizes and
        |log2(1 + a) - log2(1 + b)| of sink and window, plus a large penalty for another
        bucket kind (both with buckets) and a larger one for another dtype."""
        total = 0.0 if self.dtype == other.dtype else DTYPE_PENALTY
        if self.sparse and other.sparse and self.sparse != other.sparse:
            total += SPARSE_PENALTY
        for name in ("seq_len", "head_dim", "n_features", "bucket_size"):
            a, b = getattr(self, name), getattr(other, name)
            total += abs(math.log2(max(a, 1)) - math.log2(max(b, 1)))
        for name in ("sink", "window"):
            a, b = getattr(self, name), getattr(other, name)
            total += abs(math.log2(1 + a) - math.log2(1 + b))
        return total
