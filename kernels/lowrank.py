"""The low-rank (Performer) part: phi(K)^T V and phi(K)^T 1, phi(Q) (...), with the
log-space feature map fused into the reductions (the causal prefix-sum form is in
causal_lowrank.py, which shares this file's launch helpers and tile reasoning).

In the hat scale of feature_map.py (``qh_i = phi(q_i) / exp(lq_i)``, ``kh_j = phi(k_j) /
exp(lk)``, lq_i = shift_i - bias_i):

    non-causal   kv = kh^T V  [F, dv],  ks = kh^T 1  [F]
                 num_i = qh_i kv,  den_i = qh_i . ks          (Performer: out = num / den)
    causal       num_i = sum_{j <= i} (qh_i . kh_j) v_j,  den_i = sum_{j <= i} qh_i . kh_j

Features are never stored: every kernel re-projects its q / k tile onto a block of
BLOCK_P projections and takes both signs of the block at once ([W x, -W x] - bias), so
feature f < m and feature m + f come from the same product. State layout: rows 0..m-1 of
kv / ks are the "+" features, rows m..2m-1 the "-" features (the reference's [W; -W]).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from sbbench.kernels._common import (
    Config,
    KernelShape,
    KernelSpec,
    Launch,
    empty,
    feature_precision,
    head_chunks,
    launch_limits,
    needs_int64,
    next_pow2,
    value_chunk,
)
from sbbench.kernels.feature_map import (
    FLOAT32_TINY,
    SUM_COMBINE,
    FeatureWeights,
    load_rows,
    meta_weights,
    project,
    project_rows,
    weight_args,
    wide,
)
from sbbench.kernels.lowrank_setup import (  # noqa: F401 - re-exported
    APPLY_DEFAULT,
    APPLY_SPACE,
    STATE_DEFAULT,
    STATE_SPACE,
    keep_apply,
    keep_state,
    lowrank_shape,
    shared_estimate,
)
from sbbench.kernels.sparse_setup import keep_mask

# ---------------------------------------------------------------- kernels


@triton.jit
def _lowrank_state_kernel(
    k_ptr, v_ptr, w_ptr, w_lo_ptr, kbias_ptr, lk_ptr, keep_ptr, kv_ptr, ks_ptr,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    heads, seq, head_dim, head_dim_v, n_proj, blocks_per_split,
    HAS_MASK: tl.constexpr, ATOMIC: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
    BLOCK_P: tl.constexpr, PREC: tl.constexpr, SPLIT: tl.constexpr, UPCAST: tl.constexpr,
    INT64: tl.constexpr,
):
    """grid (batch * heads, cdiv(m, BLOCK_P), splits): kv and ks of one projection block
    over one slice of the sequence (slices are summed with atomics when splits > 1)."""
    pid_bh = wide(tl.program_id(0), INT64)
    pid_p = tl.program_id(1)
    pid_s = tl.program_id(2)
    b = pid_bh // heads
    h = pid_bh % heads
    p0 = pid_p * BLOCK_P
    offs_p = p0 + tl.arange(0, BLOCK_P)
    offs_d = wide(tl.arange(0, BLOCK_D), INT64)
    offs_dv = wide(tl.arange(0, BLOCK_DV), INT64)
    p_ok = offs_p < n_proj
    lk = tl.load(lk_ptr + pid_bh)
    kv_plus = tl.full([BLOCK_P, BLOCK_DV], 0.0, tl.float32)
    kv_minus = tl.full([BLOCK_P, BLOCK_DV], 0.0, tl.float32)
    ks_plus = tl.full([BLOCK_P], 0.0, tl.float32)
    ks_minus = tl.full([BLOCK_P], 0.0, tl.float32)
    n_start = pid_s * blocks_per_split * BLOCK_N
    n_end = tl.minimum(n_start + blocks_per_split * BLOCK_N, seq)
    for n0 in range(n_start, n_end, BLOCK_N):
        offs_n = wide(n0 + tl.arange(0, BLOCK_N), INT64)
        n_ok = offs_n < seq
        key = tl.load(k_ptr + b * stride_kb + h * stride_kh + offs_n[:, None] * stride_kn
                      + offs_d[None, :] * stride_kd,
                      mask=n_ok[:, None] & (offs_d[None, :] < head_dim), other=0.0)
        val = tl.load(v_ptr + b * stride_vb + h * stride_vh + offs_n[:, None] * stride_vn
                      + offs_dv[None, :] * stride_vd,
                      mask=n_ok[:, None] & (offs_dv[None, :] < head_dim_v), other=0.0)
        kbias = tl.load(kbias_ptr + pid_bh * seq + offs_n, mask=n_ok, other=0.0)
        ok = n_ok
        if HAS_MASK:
            ok = ok & (tl.load(keep_ptr + b * seq + offs_n, mask=n_ok, other=0) != 0)
        proj = project(key, w_ptr, w_lo_ptr, p0, n_proj, head_dim, BLOCK_D, BLOCK_P, PREC,
                       SPLIT, UPCAST)  # [N, P]
        base = kbias[:, None] + lk
        use = ok[:, None] & p_ok[None, :]
        kp = tl.where(use, tl.exp(proj - base), 0.0)  # kh, "+" features  [N, P]
        km = tl.where(use, tl.exp(-proj - base), 0.0)  # kh, "-" features
        val32 = val.to(tl.float32)
        kv_plus += tl.dot(tl.trans(kp), val32, input_precision=PREC)  # [P, N] @ [N, DV]
        kv_minus += tl.dot(tl.trans(km), val32, input_precision=PREC)
        ks_plus += tl.reduce(kp, 0, SUM_COMBINE)
        ks_minus += tl.reduce(km, 0, SUM_COMBINE)
    n_feat = 2 * n_proj
    tile_ok = p_ok[:, None] & (offs_dv[None, :] < head_dim_v)
    kv_rows = kv_ptr + pid_bh * n_feat * head_dim_v + offs_dv[None, :]
    ks_rows = ks_ptr + pid_bh * n_feat
    if ATOMIC:
        tl.atomic_add(kv_rows + offs_p[:, None] * head_dim_v, kv_plus, mask=tile_ok)
        tl.atomic_add(kv_rows + (n_proj + offs_p[:, None]) * head_dim_v, kv_minus, mask=tile_ok)
        tl.atomic_add(ks_rows + offs_p, ks_plus, mask=p_ok)
        tl.atomic_add(ks_rows + n_proj + offs_p, ks_minus, mask=p_ok)
    else:
        tl.store(kv_rows + offs_p[:, None] * head_dim_v, kv_plus, mask=tile_ok)
        tl.store(kv_rows + (n_proj + offs_p[:, None]) * head_dim_v, kv_minus, mask=tile_ok)
        tl.store(ks_rows + offs_p, ks_plus, mask=p_ok)
        tl.store(ks_rows + n_proj + offs_p, ks_minus, mask=p_ok)


@triton.jit
def _lowrank_apply_kernel(
    q_ptr, w_ptr, w_lo_ptr, qshift_ptr, kv_ptr, ks_ptr, out_ptr, den_ptr,
    stride_qb, stride_qh, stride_qn, stride_qd,
    stride_ob, stride_oh, stride_on, stride_od,
    heads, seq, head_dim, head_dim_v, n_proj,
    BLOCK_M: tl.constexpr, BLOCK_DK: tl.constexpr, BLOCK_DV: tl.constexpr,
    BLOCK_P: tl.constexpr, PREC: tl.constexpr, SPLIT: tl.constexpr, UPCAST: tl.constexpr,
    WRITE_SUMS: tl.constexpr, INT64: tl.constexpr, CHUNKED: tl.constexpr,
):
    """grid (batch * heads, cdiv(seq, BLOCK_M), cdiv(dv, BLOCK_DV)): Performer output rows
    out_i = (qh_i kv) / max(qh_i . ks, tiny), or with WRITE_SUMS the float32 numerator
    (into out) and denominator (into den) for the sparse kernel to merge."""
    pid_bh = wide(tl.program_id(0), INT64)
    pid_m = tl.program_id(1)
    b = pid_bh // heads
    h = pid_bh % heads
    offs_m = wide(pid_m * BLOCK_M + tl.arange(0, BLOCK_M), INT64)
    offs_dv = wide(tl.program_id(2) * BLOCK_DV + tl.arange(0, BLOCK_DV), INT64)
    m_ok = offs_m < seq
    dv_ok = offs_dv < head_dim_v
    # the rows, read BLOCK_DK columns at a time (feature_map.project_rows)
    x_rows = q_ptr + b * stride_qb + h * stride_qh + offs_m * stride_qn
    x = x_rows  # the whole rows, loaded once where they fit one chunk (else unused)
    if not CHUNKED:
        x = load_rows(x_rows, m_ok, stride_qd, 0, head_dim, BLOCK_DK, INT64)
    shift = tl.load(qshift_ptr + pid_bh * seq + offs_m, mask=m_ok, other=0.0)
    num = tl.full([BLOCK_M, BLOCK_DV], 0.0, tl.float32)
    den = tl.full([BLOCK_M], 0.0, tl.float32)
    n_feat = 2 * n_proj
    for p0 in range(0, n_proj, BLOCK_P):
        offs_p = p0 + tl.arange(0, BLOCK_P)
        p_ok = offs_p < n_proj
        proj = project_rows(x, x_rows, m_ok, stride_qd, w_ptr, w_lo_ptr, p0, n_proj, head_dim,
                            BLOCK_M, BLOCK_DK, BLOCK_P, PREC, SPLIT, UPCAST, 0, CHUNKED,
                            INT64)  # [M, P]
        qp = tl.where(p_ok[None, :], tl.exp(proj - shift[:, None]), 0.0)
        qm = tl.where(p_ok[None, :], tl.exp(-proj - shift[:, None]), 0.0)
        rows = kv_ptr + pid_bh * n_feat * head_dim_v + offs_dv[None, :]
        tile_ok = p_ok[:, None] & dv_ok[None, :]
        kv_plus = tl.load(rows + offs_p[:, None] * head_dim_v, mask=tile_ok, other=0.0)
        kv_minus = tl.load(rows + (n_proj + offs_p[:, None]) * head_dim_v, mask=tile_ok,
                           other=0.0)
        ks_plus = tl.load(ks_ptr + pid_bh * n_feat + offs_p, mask=p_ok, other=0.0)
        ks_minus = tl.load(ks_ptr + pid_bh * n_feat + n_proj + offs_p, mask=p_ok, other=0.0)
        # [M, P] @ [P, DV] -> [M, DV]
        num += tl.dot(qp, kv_plus, input_precision=PREC)
        num += tl.dot(qm, kv_minus, input_precision=PREC)
        den += tl.reduce(qp * ks_plus[None, :], 1, SUM_COMBINE) \
            + tl.reduce(qm * ks_minus[None, :], 1, SUM_COMBINE)
    out_ptrs = out_ptr + b * stride_ob + h * stride_oh + offs_m[:, None] * stride_on \
        + offs_dv[None, :] * stride_od
    if WRITE_SUMS:
        tl.store(out_ptrs, num, mask=m_ok[:, None] & dv_ok[None, :])
        # (every block of columns has den; the first writes it)
        tl.store(den_ptr + pid_bh * seq + offs_m, den,
                 mask=offs_m < tl.where(tl.program_id(2) == 0, seq, 0))
    else:
        out = num / tl.maximum(den, FLOAT32_TINY)[:, None]
        tl.store(out_ptrs, out.to(out_ptr.dtype.element_ty), mask=m_ok[:, None] & dv_ok[None, :])


# ---------------------------------------------------------------- launchers


def mask_arg(key_padding_mask: torch.Tensor | None, fallback: torch.Tensor, batch: int,
             seq: int) -> torch.Tensor:
    """[batch, seq] bool -> contiguous int8 (the kernels read bytes); ``fallback`` (a dummy
    pointer) if None."""
    mask = keep_mask(key_padding_mask, batch, seq)
    return fallback if mask is None else mask


def check_rows(name: str, t: torch.Tensor, shape: tuple[int, ...]) -> None:
    if tuple(t.shape) != shape or t.dtype != torch.float32 or not t.is_contiguous():
        raise ValueError(f"{name} must be contiguous float32 {list(shape)}, got "
                         f"{t.dtype} {tuple(t.shape)} (contiguous={t.is_contiguous()})")


def default_splits(batch_heads: int, p_blocks: int, seq_blocks: int, device: torch.device) -> int:
    """Sequence slices of the state reduction: enough programs for ~2 waves on the GPU
    (each program holds a [BLOCK_P, dv] state, so batch * heads * p_blocks alone can leave
    most SMs idle at long sequences); 1 elsewhere (the interpreter runs programs serially)."""
    if device.type != "cuda":
        return 1
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    return max(1, min(seq_blocks, triton.cdiv(2 * sms, batch_heads * p_blocks)))


def _state_launch(k, v, weights, k_bias, lk, key_padding_mask, config, splits,
                  residual=False) -> Launch:
    batch, heads, seq, head_dim = k.shape
    head_dim_v = v.shape[-1]
    n_proj = weights.n_proj
    check_rows("k_bias", k_bias, (batch, heads, seq))
    check_rows("lk", lk, (batch, heads))
    p_blocks = triton.cdiv(n_proj, config["BLOCK_P"])
    seq_blocks = triton.cdiv(seq, config["BLOCK_N"])
    if splits is None:
        splits = default_splits(batch * heads, p_blocks, seq_blocks, k.device)
    splits = max(1, min(int(splits), seq_blocks))
    blocks_per_split = triton.cdiv(seq_blocks, splits)
    splits = triton.cdiv(seq_blocks, blocks_per_split)
    atomic = splits > 1
    alloc = torch.zeros if atomic else (lambda s, dtype, device: empty(s, dtype, device))
    kv = alloc((batch, heads, 2 * n_proj, head_dim_v), dtype=torch.float32, device=k.device)
    ks = alloc((batch, heads, 2 * n_proj), dtype=torch.float32, device=k.device)
    args = dict(
        k_ptr=k, v_ptr=v, **weight_args(weights, k, _lowrank_state_kernel), kbias_ptr=k_bias,
        lk_ptr=lk,
        keep_ptr=mask_arg(key_padding_mask, k_bias, batch, seq), kv_ptr=kv, ks_ptr=ks,
        stride_kb=k.stride(0), stride_kh=k.stride(1), stride_kn=k.stride(2),
        stride_kd=k.stride(3),
        stride_vb=v.stride(0), stride_vh=v.stride(1), stride_vn=v.stride(2),
        stride_vd=v.stride(3),
        heads=heads, seq=seq, head_dim=head_dim, head_dim_v=head_dim_v, n_proj=n_proj,
        blocks_per_split=blocks_per_split,
        HAS_MASK=key_padding_mask is not None, ATOMIC=atomic,
        BLOCK_N=config["BLOCK_N"], BLOCK_D=next_pow2(head_dim), BLOCK_DV=next_pow2(head_dim_v),
        BLOCK_P=config["BLOCK_P"], PREC=feature_precision(k.dtype, residual),
    )
    args["INT64"] = needs_int64(args.values())
    return Launch(_lowrank_state_kernel, (batch * heads, p_blocks, splits), args,
                  config["num_warps"], config["num_stages"], outputs=(kv, ks))


def lowrank_state(
    k: torch.Tensor, v: torch.Tensor, weights: FeatureWeights, k_bias: torch.Tensor,
    lk: torch.Tensor, key_padding_mask: torch.Tensor | None = None, *,
    config: Config | None = None, splits: int | None = None, residual: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Non-causal low-rank state in the hat scale.

    k: [batch, heads, seq, head_dim]; v: [batch, heads, seq, head_dim_v]; weights:
    feature_map.scaled_projections for k's dtype; k_bias: [batch, heads, seq] and lk:
    [batch, heads] float32 (from feature_map) -> kv = kh^T V [batch, heads, 2m, head_dim_v],
    ks = kh^T 1 [batch, heads, 2m] (float32). ``splits`` slices of the sequence run in
    parallel (None: fill the GPU). ``residual``: the state feeds a Scatterbrain residual
    (products in tf32x3 for half inputs: _common.feature_precision).
    """
    config = STATE_SPEC.choose(config, launch_limits(k.device),
                               lowrank_shape(k, v, weights.n_proj))
    return _state_launch(k, v, weights, k_bias, lk, key_padding_mask, config, splits,
                         residual).run()


def _apply_launch(q, weights, q_shift, kv, ks, config, out, sums=False, residual=False
                  ) -> Launch:
    batch, heads, seq, head_dim = q.shape
    n_proj = weights.n_proj
    head_dim_v = kv.shape[-1]
    check_rows("q_shift", q_shift, (batch, heads, seq))
    check_rows("kv", kv, (batch, heads, 2 * n_proj, head_dim_v))
    check_rows("ks", ks, (batch, heads, 2 * n_proj))
    den = None
    if sums:  # float32 numerator / denominator in the hat scale
        out = empty((batch, heads, seq, head_dim_v), torch.float32, q.device)
        den = empty((batch, heads, seq), torch.float32, q.device)
    elif out is None:
        out = empty((batch, heads, seq, head_dim_v), q.dtype, q.device)
    elif tuple(out.shape) != (batch, heads, seq, head_dim_v):
        raise ValueError(f"out must be [{batch}, {heads}, {seq}, {head_dim_v}], "
                         f"got {tuple(out.shape)}")
    args = dict(
        q_ptr=q, **weight_args(weights, q, _lowrank_apply_kernel), qshift_ptr=q_shift, kv_ptr=kv,
        ks_ptr=ks, out_ptr=out, den_ptr=den if sums else out,
        stride_qb=q.stride(0), stride_qh=q.stride(1), stride_qn=q.stride(2),
        stride_qd=q.stride(3),
        stride_ob=out.stride(0), stride_oh=out.stride(1), stride_on=out.stride(2),
        stride_od=out.stride(3),
        heads=heads, seq=seq, head_dim=head_dim, head_dim_v=head_dim_v, n_proj=n_proj,
        BLOCK_M=config["BLOCK_M"], **head_chunks(head_dim, q.element_size()),
        BLOCK_DV=value_chunk(head_dim_v),
        BLOCK_P=config["BLOCK_P"], PREC=feature_precision(q.dtype, residual), WRITE_SUMS=sums,
    )
    args["INT64"] = needs_int64(args.values())
    grid = (batch * heads, triton.cdiv(seq, config["BLOCK_M"]),
            triton.cdiv(head_dim_v, args["BLOCK_DV"]))
    return Launch(_lowrank_apply_kernel, grid, args, config["num_warps"], config["num_stages"],
                  outputs=(out, den) if sums else (out,))


def lowrank_apply(
    q: torch.Tensor, weights: FeatureWeights, q_shift: torch.Tensor, kv: torch.Tensor,
    ks: torch.Tensor, *, config: Config | None = None, out: torch.Tensor | None = None,
    sums: bool = False, residual: bool = False,
):
    """Performer output (non-causal): q [batch, heads, seq, head_dim] with the state of
    :func:`lowrank_state` -> out [batch, heads, seq, head_dim_v] in q's dtype; with
    ``sums`` the float32 hat-scale numerator [batch, heads, seq, head_dim_v] and
    denominator [batch, heads, seq] instead (what the sparse kernel merges; ``residual``
    as in :func:`lowrank_state`)."""
    config = APPLY_SPEC.choose(config, launch_limits(q.device),
                               lowrank_shape(q, kv, weights.n_proj))
    outputs = _apply_launch(q, weights, q_shift, kv, ks, config, out, sums, residual).run()
    return outputs if sums else outputs[0]


def meta_inputs(shape: KernelShape, seq: int):
    dtype = shape.dtype
    q = torch.empty(1, 1, seq, shape.head_dim, dtype=dtype, device="meta")
    v = torch.empty(1, 1, seq, shape.head_dim_v, dtype=dtype, device="meta")
    w = meta_weights(shape)
    rows = torch.empty(1, 1, seq, device="meta")
    lk = torch.empty(1, 1, device="meta")
    return q, v, w, rows, lk


def plan_state(shape: KernelShape, config: Config, seq: int = 4096, limits=None) -> Launch:
    q, v, w, rows, lk = meta_inputs(shape, seq)
    return _state_launch(q, v, w, rows, lk, None, config, splits=4, residual=True)


def plan_apply(shape: KernelShape, config: Config, seq: int = 4096, limits=None) -> Launch:
    q, v, w, rows, _ = meta_inputs(shape, seq)
    kv = torch.empty(1, 1, shape.n_features, shape.head_dim_v, device="meta")
    ks = torch.empty(1, 1, shape.n_features, device="meta")
    return _apply_launch(q, w, rows, kv, ks, config, None, sums=True, residual=True)


STATE_SPEC = KernelSpec("lowrank_state", STATE_SPACE, STATE_DEFAULT, keep_state, plan_state)
APPLY_SPEC = KernelSpec("lowrank_apply", APPLY_SPACE, APPLY_DEFAULT, keep_apply, plan_apply)
