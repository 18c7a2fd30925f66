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

from sbbench.attention.core import CHUNK_ELEMENTS
from sbbench.attention.scatterbrain import run_method
from sbbench.autotune.evaluators import MeasuredEvaluator, output_mismatch
from sbbench.autotune.shapes import inputs_identity
from sbbench.core.provenance import cpu_model_name
from sbbench.core.types import Budget, Problem
from sbbench.measure.calls import draw_randomness
from sbbench.measure.inputs import make_qkv
from sbbench.tuned import ShapeBucket, cpu_target

CPU_METHODS = ("scatterbrain", "lsh", "performer")
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
    if method == "performer":
        return Budget("performer", n_features=shape.n_features)
    if method == "lsh":
        return Budget("lsh", bucket_size=shape.bucket_size, n_hashes=n_hashes)
    return Budget(method, n_features=shape.n_features, bucket_size=shape.bucket_size,
                  n_hashes=n_hashes)


def shape_for(method: str, shape: ShapeBucket) -> ShapeBucket:
    """The bucket as the method sees it (0 for sizes the method does not use)."""
    return ShapeBucket(shape.seq_len, shape.head_dim,
                       0 if method == "lsh" else shape.n_features,
                       0 if method == "performer" else shape.bucket_size, shape.dtype)


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
    projections and hash functions drawn once from ``seed`` and shared by every candidate.
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
        randomness = draw_randomness(self.budget, shape.head_dim,
                                     torch.Generator().manual_seed(seed))
        self.projections, self.hashes = randomness.projections, randomness.hashes
        self.scale = shape.head_dim ** -0.5
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
        b = self.budget
        kwargs = dict(scale=self.scale, projections=self.projections, hashes=self.hashes,
                      bucket_size=b.bucket_size or None,
                      sparse="lsh" if b.bucket_size else None, causal=self.causal,
                      key_padding_mask=None, impl={"chunk_elements": chunk_elements})

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
