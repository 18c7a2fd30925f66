"""The full forward on the kernels: the function ``run_method`` calls for backend="triton".

Pipeline for one call (q, k, v: [batch, heads, seq, d]):

    feature_stats(q), feature_stats(k)   row shift / bias; lk = masked max (torch, O(seq))
    lowrank_state                         kv = kh^T V, ks = kh^T 1          (non-causal)
      lowrank_apply(sums=True)            phi(Q) kv, phi(Q) ks per row      (unless fused)
      or lowrank_causal                   prefix-sum num / den per row      (causal)
    hashes.order (torch: hash + sort)     sorted positions per round        (sparse="lsh")
    (k-means: the caller's orders and key sets; set_counts: pair counts, torch, R > 1)
    fixed_launch (sink / window)          residual on the sink and window keys, blocks
                                          of queries in original order: starts the
                                          running sums from the low-rank sums
    sparse_attention                      one launch per round: residual on the buckets,
                                          merged with the low-rank part, out written
                                          in original order by the last round

Performer only (sparse None, no sink or window): lowrank_apply writes out (non-causal), or
out = num / den after lowrank_causal; sink / window without buckets: the fixed launch
writes out. Hashing uses the float32 copies of q and k, exactly as the torch core, so both
backends put every query in the same bucket.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

import torch
from sbbench.kernels._common import TINY, Config, check_kernel_inputs
from sbbench.kernels.causal_lowrank import lowrank_causal
from sbbench.kernels.feature_map import feature_stats, key_log_scale, scaled_projections
from sbbench.kernels.fixed import fixed_attention
from sbbench.kernels.lowrank import lowrank_apply, lowrank_state
from sbbench.kernels.sparse import fuse_by_default, sparse_attention


class HashOrder(Protocol):
    """The LSH hash functions as the kernels see them: they only need the sorted order
    (``sbbench.attention.HashFunctions`` is one; the kernels import nothing from the
    attention package, which imports them)."""

    def order(self, q: torch.Tensor, k: torch.Tensor, bucket_size: int,
              key_padding_mask: torch.Tensor | None = None
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """Two [batch, heads, n_hashes, seq_pad] long tensors of sorted positions."""
        ...


KERNEL_NAMES = ("feature_stats", "lowrank_state", "lowrank_apply", "lowrank_causal", "sparse",
                "fixed")


def scatterbrain_forward(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    scale: float,
    projections: torch.Tensor | None,
    hashes: HashOrder | None,
    bucket_size: int | None,
    sparse: str | None,
    causal: bool,
    key_padding_mask: torch.Tensor | None,
    configs: Mapping[str, Config] | None = None,
    fuse_lowrank: bool | None = None,
    orders: tuple | None = None,
    sink: int = 0,
    window: int = 0,
) -> torch.Tensor:
    """Scatterbrain / Performer / LSH / local+low-rank forward on the Triton kernels.

    q, k: [batch, heads, seq, head_dim]; v: [batch, heads, seq, head_dim_v] (float32,
    float16 or bfloat16, any strides); key_padding_mask: [batch, seq] bool, True = keep.
    projections: [n_features // 2, head_dim] or None (no low-rank part); sparse: "lsh"
    (needs ``hashes``: a ``sbbench.attention.HashFunctions``, or anything with its
    ``order(q, k, bucket_size, key_padding_mask)``), "local", "kmeans" (needs ``orders``:
    (q_order, k_order, key_sets) of sbbench.attention.supports.kmeans_order on the float32
    copies, as sbbench.attention.core.kmeans_buckets makes them) or None (no buckets).
    sink, window: every query also attends to the first ``sink`` keys and its ``window``
    nearest ones (see kernels/fixed.py); each pair counts once.
    configs: tile config per kernel name (see KERNEL_NAMES; missing ones use each
    kernel's default). fuse_lowrank:
    non-causal Scatterbrain computes the low-rank numerator phi(Q)(phi(K)^T V) inside the
    sparse kernel's first round (saves a pass over q and a float32 [seq, dv] round trip)
    rather than in lowrank_apply; None = as sparse.fuse_by_default decides (dv <= 64).
    Returns [batch, heads, seq, head_dim_v] in q's dtype; same math as
    sbbench.attention.core.attend.
    """
    check_kernel_inputs(q, k, v)
    configs = dict(configs or {})
    unknown = set(configs) - set(KERNEL_NAMES)
    if unknown:
        raise ValueError(f"unknown kernel names in configs: {sorted(unknown)}; "
                         f"valid: {', '.join(KERNEL_NAMES)}")
    fixed = bool(sink or window)
    if projections is None and sparse is None and not fixed:
        raise ValueError("nothing to compute: no low-rank part, buckets, sink or window")
    if sparse not in (None, "lsh", "local", "kmeans"):
        raise ValueError(f"sparse must be None, 'lsh', 'kmeans' or 'local', got {sparse!r}")
    if sparse == "lsh" and hashes is None:
        raise ValueError("sparse='lsh' needs hashes")
    if sparse == "kmeans" and orders is None:
        raise ValueError("sparse='kmeans' needs orders (q_order, k_order, key_sets)")
    if sink < 0 or window < 0:
        raise ValueError(f"sink and window must be >= 0, got {sink} and {window}")

    lowrank = None
    if projections is not None:
        weights = scaled_projections(projections, scale, q.device, q.dtype)
        cfg = configs.get("feature_stats")
        q_shift, q_bias = feature_stats(q, weights, scale, cfg)
        k_shift, k_bias = feature_stats(k, weights, scale, cfg)
        lk = key_log_scale(k_shift, k_bias, key_padding_mask)
        lowrank = dict(weights=weights, q_shift=q_shift, q_bias=q_bias, k_bias=k_bias, lk=lk)
        # merged with a sparse residual, the low-rank sums are cancelled against exact
        # weights: their products run in tf32x3 (_common.feature_precision)
        residual = sparse is not None or fixed
        if causal:
            num, den = lowrank_causal(q, k, v, weights, q_shift, k_bias, lk, key_padding_mask,
                                      config=configs.get("lowrank_causal"), residual=residual)
            if not residual:
                return (num / den.clamp_min(TINY)[..., None]).to(q.dtype)
            lowrank.update(num=num, den=den)
        else:
            kv, ks = lowrank_state(k, v, weights, k_bias, lk, key_padding_mask,
                                   config=configs.get("lowrank_state"), residual=residual)
            if not residual:
                return lowrank_apply(q, weights, q_shift, kv, ks,
                                     config=configs.get("lowrank_apply"))
            if fuse_lowrank is None:
                fuse_lowrank = fuse_by_default(v.shape[-1])
            if fuse_lowrank and not fixed:  # the fixed launch starts from the sums
                lowrank.update(kv=kv, ks=ks)
            else:
                num, den = lowrank_apply(q, weights, q_shift, kv, ks, sums=True,
                                         config=configs.get("lowrank_apply"), residual=True)
                lowrank.update(num=num, den=den)

    if sparse is None:
        return fixed_attention(q, k, v, scale=scale, sink=sink, window=window, causal=causal,
                               key_padding_mask=key_padding_mask, lowrank=lowrank,
                               config=configs.get("fixed"))
    if bucket_size is None or bucket_size < 1:
        raise ValueError(f"the sparse part needs bucket_size >= 1, got {bucket_size}")
    q_order = k_order = key_sets = None
    if sparse == "lsh":
        # float32 hashing, as the torch core (which hashes its float32 working copies)
        q_order, k_order = hashes.order(q.float(), k.float(), bucket_size, key_padding_mask)
    elif sparse == "kmeans":
        q_order, k_order, key_sets = orders
    return sparse_attention(q, k, v, scale=scale, bucket_size=bucket_size, q_order=q_order,
                            k_order=k_order, causal=causal, key_padding_mask=key_padding_mask,
                            lowrank=lowrank, config=configs.get("sparse"), key_sets=key_sets,
                            sink=sink, window=window, fixed_config=configs.get("fixed"))
