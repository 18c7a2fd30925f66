"""The shape buckets a tune run covers: the product of its axes, with defaults per kind
of device (a CPU tunes the sizes it can run in seconds, a GPU the long sequences and
half precision it is used for)."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path

from sbbench.core.errors import UserError

# axis -> values, per kind of device ("cpu", or "gpu" for every CUDA profile)
DEFAULT_AXES = {
    "cpu": {"seq_len": (1024, 4096), "head_dim": (64,), "features": (64,),
            "bucket_size": (64,), "dtype": ("float32",)},
    "gpu": {"seq_len": (4096, 16384), "head_dim": (64, 128), "features": (256,),
            "bucket_size": (64,), "dtype": ("float16",)},
}
# the sparse part's axes, the same on every device: the bucket kind, sink and window keys
SUPPORT_AXES = {"sparse": ("lsh",), "sink": (0,), "window": (0,)}


def shape_buckets(kind: str, *, seq_len=None, head_dim=None, features=None,
                  bucket_size=None, dtype=None, sparse=None, sink=None, window=None) -> list:
    """Every combination of the axes given (None: the ``kind``'s default; sparse "lsh",
    sink 0, window 0), ordered by dtype, head_dim, features, bucket_size, sparse, sink,
    window, then seq_len."""
    from sbbench.core.types import DTYPES
    from sbbench.tuned import ShapeBucket
    from sbbench.tuned.shape import SPARSE_KINDS

    given = {"seq_len": seq_len, "head_dim": head_dim, "features": features,
             "bucket_size": bucket_size, "dtype": dtype}
    axes = {name: tuple(value) if value is not None else DEFAULT_AXES[kind][name]
            for name, value in given.items()}
    support = {"sparse": sparse, "sink": sink, "window": window}
    axes.update({name: tuple(value) if value is not None else SUPPORT_AXES[name]
                 for name, value in support.items()})
    odd = [f for f in axes["features"] if f % 2]
    if odd:
        raise UserError(f"--features must be even, got {odd[0]}")
    for name in axes["dtype"]:
        if name not in DTYPES:
            raise UserError(f"--dtype {name!r}: valid: {', '.join(DTYPES)}")
    for name in axes["sparse"]:
        if name not in SPARSE_KINDS:
            raise UserError(f"--sparse {name!r}: valid: {', '.join(SPARSE_KINDS)}")
    for name in ("sink", "window"):
        negative = [n for n in axes[name] if n < 0]
        if negative:
            raise UserError(f"--{name} must be >= 0, got {negative[0]}")
    return [ShapeBucket(s, d, f, b, t, kind_, sk, w)
            for t, d, f, b, kind_, sk, w, s in itertools.product(
                axes["dtype"], axes["head_dim"], axes["features"], axes["bucket_size"],
                axes["sparse"], axes["sink"], axes["window"], axes["seq_len"])]


def too_large(shape, method: str = "scatterbrain") -> str:
    """Why a bucket's support would be every key for ``method`` ("" if it is not): the
    rule the sweep grid drops budgets by (``core.types.covers_every_key``)."""
    from sbbench.core.types import CENTROID_METHODS, covers_every_key

    centroids = shape.n_features if method in CENTROID_METHODS else 0
    return covers_every_key(shape.seq_len, bucket_size=shape.bucket_size, sink=shape.sink,
                            window=shape.window, centroids=centroids)


def default_cache(device: str) -> Path:
    """The tuning cache of ``device`` in the working folder."""
    return Path(".sbbench-cache") / f"tune-{device}.jsonl"


@dataclass(frozen=True)
class TuneInputs:
    """The Q/K/V a tune run times its configs on, and the shape they allow."""

    kind: str  # make_qkv kind: "gaussian", "clustered" or "qkv:FILE[#layer=N]"
    heads: int
    causal: bool
    seq_len: tuple[int, ...] | None  # None: the device kind's default lengths
    head_dim: tuple[int, ...] | None  # None: the device kind's default head dims
    notes: tuple[str, ...] = ()


def tune_inputs(kind: str, device_kind: str, *, seq_len=None, head_dim=None,
                heads: int | None = None) -> TuneInputs:
    """Check ``--inputs`` against the shape flags (None: not given), before any work.

    Synthetic kinds keep the flags (heads 4 when not given, not causal). A capture sets
    heads, head_dim and causal: a ``--heads`` / ``--head-dim`` that disagrees is a
    UserError (one that agrees is accepted), and so is a ``--seq-len`` over the captured
    tokens; without ``--seq-len`` the default lengths that fit are taken, or the captured
    token count when none does (with a note)."""
    from sbbench.measure.inputs import KINDS, capture_shape, is_capture_kind

    if not is_capture_kind(kind):
        if kind not in KINDS:
            raise UserError(f"--inputs {kind!r}: valid: {', '.join(KINDS)}, qkv:minilm "
                            f"(the shipped capture) or qkv:FILE[#layer=N]")
        return TuneInputs(kind, heads or 4, False, _tuple(seq_len), _tuple(head_dim))
    own_heads, own_dim, tokens, causal = capture_shape(kind)
    if heads is not None and heads != own_heads:
        raise UserError(f"--heads {heads}: {kind} has {own_heads} heads; leave --heads out "
                        f"(the capture sets it)")
    if head_dim is not None and set(head_dim) != {own_dim}:
        raise UserError(f"--head-dim {_text(head_dim)}: {kind} has head_dim {own_dim}; "
                        f"leave --head-dim out (the capture sets it)")
    notes = []
    if seq_len is not None:
        too_long = [n for n in seq_len if n > tokens]
        if too_long:
            raise UserError(f"--seq-len {_text(too_long)}: {kind} holds {tokens} tokens; "
                            f"use --seq-len {tokens} or less")
    else:
        default = DEFAULT_AXES[device_kind]["seq_len"]
        seq_len = tuple(n for n in default if n <= tokens)
        if not seq_len:
            seq_len = (tokens,)
            notes.append(f"seq_len {tokens}: the captured tokens (the default lengths "
                         f"{_text(default)} are longer)")
        elif seq_len != default:
            notes.append(f"seq_len {_text(seq_len)}: the default lengths that fit in the "
                         f"{tokens} captured tokens")
    return TuneInputs(kind, own_heads, causal, tuple(seq_len), (own_dim,), tuple(notes))


def inputs_identity(kind: str) -> dict:
    """The inputs as the tuning file and the cache key record them, without a machine's
    path: the kind (a capture by file stem, layer and text hash) and, for a capture, its
    model and capture date (another capture under the same name measures again)."""
    from sbbench.measure.inputs import is_capture_kind

    if not is_capture_kind(kind):
        return {"kind": kind}
    from sbbench.measure.capture_file import capture_kind, capture_label, load_capture_cached

    meta = load_capture_cached(capture_kind(kind)[0]).meta
    return {"kind": capture_label(kind), "model": meta.get("model"),
            "captured": meta.get("date")}


def _tuple(values):
    return None if values is None else tuple(values)


def _text(values) -> str:
    return ",".join(str(v) for v in values)
