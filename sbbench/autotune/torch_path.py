"""The torch/CPU path's tunables, tuned for real on this machine.

Two settings change the speed of the torch path and never its result:

- ``chunk_elements``: the size of the sparse loop's temporaries
  (``attention.core.buckets_per_chunk``): small chunks stay in cache and below the
  allocator's mmap threshold, large ones amortise the per-chunk gathers. 2^16 .. 2^22
  spans "fits in L2" to "a few MiB". Performer has no sparse loop: threads only.
- ``num_threads``: torch's intra-op threads (powers of two up to the core count, and
  the core count): on small shapes fewer threads can be faster.

Each candidate's output is checked against the untuned call (default chunk, torch's
default threads) and a float64 reference on the same inputs and randomness.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch

from sbbench.attention.centroids import draw_starts
from sbbench.attention.core import CHUNK_ELEMENTS
from sbbench.attention.scatterbrain import run_method
from sbbench.autotune.evaluators import MeasuredEvaluator, output_mismatch
from sbbench.autotune.shapes import inputs_identity
from sbbench.core.provenance import cpu_model_name
from sbbench.core.types import SPARSE_KINDS_OF, Budget, Problem
from sbbench.measure.calls import draw_randomness
from sbbench.measure.inputs import make_qkv
from sbbench.tuned import ShapeBucket, cpu_target
from sbbench.tuned.shape import DEFAULT_SPARSE

CPU_METHODS = ("scatterbrain", "lsh", "performer", "scatterbrain_local",
               "scatterbrain_centroids")
CHUNK_ELEMENTS_SPACE = tuple(1 << power for power in range(16, 23))


def thread_counts(cores: int | None = None) -> tuple[int, ...]:
    """Powers of two below the core count, and the core count."""
    cores = cores or os.cpu_count() or 1
    counts = {1 << p for p in range(cores.bit_length()) if (1 << p) <= cores}
    return tuple(sorted(counts | {cores}))


def cpu_space(method: str, *, chunk_elements=CHUNK_ELEMENTS_SPACE,
              threads: tuple[int, ...] | None = None) -> list[dict]:
    """Configs of the torch path of ``method``: chunk_elements x num_threads (threads
    only for performer)."""
    threads = threads or thread_counts()
    if method == "performer":
        return [{"num_threads": t} for t in threads]
    return [{"chunk_elements": c, "num_threads": t} for c in chunk_elements for t in threads]


def default_config(method: str) -> dict:
    """The untuned call, made explicit: default chunk, torch's current thread count."""
    config = {"num_threads": torch.get_num_threads()}
    if method != "performer":
        config = {"chunk_elements": CHUNK_ELEMENTS, **config}
    return config


def budget_for(method: str, shape: ShapeBucket, n_hashes: int = 1) -> Budget:
    """The budget a case of ``method`` runs at ``shape`` (its own view, see shape_for)."""
    if method == "performer":
        return Budget("performer", n_features=shape.n_features)
    support = dict(sink=shape.sink, window=shape.window)
    if method == "lsh":
        return Budget("lsh", bucket_size=shape.bucket_size, n_hashes=n_hashes, **support)
    if method == "scatterbrain_local":  # fixed blocks: one round
        n_hashes = 1
    return Budget(method, n_features=shape.n_features, bucket_size=shape.bucket_size,
                  n_hashes=n_hashes, sparse=shape.sparse, **support)


def shape_for(method: str, shape: ShapeBucket) -> ShapeBucket | None:
    """The bucket as the method sees it (0 for sizes the method does not use; the
    method's own bucket kind where it has one only: scatterbrain_local's "local" for the
    default "lsh"), or None where the method cannot use the bucket's kind."""
    if method == "performer":
        return ShapeBucket(shape.seq_len, shape.head_dim, shape.n_features, 0, shape.dtype)
    kinds = SPARSE_KINDS_OF[method]
    kind = shape.sparse
    if len(kinds) == 1 and kind == DEFAULT_SPARSE:
        kind = kinds[0]
    if kind not in kinds:
        return None
    return ShapeBucket(shape.seq_len, shape.head_dim, 0 if method == "lsh" else shape.n_features,
                       shape.bucket_size, shape.dtype, kind, shape.sink, shape.window)


def method_call(budget: Budget, randomness, q, *, scale: float, causal: bool) -> dict:
    """The keyword arguments of ``run_method`` for ``budget`` with drawn ``randomness``
    (key centroids: their start keys drawn from a generator seeded with its
    ``centroid_seed``, as ``measure.calls.call_method`` does)."""
    kwargs = dict(scale=scale, projections=randomness.projections, hashes=randomness.hashes,
                  bucket_size=budget.bucket_size or None,
                  sparse=budget.sparse if budget.bucket_size else None, causal=causal,
                  key_padding_mask=None, sink=budget.sink, window=budget.window)
    if randomness.centroid_seed is not None:
        generator = torch.Generator().manual_seed(randomness.centroid_seed)
        kwargs["centroids"] = draw_starts(budget.n_features, q, None, generator)
    return kwargs


@contextlib.contextmanager
def torch_threads(count: int | None) -> Iterator[None]:
    """Run with ``count`` intra-op threads (None: unchanged), restoring the old count."""
    before = torch.get_num_threads()
    if count:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class CpuCase:
    """One method at one shape bucket on the CPU: inputs, randomness, reference, evaluator.

    q, k, v: [batch, heads, seq_len, head_dim] inputs of ``make_qkv`` kind ``inputs``
    (seeded clustered ones by default; a capture must match heads and head_dim);
    projections, hash functions and key centroids' start keys drawn once from ``seed``
    and shared by every candidate. The bucket's kind, sink and window are the call's.
    """

    def __init__(self, method: str, shape: ShapeBucket, *, batch: int = 1, heads: int = 4,
                 inputs: str = "clustered", causal: bool = False,
                 n_hashes: int = 1, seed: int = 0, warmup_ms: float = 25.0,
                 rep_ms: float = 100.0, min_samples: int = 5,
                 threads: tuple[int, ...] | None = None,
                 chunk_elements: tuple[int, ...] | None = None):
        if method not in CPU_METHODS:
            raise ValueError(f"method must be one of {', '.join(CPU_METHODS)}, got {method!r}")
        self.method, self.shape = method, shape_for(method, shape)
        if self.shape is None:
            raise ValueError(f"{method} takes {' or '.join(SPARSE_KINDS_OF[method])} "
                             f"buckets, not {shape.sparse}")
        self.axes = {"threads": threads or thread_counts(),
                     "chunk_elements": chunk_elements or CHUNK_ELEMENTS_SPACE}
        self.target = cpu_target(method)
        self.budget = budget_for(method, self.shape, n_hashes)
        self.causal = causal
        self.problem = Problem(shape.seq_len, shape.head_dim, batch=batch, heads=heads,
                               dtype=shape.dtype, causal=causal)
        # the machine is part of the key: a cache file carried elsewhere measures again
        self.context = {"cpu": cpu_model_name(), "cores": os.cpu_count(),
                        "batch": batch, "heads": heads, "n_hashes": n_hashes, "seed": seed,
                        "inputs": inputs_identity(inputs), "causal": causal,
                        "warmup_ms": warmup_ms, "rep_ms": rep_ms, "min_samples": min_samples}
        self.q, self.k, self.v = make_qkv(self.problem, seed=seed, kind=inputs)
        self.randomness = randomness = draw_randomness(self.budget, shape.head_dim,
                                                       torch.Generator().manual_seed(seed))
        self.scale = shape.head_dim ** -0.5
        self.kwargs = method_call(self.budget, randomness, self.q, scale=self.scale,
                                  causal=causal)
        with torch.inference_mode():
            self.ref64 = self.call(None, dtype=torch.float64)()
            with torch_threads(None):
                self.ref_default = self.call(CHUNK_ELEMENTS)()
        # late-bound, so a test can replace build / check on the case
        self.evaluator = MeasuredEvaluator(
            lambda config: self.build(config), lambda out: self.check(out),
            setup=lambda config: self.setup(config), device="cpu",
            warmup_ms=warmup_ms, rep_ms=rep_ms, min_samples=min_samples)

    def call(self, chunk_elements: int | None, dtype: torch.dtype | None = None):
        """Zero-argument closure: the method on the case's inputs (inference mode)."""
        q, k, v = ((t.to(dtype) for t in (self.q, self.k, self.v)) if dtype
                   else (self.q, self.k, self.v))
        kwargs = dict(self.kwargs, impl={"chunk_elements": chunk_elements})

        def run():
            with torch.inference_mode():
                return run_method(q, k, v, backend="torch", return_weights=False, **kwargs)

        return run

    def build(self, config: dict):
        return self.call(config.get("chunk_elements"))

    def check(self, out) -> str | None:
        return output_mismatch(out, self.ref64, self.ref_default, dtype=self.shape.dtype)

    def setup(self, config: dict):
        return torch_threads(config.get("num_threads"))

    def space(self) -> list[dict]:
        return cpu_space(self.method, **self.axes)

    def default(self) -> dict:
        return default_config(self.method)
