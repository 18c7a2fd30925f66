"""Whether ``scatterbrain_forward`` takes a call, decided from its sizes before anything
runs: the checks its launches make (dtype and head size, bucket range, a config that
keep() leaves for each kernel the call launches on the device's limits), with the same
one-line messages. backend="auto" asks it to choose the torch path instead, and the sweep
refuses a Triton point with it instead of recording the launch's failure.
"""

from __future__ import annotations

import torch
from sbbench.kernels._common import (
    DeviceLimits,
    KernelShape,
    expand_space,
    no_config_message,
    supports,
    unsupported_message,
)
from sbbench.kernels.sparse_setup import MAX_BUCKET, fuse_by_default

SPARSE_KINDS = ("lsh", "kmeans", "local")


def launched_shapes(head_dim: int, head_dim_v: int, *, dtype_bytes: int, n_features: int,
                    bucket_size: int | None, n_hashes: int, sparse: str | None,
                    causal: bool, fixed: bool = False) -> list[tuple[str, KernelShape]]:
    """(kernel name, KernelShape) of every launch of one forward, in order, built as the
    launchers build them (feature_map.feature_stats, lowrank_setup.lowrank_shape,
    fixed.fixed_launch, sparse.kernel_shape). n_features: the length of phi(x) (2 x the
    projections; 0 without a low-rank part); n_hashes: the rounds of sparse="lsh" or
    "kmeans" (one for "local"); fixed: sink or window keys."""
    shapes = []
    if n_features:
        lowrank = KernelShape(head_dim=head_dim, head_dim_v=head_dim_v, n_features=n_features,
                              dtype_bytes=dtype_bytes)
        shapes.append(("feature_stats", KernelShape(head_dim=head_dim, n_features=n_features,
                                                    dtype_bytes=dtype_bytes)))
        if causal:
            shapes.append(("lowrank_causal", lowrank))
        else:
            shapes.append(("lowrank_state", lowrank))
            if sparse is None or fixed or not fuse_by_default(head_dim_v):
                shapes.append(("lowrank_apply", lowrank))
    if fixed:
        shapes.append(("fixed", KernelShape(head_dim=head_dim, head_dim_v=head_dim_v,
                                            n_features=n_features, dtype_bytes=dtype_bytes)))
    if sparse is not None:
        rounds = 1 if sparse == "local" else n_hashes
        shapes.append(("sparse", KernelShape(head_dim=head_dim, head_dim_v=head_dim_v,
                                             n_features=n_features, bucket_size=bucket_size,
                                             n_hashes=rounds, dtype_bytes=dtype_bytes)))
    return shapes


def forward_refusal(dtype: torch.dtype, head_dim: int, head_dim_v: int | None = None, *,
                    n_features: int, bucket_size: int | None, n_hashes: int = 1,
                    sparse: str | None, causal: bool,
                    limits: DeviceLimits | None, sink: int = 0, window: int = 0) -> str | None:
    """Why the kernels would refuse this forward on a device with ``limits`` (one line),
    or None where they run it. ``limits`` None (the interpreter on the CPU) checks what
    holds everywhere: dtype, head size and bucket range."""
    head_dim_v = head_dim if head_dim_v is None else head_dim_v
    if not supports(dtype, head_dim, head_dim_v):
        return unsupported_message(dtype, head_dim, head_dim_v)
    if sparse is not None and sparse not in SPARSE_KINDS:
        return (f"sparse={sparse!r} runs on backend='torch' only (the Triton kernels "
                f"compute hash, k-means or local buckets)")
    if not n_features and sparse is None and not (sink or window):
        return "nothing to compute: no low-rank and no sparse part"
    if sparse is not None and not (bucket_size and 1 <= bucket_size <= MAX_BUCKET):
        return f"bucket_size must be in 1..{MAX_BUCKET} for the kernel, got {bucket_size}"
    if limits is None:
        return None
    try:
        from sbbench.kernels import SEARCH_SPACES  # defined where triton imports
    except ImportError:
        return "the Triton kernels are unavailable (triton is not installed)"

    dtype_bytes = torch.empty((), dtype=dtype).element_size()
    for name, shape in launched_shapes(head_dim, head_dim_v, dtype_bytes=dtype_bytes,
                                       n_features=n_features, bucket_size=bucket_size,
                                       n_hashes=n_hashes, sparse=sparse, causal=causal,
                                       fixed=bool(sink or window)):
        spec = SEARCH_SPACES[name]
        if not any(spec.keep(c, limits, shape) for c in expand_space(spec.space)):
            return no_config_message(name, limits, shape)
    return None
