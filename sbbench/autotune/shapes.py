"""The shape buckets a tune run covers: the product of its axes, with defaults per kind
of device (a CPU tunes the sizes it can run in seconds, a GPU the long sequences and
half precision it is used for)."""

from __future__ import annotations

import itertools
from pathlib import Path

from sbbench.core.errors import UserError

# axis -> values, per kind of device ("cpu", or "gpu" for every CUDA profile)
DEFAULT_AXES = {
    "cpu": {"seq_len": (1024, 4096), "head_dim": (64,), "features": (64,),
            "bucket_size": (64,), "dtype": ("float32",)},
    "gpu": {"seq_len": (4096, 16384), "head_dim": (64, 128), "features": (256,),
            "bucket_size": (64,), "dtype": ("float16",)},
}


def shape_buckets(kind: str, *, seq_len=None, head_dim=None, features=None,
                  bucket_size=None, dtype=None) -> list:
    """Every combination of the axes given (None: the ``kind``'s default), ordered by
    dtype, head_dim, features, bucket_size, then seq_len."""
    from sbbench.core.types import DTYPES
    from sbbench.tuned import ShapeBucket

    given = {"seq_len": seq_len, "head_dim": head_dim, "features": features,
             "bucket_size": bucket_size, "dtype": dtype}
    axes = {name: tuple(value) if value is not None else DEFAULT_AXES[kind][name]
            for name, value in given.items()}
    odd = [f for f in axes["features"] if f % 2]
    if odd:
        raise UserError(f"--features must be even, got {odd[0]}")
    for name in axes["dtype"]:
        if name not in DTYPES:
            raise UserError(f"--dtype {name!r}: valid: {', '.join(DTYPES)}")
    return [ShapeBucket(s, d, f, b, t)
            for t, d, f, b, s in itertools.product(axes["dtype"], axes["head_dim"],
                                                   axes["features"], axes["bucket_size"],
                                                   axes["seq_len"])]


def default_cache(device: str) -> Path:
    """The tuning cache of ``device`` in the working folder."""
    return Path(".sbbench-cache") / f"tune-{device}.jsonl"
