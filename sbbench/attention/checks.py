"""Input validation shared by every attention function.

A user mistake (wrong shape, wrong dtype, bad budget) must end in a ``ValueError`` or
``TypeError`` whose message names the argument and what was expected, never in an
obscure error from deep inside a matmul.
"""

from __future__ import annotations

import math

import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def check_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    """q, k: [batch, heads, seq, head_dim]; v: [batch, heads, seq, head_dim_v]."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dtype not in FLOAT_DTYPES:
            raise TypeError(
                f"{name} must be a floating tensor (float32, float16, bfloat16 or float64), "
                f"got {t.dtype}"
            )
        if t.dim() != 4:
            raise ValueError(
                f"{name} must have shape [batch, heads, seq, head_dim], got {tuple(t.shape)}"
            )
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"q, k, v must share one dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if q.shape != k.shape:
        raise ValueError(
            f"k must have the shape of q [batch, heads, seq, head_dim] = {tuple(q.shape)}, "
            f"got {tuple(k.shape)}"
        )
    if v.shape[:3] != q.shape[:3]:
        raise ValueError(
            f"v must have shape [batch, heads, seq, head_dim_v] = "
            f"[{q.shape[0]}, {q.shape[1]}, {q.shape[2]}, *], got {tuple(v.shape)}"
        )
    if not (q.device == k.device == v.device):
        raise ValueError(f"q, k, v must be on one device, got {q.device}, {k.device}, {v.device}")
    if q.shape[2] < 1 or q.shape[3] < 1:
        raise ValueError(f"seq and head_dim must be >= 1, got q of shape {tuple(q.shape)}")


def check_mask(key_padding_mask: torch.Tensor | None, q: torch.Tensor) -> None:
    """key_padding_mask: [batch, seq] bool, True = keep."""
    if key_padding_mask is None:
        return
    if not isinstance(key_padding_mask, torch.Tensor):
        raise TypeError(
            f"key_padding_mask must be a bool tensor, got {type(key_padding_mask).__name__}"
        )
    if key_padding_mask.dtype != torch.bool:
        raise TypeError(
            f"key_padding_mask must have dtype torch.bool (True = keep), "
            f"got {key_padding_mask.dtype}"
        )
    expected = (q.shape[0], q.shape[2])
    if tuple(key_padding_mask.shape) != expected:
        raise ValueError(
            f"key_padding_mask must have shape [batch, seq] = {list(expected)}, "
            f"got {list(key_padding_mask.shape)}"
        )
    if key_padding_mask.device != q.device:
        raise ValueError(
            f"key_padding_mask must be on q's device {q.device}, got {key_padding_mask.device}"
        )


def check_int(name: str, value: object, minimum: int) -> int:
    """``value`` if it is an int (not a bool) >= ``minimum``: TypeError / ValueError."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int >= {minimum}, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def check_positive_int(name: str, value: object) -> int:
    return check_int(name, value, 1)


def check_n_features(n_features: object) -> int:
    """The feature length is 2 * (number of projections): it must be even."""
    n = check_positive_int("n_features", n_features)
    if n % 2:
        raise ValueError(
            f"n_features must be even (the positive feature map uses n_features / 2 "
            f"projections, each giving exp(+w.x) and exp(-w.x)), got {n}"
        )
    return n


def softmax_scale_for(q: torch.Tensor, softmax_scale: float | None) -> float:
    if softmax_scale is None:
        return 1.0 / math.sqrt(q.shape[-1])
    if isinstance(softmax_scale, bool) or not isinstance(softmax_scale, (int, float)):
        raise TypeError(f"softmax_scale must be a positive float or None, got {softmax_scale!r}")
    if not softmax_scale > 0 or not math.isfinite(softmax_scale):
        raise ValueError(f"softmax_scale must be a positive finite float, got {softmax_scale}")
    return float(softmax_scale)


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Accumulate half inputs in float32; keep float64 for references."""
    return torch.float64 if dtype == torch.float64 else torch.float32


SPARSE_KINDS = ("lsh", "kmeans", "local")  # or None: no buckets


def check_nonnegative_int(name: str, value: object) -> int:
    return check_int(name, value, 0)


def check_support(n_features: object, bucket_size: object, n_hashes: object, sparse: object,
                  sink: object, window: object, lowrank: str = "performer"
                  ) -> tuple[int, int, int, int, int]:
    """(n_features, bucket_size, n_hashes, sink, window) of a Scatterbrain call, checked.

    n_features 0: no low-rank part (exact softmax over the support); else even for
    Performer's features, any count for ``lowrank="centroids"`` (key centroids); sparse
    None: no buckets (bucket_size 0, the support is the sink and window keys)."""
    if sparse is not None and sparse not in SPARSE_KINDS:
        raise ValueError(f"sparse must be one of {', '.join(SPARSE_KINDS)} or None, "
                         f"got {sparse!r}")
    sink = check_nonnegative_int("sink", sink)
    window = check_nonnegative_int("window", window)
    if n_features != 0:
        n_features = (check_positive_int("n_features", n_features) if lowrank == "centroids"
                      else check_n_features(n_features))
    if sparse is None:
        if bucket_size not in (0, None):
            raise ValueError(f"sparse=None has no buckets: bucket_size must be 0, got "
                             f"{bucket_size!r} (or pick sparse='lsh', 'kmeans' or 'local')")
        bucket_size = 0
        n_hashes = check_positive_int("n_hashes", n_hashes)
        if not (n_features or sink or window):
            raise ValueError("sparse=None with n_features=0, sink=0 and window=0 attends "
                             "to nothing: give n_features, sink or window")
    else:
        bucket_size = check_positive_int("bucket_size", bucket_size)
        n_hashes = check_positive_int("n_hashes", n_hashes)
        if sparse == "local" and n_hashes != 1:
            raise ValueError(f"sparse='local' uses fixed blocks: n_hashes must be 1, got "
                             f"{n_hashes}")
    return n_features, bucket_size, n_hashes, sink, window
