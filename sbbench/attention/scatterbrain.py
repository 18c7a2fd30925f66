"""Public entry points of the approximate methods and their shared argument handling.

Randomness is an input: the feature projections and hash functions are drawn
from ``generator`` (or passed in precomputed as ``projections=`` / ``hashes=``), so the
same seed gives the same estimate on every backend.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from sbbench.attention.backends import (  # noqa: F401 - importable from here
    BACKENDS,
    check_backend,
    resolve_backend,
    triton_available,
)
from sbbench.attention.centroids import check_lowrank, draw_starts
from sbbench.attention.checks import (
    SPARSE_KINDS,  # noqa: F401
    check_mask,
    check_qkv,
    check_support,
    softmax_scale_for,
)
from sbbench.attention.core import attend, kmeans_buckets
from sbbench.attention.exact import exact_attention
from sbbench.attention.features import draw_projections
from sbbench.attention.lsh import HashFunctions, draw_hashes
from sbbench.attention.settings import ConfigRequest, tuned_method, warn_once
from sbbench.attention.settings import resolve as resolve_settings
from sbbench.core.errors import UserError

# implementation settings config= may hold; none of them changes the estimate
IMPL_KEYS = ("kernels", "chunk_elements", "num_threads")
# SPARSE_KINDS (from checks, kept importable here): the bucket kinds; None = no buckets


def resolve_projections(projections, n_features, head_dim, generator, device):
    if projections is None:
        return draw_projections(n_features, head_dim, generator=generator, device=device)
    if not isinstance(projections, torch.Tensor):
        raise TypeError(f"projections must be a tensor, got {type(projections).__name__}")
    expected = (n_features // 2, head_dim)
    if tuple(projections.shape) != expected:
        raise ValueError(
            f"projections must have shape [n_features // 2, head_dim] = {list(expected)}, "
            f"got {list(projections.shape)}"
        )
    return projections.to(device)


def resolve_hashes(hashes, n_hashes, head_dim, generator, device):
    if hashes is None:
        return draw_hashes(n_hashes, head_dim, generator=generator, device=device)
    if not isinstance(hashes, HashFunctions):
        raise TypeError(f"hashes must be a HashFunctions, got {type(hashes).__name__}")
    if hashes.n_hashes != n_hashes or hashes.head_dim != head_dim:
        raise ValueError(
            f"hashes must hold n_hashes={n_hashes} functions for head_dim={head_dim}, "
            f"got {hashes.n_hashes} for head_dim={hashes.head_dim}"
        )
    return hashes.to(device)


def check_return_weights(return_weights) -> None:
    if return_weights not in (False, True, "unnormalized"):
        raise ValueError(
            f"return_weights must be False, True or 'unnormalized', got {return_weights!r}"
        )


def scatterbrain_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    n_features: int | None = None,
    bucket_size: int | None = None,
    n_hashes: int = 1,
    sparse: str | None = "lsh",
    causal: bool = False,
    key_padding_mask: torch.Tensor | None = None,
    softmax_scale: float | None = None,
    generator: torch.Generator | None = None,
    backend: str = "auto",
    projections: torch.Tensor | None = None,
    hashes: HashFunctions | None = None,
    return_weights: bool | str = False,
    config: str | dict | None = None,
    max_error: float = 0.05,
    sink: int = 0,
    window: int = 0,
    lowrank: str = "performer",
):
    """Scatterbrain attention: sparse (a support of exact keys) + low-rank (Performer).

    q, k: [batch, heads, seq, head_dim]; v: [batch, heads, seq, head_dim_v];
    key_padding_mask: [batch, seq] bool, True = keep. Returns [batch, heads, seq, head_dim_v]
    in q's dtype (accumulation in float32).

    n_features: rank of the low-rank part (length of phi(x); n_features / 2 projections).
    ``lowrank="centroids"``: instead of Performer's features, ``n_features`` k-means
    centroids of each head's keys (:mod:`sbbench.attention.centroids`; start keys drawn
    from ``generator``, no ``projections``; torch path only): off the support
    ``exp(tau q.k)`` is estimated by ``exp(tau q.c)``, c the key's centroid.
    bucket_size, n_hashes: the sparse part; each query attends exactly to the
    ``bucket_size`` keys of its bucket in each of ``n_hashes`` rounds. ``sparse="local"``
    uses fixed consecutive blocks of ``bucket_size`` instead (one round);
    ``sparse="kmeans"`` balanced k-means clusters of the queries, each attending to the
    ``bucket_size`` keys of largest centroid score (under causal or with ``sink`` /
    ``window`` weighed by how many of the cluster's queries may use the key,
    :mod:`sbbench.attention.supports`; ``n_hashes`` independent clusterings, started
    from the hash buckets, so deterministic given ``generator`` / ``hashes``);
    ``sparse=None`` no buckets (``bucket_size`` 0). ``sink``: every query also attends to
    the first ``sink`` keys; ``window``: to its ``window`` nearest keys (causal: the
    previous ones, itself included; else centred). A key picked by several parts counts
    once. ``n_features=0``: no low-rank part, exact softmax over the support.
    Attention memory per query: ``n_features + bucket_size * n_hashes + sink + window``.
    ``seq`` need not be a multiple of ``bucket_size``.

    With ``return_weights=True`` also returns the dense normalised [batch, heads, seq, seq]
    attention matrix the estimate implies (small sizes only); with
    ``return_weights="unnormalized"`` the estimate of ``exp(softmax_scale * q k^T)`` itself.

    config: implementation settings (they never change the estimate). None: defaults;
    ``"tuned"``: from the device's tuned table (``tuning_configs/<device>.yaml``, or
    ``$SBBENCH_TUNING_DIR``): kernel tile sizes on the triton backend, the bucket loop's
    ``chunk_elements`` and torch's intra-op threads (for the call only) on the torch path,
    and, when ``n_features`` / ``bucket_size`` are not given, the cheapest measured
    Scatterbrain budget meeting ``max_error`` (relative output error) at this shape,
    its bucket kind (within ``sparse``'s method: "local" stays local), ``sink`` and
    ``window`` included; where none does (or the device has no table) exact attention
    runs instead and a warning, given once, says why. A dict: ``{"kernels": {name: tiles},
    "chunk_elements": N, "num_threads": T}``.
    """
    check_qkv(q, k, v)
    check_mask(key_padding_mask, q)
    check_lowrank(lowrank)
    if lowrank == "centroids" and projections is not None:
        raise ValueError("lowrank='centroids' takes no projections (they are Performer's)")
    n_features, bucket_size, n_hashes, impl = resolve_config(
        config, q, n_features=n_features, bucket_size=bucket_size, n_hashes=n_hashes,
        sparse=sparse, causal=causal, max_error=max_error, lowrank=lowrank, sink=sink,
        window=window)
    if "no_budget" in impl:
        return _exact_instead(q, k, v, impl["no_budget"], causal=causal,
                              key_padding_mask=key_padding_mask, softmax_scale=softmax_scale,
                              return_weights=return_weights)
    if "support" in impl:  # the table picked the budget: its bucket kind, sink, window too
        sparse, sink, window = impl.pop("support")
    n_features, bucket_size, n_hashes, sink, window = check_support(
        n_features, bucket_size, n_hashes, sparse, sink, window, lowrank)
    check_return_weights(return_weights)
    scale = softmax_scale_for(q, softmax_scale)
    head_dim = q.shape[-1]
    performer = bool(n_features) and lowrank == "performer"
    projections = (resolve_projections(projections, n_features, head_dim, generator, q.device)
                   if performer else None)
    hashes = (resolve_hashes(hashes, n_hashes, head_dim, generator, q.device)
              if sparse in ("lsh", "kmeans") else None)
    centroids = {}
    if n_features and lowrank == "centroids":  # drawn after the hashes
        centroids["centroids"] = draw_starts(n_features, q, key_padding_mask, generator)
    return run_method(
        q, k, v, backend=backend, return_weights=return_weights, scale=scale,
        projections=projections, hashes=hashes, bucket_size=bucket_size or None,
        sparse=sparse, causal=causal, key_padding_mask=key_padding_mask, impl=impl,
        sink=sink, window=window, **centroids,
    )


def resolve_config(config, q, *, n_features, bucket_size, n_hashes, sparse, causal,
                   max_error, lowrank="performer", sink=0, window=0):
    """(n_features, bucket_size, n_hashes, implementation settings) for ``config``."""
    if config is None or isinstance(config, dict):
        impl = dict(config or {})
        unknown = set(impl) - set(IMPL_KEYS)
        if unknown:
            raise ValueError(f"config keys must be among {', '.join(IMPL_KEYS)}, "
                             f"got {sorted(unknown)}")
        threads = impl.get("num_threads")
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int)
                                    or threads < 1):
            raise ValueError(f"config num_threads must be an int >= 1 or None, got "
                             f"{threads!r}")
        if n_features is None or bucket_size is None:
            raise ValueError("n_features and bucket_size are required unless "
                             "config='tuned' picks them from the tuned table")
        return n_features, bucket_size, n_hashes, impl
    if config != "tuned":
        raise ValueError(f"config must be None, 'tuned' or a dict, got {config!r}")
    method = tuned_method(sparse, lowrank)
    resolved = resolve_settings("tuned", ConfigRequest(
        "auto" if q.is_cuda else "cpu", seq_len=q.shape[2], head_dim=q.shape[3],
        max_error=max_error, dtype=str(q.dtype).split(".")[-1], causal=causal,
        method=method, n_features=n_features, bucket_size=bucket_size, sparse=sparse,
        sink=sink, window=window))
    if n_features is None or bucket_size is None:
        if not resolved.has_budget:  # the caller runs exact attention
            return None, None, None, {"no_budget": resolved.no_budget}
        n_features, bucket_size, n_hashes = (resolved.n_features, resolved.bucket_size,
                                             resolved.n_hashes)
        support = (resolved.sparse or sparse, resolved.sink, resolved.window)
        return n_features, bucket_size, n_hashes, {**impl_settings(resolved), "support": support}
    return n_features, bucket_size, n_hashes, impl_settings(resolved)


def exact_fallback_message(no_budget: str) -> str:
    return (f"config='tuned': {no_budget}; running exact attention instead (pass "
            f"n_features and bucket_size to choose a budget, or run sbbench sweep and "
            f"sbbench select for this device)")


def _exact_instead(q, k, v, no_budget, *, causal, key_padding_mask, softmax_scale,
                   return_weights):
    """Exact attention where the tuned table has no budget meeting the target: the
    honest answer to "the cheapest estimate within max_error", warned about once."""
    if return_weights == "unnormalized":
        raise ValueError(f"return_weights='unnormalized' needs an approximation budget: "
                         f"{no_budget}")
    check_return_weights(return_weights)
    warn_once(exact_fallback_message(no_budget), stacklevel=3)
    return exact_attention(q, k, v, causal=causal, key_padding_mask=key_padding_mask,
                           softmax_scale=softmax_scale, return_weights=bool(return_weights))


def impl_settings(resolved) -> dict:
    """The implementation settings of a resolver's answer, as ``config=`` takes them."""
    return {name: resolved.impl.get(name) or ({} if name == "kernels" else None)
            for name in IMPL_KEYS}


def run_method(q, k, v, *, backend, return_weights, impl=None, sink=0, window=0,
               centroids=None, **kwargs):
    """Dispatch one validated call to the torch core or the Triton kernels; ``impl``
    holds implementation settings that never change the result. "auto" picks the torch
    path for every call the kernels do not take (``backends.resolve_backend``) and for
    key centroids (``centroids``: their start keys, torch path only). For k-means
    buckets the clusters are computed here (torch, as the torch path does) and the
    kernels take their key sets."""
    impl = impl or {}
    check_backend(backend)
    if centroids is not None:
        if backend == "triton":
            raise UserError("lowrank='centroids' runs on backend='torch' only (the Triton "
                            "kernels compute Performer features); use backend='torch' or "
                            "'auto'")
        backend = "torch"
    chosen = resolve_backend(backend, q, k, v, return_weights=return_weights, sink=sink,
                             window=window, **kwargs)
    if q.shape[0] == 0 or q.shape[1] == 0:
        return _empty_result(q, k, v, return_weights)
    if chosen == "triton":
        if return_weights:
            raise ValueError("return_weights needs backend='torch' (the dense matrix is "
                             "an analysis tool, not a kernel output)")
        if not triton_available():
            raise RuntimeError("backend='triton' needs the triton package and sbbench.kernels; "
                               "install sbbench[triton] or use backend='torch'")
        from sbbench.kernels import scatterbrain_forward

        orders = None
        if kwargs.get("sparse") == "kmeans":
            orders = kmeans_buckets(q, k, kwargs["hashes"], kwargs["bucket_size"],
                                    kwargs["causal"], kwargs["key_padding_mask"],
                                    impl.get("chunk_elements"), scale=kwargs["scale"],
                                    sink=sink, window=window)
        return scatterbrain_forward(q, k, v, configs=impl.get("kernels") or None,
                                    orders=orders, sink=sink, window=window, **kwargs)
    with intra_op_threads(impl.get("num_threads")):
        return attend(q, k, v, return_weights=return_weights,
                      chunk_elements=impl.get("chunk_elements"), sink=sink, window=window,
                      centroids=centroids, **kwargs)


@contextlib.contextmanager
def intra_op_threads(count: int | None) -> Iterator[None]:
    """torch's intra-op threads set to ``count`` for the block and restored after it
    (None: leave torch's setting). A process-wide setting: the tuned value is what the
    torch path was measured with, so it holds only for the call it was tuned for."""
    before = torch.get_num_threads()
    if count is None or count == before:
        yield
        return
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _empty_result(q, k, v, return_weights):
    """The output of a call with no batch or no heads (as exact attention gives it): an
    empty [batch, heads, seq, head_dim_v] tensor, attached to the inputs' graph so a
    backward through it works."""
    batch, heads, seq, _ = q.shape
    tie = (q.sum() + k.sum() + v.sum()).to(q.dtype) * 0  # a 0 with the inputs' grad_fn
    out = q.new_zeros(batch, heads, seq, v.shape[-1]) + tie
    if not return_weights:
        return out
    weights_dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
    return out, q.new_zeros(batch, heads, seq, seq, dtype=weights_dtype)
