"""The shared core of every approximate method, in PyTorch: the reference and the CPU path.

One function, :func:`attend`, computes every approximate method (SCATTERBRAIN.md 4-5):

- low-rank only (Performer): ``out = phi(Q) (phi(K)^T V) / phi(Q) (phi(K)^T 1)``;
- sparse only (LSH / SMYRF): softmax inside balanced hash buckets;
- both (Scatterbrain): ``E_hat = phi(Q) phi(K)^T + R``, ``R`` the residual
  ``exp(tau q.k) - phi(q).phi(k)`` on the bucketed pairs, so the estimate is exact on
  them and the unbiased low-rank estimate elsewhere.

Memory grows linearly with ``seq``: the sparse part works on [buckets, bucket, bucket]
blocks, the low-rank part on [seq, n_features] features. Only ``return_weights`` builds
the dense [seq, seq] matrix.
"""

from __future__ import annotations

import torch

from sbbench.attention.features import key_features, query_features
from sbbench.attention.lsh import HashFunctions, bucket_ids, local_order, lsh_order, padded_length

CAUSAL_CHUNK = 64  # chunk of the prefix-sum form of causal low-rank attention
CHUNK_ELEMENTS = 1 << 20  # default size of the sparse loop's temporaries (see buckets_per_chunk)


def _gather_seq(x: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """x: [b, h, n, f], order: [b, h, m] -> x[b, h, order, :]: [b, h, m, f].

    A row gather on the flattened [b * h * n, f] tensor (index_select copies whole rows;
    take_along_dim with a broadcast index is several times slower on the CPU)."""
    b, h, n, f = x.shape
    offsets = torch.arange(0, b * h * n, n, device=x.device).view(b, h, 1)
    rows = (order + offsets).reshape(-1)
    return x.reshape(b * h * n, f).index_select(0, rows).view(b, h, order.shape[-1], f)


def _pad_seq(x: torch.Tensor, seq_pad: int) -> torch.Tensor:
    """Zero-pad dim 2 (seq) of a [b, h, n, ...] tensor to seq_pad."""
    extra = seq_pad - x.shape[2]
    if extra == 0:
        return x
    pad = torch.zeros(*x.shape[:2], extra, *x.shape[3:], dtype=x.dtype, device=x.device)
    return torch.cat([x, pad], dim=2)


def lowrank_sums(qh: torch.Tensor, kh: torch.Tensor, v: torch.Tensor, causal: bool):
    """Low-rank numerator and denominator in the hat scale.

    qh, kh: [b, h, n, F]; v: [b, h, n, dv] -> num [b, h, n, dv], den [b, h, n]
    with num_i = sum_j (qh_i . kh_j) v_j over j (j <= i if causal).
    """
    if not causal:
        kv = torch.matmul(kh.transpose(-1, -2), v)  # [b,h,F,n] @ [b,h,n,dv] -> [b,h,F,dv]
        k_sum = kh.sum(dim=2)  # [b, h, F]
        return torch.matmul(qh, kv), torch.matmul(qh, k_sum[..., None])[..., 0]
    # Chunked prefix sums: state before chunk c plus a masked quadratic term inside it.
    b, h, n, f = qh.shape
    chunk = min(CAUSAL_CHUNK, n)
    n_pad = padded_length(n, chunk)
    n_chunks = n_pad // chunk
    qc = _pad_seq(qh, n_pad).view(b, h, n_chunks, chunk, f)
    kc = _pad_seq(kh, n_pad).view(b, h, n_chunks, chunk, f)
    vc = _pad_seq(v, n_pad).view(b, h, n_chunks, chunk, v.shape[-1])
    kv = torch.matmul(kc.transpose(-1, -2), vc)  # [b,h,c,F,dv]
    kv_before = torch.cumsum(kv, dim=2) - kv  # exclusive prefix
    ks = kc.sum(dim=3)  # [b,h,c,F]
    ks_before = torch.cumsum(ks, dim=2) - ks
    scores = torch.matmul(qc, kc.transpose(-1, -2)).tril()  # [b,h,c,C,F]@[b,h,c,F,C] -> C x C
    num = torch.matmul(qc, kv_before) + torch.matmul(scores, vc)
    den = torch.matmul(qc, ks_before[..., None])[..., 0] + scores.sum(dim=-1)
    return (num.reshape(b, h, n_pad, -1)[:, :, :n], den.reshape(b, h, n_pad)[:, :, :n])


def buckets_per_chunk(batch_heads: int, bucket_size: int, width: int,
                      elements: int | None = None) -> int:
    """How many buckets the sparse loop handles at once.

    Temporaries are [batch * heads, buckets, bucket, max(bucket, width)]; keeping them near
    ``elements`` (default CHUNK_ELEMENTS) keeps them in cache and below the allocator's
    mmap threshold, where every large temporary costs page faults. A CPU tunable.
    """
    per_bucket = batch_heads * bucket_size * max(bucket_size, width)
    return max(1, (elements or CHUNK_ELEMENTS) // per_bucket)


def attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    scale: float,
    projections: torch.Tensor | None,
    hashes: HashFunctions | None,
    bucket_size: int | None,
    sparse: str | None,
    causal: bool,
    key_padding_mask: torch.Tensor | None,
    return_weights: bool | str = False,
    chunk_elements: int | None = None,
):
    """Core of every approximate method (inputs already validated).

    q, k: [b, h, n, d]; v: [b, h, n, dv]. ``projections`` None -> no low-rank part;
    ``sparse`` None -> no sparse part, "lsh" (uses ``hashes``) or "local" (fixed blocks).
    Computes in float32 (float64 for float64 inputs) and returns the output in q's dtype,
    plus the dense weights if asked: normalised, or with ``return_weights="unnormalized"``
    the estimate of ``exp(tau q k^T)`` itself. ``chunk_elements`` sizes the bucket loop
    (see :func:`buckets_per_chunk`); it never changes the result.
    """
    acc = torch.float64 if q.dtype == torch.float64 else torch.float32
    qf, kf, vf = q.to(acc), k.to(acc), v.to(acc)
    b, h, n, d = q.shape
    dv = v.shape[-1]
    use_lowrank = projections is not None

    if use_lowrank:
        proj = projections.to(device=q.device, dtype=acc)
        qh, lq = query_features(qf, proj, scale)  # [b,h,n,F], [b,h,n]
        kh, lk = key_features(kf, proj, scale, key_padding_mask)  # [b,h,n,F], [b,h]
        log_lr = lq + lk[..., None]  # phi(q_i).phi(k_j) = exp(log_lr_i) qh_i.kh_j
        num_lr, den_lr = lowrank_sums(qh, kh, vf, causal)

    if sparse is None:  # Performer: the scales cancel in the ratio
        out = num_lr / den_lr.clamp_min(torch.finfo(acc).tiny)[..., None]
        if not return_weights:
            return out.to(q.dtype)
        dense = torch.matmul(qh, kh.transpose(-1, -2))
        if causal:
            dense = dense.tril()
        return out.to(q.dtype), _finish_weights(dense, den_lr, log_lr, return_weights)

    # ---- sparse part: buckets of the padded sequence, streamed in chunks ----
    seq_pad = padded_length(n, bucket_size)
    if sparse == "local":
        q_order, k_order = local_order(b, h, n, bucket_size, q.device)
    else:
        q_order, k_order = lsh_order(qf, kf, hashes.to(q.device), bucket_size, key_padding_mask)
    n_rounds = q_order.shape[2]
    key_ok = torch.zeros(b, seq_pad, dtype=torch.bool, device=q.device)
    key_ok[:, :n] = True if key_padding_mask is None else key_padding_mask
    key_ok = key_ok[:, None, :].expand(b, h, seq_pad)
    any_invalid = causal or seq_pad > n or key_padding_mask is not None
    if n_rounds > 1:
        q_bucket = bucket_ids(q_order, bucket_size)  # [b,h,R,n_pad]
        k_bucket = bucket_ids(k_order, bucket_size)

    # Accumulators over the padded rows in original order, flattened to [b*h*n_pad, ...]:
    # the numerator and denominator in the scale exp(acc_lam) (a running max over the
    # low-rank term and every round, as in online softmax; any common scale gives the same
    # ratio, SCATTERBRAIN.md's log-sum-exp of the rounds included).
    rows_total = b * h * seq_pad
    if use_lowrank:
        acc_lam = _pad_seq(log_lr.detach()[..., None], seq_pad).reshape(rows_total).clone()
        num0, den0 = num_lr, den_lr
        if log_lr.requires_grad:  # value 1, gradient of exp(log_lr): keeps d(scale)/dq
            unit = torch.exp(log_lr - log_lr.detach())
            num0, den0 = num0 * unit[..., None], den0 * unit
        acc_num = _pad_seq(num0, seq_pad).reshape(rows_total, dv)
        acc_den = _pad_seq(den0[..., None], seq_pad).reshape(rows_total)
    else:
        acc_lam = qf.new_full((rows_total,), float("-inf"))
        acc_num = qf.new_zeros(rows_total, dv)
        acc_den = qf.new_zeros(rows_total)
    row_offsets = torch.arange(0, rows_total, seq_pad, device=q.device).view(b, h, 1)
    width = max(d, dv, qh.shape[-1] if use_lowrank else 0)
    step = buckets_per_chunk(b * h, bucket_size, width, chunk_elements) * bucket_size

    pieces = []
    for r in range(n_rounds):
        for start in range(0, seq_pad, step):
            q_pos = q_order[:, :, r, start:start + step]  # [b, h, slots], padded positions
            k_pos = k_order[:, :, r, start:start + step]
            g = q_pos.shape[-1] // bucket_size  # buckets in this chunk
            # positions >= n read row n - 1 (finite); their keys are masked below and
            # their query rows are cut off at the end
            qi, ki = q_pos.clamp_max(n - 1), k_pos.clamp_max(n - 1)

            def blocks(x, order, g=g):  # [b,h,n,f] -> [b,h,g,bucket,f] in sorted order
                return _gather_seq(x, order).view(b, h, g, bucket_size, x.shape[-1])

            qb_pos = q_pos.view(b, h, g, bucket_size)
            kb_pos = k_pos.view(b, h, g, bucket_size)
            # [.., bucket, d] @ [.., d, bucket] -> [b, h, g, bucket, bucket]
            logits = torch.matmul(blocks(qf, qi), blocks(kf, ki).transpose(-1, -2)).mul_(scale)
            valid = None
            if any_invalid:
                valid = torch.gather(key_ok, 2, k_pos).view(b, h, g, 1, bucket_size)
                if causal:
                    valid = valid & (kb_pos[..., None, :] <= qb_pos[..., :, None])
                logits = logits.masked_fill(~valid, float("-inf"))
            if n_rounds > 1:  # a pair found in c rounds counts 1/c in each
                same = torch.gather(
                    q_bucket, 3, q_pos[:, :, None].expand(b, h, n_rounds, -1)
                ).view(b, h, n_rounds, g, bucket_size, 1) == torch.gather(
                    k_bucket, 3, k_pos[:, :, None].expand(b, h, n_rounds, -1)
                ).view(b, h, n_rounds, g, 1, bucket_size)
                count = same.sum(dim=2).clamp_min(1).to(acc)
                logits = logits - torch.log(count)
            if use_lowrank:
                log_lr_rows = torch.gather(log_lr, 2, qi).view(b, h, g, bucket_size)
            with torch.no_grad():  # the stabiliser cancels: no gradient through it
                lam = logits.amax(dim=-1)  # [b,h,g,bucket]; a max, never a log-sum-exp
                if use_lowrank:
                    lam = torch.maximum(lam, log_lr_rows)
                lam = torch.where(torch.isfinite(lam), lam, torch.zeros_like(lam))
            resid = torch.exp(logits - lam[..., None])  # 0 where invalid
            if use_lowrank:
                # [.., bucket, F] @ [.., F, bucket] -> [b, h, g, bucket, bucket]
                est = torch.matmul(blocks(qh, qi), blocks(kh, ki).transpose(-1, -2))
                est = est * torch.exp(log_lr_rows - lam)[..., None]
                if n_rounds > 1:
                    est = est / count
                if valid is not None:
                    est = est.masked_fill(~valid, 0.0)
                resid = resid - est
            # [.., bucket, bucket] @ [.., bucket, dv] -> [b, h, g, bucket, dv]
            num_c = torch.matmul(resid, blocks(vf, ki)).reshape(-1, dv)
            den_c = resid.sum(dim=-1).reshape(-1)
            lam_c = lam.reshape(-1)
            rows = (q_pos + row_offsets).reshape(-1)  # each query once per round
            old_lam = acc_lam.index_select(0, rows)
            new_lam = torch.maximum(old_lam, lam_c)
            keep_old, take_new = torch.exp(old_lam - new_lam), torch.exp(lam_c - new_lam)
            # in place (autograd-safe: no earlier op saved the accumulators for backward)
            acc_num.index_copy_(0, rows, acc_num.index_select(0, rows) * keep_old[:, None]
                                + num_c * take_new[:, None])
            acc_den.index_copy_(0, rows, acc_den.index_select(0, rows) * keep_old
                                + den_c * take_new)
            acc_lam.index_copy_(0, rows, new_lam)
            if return_weights:
                pieces.append((qb_pos, kb_pos, resid, lam))

    num = acc_num.view(b, h, seq_pad, dv)[:, :, :n]
    den = acc_den.view(b, h, seq_pad)[:, :, :n]
    out = num / den.clamp_min(torch.finfo(acc).tiny)[..., None]
    if not return_weights:
        return out.to(q.dtype)

    # dense estimate in the scale exp(common_i): low-rank everywhere + residual on buckets
    common = acc_lam.view(b, h, seq_pad)
    dense = qf.new_zeros(b, h, seq_pad, seq_pad)
    if use_lowrank:
        low = torch.matmul(qh, kh.transpose(-1, -2)) * torch.exp(log_lr - common[:, :, :n])[
            ..., None]
        dense[:, :, :n, :n] = low.tril() if causal else low
    dense = dense.reshape(b, h, seq_pad * seq_pad)
    for qb_pos, kb_pos, resid, lam in pieces:
        rel = lam - torch.gather(common, 2, qb_pos.reshape(b, h, -1)).view_as(lam)
        scaled = resid * torch.exp(rel)[..., None]
        flat = (qb_pos[..., :, None] * seq_pad + kb_pos[..., None, :]).reshape(b, h, -1)
        dense = dense.scatter_add(2, flat, scaled.reshape(b, h, -1))
    dense = dense.view(b, h, seq_pad, seq_pad)[:, :, :n, :n]
    return out.to(q.dtype), _finish_weights(dense, den, common[:, :, :n], return_weights)


def _finish_weights(dense, den, log_scale, mode):
    """dense: estimate in the per-row scale exp(log_scale) -> normalised or absolute."""
    if mode == "unnormalized":
        return dense * torch.exp(log_scale)[..., None]
    return dense / den.clamp_min(torch.finfo(dense.dtype).tiny)[..., None]
