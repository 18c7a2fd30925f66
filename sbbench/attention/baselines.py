"""The two baselines Scatterbrain unifies: Performer (low-rank only) and LSH / SMYRF
(sparse only). Both run through the same core as Scatterbrain, so a difference between
methods is a difference of approximation, never of implementation."""

from __future__ import annotations

import torch

from sbbench.attention.checks import (
    check_mask,
    check_n_features,
    check_qkv,
    check_support,
    softmax_scale_for,
)
from sbbench.attention.lsh import HashFunctions
from sbbench.attention.scatterbrain import (
    check_return_weights,
    resolve_hashes,
    resolve_projections,
    run_method,
)


def performer_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    n_features: int,
    causal: bool = False,
    key_padding_mask: torch.Tensor | None = None,
    softmax_scale: float | None = None,
    generator: torch.Generator | None = None,
    backend: str = "auto",
    projections: torch.Tensor | None = None,
    return_weights: bool | str = False,
):
    """Performer (FAVOR+ positive random features) attention.

    q, k: [batch, heads, seq, head_dim]; v: [batch, heads, seq, head_dim_v] ->
    [batch, heads, seq, head_dim_v]. ``n_features`` is the feature length (rank);
    causal uses prefix sums. See :func:`scatterbrain_attention` for ``return_weights``.
    """
    check_qkv(q, k, v)
    check_mask(key_padding_mask, q)
    n_features = check_n_features(n_features)
    check_return_weights(return_weights)
    scale = softmax_scale_for(q, softmax_scale)
    projections = resolve_projections(projections, n_features, q.shape[-1], generator, q.device)
    return run_method(
        q, k, v, backend=backend, return_weights=return_weights, scale=scale,
        projections=projections, hashes=None, bucket_size=None, sparse=None,
        causal=causal, key_padding_mask=key_padding_mask,
    )


def lsh_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    bucket_size: int,
    n_hashes: int = 1,
    causal: bool = False,
    key_padding_mask: torch.Tensor | None = None,
    softmax_scale: float | None = None,
    generator: torch.Generator | None = None,
    backend: str = "auto",
    hashes: HashFunctions | None = None,
    return_weights: bool | str = False,
    sink: int = 0,
    window: int = 0,
):
    """LSH (SMYRF) attention: exact softmax inside balanced hash buckets, nothing outside.

    q, k: [batch, heads, seq, head_dim]; v: [batch, heads, seq, head_dim_v] ->
    [batch, heads, seq, head_dim_v]. ``sink`` / ``window``: every query also attends to
    the first ``sink`` keys and its ``window`` nearest ones (see
    :func:`scatterbrain_attention`). A pair found in several parts counts once.
    """
    check_qkv(q, k, v)
    check_mask(key_padding_mask, q)
    _, bucket_size, n_hashes, sink, window = check_support(0, bucket_size, n_hashes, "lsh",
                                                           sink, window)
    check_return_weights(return_weights)
    scale = softmax_scale_for(q, softmax_scale)
    hashes = resolve_hashes(hashes, n_hashes, q.shape[-1], generator, q.device)
    return run_method(
        q, k, v, backend=backend, return_weights=return_weights, scale=scale,
        projections=None, hashes=hashes, bucket_size=bucket_size, sparse="lsh",
        causal=causal, key_padding_mask=key_padding_mask, sink=sink, window=window,
    )
