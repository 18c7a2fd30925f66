"""The fixed part of the support: sink keys and a local window, one program per (batch *
head, block of BLOCK_M queries in original order).

Query i attends to the sink keys 0 .. sink - 1 and to its window i - left .. i - left +
window - 1 (causal: left = window - 1, the previous keys and itself; otherwise centred,
left = (window - 1) // 2). A sink key inside the query's window counts in the window only,
so every pair counts once (as sbbench.attention.fixed.fixed_part; the bucket rounds leave
these pairs out). The window keys of a block of queries are one contiguous run of BLOCK_M +
window - 1 keys, band-masked: dense [BLOCK_M, BLOCK_N] tiles (tensor cores), walked in
BLOCK_N steps after the sink keys' tiles, with the residual

    r_ij = exp(tau q_i . k_j - lambda_i) - (qh_i . kh_j) exp(l_i - lambda_i)

(no low-rank part: no second term) folded into the row's running (num, den, lambda) as an
online softmax. The program starts from the low-rank numerator / denominator (lowrank_apply
sums or lowrank_causal) and either writes the running sums for the bucket rounds
(sparse.py, which then merge into them) or, without buckets, ``out = num / den``.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl
from sbbench.kernels._common import (
    Config,
    DeviceLimits,
    KernelShape,
    KernelSpec,
    Launch,
    empty,
    feature_precision,
    fits_registers,
    fold_grid,
    head_chunks,
    launch_limits,
    needs_int64,
    next_pow2,
)
from sbbench.kernels.feature_map import (
    FLOAT32_TINY,
    MAX_COMBINE,
    SUM_COMBINE,
    dot_rows,
    interpreted,
    load_rows,
    meta_weights,
    mma,
    project_rows,
    weight_args,
    wide,
)
from sbbench.kernels.sparse_setup import check_lowrank, keep_mask, running_sums


@triton.jit
def _fixed_kernel(
    q_ptr, k_ptr, v_ptr, out_ptr, keep_ptr,
    w_ptr, w_lo_ptr, qshift_ptr, qbias_ptr, kbias_ptr, lk_ptr, lrnum_ptr, lrden_ptr,
    acc_num_ptr, acc_den_ptr, acc_lam_ptr,
    stride_qb, stride_qh, stride_qn, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_ob, stride_oh, stride_on, stride_od,
    heads, seq, head_dim, head_dim_v, n_proj, scale, sink, window, left, n_tiles, tiles_y,
    CAUSAL: tl.constexpr, HAS_MASK: tl.constexpr, LOWRANK: tl.constexpr, LAST: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_DK: tl.constexpr,
    BLOCK_DV: tl.constexpr, BLOCK_P: tl.constexpr, PREC: tl.constexpr, PREC_F: tl.constexpr,
    SPLIT: tl.constexpr, UPCAST: tl.constexpr, INT64: tl.constexpr, CHUNKED: tl.constexpr,
):
    pid_bh = wide(tl.program_id(0), INT64)
    tile = tl.program_id(1) + tl.program_id(2) * tiles_y  # past n_tiles: nothing to do
    b = pid_bh // heads
    h = pid_bh % heads
    m0 = tile * BLOCK_M
    q_pos = wide(m0 + tl.arange(0, BLOCK_M), INT64)
    q_ok = q_pos < tl.where(tile < n_tiles, seq, 0)
    offs_dv = wide(tl.arange(0, BLOCK_DV), INT64)
    dv_ok = offs_dv < head_dim_v
    row_ok = q_ok[:, None] & dv_ok[None, :]
    acc_rows = pid_bh * seq + q_pos
    # q and k rows are read BLOCK_DK columns at a time (feature_map.project_rows): whole
    # [rows, head_dim] tiles spilled at float32 head_dim 128 and half head_dim 256
    q_rows = q_ptr + b * stride_qb + h * stride_qh + q_pos * stride_qn
    qb = q_rows  # the whole rows, loaded once where they fit one chunk (else unused)
    if not CHUNKED:
        qb = load_rows(q_rows, q_ok, stride_qd, 0, head_dim, BLOCK_DK, INT64)
    # ---- the running sums start from the low-rank part (hat scale, log-scale l_i)
    if LOWRANK:
        qshift = tl.load(qshift_ptr + pid_bh * seq + q_pos, mask=q_ok, other=0.0)
        lk = tl.load(lk_ptr + pid_bh)
        log_lr = qshift - tl.load(qbias_ptr + pid_bh * seq + q_pos, mask=q_ok, other=0.0) + lk
        num = tl.load(lrnum_ptr + acc_rows[:, None] * head_dim_v + offs_dv[None, :],
                      mask=row_ok, other=0.0)
        den = tl.load(lrden_ptr + acc_rows, mask=q_ok, other=0.0)
        lam = log_lr
    else:
        num = tl.full([BLOCK_M, BLOCK_DV], 0.0, tl.float32)
        den = tl.full([BLOCK_M], 0.0, tl.float32)
        lam = tl.full([BLOCK_M], float("-inf"), tl.float32)
    # ---- key tiles: the sink keys first, then the block's window run [w_lo, w_hi)
    low = q_pos - left  # window of query i: low_i .. low_i + window - 1
    sink_tiles = (sink + BLOCK_N - 1) // BLOCK_N
    w_lo = tl.maximum(m0 - left, 0)
    w_hi = tl.where(window > 0, tl.minimum(m0 - left + BLOCK_M + window - 1, seq), w_lo)
    w_tiles = (tl.maximum(w_hi - w_lo, 0) + BLOCK_N - 1) // BLOCK_N
    for t in range(0, sink_tiles + w_tiles):
        is_sink = tl.where(t < sink_tiles, 1, 0)
        start = tl.where(t < sink_tiles, t * BLOCK_N, w_lo + (t - sink_tiles) * BLOCK_N)
        k_pos = wide(start + tl.arange(0, BLOCK_N), INT64)
        end = tl.where(t < sink_tiles, sink, w_hi)
        key_ok = (k_pos < end) & (k_pos < seq)
        if HAS_MASK:
            key_ok = key_ok & (tl.load(keep_ptr + b * seq + k_pos, mask=key_ok, other=0) != 0)
        in_window = ((k_pos[None, :] >= low[:, None])
                     & (k_pos[None, :] < low[:, None] + window)).to(tl.int32)
        # a sink tile takes the keys outside the window, a window tile those inside it
        valid = (in_window != is_sink) & key_ok[None, :] & q_ok[:, None]
        if CAUSAL:
            valid = valid & (k_pos[None, :] <= q_pos[:, None])
        k_rows = k_ptr + b * stride_kb + h * stride_kh + k_pos * stride_kn
        kb = k_rows
        if not CHUNKED:
            kb = load_rows(k_rows, key_ok, stride_kd, 0, head_dim, BLOCK_DK, INT64)
        # [M, D] @ [D, N] -> [M, N]
        logits = dot_rows(qb, q_rows, q_ok, stride_qd, kb, k_rows, key_ok, stride_kd, head_dim,
                          BLOCK_M, BLOCK_N, BLOCK_DK, PREC, UPCAST, CHUNKED, INT64)
        logits = tl.where(valid, logits * scale, float("-inf"))
        new_lam = tl.maximum(lam, tl.reduce(logits, 1, MAX_COMBINE))
        new_lam = tl.where((new_lam == new_lam) & (tl.abs(new_lam) < float("inf")),
                           new_lam, 0.0)
        resid = tl.exp(logits - new_lam[:, None])  # 0 where invalid (logit -inf)
        vb = tl.load(v_ptr + b * stride_vb + h * stride_vh + k_pos[:, None] * stride_vn
                     + offs_dv[None, :] * stride_vd, mask=key_ok[:, None] & dv_ok[None, :],
                     other=0.0)
        if LOWRANK:  # est_ij = qh_i . kh_j, features recomputed from q, k and W_s
            kbias = tl.load(kbias_ptr + pid_bh * seq + k_pos, mask=key_ok, other=0.0)
            est = tl.full([BLOCK_M, BLOCK_N], 0.0, tl.float32)
            for p0 in range(0, n_proj, BLOCK_P):
                p_ok = (p0 + tl.arange(0, BLOCK_P)) < n_proj
                proj_q = project_rows(qb, q_rows, q_ok, stride_qd, w_ptr, w_lo_ptr, p0, n_proj,
                                      head_dim, BLOCK_M, BLOCK_DK, BLOCK_P, PREC_F, SPLIT,
                                      UPCAST, 0, CHUNKED,
                            INT64)  # [M, P]
                qp = tl.where(p_ok[None, :], tl.exp(proj_q - qshift[:, None]), 0.0)
                qm = tl.where(p_ok[None, :], tl.exp(-proj_q - qshift[:, None]), 0.0)
                proj_k = project_rows(kb, k_rows, key_ok, stride_kd, w_ptr, w_lo_ptr, p0,
                                      n_proj, head_dim, BLOCK_N, BLOCK_DK, BLOCK_P, PREC_F,
                                      SPLIT, UPCAST, 0, CHUNKED, INT64)  # [N, P]
                base = kbias[:, None] + lk
                use = key_ok[:, None] & p_ok[None, :]
                kp = tl.where(use, tl.exp(proj_k - base), 0.0)
                km = tl.where(use, tl.exp(-proj_k - base), 0.0)
                # [M, P] @ [P, N] -> [M, N]
                est += tl.dot(qp, tl.trans(kp), input_precision=PREC_F)
                est += tl.dot(qm, tl.trans(km), input_precision=PREC_F)
            resid = tl.where(valid, resid - est * tl.exp(log_lr - new_lam)[:, None], 0.0)
            # a difference of exact and estimated weights: fp32 product (sparse.py)
            part = mma(resid, vb.to(tl.float32), PREC_F, False)  # [M, N] @ [N, DV]
        else:  # softmax weights in [0, 1]: half-precision product, as flash attention
            part = mma(resid.to(vb.dtype), vb, PREC, UPCAST)
        keep_old = tl.exp(lam - new_lam)
        num = num * keep_old[:, None] + part
        den = den * keep_old + tl.reduce(resid, 1, SUM_COMBINE)
        lam = new_lam
    if LAST:
        out = num / tl.maximum(den, FLOAT32_TINY)[:, None]
        tl.store(out_ptr + b * stride_ob + h * stride_oh + q_pos[:, None] * stride_on
                 + offs_dv[None, :] * stride_od, out.to(out_ptr.dtype.element_ty), mask=row_ok)
    else:
        tl.store(acc_num_ptr + acc_rows[:, None] * head_dim_v + offs_dv[None, :], num,
                 mask=row_ok)
        tl.store(acc_den_ptr + acc_rows, den, mask=q_ok)
        tl.store(acc_lam_ptr + acc_rows, lam, mask=q_ok)


# ---------------------------------------------------------------- search space

SPACE = {
    "BLOCK_M": (16, 32, 64),
    "BLOCK_N": (16, 32, 64),
    "BLOCK_P": (16, 32),
    "num_warps": (2, 4, 8),
    "num_stages": (1, 2),
}
# the fallback default: launches take the per-shape default of kernels/default_table.py
# where it has a row (spill-free where a config is, reports/kernels/static_resources.md);
# elsewhere this one, or the nearest config keep() leaves
DEFAULT = {"BLOCK_M": 32, "BLOCK_N": 32, "BLOCK_P": 16, "num_warps": 4, "num_stages": 1}


def keep(config: Config, limits: DeviceLimits, shape: KernelShape | None = None) -> bool:
    """Whether ``config`` fits registers and shared memory. Live float32 elements: logits
    and estimate [M, N], the feature tiles [M, P] and [N, P] (three each), the running
    numerator [M, dv] and the v tile [N, dv]; q [M, d] and k [N, d] in the input dtype."""
    shape = shape or KernelShape(head_dim=128, head_dim_v=128)
    m, n, p = config["BLOCK_M"], config["BLOCK_N"], config["BLOCK_P"]
    block_d, block_dv = next_pow2(shape.head_dim), next_pow2(shape.head_dim_v)
    words = shape.dtype_bytes / 4
    live = 2 * m * n + (3 * (m + n) * p if shape.n_features else 0) \
        + words * (m + n) * block_d + (m + n) * block_dv
    if not fits_registers(int(live), config["num_warps"], limits):
        return False
    shared = config["num_stages"] * 2 * shape.dtype_bytes * block_d * p \
        + shape.dtype_bytes * (m + n) * block_d + 4 * m * n + 4 * n * block_dv
    return shared <= limits.shared_bytes


# ---------------------------------------------------------------- launcher


def fixed_launch(q, k, v, *, scale: float, sink: int, window: int, causal: bool, keep,
                 lowrank: dict | None, out, acc, last: bool, config: Config | None = None,
                 choose: bool = True) -> Launch:
    """The sink / window launch: ``keep`` the int8 key mask (or None); lowrank None or
    the dict of sparse.sparse_attention with the sums ``num`` / ``den`` (not kv); writes
    ``out`` if ``last``, else the running sums ``acc`` = (num, den, lam). ``config`` goes
    through FIXED_SPEC.choose for the device unless ``choose`` is False (static plans)."""
    batch, heads, seq, head_dim = q.shape
    head_dim_v = v.shape[-1]
    if sink < 0 or window < 0 or not (sink or window):
        raise ValueError(f"the fixed part needs sink >= 0, window >= 0, one of them > 0; "
                         f"got sink={sink}, window={window}")
    lr = lowrank or {}
    if "kv" in lr:
        raise ValueError("the sink / window kernel takes the low-rank sums (num, den), "
                         "not the kv state")
    n_proj = check_lowrank(lowrank, batch, heads, seq, head_dim_v)
    shape = KernelShape(head_dim=head_dim, head_dim_v=head_dim_v, n_features=2 * n_proj,
                        dtype_bytes=q.element_size())
    if choose:
        config = FIXED_SPEC.choose(config, launch_limits(q.device), shape)
    dummy = out
    acc = acc or (dummy, dummy, dummy)
    n_tiles = -(-seq // config["BLOCK_M"])
    grid, tiles_y = fold_grid(batch * heads, n_tiles)
    args = dict(
        q_ptr=q, k_ptr=k, v_ptr=v, out_ptr=out, keep_ptr=keep if keep is not None else dummy,
        qshift_ptr=lr.get("q_shift", dummy), qbias_ptr=lr.get("q_bias", dummy),
        kbias_ptr=lr.get("k_bias", dummy), lk_ptr=lr.get("lk", dummy),
        lrnum_ptr=lr.get("num", dummy), lrden_ptr=lr.get("den", dummy),
        acc_num_ptr=acc[0], acc_den_ptr=acc[1], acc_lam_ptr=acc[2],
        stride_qb=q.stride(0), stride_qh=q.stride(1), stride_qn=q.stride(2),
        stride_qd=q.stride(3),
        stride_kb=k.stride(0), stride_kh=k.stride(1), stride_kn=k.stride(2),
        stride_kd=k.stride(3),
        stride_vb=v.stride(0), stride_vh=v.stride(1), stride_vn=v.stride(2),
        stride_vd=v.stride(3),
        stride_ob=out.stride(0), stride_oh=out.stride(1), stride_on=out.stride(2),
        stride_od=out.stride(3),
        heads=heads, seq=seq, head_dim=head_dim, head_dim_v=head_dim_v, n_proj=n_proj,
        scale=float(scale), sink=min(sink, seq), window=window,
        left=window - 1 if causal else (window - 1) // 2, n_tiles=n_tiles, tiles_y=tiles_y,
        CAUSAL=bool(causal), HAS_MASK=keep is not None, LOWRANK=lowrank is not None,
        LAST=bool(last), BLOCK_M=config["BLOCK_M"], BLOCK_N=config["BLOCK_N"],
        **head_chunks(head_dim, q.element_size()), BLOCK_DV=next_pow2(head_dim_v),
        BLOCK_P=config["BLOCK_P"],
        # every float32 product feeding the residual's cancellation: tf32x3 (sparse.py)
        PREC=feature_precision(q.dtype), PREC_F=feature_precision(q.dtype, residual=True),
    )
    if lowrank is not None:
        args.update(weight_args(lr["weights"], q, _fixed_kernel))
    else:
        args.update(w_ptr=dummy, w_lo_ptr=dummy, SPLIT=False,
                    UPCAST=q.dtype == torch.bfloat16 and interpreted(_fixed_kernel))
    args["INT64"] = needs_int64(args.values())
    return Launch(_fixed_kernel, grid, args, config["num_warps"], config["num_stages"],
                  outputs=(out,))


def fixed_attention(q, k, v, *, scale: float, sink: int, window: int, causal: bool = False,
                    key_padding_mask: torch.Tensor | None = None, lowrank: dict | None = None,
                    config: Config | None = None, out: torch.Tensor | None = None
                    ) -> torch.Tensor:
    """Sink and window attention without buckets (sparse=None), merged with the low-rank
    sums if given: [batch, heads, seq, head_dim_v] in q's dtype."""
    batch, heads, seq, _ = q.shape
    if out is None:
        out = empty((batch, heads, seq, v.shape[-1]), q.dtype, q.device)
    fixed_launch(q, k, v, scale=scale, sink=sink, window=window, causal=causal,
                 keep=keep_mask(key_padding_mask, batch, seq), lowrank=lowrank, out=out,
                 acc=None, last=True, config=config).run()
    return out


def plan(shape: KernelShape, config: Config, seq: int = 4096,
         limits: DeviceLimits | None = None) -> Launch:
    """The sink / window launch of a non-causal Scatterbrain forward with buckets (writes
    the running sums; low-rank from sums) with 4 sinks and a 128-key window, on meta
    tensors, for the static compiler (the tiles do not depend on ``limits``)."""
    del limits  # one plan for every architecture
    dtype = shape.dtype
    q = torch.empty(1, 1, seq, shape.head_dim, dtype=dtype, device="meta")
    v = torch.empty(1, 1, seq, shape.head_dim_v, dtype=dtype, device="meta")
    rows = torch.empty(1, 1, seq, device="meta")
    lowrank = None
    if shape.n_features:
        lowrank = dict(weights=meta_weights(shape), q_shift=rows, q_bias=rows, k_bias=rows,
                       lk=torch.empty(1, 1, device="meta"), den=rows,
                       num=torch.empty(1, 1, seq, shape.head_dim_v, device="meta"))
    acc = running_sums(1, 1, seq, shape.head_dim_v, "meta")
    return fixed_launch(q, q, v, scale=1.0 / math.sqrt(shape.head_dim), sink=4, window=128,
                        causal=False, keep=None, lowrank=lowrank, out=torch.empty_like(v),
                        acc=acc, last=False, config=config, choose=False)


FIXED_SPEC = KernelSpec("fixed", SPACE, DEFAULT, keep, plan)
