"""The causal low-rank part: prefix sums num_i = sum_{j <= i} (qh_i . kh_j) v_j and
den_i = sum_{j <= i} qh_i . kh_j, in the hat scale of feature_map.py, with the log-space
feature map fused into the chunked reduction (see lowrank.py for the non-causal state and
the shared launch helpers).

Each program walks the sequence in [BLOCK_N] chunks of one (batch, head) and one block of
BLOCK_P projections: the state before the chunk times phi(Q) plus the masked [BLOCK_N,
BLOCK_N] quadratic term inside it, as the torch reference's chunked prefix sums.
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
    launch_limits,
    needs_int64,
    next_pow2,
)
from sbbench.kernels.feature_map import (
    SUM_COMBINE,
    FeatureWeights,
    project,
    weight_args,
    wide,
)
from sbbench.kernels.lowrank import check_rows, mask_arg, meta_inputs
from sbbench.kernels.lowrank_setup import (  # noqa: F401 - re-exported
    CAUSAL_DEFAULT,
    CAUSAL_SPACE,
    keep_causal,
    lowrank_shape,
)

# ---------------------------------------------------------------- kernel


@triton.jit
def _lowrank_causal_kernel(
    q_ptr, k_ptr, v_ptr, w_ptr, w_lo_ptr, qshift_ptr, kbias_ptr, lk_ptr, keep_ptr, num_ptr,
    den_ptr,
    stride_qb, stride_qh, stride_qn, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    heads, seq, head_dim, head_dim_v, n_proj,
    HAS_MASK: tl.constexpr, ATOMIC: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
    BLOCK_P: tl.constexpr, PREC: tl.constexpr, SPLIT: tl.constexpr, UPCAST: tl.constexpr,
    INT64: tl.constexpr,
):
    """grid (batch * heads, cdiv(m, BLOCK_P)): causal num / den of one projection block,
    walking the sequence in chunks of BLOCK_N with the state before the chunk plus the
    masked quadratic term inside it. Blocks are summed with atomics when there are several.
    """
    pid_bh = wide(tl.program_id(0), INT64)
    pid_p = tl.program_id(1)
    b = pid_bh // heads
    h = pid_bh % heads
    p0 = pid_p * BLOCK_P
    p_ok = (p0 + tl.arange(0, BLOCK_P)) < n_proj
    offs_d = wide(tl.arange(0, BLOCK_D), INT64)
    offs_dv = wide(tl.arange(0, BLOCK_DV), INT64)
    dv_ok = offs_dv < head_dim_v
    d_ok = offs_d < head_dim
    lk = tl.load(lk_ptr + pid_bh)
    state_plus = tl.full([BLOCK_P, BLOCK_DV], 0.0, tl.float32)  # sum_{j < chunk} kh_j v_j^T
    state_minus = tl.full([BLOCK_P, BLOCK_DV], 0.0, tl.float32)
    z_plus = tl.full([BLOCK_P], 0.0, tl.float32)  # sum_{j < chunk} kh_j
    z_minus = tl.full([BLOCK_P], 0.0, tl.float32)
    for n0 in range(0, seq, BLOCK_N):
        offs_n = wide(n0 + tl.arange(0, BLOCK_N), INT64)
        n_ok = offs_n < seq
        xq = tl.load(q_ptr + b * stride_qb + h * stride_qh + offs_n[:, None] * stride_qn
                     + offs_d[None, :] * stride_qd,
                     mask=n_ok[:, None] & d_ok[None, :], other=0.0)
        xk = tl.load(k_ptr + b * stride_kb + h * stride_kh + offs_n[:, None] * stride_kn
                     + offs_d[None, :] * stride_kd,
                     mask=n_ok[:, None] & d_ok[None, :], other=0.0)
        val = tl.load(v_ptr + b * stride_vb + h * stride_vh + offs_n[:, None] * stride_vn
                      + offs_dv[None, :] * stride_vd,
                      mask=n_ok[:, None] & dv_ok[None, :], other=0.0).to(tl.float32)
        shift = tl.load(qshift_ptr + pid_bh * seq + offs_n, mask=n_ok, other=0.0)
        kbias = tl.load(kbias_ptr + pid_bh * seq + offs_n, mask=n_ok, other=0.0)
        ok = n_ok
        if HAS_MASK:
            ok = ok & (tl.load(keep_ptr + b * seq + offs_n, mask=n_ok, other=0) != 0)
        proj_q = project(xq, w_ptr, w_lo_ptr, p0, n_proj, head_dim, BLOCK_D, BLOCK_P, PREC,
                         SPLIT, UPCAST)  # [N, P]
        proj_k = project(xk, w_ptr, w_lo_ptr, p0, n_proj, head_dim, BLOCK_D, BLOCK_P, PREC,
                         SPLIT, UPCAST)
        qp = tl.where(p_ok[None, :], tl.exp(proj_q - shift[:, None]), 0.0)
        qm = tl.where(p_ok[None, :], tl.exp(-proj_q - shift[:, None]), 0.0)
        use = ok[:, None] & p_ok[None, :]
        base = kbias[:, None] + lk
        kp = tl.where(use, tl.exp(proj_k - base), 0.0)
        km = tl.where(use, tl.exp(-proj_k - base), 0.0)
        # state before the chunk: [N, P] @ [P, DV]
        num = tl.dot(qp, state_plus, input_precision=PREC)
        num += tl.dot(qm, state_minus, input_precision=PREC)
        den = tl.reduce(qp * z_plus[None, :], 1, SUM_COMBINE) \
            + tl.reduce(qm * z_minus[None, :], 1, SUM_COMBINE)
        # inside the chunk: [N, P] @ [P, N] -> [N, N], keys j <= query i
        scores = tl.dot(qp, tl.trans(kp), input_precision=PREC)
        scores += tl.dot(qm, tl.trans(km), input_precision=PREC)
        scores = tl.where(offs_n[None, :] <= offs_n[:, None], scores, 0.0)
        num += tl.dot(scores, val, input_precision=PREC)  # [N, N] @ [N, DV]
        den += tl.reduce(scores, 1, SUM_COMBINE)
        state_plus += tl.dot(tl.trans(kp), val, input_precision=PREC)  # [P, N] @ [N, DV]
        state_minus += tl.dot(tl.trans(km), val, input_precision=PREC)
        z_plus += tl.reduce(kp, 0, SUM_COMBINE)
        z_minus += tl.reduce(km, 0, SUM_COMBINE)
        num_ptrs = num_ptr + pid_bh * seq * head_dim_v + offs_n[:, None] * head_dim_v \
            + offs_dv[None, :]
        if ATOMIC:
            tl.atomic_add(num_ptrs, num, mask=n_ok[:, None] & dv_ok[None, :])
            tl.atomic_add(den_ptr + pid_bh * seq + offs_n, den, mask=n_ok)
        else:
            tl.store(num_ptrs, num, mask=n_ok[:, None] & dv_ok[None, :])
            tl.store(den_ptr + pid_bh * seq + offs_n, den, mask=n_ok)


# ---------------------------------------------------------------- launcher


def _causal_launch(q, k, v, weights, q_shift, k_bias, lk, key_padding_mask, config,
                   residual=False) -> Launch:
    batch, heads, seq, head_dim = q.shape
    head_dim_v = v.shape[-1]
    n_proj = weights.n_proj
    for name, t in (("q_shift", q_shift), ("k_bias", k_bias)):
        check_rows(name, t, (batch, heads, seq))
    check_rows("lk", lk, (batch, heads))
    p_blocks = triton.cdiv(n_proj, config["BLOCK_P"])
    atomic = p_blocks > 1
    alloc = torch.zeros if atomic else (lambda s, dtype, device: empty(s, dtype, device))
    num = alloc((batch, heads, seq, head_dim_v), dtype=torch.float32, device=q.device)
    den = alloc((batch, heads, seq), dtype=torch.float32, device=q.device)
    args = dict(
        q_ptr=q, k_ptr=k, v_ptr=v, **weight_args(weights, q, _lowrank_causal_kernel),
        qshift_ptr=q_shift, kbias_ptr=k_bias,
        lk_ptr=lk, keep_ptr=mask_arg(key_padding_mask, k_bias, batch, seq),
        num_ptr=num, den_ptr=den,
        stride_qb=q.stride(0), stride_qh=q.stride(1), stride_qn=q.stride(2),
        stride_qd=q.stride(3),
        stride_kb=k.stride(0), stride_kh=k.stride(1), stride_kn=k.stride(2),
        stride_kd=k.stride(3),
        stride_vb=v.stride(0), stride_vh=v.stride(1), stride_vn=v.stride(2),
        stride_vd=v.stride(3),
        heads=heads, seq=seq, head_dim=head_dim, head_dim_v=head_dim_v, n_proj=n_proj,
        HAS_MASK=key_padding_mask is not None, ATOMIC=atomic,
        BLOCK_N=config["BLOCK_N"], BLOCK_D=next_pow2(head_dim), BLOCK_DV=next_pow2(head_dim_v),
        BLOCK_P=config["BLOCK_P"], PREC=feature_precision(q.dtype, residual),
    )
    args["INT64"] = needs_int64(args.values())
    return Launch(_lowrank_causal_kernel, (batch * heads, p_blocks), args,
                  config["num_warps"], config["num_stages"], outputs=(num, den))


def lowrank_causal(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, weights: FeatureWeights,
    q_shift: torch.Tensor, k_bias: torch.Tensor, lk: torch.Tensor,
    key_padding_mask: torch.Tensor | None = None, *, config: Config | None = None,
    residual: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Causal low-rank sums in the hat scale: num [batch, heads, seq, head_dim_v] and den
    [batch, heads, seq] (float32), num_i = sum_{j <= i} (qh_i . kh_j) v_j. ``residual``:
    they feed a Scatterbrain residual (tf32x3 products, see lowrank.lowrank_state)."""
    config = CAUSAL_SPEC.choose(config, launch_limits(q.device),
                                lowrank_shape(q, v, weights.n_proj))
    return _causal_launch(q, k, v, weights, q_shift, k_bias, lk, key_padding_mask,
                          config, residual).run()


def plan_causal(shape: KernelShape, config: Config, seq: int = 4096) -> Launch:
    q, v, w, rows, lk = meta_inputs(shape, seq)
    return _causal_launch(q, q, v, w, rows, rows, lk, None, config, residual=True)


CAUSAL_SPEC = KernelSpec("lowrank_causal", CAUSAL_SPACE, CAUSAL_DEFAULT, keep_causal,
                         plan_causal)
