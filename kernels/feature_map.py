"""Performer features in log space: the projection helper every kernel uses, and the
row statistics that fix the stabilisation (docs/algorithm.md, numerical stability).

With ``W_s = sqrt(tau) W`` ([m, head_dim], m = n_features / 2) and ``x`` a row of q or k:

    log phi(x) = [W_s x, -W_s x] - bias(x),     bias(x) = |x_s|^2 / 2 + log(2m) / 2

Query features are divided by their row maximum ``shift_i = max_f [W_s q_i, -W_s q_i]_f``
(= max_p |W_s q_i|_p); key features by one maximum over the unmasked sequence
``lk = max_j (shift_j - bias_j)``. This kernel writes ``shift`` and ``bias`` per row; the
global key maximum is a masked ``amax`` over those [batch, heads, seq] numbers.
Every later kernel recomputes the features it needs from q / k, W_s and these scalars
(re-projecting is cheaper than storing [seq, n_features] features and reading them back).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import triton
import triton.language as tl
from sbbench.kernels._common import (
    TINY,
    Config,
    DeviceLimits,
    KernelShape,
    KernelSpec,
    Launch,
    empty,
    feature_precision,
    fits_registers,
    head_chunks,
    launch_limits,
    needs_int64,
    next_pow2,
)
from triton.language.standard import _elementwise_max as MAX_COMBINE
from triton.language.standard import _sum_combine as SUM_COMBINE

# Reductions are written tl.reduce(x, axis, SUM_COMBINE / MAX_COMBINE), with triton's own
# combine functions, instead of tl.sum / tl.max (which is what those do): tl.sum and
# tl.max are @jit functions decorated when triton is imported, so if triton was imported
# before TRITON_INTERPRET=1 was set (another test module got there first), the
# interpreter refuses them; tl.reduce is a builtin, and the interpreter recognises these
# two combine functions and reduces with numpy. Likewise tl.full instead of tl.zeros.

# float32's smallest normal number, the clamp of every denominator (a global must be a
# constexpr to be visible inside a kernel)
FLOAT32_TINY = tl.constexpr(TINY)


@triton.jit
def project(x, w_ptr, w_lo_ptr, p0, n_proj, head_dim, BLOCK_D: tl.constexpr,
            BLOCK_P: tl.constexpr, PREC: tl.constexpr, SPLIT: tl.constexpr,
            UPCAST: tl.constexpr):
    """x: [ROWS, BLOCK_D] in the input dtype (zero beyond head_dim) -> x @ W_s[p0 : p0 +
    BLOCK_P]^T: [ROWS, BLOCK_P] fp32 (zero for projections >= n_proj).

    SPLIT (half inputs): W_s = hi + lo, both in the input dtype ([n_proj, d] contiguous),
    and two half-precision products with fp32 accumulation: x is exact in its dtype, so
    this is x @ W_s to ~2^-16 relative (tf32 would give 2^-11) with 16-bit operands (half
    the registers of fp32 operands, and twice the tensor-core rate of tf32). Otherwise
    (float32 inputs) one fp32 product with input precision PREC. UPCAST: see mma()."""
    # [ROWS, BLOCK_D] @ [BLOCK_D, BLOCK_P] (twice with SPLIT): project_part of every column
    return project_part(x, w_ptr, w_lo_ptr, p0, 0, n_proj, head_dim, BLOCK_D, BLOCK_P,
                        PREC, SPLIT, UPCAST, 0)


@triton.jit
def project_part(x, w_ptr, w_lo_ptr, p0, d0, n_proj, head_dim, BLOCK_DK: tl.constexpr,
                 BLOCK_P: tl.constexpr, PREC: tl.constexpr, SPLIT: tl.constexpr,
                 UPCAST: tl.constexpr, TRANS: tl.constexpr):
    """:func:`project` of columns d0 : d0 + BLOCK_DK of the rows, x: [ROWS, BLOCK_DK] ->
    x @ W_s[p0 : p0 + BLOCK_P, d0 : d0 + BLOCK_DK]^T [ROWS, BLOCK_P], or with TRANS its
    transpose W_s[...] @ x^T [BLOCK_P, ROWS] (TRANS=1: the rows on the columns of the
    product; TRANS=2: the row product, transposed after it)."""
    offs_p = p0 + tl.arange(0, BLOCK_P)
    offs_d = d0 + tl.arange(0, BLOCK_DK)
    if TRANS == 1:
        w_offs = offs_p[:, None] * head_dim + offs_d[None, :]  # [BLOCK_P, BLOCK_DK]
        w_mask = (offs_p[:, None] < n_proj) & (offs_d[None, :] < head_dim)
        x = tl.trans(x)
    else:
        w_offs = offs_p[None, :] * head_dim + offs_d[:, None]  # [BLOCK_DK, BLOCK_P]
        w_mask = (offs_p[None, :] < n_proj) & (offs_d[:, None] < head_dim)
    w = tl.load(w_ptr + w_offs, mask=w_mask, other=0.0)
    if SPLIT:
        w_lo = tl.load(w_lo_ptr + w_offs, mask=w_mask, other=0.0)
        if UPCAST:
            x = x.to(tl.float32)
            w = w.to(tl.float32)
            w_lo = w_lo.to(tl.float32)
        if TRANS == 1:
            acc = tl.dot(w, x, input_precision=PREC)
            acc = tl.dot(w_lo, x, acc, input_precision=PREC)
        else:
            acc = tl.dot(x, w, input_precision=PREC)
            acc = tl.dot(x, w_lo, acc, input_precision=PREC)
    elif TRANS == 1:
        acc = tl.dot(w, x.to(tl.float32), input_precision=PREC)
    else:
        acc = tl.dot(x.to(tl.float32), w, input_precision=PREC)
    if TRANS == 2:
        acc = tl.trans(acc)
    return acc


@triton.jit
def load_rows(rows, row_ok, stride_d, d0, head_dim, BLOCK_DK: tl.constexpr,
              INT64: tl.constexpr):
    """Columns d0 : d0 + BLOCK_DK of rows in memory: rows [ROWS] points at each row's
    first element (``row_ok``: rows to read; the others, and columns >= head_dim, are 0)
    -> [ROWS, BLOCK_DK] in the input dtype."""
    offs = wide(d0 + tl.arange(0, BLOCK_DK), INT64)
    return tl.load(rows[:, None] + offs[None, :] * stride_d,
                   mask=row_ok[:, None] & (offs[None, :] < head_dim), other=0.0)


@triton.jit
def project_rows(x, rows, row_ok, stride_d, w_ptr, w_lo_ptr, p0, n_proj, head_dim,
                 ROWS: tl.constexpr, BLOCK_DK: tl.constexpr, BLOCK_P: tl.constexpr,
                 PREC: tl.constexpr, SPLIT: tl.constexpr, UPCAST: tl.constexpr,
                 TRANS: tl.constexpr, CHUNKED: tl.constexpr, INT64: tl.constexpr):
    """:func:`project_part` of whole rows -> [ROWS, BLOCK_P] (TRANS: [BLOCK_P, ROWS]) fp32.
    Not CHUNKED (head_dim fits one BLOCK_DK): x is the rows' tile, loaded once by the
    kernel (:func:`load_rows`). CHUNKED: x is unused; the rows are read from memory
    (``rows``, ``row_ok`` as in :func:`load_rows`) BLOCK_DK columns at a time, so only a
    [ROWS, BLOCK_DK] slice of them (and of W_s, hi / lo) is live, not the whole head_dim:
    the tiles that made wide heads spill (reports/kernels/static_resources.md)."""
    if CHUNKED:
        if TRANS == 0:
            acc = tl.full([ROWS, BLOCK_P], 0.0, tl.float32)
        else:
            acc = tl.full([BLOCK_P, ROWS], 0.0, tl.float32)
        for d0 in range(0, head_dim, BLOCK_DK):
            part = load_rows(rows, row_ok, stride_d, d0, head_dim, BLOCK_DK, INT64)
            acc += project_part(part, w_ptr, w_lo_ptr, p0, d0, n_proj, head_dim, BLOCK_DK,
                                BLOCK_P, PREC, SPLIT, UPCAST, TRANS)
    else:
        acc = project_part(x, w_ptr, w_lo_ptr, p0, 0, n_proj, head_dim, BLOCK_DK, BLOCK_P,
                           PREC, SPLIT, UPCAST, TRANS)
    return acc


@triton.jit
def dot_rows(a, a_rows, a_ok, a_stride, b, b_rows, b_ok, b_stride, head_dim,
             A: tl.constexpr, B: tl.constexpr, BLOCK_DK: tl.constexpr, PREC: tl.constexpr,
             UPCAST: tl.constexpr, CHUNKED: tl.constexpr, INT64: tl.constexpr):
    """a_i . b_j -> [A, B] fp32: of the loaded tiles a, b, or (CHUNKED) of the rows in
    memory, BLOCK_DK columns at a time (as :func:`project_rows`)."""
    if CHUNKED:
        acc = tl.full([A, B], 0.0, tl.float32)
        for d0 in range(0, head_dim, BLOCK_DK):
            a_part = load_rows(a_rows, a_ok, a_stride, d0, head_dim, BLOCK_DK, INT64)
            b_part = load_rows(b_rows, b_ok, b_stride, d0, head_dim, BLOCK_DK, INT64)
            acc += mma(a_part, tl.trans(b_part), PREC, UPCAST)
    else:
        acc = mma(a, tl.trans(b), PREC, UPCAST)
    return acc


@triton.jit
def wide(x, INT64: tl.constexpr):
    """x as int64 when the launch needs 64-bit offsets (_common.needs_int64): program ids
    and positions go through here, so every offset computed from them is int64."""
    if INT64:
        return x.to(tl.int64)
    else:
        return x


@triton.jit
def mma(a, b, PREC: tl.constexpr, UPCAST: tl.constexpr):
    """tl.dot(a, b) with fp32 accumulation. UPCAST: give the operands to tl.dot as fp32
    (the interpreter multiplies the bit patterns of bfloat16 operands, triton issue
    #11584; bf16 x bf16 products are exact in fp32, so the result is the GPU's)."""
    if UPCAST:
        a = a.to(tl.float32)
        b = b.to(tl.float32)
    return tl.dot(a, b, input_precision=PREC)


def interpreted(kernel) -> bool:
    """Whether a @triton.jit function was decorated under TRITON_INTERPRET=1."""
    return not isinstance(kernel, triton.runtime.JITFunction)


@triton.jit
def _feature_stats_kernel(
    x_ptr, w_ptr, w_lo_ptr, shift_ptr, bias_ptr,
    stride_xb, stride_xh, stride_xn, stride_xd,
    heads, seq, head_dim, n_proj, half_scale, log_norm,
    BLOCK_M: tl.constexpr, BLOCK_DK: tl.constexpr, BLOCK_P: tl.constexpr,
    PREC: tl.constexpr, SPLIT: tl.constexpr, UPCAST: tl.constexpr, INT64: tl.constexpr,
    CHUNKED: tl.constexpr,
):
    """grid (batch * heads, cdiv(seq, BLOCK_M)): shift and bias of BLOCK_M rows."""
    pid_bh = wide(tl.program_id(0), INT64)
    pid_m = tl.program_id(1)
    b = pid_bh // heads
    h = pid_bh % heads
    offs_m = wide(pid_m * BLOCK_M + tl.arange(0, BLOCK_M), INT64)
    m_ok = offs_m < seq
    # the rows, read BLOCK_DK columns at a time (project_rows)
    rows = x_ptr + b * stride_xb + h * stride_xh + offs_m * stride_xn
    x = rows  # the whole rows, loaded once where they fit one chunk (else unused)
    if not CHUNKED:
        x = load_rows(rows, m_ok, stride_xd, 0, head_dim, BLOCK_DK, INT64)
    row_max = tl.full([BLOCK_M], float("-inf"), tl.float32)
    for p0 in range(0, n_proj, BLOCK_P):
        proj = project_rows(x, rows, m_ok, stride_xd, w_ptr, w_lo_ptr, p0, n_proj, head_dim,
                            BLOCK_M, BLOCK_DK, BLOCK_P, PREC, SPLIT, UPCAST, 0, CHUNKED,
                            INT64)  # [M, P]
        p_ok = (p0 + tl.arange(0, BLOCK_P)) < n_proj
        # max over both signs of the features: max(proj, -proj) = |proj|
        mag = tl.where(p_ok[None, :], tl.abs(proj), float("-inf"))
        row_max = tl.maximum(row_max, tl.reduce(mag, 1, MAX_COMBINE))
    if CHUNKED:
        sq = tl.full([BLOCK_M], 0.0, tl.float32)
        for d0 in range(0, head_dim, BLOCK_DK):
            xf = load_rows(rows, m_ok, stride_xd, d0, head_dim, BLOCK_DK, INT64).to(tl.float32)
            sq += tl.reduce(xf * xf, 1, SUM_COMBINE)
    else:
        xf = x.to(tl.float32)
        sq = tl.reduce(xf * xf, 1, SUM_COMBINE)
    bias = half_scale * sq + log_norm
    tl.store(shift_ptr + pid_bh * seq + offs_m, row_max, mask=m_ok)
    tl.store(bias_ptr + pid_bh * seq + offs_m, bias, mask=m_ok)


@dataclass(frozen=True)
class FeatureWeights:
    """The projections as the kernels multiply them: W_s = sqrt(tau) W, [m, head_dim].

    scaled: W_s in float32. For half inputs (split=True) hi + lo = W_s with hi, lo in the
    input dtype (see :func:`project`); for float32 inputs hi is W_s and lo is unused.
    """

    scaled: torch.Tensor
    hi: torch.Tensor
    lo: torch.Tensor
    split: bool

    @property
    def n_proj(self) -> int:
        return self.scaled.shape[0]

    def check(self, head_dim: int, dtype: torch.dtype) -> None:
        want = (self.n_proj, head_dim)
        for t in (self.scaled, self.hi, self.lo):
            if tuple(t.shape) != want or not t.is_contiguous():
                raise ValueError(f"projections must be contiguous [n_proj, {head_dim}], got "
                                 f"{tuple(t.shape)}")
        if self.split != (dtype != torch.float32) or (self.split and self.hi.dtype != dtype):
            raise ValueError(f"FeatureWeights made for {self.hi.dtype} inputs, got {dtype}: "
                             f"build them with scaled_projections(..., dtype={dtype})")


def scaled_projections(projections: torch.Tensor, scale: float, device: torch.device,
                       dtype: torch.dtype = torch.float32) -> FeatureWeights:
    """FeatureWeights for inputs of ``dtype`` from projections W [m, head_dim]: W_s =
    sqrt(tau) W in float32 (the torch reference folds sqrt(tau) into W the same way), and
    for half dtypes its split W_s = hi + lo into two tensors of that dtype."""
    scaled = (projections.to(device=device, dtype=torch.float32) * math.sqrt(scale))
    scaled = scaled.contiguous()
    if dtype == torch.float32:
        return FeatureWeights(scaled, scaled, scaled, False)
    hi = scaled.to(dtype)
    lo = (scaled - hi.to(torch.float32)).to(dtype)
    return FeatureWeights(scaled, hi.contiguous(), lo.contiguous(), True)


def weight_args(weights: FeatureWeights, x: torch.Tensor, kernel) -> dict:
    """The projection arguments every kernel takes."""
    weights.check(x.shape[-1], x.dtype)
    return dict(w_ptr=weights.hi, w_lo_ptr=weights.lo, SPLIT=weights.split,
                UPCAST=weights.split and x.dtype == torch.bfloat16 and interpreted(kernel))


def _stats_launch(x: torch.Tensor, weights: FeatureWeights, scale: float,
                  config: Config) -> Launch:
    batch, heads, seq, head_dim = x.shape
    shift = empty((batch, heads, seq), torch.float32, x.device)
    bias = empty((batch, heads, seq), torch.float32, x.device)
    grid = (batch * heads, triton.cdiv(seq, config["BLOCK_M"]))
    args = dict(
        x_ptr=x, **weight_args(weights, x, _feature_stats_kernel), shift_ptr=shift,
        bias_ptr=bias,
        stride_xb=x.stride(0), stride_xh=x.stride(1), stride_xn=x.stride(2),
        stride_xd=x.stride(3),
        heads=heads, seq=seq, head_dim=head_dim, n_proj=weights.n_proj,
        half_scale=0.5 * scale, log_norm=0.5 * math.log(2 * weights.n_proj),
        BLOCK_M=config["BLOCK_M"], **head_chunks(head_dim, x.element_size()),
        BLOCK_P=config["BLOCK_P"],
        PREC=feature_precision(x.dtype),
    )
    args["INT64"] = needs_int64(args.values())
    return Launch(_feature_stats_kernel, grid, args, config["num_warps"], config["num_stages"],
                  outputs=(shift, bias))


# Search space. The kernel reads x once and W (tiny, L2-resident) once per projection
# block, and does a [BLOCK_M, d] @ [d, BLOCK_P] product per block: it is memory bound, so
# the useful knobs are rows per program (bigger = fewer W re-reads, fewer programs) and
# warps; there is no loop over x to pipeline, so num_stages barely matters (1-2).
SPACE = {
    "BLOCK_M": (32, 64, 128),
    "BLOCK_P": (32, 64),
    "num_warps": (2, 4, 8),
    "num_stages": (1, 2),
}
DEFAULT = {"BLOCK_M": 64, "BLOCK_P": 32, "num_warps": 4, "num_stages": 1}


def keep(config: Config, limits: DeviceLimits, shape: KernelShape | None = None) -> bool:
    """Drop configs whose live tiles ([M, d] input, [M, P] products, the [d, P] weight
    tiles) overflow the registers, or that give a warp fewer than 8 rows."""
    shape = shape or KernelShape(head_dim=128)
    block_d = next_pow2(shape.head_dim)
    m, p = config["BLOCK_M"], config["BLOCK_P"]
    live = m * block_d + 2 * m * p + 2 * block_d * p
    if not fits_registers(live, config["num_warps"], limits):
        return False
    return config["num_warps"] * 8 <= m


def feature_stats(x: torch.Tensor, weights: FeatureWeights, scale: float,
                  config: Config | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row feature statistics.

    x: [batch, heads, seq, head_dim] (q or k, any strides); weights: from
    :func:`scaled_projections` for x's dtype -> (shift, bias), each [batch, heads, seq] float32:
    ``log phi(x)_f = [W_s x, -W_s x]_f - bias`` and ``shift = max_f [W_s x, -W_s x]_f``.
    """
    shape = KernelShape(head_dim=x.shape[-1], n_features=2 * weights.n_proj,
                        dtype_bytes=x.element_size())
    config = SPEC.choose(config, launch_limits(x.device), shape)
    return _stats_launch(x, weights, scale, config).run()


def key_log_scale(k_shift: torch.Tensor, k_bias: torch.Tensor,
                  key_padding_mask: torch.Tensor | None) -> torch.Tensor:
    """lk [batch, heads]: max over unmasked keys of max_f log phi(k_j)_f; 0 if all masked
    (as the torch reference: a fully masked sequence gets zero features and scale 0)."""
    row = k_shift - k_bias
    if key_padding_mask is not None:
        row = row.masked_fill(~key_padding_mask[:, None, :], float("-inf"))
    lk = row.amax(dim=-1)
    return torch.where(torch.isfinite(lk), lk, torch.zeros_like(lk)).contiguous()


def plan(shape: KernelShape, config: Config, seq: int = 4096, limits=None) -> Launch:
    """The launch for a representative problem (meta tensors) for the static compiler."""
    dtype = shape.dtype
    x = torch.empty(1, 1, seq, shape.head_dim, dtype=dtype, device="meta")
    return _stats_launch(x, meta_weights(shape), 1.0 / math.sqrt(shape.head_dim), config)


def meta_weights(shape: KernelShape) -> FeatureWeights:
    """FeatureWeights on the meta device (static compile plans)."""
    dtype = shape.dtype
    w = torch.empty(shape.n_features // 2, shape.head_dim, device="meta")
    if dtype == torch.float32:
        return FeatureWeights(w, w, w, False)
    half = torch.empty(w.shape, dtype=dtype, device="meta")
    return FeatureWeights(w, half, half, True)


SPEC = KernelSpec("feature_stats", SPACE, DEFAULT, keep, plan)
