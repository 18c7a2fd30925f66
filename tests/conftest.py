"""Shared test helpers: seeded attention inputs, seeded randomness, one caller; a
stored-record factory and a tiny sweep grid for the report and CLI tests.

Every random draw is seeded, so a test gives the same numbers on every run. The random
projections and hash functions are drawn once per seed and passed in precomputed
(randomness is an input): two calls with the same ``seed`` compute the same estimate even when their
inputs differ in length, which the padding, independence and gradient tests rely on.
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest
import torch

from sbbench.attention import (
    HashFunctions,
    draw_hashes,
    draw_projections,
    exact_attention,
    lsh_attention,
    performer_attention,
    scatterbrain_attention,
)
from sbbench.core.record import Record

# Every method under test, by the name used in parametrize ids. The last two are the
# newer supports: k-means clusters plus one sink key and a window of ``bucket_size // 2``
# with the low-rank part, and sink + window keys alone (no buckets, no low-rank part).
APPROX_METHODS = ("performer", "lsh", "scatterbrain", "scatterbrain_local",
                  "scatterbrain_kmeans", "sink_window")
ALL_METHODS = ("exact",) + APPROX_METHODS
# methods that take n_hashes (several hash rounds or clusterings)
HASHED_METHODS = ("lsh", "scatterbrain", "scatterbrain_kmeans")


# a grid small enough for a CLI test to sweep it in seconds
TINY_GRID = """\
seq_len: [64]
head_dim: [16]
heads: [2]
methods: [exact, performer, scatterbrain]
features: [8]
bucket_size: [16]
seeds: 1
warmup_ms: 1
rep_ms: 3
"""


def qkv(
    batch: int = 1,
    heads: int = 2,
    seq: int = 32,
    head_dim: int = 8,
    *,
    head_dim_v: int | None = None,
    dtype: torch.dtype = torch.float64,
    seed: int = 0,
    scale: float = 1.0,
    requires_grad: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gaussian q, k (times ``scale``) and v: [batch, heads, seq, head_dim(_v)]."""
    gen = torch.Generator().manual_seed(seed)
    dv = head_dim if head_dim_v is None else head_dim_v
    shape = (batch, heads, seq, head_dim)
    q = torch.randn(shape, generator=gen, dtype=torch.float64) * scale
    k = torch.randn(shape, generator=gen, dtype=torch.float64) * scale
    v = torch.randn(batch, heads, seq, dv, generator=gen, dtype=torch.float64)
    return tuple(t.to(dtype).requires_grad_(requires_grad) for t in (q, k, v))


def randomness(
    n_features: int, n_hashes: int, head_dim: int, seed: int = 0
) -> tuple[torch.Tensor, HashFunctions]:
    """Projections [n_features // 2, head_dim] (float64) and ``n_hashes`` hash functions."""
    gen = torch.Generator().manual_seed(seed)
    projections = draw_projections(n_features, head_dim, generator=gen, dtype=torch.float64)
    hashes = draw_hashes(n_hashes, head_dim, generator=gen)
    return projections, hashes


def attention(
    method: str,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    n_features: int = 16,
    bucket_size: int = 8,
    n_hashes: int = 1,
    seed: int = 0,
    **kwargs,
):
    """Call ``method`` (one of ALL_METHODS) with the randomness drawn from ``seed``.

    kwargs (causal, key_padding_mask, softmax_scale, return_weights, ...) are passed on.
    """
    head_dim = q.shape[-1]
    if method == "exact":
        return exact_attention(q, k, v, **kwargs)
    projections, hashes = randomness(n_features, n_hashes, head_dim, seed)
    if method == "performer":
        return performer_attention(q, k, v, n_features=n_features, projections=projections,
                                   **kwargs)
    if method == "lsh":
        return lsh_attention(q, k, v, bucket_size=bucket_size, n_hashes=n_hashes,
                             hashes=hashes, **kwargs)
    if method == "scatterbrain":
        return scatterbrain_attention(q, k, v, n_features=n_features, bucket_size=bucket_size,
                                      n_hashes=n_hashes, projections=projections,
                                      hashes=hashes, **kwargs)
    if method == "scatterbrain_local":
        return scatterbrain_attention(q, k, v, n_features=n_features, bucket_size=bucket_size,
                                      sparse="local", projections=projections, **kwargs)
    if method == "scatterbrain_kmeans":
        kwargs = {"sink": 1, "window": max(1, bucket_size // 2), **kwargs}
        return scatterbrain_attention(q, k, v, n_features=n_features, bucket_size=bucket_size,
                                      n_hashes=n_hashes, sparse="kmeans",
                                      projections=projections, hashes=hashes, **kwargs)
    if method == "sink_window":
        kwargs = {"sink": 2, "window": bucket_size, **kwargs}
        return scatterbrain_attention(q, k, v, n_features=0, bucket_size=0, sparse=None,
                                      **kwargs)
    raise AssertionError(f"unknown method {method!r}")


def exp_scores(q: torch.Tensor, k: torch.Tensor, *, causal: bool = False,
               softmax_scale: float | None = None) -> torch.Tensor:
    """E = exp(tau q k^T): [b, h, n, n] in float64 (zero above the diagonal if causal)."""
    tau = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(q.shape[-1])
    scores = torch.exp(tau * q.double() @ k.double().transpose(-1, -2))
    return scores.tril() if causal else scores


def relative_error(approx: torch.Tensor, exact: torch.Tensor) -> float:
    """Relative Frobenius error over the whole tensor."""
    approx, exact = approx.double(), exact.double()
    return ((approx - exact).norm() / exact.norm()).item()


@pytest.fixture
def single_thread():
    """Run a test on one intra-op thread: many tiny calls are several times faster so."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def record_row(method: str, seq_len: int, *, source="measured", status="ok", device="cpu",
               time_ms=1.0, error=0.1, energy=None, **budget) -> Record:
    """A Record as a sweep stores it: ``budget`` overrides the method's defaults; a
    failed ``status`` has no timings."""
    defaults = {"exact": {}, "performer": {"n_features": 32},
                "lsh": {"bucket_size": 32, "n_hashes": 1},
                "scatterbrain": {"n_features": 32, "bucket_size": 32, "n_hashes": 1}}[method]
    defaults.update(budget)
    return Record(device=device, method=method, backend="torch", seq_len=seq_len,
                  head_dim=64, batch=1, heads=4, dtype="float32", causal=False,
                  n_features=defaults.get("n_features", 0),
                  bucket_size=defaults.get("bucket_size", 0),
                  n_hashes=defaults.get("n_hashes", 0), kernel_config="",
                  inputs="clustered:t=1", code_version="0.1.0+test", source=source,
                  status=status, reason="" if status == "ok" else "RuntimeError: boom",
                  time_median_ms=time_ms if status == "ok" else None,
                  time_p20_ms=time_ms * 0.9 if status == "ok" else None,
                  time_p80_ms=time_ms * 1.1 if status == "ok" else None,
                  time_samples_ms=[time_ms] * 5 if status == "ok" else [],
                  error_mean=error if status == "ok" else None, error_std=0.01,
                  peak_memory_delta_bytes=seq_len * 1000, working_set_bytes=seq_len * 900,
                  flops=1e9, energy_j=energy, versions={"torch": "2.x"},
                  device_state={"before": {"name": "Test CPU"}}, timestamp="2026-01-01T00:00:00")


def load_benchmark(name: str):
    """``benchmarks/<name>.py`` as a module (the benchmarks are scripts, not a package).
    Tests after tests/kernels (whose conftest takes the module name ``conftest``) reach
    it, and :func:`toy_gemma`, through the fixtures below, not by import."""
    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def toy_gemma(*, max_positions: int = 128, tokenizer=None):
    """A tiny random Gemma 3 (one sliding and one global layer; no weights to download)
    as a LoadedModel. Skips the test without transformers (the models extra)."""
    transformers = pytest.importorskip("transformers", reason="the models extra is missing")
    from sbbench.models.loading import LoadedModel

    config = transformers.Gemma3TextConfig(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, head_dim=16, sliding_window=8,
        layer_types=["sliding_attention", "full_attention"],
        max_position_embeddings=max_positions)
    torch.manual_seed(0)
    model = transformers.Gemma3ForCausalLM(config).eval()
    model.config._attn_implementation = "sdpa"
    return LoadedModel(name="toy-gemma", model=model, tokenizer=tokenizer, source="test")


@pytest.fixture(scope="session")
def benchmark_module():
    """:func:`load_benchmark`, for tests that cannot import this module."""
    return load_benchmark


@pytest.fixture(scope="session")
def make_toy_gemma():
    """:func:`toy_gemma`, for tests that cannot import this module."""
    return toy_gemma
