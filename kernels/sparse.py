"""The sparse part: one program per (batch * head, bucket) of one hash round.

For the ``bucket_size`` queries and keys of bucket c (positions read from the sorted
orders of sbbench.attention.lsh.lsh_order, or consecutive blocks for the local variant):

    s_ij     = tau q_i . k_j - log(count_ij)          (-inf for masked / causal / padding)
    count_ij = number of rounds in which i and j share a bucket (a pair counts once)
    l_i      = lq_i + lk                                (low-rank log-scale of row i)
    lambda_i = max(max_j s_ij, l_i)                     (0 if not finite)
    r_ij     = exp(s_ij - lambda_i) - (qh_i . kh_j) exp(l_i - lambda_i) / count_ij
    num_i    = sum_j r_ij v_j,   den_i = sum_j r_ij     (in the scale exp(lambda_i))

and then merges (num, den, lambda) into the row's running sums in original order, as an
online softmax over the low-rank term and the rounds (docs/algorithm.md): the first round
starts from the low-rank numerator / denominator (computed here from the kv state, or read
from the causal kernel), the last round writes ``out = num / max(den, tiny)``. With one
round nothing but ``out`` is written. Features qh, kh are recomputed from q, k and W_s.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from sbbench.kernels._common import (
    Config,
    DeviceLimits,
    KernelShape,
    KernelSpec,
    Launch,
    feature_precision,
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
from sbbench.kernels.fixed import fixed_launch
from sbbench.kernels.sparse_setup import (  # noqa: F401 - re-exported
    DEFAULT,
    MAX_BUCKET,
    OPTIONAL,
    QUERY_BLOCKS,
    SPACE,
    SparseState,
    check_lowrank,
    fuse_by_default,
    keep,
    kernel_shape,
    key_layout,
    pick_query_block,
    query_block,
    sparse_grid,
)

NO_LOWRANK, LOWRANK_FROM_STATE, LOWRANK_FROM_SUMS = 0, 1, 2


@triton.jit
def _bucket_kernel(
    q_ptr, k_ptr, v_ptr, out_ptr,
    q_order_ptr, k_order_ptr, q_bucket_ptr, k_bucket_ptr, count_ptr, keep_ptr,
    w_ptr, w_lo_ptr, qshift_ptr, qbias_ptr, kbias_ptr, lk_ptr,
    kv_ptr, ks_ptr, lrnum_ptr, lrden_ptr,
    acc_num_ptr, acc_den_ptr, acc_lam_ptr,
    stride_qb, stride_qh, stride_qn, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_ob, stride_oh, stride_on, stride_od,
    heads, seq, seq_pad, head_dim, head_dim_v, n_proj, bucket_size, round_idx, scale,
    n_tiles, q_blocks, tiles_y, sink, window, left,
    N_ROUNDS: tl.constexpr, LOCAL: tl.constexpr, CAUSAL: tl.constexpr, SETS: tl.constexpr,
    FIXED: tl.constexpr,
    HAS_MASK: tl.constexpr, LOWRANK: tl.constexpr, FIRST: tl.constexpr, LAST: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_DK: tl.constexpr, BLOCK_DV: tl.constexpr,
    BLOCK_P: tl.constexpr, PREC: tl.constexpr, PREC_F: tl.constexpr, SPLIT: tl.constexpr,
    UPCAST: tl.constexpr, INT64: tl.constexpr, KEY_T: tl.constexpr, CHUNKED: tl.constexpr,
):
    pid_bh = wide(tl.program_id(0), INT64)
    # tile = (bucket, block of BLOCK_Q of its queries); tiles beyond 65,535 continue on
    # grid axis 2 (sparse_grid), and the few programs past the last tile do nothing
    tile = tl.program_id(1) + tl.program_id(2) * tiles_y
    bucket = tile // q_blocks
    b = pid_bh // heads
    h = pid_bh % heads
    offs = tl.arange(0, BLOCK_B)
    offs_q = (tile % q_blocks) * BLOCK_Q + tl.arange(0, BLOCK_Q)
    offs_dv = wide(tl.arange(0, BLOCK_DV), INT64)
    dv_ok = offs_dv < head_dim_v
    # (a bound of 0 past the last tile; the interpreter cannot "&" a scalar into a mask)
    in_bucket = tl.where(tile < n_tiles, bucket_size, 0)
    slot_ok = offs < in_bucket
    slot_q_ok = offs_q < in_bucket
    slot = bucket * bucket_size + offs
    slot_q = bucket * bucket_size + offs_q
    # ---- gather: positions (in the padded sequence) of the block's queries and the
    # bucket's keys
    if LOCAL:
        q_pos = wide(slot_q, INT64)
        k_pos = wide(slot, INT64)
    else:
        order_row = pid_bh * N_ROUNDS * seq_pad + round_idx * seq_pad
        q_pos = wide(tl.load(q_order_ptr + order_row + slot_q, mask=slot_q_ok, other=0),
                     INT64)
        k_pos = wide(tl.load(k_order_ptr + order_row + slot, mask=slot_ok, other=0), INT64)
    q_ok = slot_q_ok & (q_pos < seq)  # rows to compute and write
    key_ok = slot_ok & (k_pos < seq)
    if HAS_MASK:
        key_ok = key_ok & (tl.load(keep_ptr + b * seq + k_pos, mask=key_ok, other=0) != 0)
    # CHUNKED: q, k rows are read BLOCK_DK columns at a time (feature_map.project_rows)
    q_rows = q_ptr + b * stride_qb + h * stride_qh + q_pos * stride_qn
    k_rows = k_ptr + b * stride_kb + h * stride_kh + k_pos * stride_kn
    qb, kb = q_rows, k_rows  # the whole rows, loaded once if they fit a chunk (else unused)
    if not CHUNKED:
        qb = load_rows(q_rows, q_ok, stride_qd, 0, head_dim, BLOCK_DK, INT64)
        kb = load_rows(k_rows, key_ok, stride_kd, 0, head_dim, BLOCK_DK, INT64)
    # ---- low-rank estimate on the bucket's pairs, est_ij = qh_i . kh_j, and in the first
    # round of a non-causal call the row's low-rank numerator / denominator from the kv
    # state. First, so that only the accumulators live through the feature loop; the
    # logits, masks and v come after it.
    if LOWRANK != 0:
        qshift = tl.load(qshift_ptr + pid_bh * seq + q_pos, mask=q_ok, other=0.0)
        kbias = tl.load(kbias_ptr + pid_bh * seq + k_pos, mask=key_ok, other=0.0)
        lk = tl.load(lk_ptr + pid_bh)
        est = tl.full([BLOCK_Q, BLOCK_B], 0.0, tl.float32)
        if LOWRANK == 1 and FIRST:
            lr_num = tl.full([BLOCK_Q, BLOCK_DV], 0.0, tl.float32)
            lr_den = tl.full([BLOCK_Q], 0.0, tl.float32)
        n_feat = 2 * n_proj
        for p0 in range(0, n_proj, BLOCK_P):
            offs_p = p0 + tl.arange(0, BLOCK_P)
            p_ok = offs_p < n_proj
            # q's projection [Q, P] and k's as [P, B] (sparse_setup.key_layout)
            proj_q = project_rows(qb, q_rows, q_ok, stride_qd, w_ptr, w_lo_ptr, p0, n_proj,
                                  head_dim, BLOCK_Q, BLOCK_DK, BLOCK_P, PREC_F, SPLIT, UPCAST,
                                  0, CHUNKED, INT64)
            proj_k = project_rows(kb, k_rows, key_ok, stride_kd, w_ptr, w_lo_ptr, p0, n_proj,
                                  head_dim, BLOCK_B, BLOCK_DK, BLOCK_P, PREC_F, SPLIT, UPCAST,
                                  KEY_T, CHUNKED, INT64)
            qp = tl.where(p_ok[None, :], tl.exp(proj_q - qshift[:, None]), 0.0)
            qm = tl.where(p_ok[None, :], tl.exp(-proj_q - qshift[:, None]), 0.0)
            base = kbias[None, :] + lk
            use = p_ok[:, None] & key_ok[None, :]
            kp = tl.where(use, tl.exp(proj_k - base), 0.0)
            km = tl.where(use, tl.exp(-proj_k - base), 0.0)
            # [Q, P] @ [P, B] -> [Q, B]
            est += tl.dot(qp, kp, input_precision=PREC_F)
            est += tl.dot(qm, km, input_precision=PREC_F)
            if LOWRANK == 1 and FIRST:
                rows = kv_ptr + pid_bh * n_feat * head_dim_v + offs_dv[None, :]
                tile_ok = p_ok[:, None] & dv_ok[None, :]
                kv_plus = tl.load(rows + offs_p[:, None] * head_dim_v, mask=tile_ok, other=0.0)
                kv_minus = tl.load(rows + (n_proj + offs_p[:, None]) * head_dim_v,
                                   mask=tile_ok, other=0.0)
                ks_plus = tl.load(ks_ptr + pid_bh * n_feat + offs_p, mask=p_ok, other=0.0)
                ks_minus = tl.load(ks_ptr + pid_bh * n_feat + n_proj + offs_p, mask=p_ok,
                                   other=0.0)
                # [Q, P] @ [P, DV] -> [Q, DV]
                lr_num += tl.dot(qp, kv_plus, input_precision=PREC_F)
                lr_num += tl.dot(qm, kv_minus, input_precision=PREC_F)
                lr_den += tl.reduce(qp * ks_plus[None, :], 1, SUM_COMBINE) \
                    + tl.reduce(qm * ks_minus[None, :], 1, SUM_COMBINE)
    # ---- logits: [Q, D] @ [D, B] -> [Q, B]
    logits = dot_rows(qb, q_rows, q_ok, stride_qd, kb, k_rows, key_ok, stride_kd, head_dim, BLOCK_Q,
                      BLOCK_B, BLOCK_DK, PREC, UPCAST, CHUNKED, INT64) * scale
    valid = key_ok[None, :] & q_ok[:, None]
    if CAUSAL:
        valid = valid & (k_pos[None, :] <= q_pos[:, None])
    if FIXED:  # pairs the sinks or the window hold are counted there only
        low = q_pos[:, None] - left
        in_fixed = (k_pos[None, :] < sink) | ((k_pos[None, :] >= low)
                                              & (k_pos[None, :] < low + window))
        valid = valid & (in_fixed == 0)
    if N_ROUNDS > 1 and SETS:  # k-means sets: rounds picking each pair, from set_counts
        ids = ((pid_bh * N_ROUNDS + round_idx) * seq_pad + slot_q) * bucket_size
        count = tl.load(count_ptr + ids[:, None] + offs[None, :],
                        mask=slot_q_ok[:, None] & slot_ok[None, :], other=1).to(tl.float32)
        logits = logits - tl.log(count)
    elif N_ROUNDS > 1:  # a pair found in c rounds counts 1/c in each
        count = tl.full([BLOCK_Q, BLOCK_B], 0.0, tl.float32)
        for rr in tl.static_range(N_ROUNDS):
            ids = pid_bh * N_ROUNDS * seq_pad + rr * seq_pad
            q_id = tl.load(q_bucket_ptr + ids + q_pos, mask=slot_q_ok, other=-1)
            k_id = tl.load(k_bucket_ptr + ids + k_pos, mask=slot_ok, other=-2)
            count += (q_id[:, None] == k_id[None, :]).to(tl.float32)
        count = tl.maximum(count, 1.0)
        logits = logits - tl.log(count)
    logits = tl.where(valid, logits, float("-inf"))
    lam = tl.reduce(logits, 1, MAX_COMBINE)  # [Q]; a max, never a log-sum-exp
    if LOWRANK != 0:
        qbias = tl.load(qbias_ptr + pid_bh * seq + q_pos, mask=q_ok, other=0.0)
        log_lr = qshift - qbias + lk  # l_i
        lam = tl.maximum(lam, log_lr)
        lam = tl.where((lam == lam) & (tl.abs(lam) < float("inf")), lam, 0.0)
        est = est * tl.exp(log_lr - lam)[:, None]
        if N_ROUNDS > 1:
            est = est / count
        resid = tl.where(valid, tl.exp(logits - lam[:, None]) - est, 0.0)
    else:
        lam = tl.where((lam == lam) & (tl.abs(lam) < float("inf")), lam, 0.0)
        resid = tl.exp(logits - lam[:, None])  # 0 where invalid (logit -inf)
    # ---- this round's numerator / denominator: [Q, B] @ [B, DV] -> [Q, DV]
    vb = tl.load(v_ptr + b * stride_vb + h * stride_vh + k_pos[:, None] * stride_vn
                 + offs_dv[None, :] * stride_vd, mask=key_ok[:, None] & dv_ok[None, :],
                 other=0.0)
    if LOWRANK != 0:
        # the residual is a difference (exact minus estimate) and can exceed the row's
        # final denominator: rounding it to 8 bits (or tf32's 10) would cost several times
        # the error of the half-precision inputs, so the product stays in fp32 (tf32x3)
        num = mma(resid, vb.to(tl.float32), PREC_F, False)
    else:  # softmax weights in [0, 1], as flash attention: half-precision product
        num = mma(resid.to(vb.dtype), vb, PREC, UPCAST)
    den = tl.reduce(resid, 1, SUM_COMBINE)
    # ---- merge into the row's running sums (online over low-rank + rounds)
    row_ok = q_ok[:, None] & dv_ok[None, :]
    acc_rows = pid_bh * seq + q_pos
    if FIRST:
        if LOWRANK == 1:
            old_num = lr_num
            old_den = lr_den
            old_lam = log_lr
        elif LOWRANK == 2:
            old_num = tl.load(lrnum_ptr + acc_rows[:, None] * head_dim_v + offs_dv[None, :],
                              mask=row_ok, other=0.0)
            old_den = tl.load(lrden_ptr + acc_rows, mask=q_ok, other=0.0)
            old_lam = log_lr
        else:
            old_num = tl.full([BLOCK_Q, BLOCK_DV], 0.0, tl.float32)
            old_den = tl.full([BLOCK_Q], 0.0, tl.float32)
            old_lam = tl.full([BLOCK_Q], float("-inf"), tl.float32)
    else:
        old_num = tl.load(acc_num_ptr + acc_rows[:, None] * head_dim_v + offs_dv[None, :],
                          mask=row_ok, other=0.0)
        old_den = tl.load(acc_den_ptr + acc_rows, mask=q_ok, other=0.0)
        old_lam = tl.load(acc_lam_ptr + acc_rows, mask=q_ok, other=0.0)
    new_lam = tl.maximum(old_lam, lam)
    keep_old = tl.exp(old_lam - new_lam)
    take_new = tl.exp(lam - new_lam)
    num = old_num * keep_old[:, None] + num * take_new[:, None]
    den = old_den * keep_old + den * take_new
    if LAST:
        out = num / tl.maximum(den, FLOAT32_TINY)[:, None]
        tl.store(out_ptr + b * stride_ob + h * stride_oh + q_pos[:, None] * stride_on
                 + offs_dv[None, :] * stride_od, out.to(out_ptr.dtype.element_ty), mask=row_ok)
    else:
        tl.store(acc_num_ptr + acc_rows[:, None] * head_dim_v + offs_dv[None, :], num,
                 mask=row_ok)
        tl.store(acc_den_ptr + acc_rows, den, mask=q_ok)
        tl.store(acc_lam_ptr + acc_rows, new_lam, mask=q_ok)


# ---------------------------------------------------------------- launcher


def _round_launch(q, k, v, state: SparseState, round_idx: int, *, scale, bucket_size, causal,
                  lowrank, config, block_q: int, sink: int = 0, window: int = 0) -> Launch:
    """lowrank: None, or a dict with weights, q_shift, q_bias, k_bias, lk and either
    (kv, ks) (non-causal) or (num, den) (causal sums); block_q: queries per program."""
    batch, heads, seq, head_dim = q.shape
    head_dim_v = v.shape[-1]
    out = dummy = state.out
    lr = lowrank or {}
    n_proj = check_lowrank(lowrank, batch, heads, seq, head_dim_v)
    mode = NO_LOWRANK if lowrank is None else (
        LOWRANK_FROM_STATE if "kv" in lr else LOWRANK_FROM_SUMS)
    acc = state.acc or (dummy, dummy, dummy)
    args = dict(
        q_ptr=q, k_ptr=k, v_ptr=v, out_ptr=out,
        q_order_ptr=state.q_order if state.q_order is not None else dummy,
        k_order_ptr=state.k_order if state.k_order is not None else dummy,
        q_bucket_ptr=state.q_bucket if state.q_bucket is not None else dummy,
        k_bucket_ptr=state.k_bucket if state.k_bucket is not None else dummy,
        count_ptr=state.counts if state.counts is not None else dummy,
        keep_ptr=state.keep if state.keep is not None else dummy,
        qshift_ptr=lr.get("q_shift", dummy),
        qbias_ptr=lr.get("q_bias", dummy), kbias_ptr=lr.get("k_bias", dummy),
        lk_ptr=lr.get("lk", dummy), kv_ptr=lr.get("kv", dummy), ks_ptr=lr.get("ks", dummy),
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
        heads=heads, seq=seq, seq_pad=state.seq_pad, head_dim=head_dim, head_dim_v=head_dim_v,
        n_proj=n_proj, bucket_size=bucket_size, round_idx=round_idx, scale=float(scale),
        sink=sink, window=window, left=window - 1 if causal else (window - 1) // 2,
        N_ROUNDS=state.n_rounds, LOCAL=state.local, CAUSAL=bool(causal),
        SETS=state.counts is not None, FIXED=bool(sink or window),
        HAS_MASK=state.keep is not None, LOWRANK=mode, FIRST=round_idx == 0 and not state.fixed,
        LAST=round_idx == state.n_rounds - 1, BLOCK_B=next_pow2(bucket_size), BLOCK_Q=block_q,
        **head_chunks(head_dim, q.element_size(), config.get("BLOCK_DK")),  # config's, if any
        BLOCK_DV=next_pow2(head_dim_v), BLOCK_P=config["BLOCK_P"],
        KEY_T=key_layout(q.dtype, bucket_size),
        # every float32 product here (estimate, fused low-rank numerator, residual x v)
        # feeds the residual's cancellation: tf32x3 for every input dtype
        PREC=feature_precision(q.dtype), PREC_F=feature_precision(q.dtype, residual=True),
    )
    if lowrank is not None:
        args.update(weight_args(lr["weights"], q, _bucket_kernel))
    else:
        args.update(w_ptr=dummy, w_lo_ptr=dummy, SPLIT=False,
                    UPCAST=q.dtype == torch.bfloat16 and interpreted(_bucket_kernel))
    args["INT64"] = needs_int64(args.values())
    grid, args["tiles_y"] = sparse_grid(batch * heads, state.seq_pad, bucket_size, block_q)
    args["q_blocks"] = -(-bucket_size // args["BLOCK_Q"])
    args["n_tiles"] = state.seq_pad // bucket_size * args["q_blocks"]
    return Launch(_bucket_kernel, grid, args, config["num_warps"], config["num_stages"],
                  outputs=(out,))


def sparse_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, scale: float, bucket_size: int,
    q_order: torch.Tensor | None = None, k_order: torch.Tensor | None = None,
    causal: bool = False, key_padding_mask: torch.Tensor | None = None,
    lowrank: dict | None = None, config: Config | None = None,
    out: torch.Tensor | None = None, key_sets=None, sink: int = 0, window: int = 0,
    fixed_config: Config | None = None,
) -> torch.Tensor:
    """Sparse part over every round, merged with the low-rank part if given.

    q, k: [batch, heads, seq, head_dim]; v: [batch, heads, seq, head_dim_v].
    q_order, k_order: [batch, heads, n_hashes, seq_pad] sorted positions (lsh_order), or
    None for the local variant (consecutive blocks of ``bucket_size``, one round); with
    ``key_sets`` (k-means, sbbench.attention.supports.KeySets) k_order's chunk c holds
    cluster c's keys, and a pair in c rounds' sets counts 1/c (sparse_setup.set_counts).
    sink, window: the fixed part (kernels/fixed.py) runs first, with ``fixed_config``, and
    its pairs are left out of the buckets; it needs the low-rank sums, not the kv state.
    lowrank: None (LSH / local softmax only) or a dict: weights (feature_map.
    scaled_projections for q's dtype), float32 q_shift, q_bias, k_bias [batch, heads, seq],
    lk [batch, heads], and either kv [batch, heads, 2m, dv] with ks [batch, heads, 2m]
    (non-causal state) or num [batch, heads, seq, dv] with den [batch, heads, seq] (causal
    sums, hat scale). config: SPACE's keys and optionally BLOCK_DK (sparse_setup.OPTIONAL).
    Returns [batch, heads, seq, head_dim_v] in q's dtype.
    """
    if bucket_size < 1 or bucket_size > MAX_BUCKET:
        raise ValueError(f"bucket_size must be in 1..{MAX_BUCKET} for the kernel, "
                         f"got {bucket_size}")
    state = SparseState(q, k, v, bucket_size=bucket_size, q_order=q_order, k_order=k_order,
                        key_padding_mask=key_padding_mask, out=out, key_sets=key_sets,
                        fixed=bool(sink or window))
    if state.fixed:
        fixed_launch(q, k, v, scale=scale, sink=sink, window=window, causal=causal,
                     keep=state.keep, lowrank=lowrank, out=state.out, acc=state.acc,
                     last=False, config=fixed_config).run()
    limits = launch_limits(q.device)
    shape = kernel_shape(q, v, bucket_size, state.n_rounds, lowrank)
    config = SPEC.choose(config, limits, shape)
    block_q = pick_query_block(config, limits, shape)
    for r in range(state.n_rounds):
        _round_launch(q, k, v, state, r, scale=scale, bucket_size=bucket_size, causal=causal,
                      lowrank=lowrank, config=config, block_q=block_q, sink=sink,
                      window=window).run()
    return state.out


def plan(shape: KernelShape, config: Config, seq: int = 4096,
         limits: DeviceLimits | None = None) -> Launch:
    """First-round launch of a non-causal Scatterbrain forward with ``shape.n_hashes``
    rounds (low-rank fused or from sums as :func:`fuse_by_default` picks; one round: writes
    out; several: the duplicate count, accumulators) on meta tensors, for the static
    compiler. Its query block is the launch's on ``limits`` (:func:`pick_query_block`),
    or ``config["BLOCK_Q"]`` if given (the default search compiles chosen blocks)."""
    dtype = shape.dtype
    q = torch.empty(1, 1, seq, shape.head_dim, dtype=dtype, device="meta")
    v = torch.empty(1, 1, seq, shape.head_dim_v, dtype=dtype, device="meta")
    seq_pad = -(-seq // shape.bucket_size) * shape.bucket_size  # orders cover padded buckets
    order = torch.empty(1, 1, shape.n_hashes, seq_pad, dtype=torch.int32, device="meta")
    state = SparseState(q, q, v, bucket_size=shape.bucket_size, q_order=order, k_order=order)
    m = shape.n_features // 2
    rows = torch.empty(1, 1, seq, device="meta")
    lowrank = dict(weights=meta_weights(shape), q_shift=rows, q_bias=rows, k_bias=rows,
                   lk=torch.empty(1, 1, device="meta"))
    if fuse_by_default(shape.head_dim_v):
        lowrank.update(kv=torch.empty(1, 1, 2 * m, shape.head_dim_v, device="meta"),
                       ks=torch.empty(1, 1, 2 * m, device="meta"))
    else:
        lowrank.update(num=torch.empty(1, 1, seq, shape.head_dim_v, device="meta"), den=rows)
    return _round_launch(q, q, v, state, 0, scale=shape.head_dim ** -0.5,
                         bucket_size=shape.bucket_size, causal=False, lowrank=lowrank,
                         config=config, block_q=config.get("BLOCK_Q")
                         or pick_query_block(config, limits, shape))

SPEC = KernelSpec("sparse", SPACE, DEFAULT, keep, plan, optional=OPTIONAL)
