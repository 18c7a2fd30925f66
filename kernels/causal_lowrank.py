"""The causal low-rank part: prefix sums num_i = sum_{j <= i} (qh_i . kh_j) v_j and
den_i = sum_{j <= i} qh_i . kh_j, in the hat scale of feature_map.py, with the log-space
feature map fused into the chunked reduction (see lowrank.py for the non-causal state and
the shared launch helpers).

A scan over chunks of the sequence, so that the work spreads over enough programs to fill
a GPU (one program per (batch * head, projection block) walking the whole sequence leaves
most SMs idle: 16 heads x 8 blocks = 128 programs for 132 SMs on an H100, each walking
16,384 rows):

1. state pass, grid (batch * heads, chunks, projection blocks): each program sums its
   chunk's kh_j v_j^T and kh_j ([2, BLOCK_P, dv] and [2, BLOCK_P]) into a per-chunk state;
2. scan (torch.cumsum over the chunk axis, exclusive): the state before each chunk;
3. apply pass, same grid: each program starts from the state before its chunk and walks
   the chunk in [BLOCK_N] blocks: the state before the block times phi(Q) plus the masked
   [BLOCK_N, BLOCK_N] quadratic term inside it, as the torch reference's chunked prefix
   sums. Projection blocks are summed with atomics when there are several. Above 128
   columns of v, the last grid axis also splits them (``value_chunk``): each program then
   re-projects its rows for its block of columns, and the first block writes z and den.

With one chunk (the CPU default) passes 1 and 2 are skipped. ``causal_chunks`` picks the
chunks: ~2 waves of programs over the SMs (occupancy in its docstring).
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
    value_chunk,
)
from sbbench.kernels.feature_map import (
    SUM_COMBINE,
    FeatureWeights,
    load_rows,
    project_rows,
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
    den_ptr, st_ptr, sz_ptr,
    stride_qb, stride_qh, stride_qn, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    heads, seq, head_dim, head_dim_v, n_proj, chunk_len, n_chunks,
    APPLY: tl.constexpr, CARRY: tl.constexpr, HAS_MASK: tl.constexpr, ATOMIC: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_DK: tl.constexpr, BLOCK_DV: tl.constexpr,
    BLOCK_P: tl.constexpr, PREC: tl.constexpr, SPLIT: tl.constexpr, UPCAST: tl.constexpr,
    INT64: tl.constexpr, CHUNKED: tl.constexpr,
):
    """grid (batch * heads, chunks, cdiv(m, BLOCK_P) x cdiv(dv, BLOCK_DV): projection
    block, then block of value columns). APPLY = False: the chunk's own
    state into st [bh, chunk, 2m, dv] / sz [bh, chunk, 2m]. APPLY = True: causal num / den
    of the chunk's rows, starting from the state before the chunk (read from st / sz when
    CARRY, i.e. after the scan; zero otherwise)."""
    pid_bh = wide(tl.program_id(0), INT64)
    pid_c = tl.program_id(1)
    p_blocks = (n_proj + BLOCK_P - 1) // BLOCK_P
    p0 = (tl.program_id(2) % p_blocks) * BLOCK_P
    v_block = tl.program_id(2) // p_blocks  # the first block of columns writes z and den
    b = pid_bh // heads
    h = pid_bh % heads
    offs_p = p0 + tl.arange(0, BLOCK_P)
    p_ok = offs_p < n_proj
    offs_dv = wide(v_block * BLOCK_DV + tl.arange(0, BLOCK_DV), INT64)
    dv_ok = offs_dv < head_dim_v
    z_ok = p_ok & (offs_p < tl.where(v_block == 0, n_proj, 0))
    lk = tl.load(lk_ptr + pid_bh)
    n_feat = 2 * n_proj
    st_rows = st_ptr + (pid_bh * n_chunks + pid_c) * n_feat * head_dim_v \
        + offs_p[:, None] * head_dim_v + offs_dv[None, :]
    sz_rows = sz_ptr + (pid_bh * n_chunks + pid_c) * n_feat + offs_p
    tile_ok = p_ok[:, None] & dv_ok[None, :]
    if CARRY:  # the state before the chunk (exclusive scan of the chunk states)
        state_plus = tl.load(st_rows, mask=tile_ok, other=0.0)
        state_minus = tl.load(st_rows + n_proj * head_dim_v, mask=tile_ok, other=0.0)
        z_plus = tl.load(sz_rows, mask=p_ok, other=0.0)
        z_minus = tl.load(sz_rows + n_proj, mask=p_ok, other=0.0)
    else:
        state_plus = tl.full([BLOCK_P, BLOCK_DV], 0.0, tl.float32)  # sum kh_j v_j^T
        state_minus = tl.full([BLOCK_P, BLOCK_DV], 0.0, tl.float32)
        z_plus = tl.full([BLOCK_P], 0.0, tl.float32)  # sum kh_j
        z_minus = tl.full([BLOCK_P], 0.0, tl.float32)
    start = pid_c * chunk_len
    for n0 in range(start, tl.minimum(start + chunk_len, seq), BLOCK_N):
        offs_n = wide(n0 + tl.arange(0, BLOCK_N), INT64)
        n_ok = offs_n < seq
        # q and k rows, read BLOCK_DK columns at a time (feature_map.project_rows)
        k_rows = k_ptr + b * stride_kb + h * stride_kh + offs_n * stride_kn
        kb = k_rows  # the whole rows, loaded once where they fit one chunk (else unused)
        if not CHUNKED:
            kb = load_rows(k_rows, n_ok, stride_kd, 0, head_dim, BLOCK_DK, INT64)
        val = tl.load(v_ptr + b * stride_vb + h * stride_vh + offs_n[:, None] * stride_vn
                      + offs_dv[None, :] * stride_vd,
                      mask=n_ok[:, None] & dv_ok[None, :], other=0.0).to(tl.float32)
        kbias = tl.load(kbias_ptr + pid_bh * seq + offs_n, mask=n_ok, other=0.0)
        ok = n_ok
        if HAS_MASK:
            ok = ok & (tl.load(keep_ptr + b * seq + offs_n, mask=n_ok, other=0) != 0)
        proj_k = project_rows(kb, k_rows, n_ok, stride_kd, w_ptr, w_lo_ptr, p0, n_proj,
                              head_dim, BLOCK_N, BLOCK_DK, BLOCK_P, PREC, SPLIT, UPCAST, 0,
                              CHUNKED, INT64)  # [N, P]
        use = ok[:, None] & p_ok[None, :]
        base = kbias[:, None] + lk
        kp = tl.where(use, tl.exp(proj_k - base), 0.0)
        km = tl.where(use, tl.exp(-proj_k - base), 0.0)
        if APPLY:
            q_rows = q_ptr + b * stride_qb + h * stride_qh + offs_n * stride_qn
            qb = q_rows
            if not CHUNKED:
                qb = load_rows(q_rows, n_ok, stride_qd, 0, head_dim, BLOCK_DK, INT64)
            shift = tl.load(qshift_ptr + pid_bh * seq + offs_n, mask=n_ok, other=0.0)
            proj_q = project_rows(qb, q_rows, n_ok, stride_qd, w_ptr, w_lo_ptr, p0, n_proj,
                                  head_dim, BLOCK_N, BLOCK_DK, BLOCK_P, PREC, SPLIT, UPCAST, 0,
                                  CHUNKED, INT64)
            qp = tl.where(p_ok[None, :], tl.exp(proj_q - shift[:, None]), 0.0)
            qm = tl.where(p_ok[None, :], tl.exp(-proj_q - shift[:, None]), 0.0)
            # state before the block: [N, P] @ [P, DV]
            num = tl.dot(qp, state_plus, input_precision=PREC)
            num += tl.dot(qm, state_minus, input_precision=PREC)
            den = tl.reduce(qp * z_plus[None, :], 1, SUM_COMBINE) \
                + tl.reduce(qm * z_minus[None, :], 1, SUM_COMBINE)
            # inside the block: [N, P] @ [P, N] -> [N, N], keys j <= query i
            scores = tl.dot(qp, tl.trans(kp), input_precision=PREC)
            scores += tl.dot(qm, tl.trans(km), input_precision=PREC)
            scores = tl.where(offs_n[None, :] <= offs_n[:, None], scores, 0.0)
            num += tl.dot(scores, val, input_precision=PREC)  # [N, N] @ [N, DV]
            den += tl.reduce(scores, 1, SUM_COMBINE)
            num_ptrs = num_ptr + pid_bh * seq * head_dim_v + offs_n[:, None] * head_dim_v \
                + offs_dv[None, :]
            den_ok = offs_n < tl.where(v_block == 0, seq, 0)
            if ATOMIC:
                tl.atomic_add(num_ptrs, num, mask=n_ok[:, None] & dv_ok[None, :])
                tl.atomic_add(den_ptr + pid_bh * seq + offs_n, den, mask=den_ok)
            else:
                tl.store(num_ptrs, num, mask=n_ok[:, None] & dv_ok[None, :])
                tl.store(den_ptr + pid_bh * seq + offs_n, den, mask=den_ok)
        state_plus += tl.dot(tl.trans(kp), val, input_precision=PREC)  # [P, N] @ [N, DV]
        state_minus += tl.dot(tl.trans(km), val, input_precision=PREC)
        z_plus += tl.reduce(kp, 0, SUM_COMBINE)
        z_minus += tl.reduce(km, 0, SUM_COMBINE)
    if not APPLY:
        tl.store(st_rows, state_plus, mask=tile_ok)
        tl.store(st_rows + n_proj * head_dim_v, state_minus, mask=tile_ok)
        tl.store(sz_rows, z_plus, mask=z_ok)
        tl.store(sz_rows + n_proj, z_minus, mask=z_ok)


# ---------------------------------------------------------------- launcher


def causal_chunks(batch_heads: int, p_blocks: int, seq_blocks: int, sm_count: int | None
                  ) -> int:
    """Chunks of the scan: enough programs (batch * heads * chunks * projection blocks)
    for ~2 waves over the SMs, at most one chunk per BLOCK_N rows; 1 without an SM count
    (the interpreter runs programs one by one).

    Expected occupancy (SM counts of sbbench/data/devices.yaml): H100 SXM (132 SMs), 16
    heads, 256 features in blocks of 16 (8 blocks): 128 programs in one chunk (0.97 of a
    wave, each walking the whole sequence) -> 3 chunks, 384 programs = 2.9 waves, each
    walking a third; batch 1 x 1 head, 4 blocks: 66 chunks (264 programs, 2 waves) where
    4 programs ran before (3% of the SMs busy)."""
    if not sm_count:
        return 1
    return max(1, min(seq_blocks, triton.cdiv(2 * sm_count, batch_heads * p_blocks)))


def _causal_launches(q, k, v, weights, q_shift, k_bias, lk, key_padding_mask, config,
                     residual=False, chunks=None) -> list[Launch]:
    """[state launch, apply launch] with several chunks, [apply launch] with one; the scan
    runs between them (lowrank_causal)."""
    batch, heads, seq, head_dim = q.shape
    head_dim_v = v.shape[-1]
    n_proj = weights.n_proj
    for name, t in (("q_shift", q_shift), ("k_bias", k_bias)):
        check_rows(name, t, (batch, heads, seq))
    check_rows("lk", lk, (batch, heads))
    p_blocks = triton.cdiv(n_proj, config["BLOCK_P"])
    seq_blocks = max(1, triton.cdiv(seq, config["BLOCK_N"]))
    if chunks is None:
        sms = (torch.cuda.get_device_properties(q.device).multi_processor_count
               if q.device.type == "cuda" else None)
        chunks = causal_chunks(batch * heads, p_blocks, seq_blocks, sms)
    chunk_len = triton.cdiv(seq_blocks, max(1, min(int(chunks), seq_blocks))) \
        * config["BLOCK_N"]
    n_chunks = max(1, triton.cdiv(seq, chunk_len))
    atomic = p_blocks > 1
    alloc = torch.zeros if atomic else (lambda s, dtype, device: empty(s, dtype, device))
    num = alloc((batch, heads, seq, head_dim_v), dtype=torch.float32, device=q.device)
    den = alloc((batch, heads, seq), dtype=torch.float32, device=q.device)
    carry = n_chunks > 1
    shape = (batch, heads, n_chunks, 2 * n_proj)
    states = (empty((*shape, head_dim_v), torch.float32, q.device),
              empty(shape, torch.float32, q.device)) if carry else (num, den)
    args = dict(
        q_ptr=q, k_ptr=k, v_ptr=v, **weight_args(weights, q, _lowrank_causal_kernel),
        qshift_ptr=q_shift, kbias_ptr=k_bias,
        lk_ptr=lk, keep_ptr=mask_arg(key_padding_mask, k_bias, batch, seq),
        num_ptr=num, den_ptr=den, st_ptr=states[0], sz_ptr=states[1],
        stride_qb=q.stride(0), stride_qh=q.stride(1), stride_qn=q.stride(2),
        stride_qd=q.stride(3),
        stride_kb=k.stride(0), stride_kh=k.stride(1), stride_kn=k.stride(2),
        stride_kd=k.stride(3),
        stride_vb=v.stride(0), stride_vh=v.stride(1), stride_vn=v.stride(2),
        stride_vd=v.stride(3),
        heads=heads, seq=seq, head_dim=head_dim, head_dim_v=head_dim_v, n_proj=n_proj,
        chunk_len=chunk_len, n_chunks=n_chunks, APPLY=True, CARRY=carry,
        HAS_MASK=key_padding_mask is not None, ATOMIC=atomic,
        BLOCK_N=config["BLOCK_N"], **head_chunks(head_dim, q.element_size()),
        BLOCK_DV=value_chunk(head_dim_v),
        BLOCK_P=config["BLOCK_P"], PREC=feature_precision(q.dtype, residual),
    )
    args["INT64"] = needs_int64(args.values())
    grid = (batch * heads, n_chunks, p_blocks * triton.cdiv(head_dim_v, args["BLOCK_DV"]))
    warps, stages = config["num_warps"], config["num_stages"]
    apply = Launch(_lowrank_causal_kernel, grid, args, warps, stages, outputs=(num, den))
    if not carry:
        return [apply]
    state = Launch(_lowrank_causal_kernel, grid, {**args, "APPLY": False, "CARRY": False},
                   warps, stages, outputs=states)
    return [state, apply]


def exclusive_scan(states: tuple[torch.Tensor, torch.Tensor]) -> None:
    """In place over the chunk axis (2): chunk c gets the sum of chunks < c."""
    for t in states:
        total = torch.cumsum(t, dim=2)
        t[:, :, 1:] = total[:, :, :-1]
        t[:, :, 0] = 0


def lowrank_causal(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, weights: FeatureWeights,
    q_shift: torch.Tensor, k_bias: torch.Tensor, lk: torch.Tensor,
    key_padding_mask: torch.Tensor | None = None, *, config: Config | None = None,
    residual: bool = False, chunks: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Causal low-rank sums in the hat scale: num [batch, heads, seq, head_dim_v] and den
    [batch, heads, seq] (float32), num_i = sum_{j <= i} (qh_i . kh_j) v_j. ``residual``:
    they feed a Scatterbrain residual (tf32x3 products, see lowrank.lowrank_state).
    ``chunks``: sequence chunks scanned in parallel (None: :func:`causal_chunks`)."""
    config = CAUSAL_SPEC.choose(config, launch_limits(q.device),
                                lowrank_shape(q, v, weights.n_proj))
    launches = _causal_launches(q, k, v, weights, q_shift, k_bias, lk, key_padding_mask,
                                config, residual, chunks)
    if len(launches) == 2:
        exclusive_scan(launches[0].run())
    return launches[-1].run()


def plan_causal(shape: KernelShape, config: Config, seq: int = 4096, limits=None) -> Launch:
    """The apply launch after a scan over 4 chunks (the larger of the two passes)."""
    q, v, w, rows, lk = meta_inputs(shape, seq)
    return _causal_launches(q, q, v, w, rows, rows, lk, None, config, residual=True,
                            chunks=4)[-1]


CAUSAL_SPEC = KernelSpec("lowrank_causal", CAUSAL_SPACE, CAUSAL_DEFAULT, keep_causal,
                         plan_causal)
