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

from .features import key_features, query_features
from .lsh import HashFunctions, bucket_ids, local_order, lsh_order, padded_length

CAUSAL_CHUNK = 64  # chunk of the prefix-sum form of causal low-rank attention


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
):
    """Core of every approximate method (inputs already validated).

    q, k: [b, h, n, d]; v: [b, h, n, dv]. ``projections`` None -> no low-rank part;
    ``sparse`` None -> no sparse part, "lsh" (uses ``hashes``) or "local" (fixed blocks).
    Computes in float32 (float64 for float64 inputs) and returns the output in q's dtype,
    plus the dense weights if asked: normalised, or with ``return_weights="unnormalized"``
    the estimate of ``exp(tau q k^T)`` itself.
    """
    acc = torch.float64 if q.dtype == torch.float64 else torch.float32
    qf, kf, vf = q.to(acc), k.to(acc), v.to(acc)
    b, h, n, _ = q.shape
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

    # ---- sparse part: buckets of the padded sequence ----
    seq_pad = padded_length(n, bucket_size)
    n_buckets = seq_pad // bucket_size
    if sparse == "local":
        q_order, k_order = local_order(b, h, n, bucket_size, q.device)
    else:
        q_order, k_order = lsh_order(qf, kf, hashes.to(q.device), bucket_size, key_padding_mask)
    n_rounds = q_order.shape[2]
    key_ok = torch.zeros(b, seq_pad, dtype=torch.bool, device=q.device)
    key_ok[:, :n] = True if key_padding_mask is None else key_padding_mask
    key_ok = key_ok[:, None, :].expand(b, h, seq_pad)
    if n_rounds > 1:
        q_bucket = bucket_ids(q_order, bucket_size)  # [b,h,R,n_pad]
        k_bucket = bucket_ids(k_order, bucket_size)

    qp, kp, vp = _pad_seq(qf, seq_pad), _pad_seq(kf, seq_pad), _pad_seq(vf, seq_pad)
    if use_lowrank:
        qhp, khp = _pad_seq(qh, seq_pad), _pad_seq(kh, seq_pad)
        log_lr_p = _pad_seq(log_lr[..., None], seq_pad)[..., 0]

    def blocks(x, order):  # [b,h,n_pad,f] gathered -> [b,h,buckets,bucket,f]
        return _gather_seq(x, order).view(b, h, n_buckets, bucket_size, x.shape[-1])

    nums, dens, lams, pieces = [], [], [], []
    for r in range(n_rounds):
        qi, ki = q_order[:, :, r], k_order[:, :, r]  # [b,h,n_pad]
        q_pos = qi.view(b, h, n_buckets, bucket_size)
        k_pos = ki.view(b, h, n_buckets, bucket_size)
        # [.., bucket, d] @ [.., d, bucket] -> [b, h, buckets, bucket, bucket]
        logits = scale * torch.matmul(blocks(qp, qi), blocks(kp, ki).transpose(-1, -2))
        valid = torch.gather(key_ok, 2, ki).view(b, h, n_buckets, 1, bucket_size)
        if causal:
            valid = valid & (k_pos[..., None, :] <= q_pos[..., :, None])
        else:
            valid = valid.expand_as(logits)
        if n_rounds > 1:  # a pair found in c rounds counts 1/c in each
            same = torch.gather(q_bucket, 3, qi[:, :, None].expand_as(q_bucket)).view(
                b, h, n_rounds, n_buckets, bucket_size, 1
            ) == torch.gather(k_bucket, 3, ki[:, :, None].expand_as(k_bucket)).view(
                b, h, n_rounds, n_buckets, 1, bucket_size
            )
            count = same.sum(dim=2).clamp_min(1).to(acc)
            logits = logits - torch.log(count)
        logits = logits.masked_fill(~valid, float("-inf"))
        lam = logits.amax(dim=-1)  # [b,h,buckets,bucket]; a max, never a log-sum-exp
        if use_lowrank:
            log_lr_sorted = torch.gather(log_lr_p, 2, qi).view_as(lam)
            lam = torch.maximum(lam, log_lr_sorted)
        lam = torch.where(torch.isfinite(lam), lam, torch.zeros_like(lam))
        resid = torch.exp(logits - lam[..., None])  # 0 where invalid
        if use_lowrank:
            est = torch.matmul(blocks(qhp, qi), blocks(khp, ki).transpose(-1, -2))
            est = est * torch.exp(log_lr_sorted - lam)[..., None]
            if n_rounds > 1:
                est = est / count
            resid = resid - est.masked_fill(~valid, 0.0)
        # [.., bucket, bucket] @ [.., bucket, dv] -> [b, h, buckets, bucket, dv]
        num_sorted = torch.matmul(resid, blocks(vp, ki)).view(b, h, seq_pad, -1)
        den_sorted = resid.sum(dim=-1).view(b, h, seq_pad)
        back = bucket_ids(qi, 1)  # inverse permutation: original position -> sorted slot
        nums.append(_gather_seq(num_sorted, back))
        dens.append(torch.gather(den_sorted, 2, back))
        lams.append(torch.gather(lam.reshape(b, h, seq_pad), 2, back))
        if return_weights:
            pieces.append((q_pos, k_pos, resid))

    lam_all = torch.stack(lams, dim=2)  # [b,h,R,n_pad]
    common = torch.logsumexp(lam_all, dim=2)  # Lambda_i, [b,h,n_pad]
    weight = torch.exp(lam_all - common[:, :, None])  # [b,h,R,n_pad]
    num = sum(nums[r] * weight[:, :, r, :, None] for r in range(n_rounds))[:, :, :n]
    den = sum(dens[r] * weight[:, :, r] for r in range(n_rounds))[:, :, :n]
    common = common[:, :, :n]
    if use_lowrank:
        lr_weight = torch.exp(log_lr - common)  # [b,h,n]
        num = num + num_lr * lr_weight[..., None]
        den = den + den_lr * lr_weight
    out = num / den.clamp_min(torch.finfo(acc).tiny)[..., None]
    if not return_weights:
        return out.to(q.dtype)

    # dense estimate in the scale exp(common_i): low-rank everywhere + residual on buckets
    if use_lowrank:
        dense = torch.matmul(qh, kh.transpose(-1, -2)) * lr_weight[..., None]
        if causal:
            dense = dense.tril()
        dense = _pad_seq(dense, seq_pad)
        dense = torch.cat([dense, dense.new_zeros(b, h, seq_pad, seq_pad - n)], dim=-1)
    else:
        dense = qf.new_zeros(b, h, seq_pad, seq_pad)
    dense = dense.reshape(b, h, seq_pad * seq_pad)
    for r, (q_pos, k_pos, resid) in enumerate(pieces):
        scaled = resid * torch.exp(
            torch.gather(lam_all[:, :, r], 2, q_pos.reshape(b, h, -1))
            - torch.gather(_pad_seq(common[..., None], seq_pad)[..., 0], 2,
                           q_pos.reshape(b, h, -1))
        ).view(b, h, n_buckets, bucket_size, 1)
        flat = (q_pos[..., :, None] * seq_pad + k_pos[..., None, :]).reshape(b, h, -1)
        dense = dense.scatter_add(2, flat, scaled.reshape(b, h, -1))
    dense = dense.view(b, h, seq_pad, seq_pad)[:, :, :n, :n]
    return out.to(q.dtype), _finish_weights(dense, den, common, return_weights)


def _finish_weights(dense, den, log_scale, mode):
    """dense: estimate in the per-row scale exp(log_scale) -> normalised or absolute."""
    if mode == "unnormalized":
        return dense * torch.exp(log_scale)[..., None]
    return dense / den.clamp_min(torch.finfo(dense.dtype).tiny)[..., None]
