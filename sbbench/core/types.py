"""Frozen value types shared by every layer (layer 0: imports nothing from sbbench).

A benchmark point is a Problem (the attention call's shape) x a Budget (the method and
its approximation budget) x a backend (and, for kernels, a KernelConfig).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

METHODS = ("exact", "performer", "lsh", "scatterbrain", "scatterbrain_local",
           "scatterbrain_centroids")
METHOD_ORDER = {method: rank for rank, method in enumerate(METHODS)}  # tables, plots
DTYPES = ("float32", "float16", "bfloat16", "float64")
LOWRANK_METHODS = ("performer", "scatterbrain", "scatterbrain_local", "scatterbrain_centroids")
SPARSE_METHODS = ("lsh", "scatterbrain", "scatterbrain_local", "scatterbrain_centroids")
HASHING_METHODS = ("lsh", "scatterbrain", "scatterbrain_centroids")
# low-rank methods whose budget may leave the low-rank part out (n_features=0)
SPARSE_ONLY_METHODS = ("scatterbrain",)
# low-rank methods whose n_features counts key k-means centroids (lowrank="centroids":
# any int >= 1; not 0, which would be scatterbrain's f=0), not Performer features (even)
CENTROID_METHODS = ("scatterbrain_centroids",)
# the bucket kinds each sparse method may use; the first is its default
SPARSE_KINDS_OF = {"lsh": ("lsh",), "scatterbrain": ("lsh", "kmeans"),
                   "scatterbrain_local": ("local",),
                   "scatterbrain_centroids": ("lsh", "kmeans")}


@dataclass(frozen=True)
class Problem:
    """Shape of one attention call: q, k, v are [batch, heads, seq_len, head_dim]."""

    seq_len: int
    head_dim: int
    batch: int = 1
    heads: int = 4
    dtype: str = "float32"
    causal: bool = False

    def __post_init__(self) -> None:
        for name in ("seq_len", "head_dim", "batch", "heads"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"Problem.{name} must be an int >= 1, got {value!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"Problem.dtype must be one of {', '.join(DTYPES)}, "
                             f"got {self.dtype!r}")

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Budget:
    """A method and its approximation budget.

    n_features: feature length of the low-rank part (0 if none; scatterbrain may take 0:
    its sparse support alone, exact softmax over it; scatterbrain_centroids: the number
    of key centroids, any int >= 1); bucket_size, n_hashes:
    the sparse part (0 if none); sparse: the bucket kind ("lsh" hash buckets, "kmeans"
    query clusters, "local" blocks; None for methods without buckets; defaults to the
    method's own); sink, window: keys every query also attends to (the first ``sink``,
    its ``window`` nearest). ``memory_per_query`` is the budget methods are compared at:
    n_features + bucket_size * n_hashes + sink + window (docs/algorithm.md).
    """

    method: str
    n_features: int = 0
    bucket_size: int = 0
    n_hashes: int = 0
    sparse: str | None = None
    sink: int = 0
    window: int = 0

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"Budget.method must be one of {', '.join(METHODS)}, "
                             f"got {self.method!r}")
        kinds = SPARSE_KINDS_OF.get(self.method, ())
        if self.sparse is None and kinds:
            object.__setattr__(self, "sparse", kinds[0])  # frozen: set the default once
        if self.sparse is not None and self.sparse not in kinds:
            raise ValueError(f"Budget.sparse of {self.method} must be "
                             f"{' or '.join(kinds) if kinds else 'None'}, got {self.sparse!r}")
        for name in ("sink", "window"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"Budget.{name} must be an int >= 0, got {value!r}")
            if value and not kinds:
                raise ValueError(f"{self.method} has no sparse part: {name} must be 0")
        uses_sparse = self.has_sparse
        optional = self.method in SPARSE_ONLY_METHODS  # n_features 0: no low-rank part
        if self.method in CENTROID_METHODS and self.n_features < 1:
            raise ValueError(f"{self.method} needs n_features >= 1 key centroids (0 is "
                             f"scatterbrain with n_features=0), got {self.n_features!r}")
        if self.method in LOWRANK_METHODS and self.method not in CENTROID_METHODS and not (
                optional and self.n_features == 0) and (
                self.n_features < 2 or self.n_features % 2):
            zero = " (or 0: no low-rank part)" if optional else ""
            raise ValueError(f"{self.method} needs an even n_features >= 2{zero}, "
                             f"got {self.n_features}")
        if uses_sparse and (self.bucket_size < 1 or self.n_hashes < 1):
            raise ValueError(f"{self.method} needs bucket_size >= 1 and n_hashes >= 1, got "
                             f"bucket_size={self.bucket_size}, n_hashes={self.n_hashes}")
        if self.method == "scatterbrain_local" and self.n_hashes != 1:
            raise ValueError("scatterbrain_local uses fixed blocks: n_hashes must be 1")
        if self.method not in LOWRANK_METHODS and self.n_features:
            raise ValueError(f"{self.method} has no low-rank part: n_features must be 0")
        if not uses_sparse and (self.bucket_size or self.n_hashes):
            raise ValueError(f"{self.method} has no sparse part: bucket_size and n_hashes "
                             f"must be 0")

    @property
    def has_lowrank(self) -> bool:
        """Whether the budget has a low-rank part (random features or key centroids;
        scatterbrain with n_features=0 has none: exact softmax over its sparse support)."""
        return self.method in LOWRANK_METHODS and self.n_features > 0

    @property
    def lowrank(self) -> str:
        """The ``lowrank=`` of ``scatterbrain_attention`` this method calls: "centroids"
        (key k-means centroids) or "performer" (random features; also for methods
        without a low-rank part)."""
        return "centroids" if self.method in CENTROID_METHODS else "performer"

    @property
    def prefix_consistent(self) -> bool:
        """Under causal, whether the output at a position depends only on the positions
        up to it, as exact attention's does. Not where the keys are chosen from the whole
        sequence (hash buckets sort every position, k-means clusters group every query)
        or the low-rank part averages every key (centroids): fine for measuring attention
        over a given prefill, a channel from later tokens in a next-token loss
        (benchmarks/causal_leak.py measures how large, benchmarks/leak_loss.py its effect
        on the loss; reports/supports, reports/e2e)."""
        return not (self.draws_hashes or self.method in CENTROID_METHODS)

    def covers_every_key(self, seq_len: int) -> str:
        """Why a part of this budget would hold every one of ``seq_len`` keys on its own
        ("" if none does): see :func:`covers_every_key`."""
        return covers_every_key(seq_len, bucket_size=self.bucket_size, sink=self.sink,
                                window=self.window,
                                centroids=self.n_features if self.lowrank == "centroids" else 0)

    @property
    def has_sparse(self) -> bool:
        """Whether the method has a sparse part (buckets or local blocks)."""
        return self.method in SPARSE_METHODS

    @property
    def draws_hashes(self) -> bool:
        """Whether the method hashes (LSH rounds; local blocks need no hash functions)."""
        return self.method in HASHING_METHODS

    @property
    def memory_per_query(self) -> int:
        return self.n_features + self.bucket_size * self.n_hashes + self.sink + self.window

    def as_dict(self) -> dict:
        return asdict(self)


def covers_every_key(seq_len: int, *, bucket_size: int = 0, sink: int = 0, window: int = 0,
                     centroids: int = 0) -> str:
    """Why a sparse budget of these sizes would hold every one of ``seq_len`` keys in one
    part ("" if it would not): buckets of the whole sequence, sink + window as long, or as
    many key centroids as keys (each key its own cluster). Exact attention at a higher
    cost, under a label that counts keys it cannot have: sweeps and tunes drop them."""
    if bucket_size and bucket_size >= seq_len:
        return "bucket_size >= seq_len"
    if sink + window >= seq_len:
        return "sink + window >= seq_len"
    if centroids and centroids >= seq_len:
        return "key centroids >= seq_len"
    return ""


def budget_label(budget) -> str:
    """Short label of a budget, e.g. "f=64 bucket=32 hashes=2" ("-" for exact), with
    "kmeans", "sink=4", "window=64" only where they are not the defaults.

    ``budget``: anything with method, n_features, bucket_size and n_hashes (a Budget, a
    Record, a DataFrame row or a dict; sparse, sink and window are read where present)."""
    if isinstance(budget, dict):
        get = budget.get
    else:
        def get(name):
            return getattr(budget, name, None)
    parts = []
    if get("n_features"):
        parts.append(f"f={int(get('n_features'))}")
    elif get("method") in SPARSE_ONLY_METHODS:
        parts.append("f=0")  # no low-rank part: say so, scatterbrain's usually has one
    if get("bucket_size"):
        parts.append(f"bucket={int(get('bucket_size'))}")
    if get("n_hashes") and get("method") != "scatterbrain_local":
        parts.append(f"hashes={int(get('n_hashes'))}")
    if get("sparse") == "kmeans":
        parts.append("kmeans")
    for name in ("sink", "window"):
        value = get(name)
        if value and value == value:  # not 0, None or NaN (a table row without the column)
            parts.append(f"{name}={int(value)}")
    return " ".join(parts) or "-"


@dataclass(frozen=True)
class KernelConfig:
    """Tile sizes and launch settings of one Triton kernel (values are kernel-specific)."""

    kernel: str
    params: tuple[tuple[str, int], ...] = field(default_factory=tuple)

    @classmethod
    def from_dict(cls, kernel: str, params: dict) -> KernelConfig:
        return cls(kernel, tuple(sorted(params.items())))

    def as_dict(self) -> dict:
        return dict(self.params)
