"""Run a Budget (method + approximation budget) through the public attention API.

The one place that maps the benchmark's vocabulary (``Budget``) onto the attention
functions, so the runner, the accuracy study and the tuner call methods the same way.
"""

from __future__ import annotations

import torch

from sbbench.attention import (
    exact_attention,
    lsh_attention,
    performer_attention,
    scatterbrain_attention,
)
from sbbench.core.types import Budget


def call_method(
    budget: Budget,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: bool = False,
    key_padding_mask: torch.Tensor | None = None,
    softmax_scale: float | None = None,
    generator: torch.Generator | None = None,
    backend: str = "auto",
    return_weights: bool | str = False,
    projections: torch.Tensor | None = None,
    hashes=None,
):
    """q, k, v: [batch, heads, seq, head_dim] -> output (and weights if asked).

    ``projections`` / ``hashes``: randomness drawn beforehand (else from ``generator``)."""
    common = dict(causal=causal, key_padding_mask=key_padding_mask,
                  softmax_scale=softmax_scale, return_weights=return_weights)
    if budget.method == "exact":
        return exact_attention(q, k, v, **common)
    common.update(generator=generator, backend=backend)
    if budget.method == "performer":
        return performer_attention(q, k, v, n_features=budget.n_features,
                                   projections=projections, **common)
    if budget.method == "lsh":
        return lsh_attention(q, k, v, bucket_size=budget.bucket_size,
                             n_hashes=budget.n_hashes, hashes=hashes, **common)
    sparse = "local" if budget.method == "scatterbrain_local" else "lsh"
    return scatterbrain_attention(q, k, v, n_features=budget.n_features,
                                  bucket_size=budget.bucket_size, n_hashes=budget.n_hashes,
                                  sparse=sparse, projections=projections, hashes=hashes,
                                  **common)


def split_budget(method: str, memory_per_query: int, *, n_hashes: int = 1,
                 lowrank_share: float = 0.5) -> Budget:
    """The Budget of ``method`` that uses ``memory_per_query`` (features + bucket * hashes).

    Scatterbrain gives ``lowrank_share`` of it to features (rounded to an even number)
    and the rest to buckets of its ``n_hashes`` rounds.
    """
    if memory_per_query < 2:
        raise ValueError(f"memory_per_query must be >= 2, got {memory_per_query}")
    if method == "exact":
        return Budget("exact")
    if method == "performer":
        return Budget("performer", n_features=memory_per_query - memory_per_query % 2)
    if method == "lsh":
        return Budget("lsh", bucket_size=max(1, memory_per_query // n_hashes), n_hashes=n_hashes)
    if not 0.0 < lowrank_share < 1.0:
        raise ValueError(f"lowrank_share must be in (0, 1), got {lowrank_share}")
    n_features = max(2, int(round(memory_per_query * lowrank_share / 2)) * 2)
    hashes = 1 if method == "scatterbrain_local" else n_hashes
    bucket_size = max(1, (memory_per_query - n_features) // hashes)
    return Budget(method, n_features=n_features, bucket_size=bucket_size, n_hashes=hashes)
