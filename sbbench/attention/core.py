"""The shared core of every approximate method, in PyTorch: the reference and the CPU path.

One function, :func:`attend`, computes every approximate method (docs/algorithm.md):

- low-rank only (Performer): ``out = phi(Q) (phi(K)^T V) / phi(Q) (phi(K)^T 1)``;
- sparse only (LSH / SMYRF): softmax over each query's support: its balanced hash
  buckets (or k-means cluster keys, local block), sink keys and window
  (:mod:`sbbench.attention.supports`);
- both (Scatterbrain): ``E_hat = phi(Q) phi(K)^T + R``, ``R`` the residual
  ``exp(tau q.k) - phi(q).phi(k)`` on the support (:mod:`sbbench.attention.residual`),
  so the estimate is exact there and the unbiased low-rank estimate elsewhere.

Memory grows linearly with ``seq``: the sparse part works on [buckets, bucket, bucket]
blocks, the low-rank part on [seq, n_features] features. Only ``return_weights`` builds
the dense [seq, seq] matrix.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sbbench.attention.centroids import centroid_features
from sbbench.attention.features import key_features, query_features
from sbbench.attention.fixed import fixed_part
from sbbench.attention.lsh import HashFunctions, bucket_ids, local_order, lsh_order, padded_length
from sbbench.attention.residual import Buckets, LowRank, block_piece, sparse_chunk
from sbbench.attention.supports import kmeans_order

CAUSAL_CHUNK = 64  # chunk of the prefix-sum form of causal low-rank attention
CHUNK_ELEMENTS = 1 << 20  # default size of the sparse loop's temporaries (see buckets_per_chunk)


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


@dataclass
class _Accumulators:
    """Numerator, denominator and their log-scale over the padded rows in original order,
    flattened to [b*h*seq_pad, ...] (a running max over the low-rank term and every round,
    as in online softmax; any common scale gives the same ratio)."""

    num: torch.Tensor  # [rows, dv]
    den: torch.Tensor  # [rows]
    lam: torch.Tensor  # [rows]


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
    sink: int = 0,
    window: int = 0,
    centroids: torch.Tensor | None = None,
):
    """Core of every approximate method (inputs already validated).

    q, k: [b, h, n, d]; v: [b, h, n, dv]. ``projections`` None -> no low-rank part, or
    with ``centroids`` ([b, h, C] start keys) key centroids (:mod:`centroids`) instead;
    ``sparse`` None -> no buckets, "lsh" (uses ``hashes``), "kmeans" (clusters started
    from ``hashes``, see :mod:`supports`) or "local" (fixed blocks); ``sink`` / ``window``
    add the first keys / the nearest keys to every query's support (sparse part only
    when all three are absent: Performer).
    Computes in float32 (float64 for float64 inputs) and returns the output in q's dtype,
    plus the dense weights if asked: normalised, or with ``return_weights="unnormalized"``
    the estimate of ``exp(tau q k^T)`` itself. ``chunk_elements`` sizes the bucket loop
    (see :func:`buckets_per_chunk`); it never changes the result.

    Steps: features and the low-rank sums; the bucket order; the sparse residual chunk by
    chunk, each merged into the accumulators; out = num / den.
    """
    acc = torch.float64 if q.dtype == torch.float64 else torch.float32
    qf, kf, vf = q.to(acc), k.to(acc), v.to(acc)
    lowrank = None
    if projections is not None or centroids is not None:
        lowrank = _lowrank_part(qf, kf, vf, projections, scale, key_padding_mask, causal,
                                centroids)

    if sparse is None and not (sink or window):  # Performer: the scales cancel
        out = lowrank.num / lowrank.den.clamp_min(torch.finfo(acc).tiny)[..., None]
        if not return_weights:
            return out.to(q.dtype)
        dense = torch.matmul(lowrank.qh, lowrank.kh.transpose(-1, -2))
        if causal:
            dense = dense.tril()
        return out.to(q.dtype), _finish_weights(dense, lowrank.den, lowrank.log_lr,
                                                return_weights)

    b, h, n, d = q.shape
    dv = v.shape[-1]
    width = max(d, dv, lowrank.qh.shape[-1] if lowrank is not None else 0)
    elements = chunk_elements or CHUNK_ELEMENTS
    buckets = _bucket_order(qf, kf, hashes, bucket_size, sparse, causal, key_padding_mask,
                            max(1, elements // (b * h)), sink, window, scale)
    # with no low-rank part the first bucket round fills every row (a copy, see below):
    # no need to set them first
    rounds_first = lowrank is None and buckets.n_rounds > 0
    accs = _start_accumulators(qf, dv, buckets.seq_pad, lowrank, filled=rounds_first)
    row_offsets = torch.arange(0, b * h * buckets.seq_pad, buckets.seq_pad,
                               device=q.device).view(b, h, 1)
    step = buckets_per_chunk(b * h, bucket_size or 1, width, chunk_elements) * (bucket_size
                                                                                 or 1)

    pieces, bucket_pieces = [], []

    def bucket_round(r, first):  # first: the accumulators are still empty
        for start in range(0, buckets.seq_pad, step):
            q_pos = buckets.q_order[:, :, r, start:start + step]  # [b, h, slots]
            k_pos = buckets.k_order[:, :, r, start:start + step]
            num_c, den_c, lam, resid = sparse_chunk(qf, kf, vf, scale, q_pos, k_pos, buckets,
                                                     lowrank)
            rows = (q_pos + row_offsets).reshape(-1)  # each query once per round
            (_copy_rows if first else _merge)(accs, rows, num_c, den_c, lam.reshape(-1))
            if return_weights:
                bucket_pieces.append(block_piece(q_pos, k_pos, resid, lam))

    # with no low-rank part the first round lands in empty accumulators: a copy, the
    # values a merge would give (every query once); the fixed part then merges by slices
    # (a merge of two parts is symmetric: the same sums as in the other order)
    if rounds_first:
        bucket_round(0, first=True)
    if buckets.has_fixed:  # its rows come in runs of consecutive positions: slices
        for q_pos, num_c, den_c, lam, resid, keys in fixed_part(
                qf, kf, vf, scale, buckets, lowrank, elements, weights=bool(return_weights)):
            _merge_run(accs, b * h, buckets.seq_pad, int(q_pos[0, 0, 0]), num_c, den_c,
                       lam.reshape(-1), first=lowrank is None and not rounds_first)
            if return_weights:
                pieces.append((q_pos, keys, resid, lam))
    for r in range(int(rounds_first), buckets.n_rounds):
        bucket_round(r, first=False)
    pieces += bucket_pieces

    num = accs.num.view(b, h, buckets.seq_pad, dv)[:, :, :n]
    den = accs.den.view(b, h, buckets.seq_pad)[:, :, :n]
    out = num / den.clamp_min(torch.finfo(acc).tiny)[..., None]
    if not return_weights:
        return out.to(q.dtype)
    common = accs.lam.view(b, h, buckets.seq_pad)
    dense = _dense_estimate(qf, lowrank, pieces, common, buckets)
    return out.to(q.dtype), _finish_weights(dense, den, common[:, :, :n], return_weights)


def _lowrank_part(qf, kf, vf, projections, scale, key_padding_mask, causal,
                  centroids=None) -> LowRank:
    """Features of q and k and the low-rank numerator / denominator (hat scale):
    Performer's (``projections``) or the key centroids' (``centroids``: start keys)."""
    if centroids is not None:
        qh, kh, log_lr = centroid_features(qf, kf, centroids, scale, key_padding_mask,
                                           causal)
        num, den = lowrank_sums(qh, kh, vf, causal)
        return LowRank(qh, kh, log_lr, num, den)
    proj = projections.to(device=qf.device, dtype=qf.dtype)
    qh, lq = query_features(qf, proj, scale)  # [b,h,n,F], [b,h,n]
    kh, lk = key_features(kf, proj, scale, key_padding_mask)  # [b,h,n,F], [b,h]
    log_lr = lq + lk[..., None]  # phi(q_i).phi(k_j) = exp(log_lr_i) qh_i.kh_j
    num, den = lowrank_sums(qh, kh, vf, causal)
    return LowRank(qh, kh, log_lr, num, den)


def _bucket_order(qf, kf, hashes, bucket_size, sparse, causal, key_padding_mask,
                  elements, sink, window, scale) -> Buckets:
    """Buckets of the padded sequence: LSH (sorted hash order), k-means clusters, local
    blocks or none (sparse None)."""
    b, h, n, _ = qf.shape
    seq_pad = n if sparse is None else padded_length(n, bucket_size)
    key_ok = _key_ok(qf, seq_pad, key_padding_mask)
    key_sets = None
    if sparse is None:
        q_order = k_order = None
    elif sparse == "local":
        q_order, k_order = local_order(b, h, n, bucket_size, qf.device)
    elif sparse == "kmeans":
        q_order, k_order, key_sets = kmeans_order(qf, kf, hashes.to(qf.device), bucket_size,
                                                  key_ok, causal, elements, scale, sink,
                                                  window)
    else:
        q_order, k_order = lsh_order(qf, kf, hashes.to(qf.device), bucket_size,
                                     key_padding_mask)
    buckets = Buckets(
        bucket_size, n, seq_pad, q_order, k_order, key_ok=key_ok,
        any_invalid=causal or seq_pad > n or key_padding_mask is not None, causal=causal,
        key_sets=key_sets)
    buckets.sink, buckets.window = sink, window
    buckets.keys_all_ok = seq_pad == n and key_padding_mask is None
    buckets.any_invalid = buckets.any_invalid or buckets.has_fixed
    if buckets.n_rounds > 1 and key_sets is None:
        buckets.q_bucket = bucket_ids(q_order, bucket_size)  # [b,h,R,n_pad]
        buckets.k_bucket = bucket_ids(k_order, bucket_size)
    return buckets


def _key_ok(qf, seq_pad, key_padding_mask) -> torch.Tensor:
    """[b, h, seq_pad] bool: a real, unmasked key."""
    b, h, n, _ = qf.shape
    key_ok = torch.zeros(b, seq_pad, dtype=torch.bool, device=qf.device)
    key_ok[:, :n] = True if key_padding_mask is None else key_padding_mask
    return key_ok[:, None, :].expand(b, h, seq_pad)


def kmeans_buckets(q, k, hashes: HashFunctions, bucket_size: int, causal: bool,
                   key_padding_mask, chunk_elements: int | None = None, *,
                   scale: float = 1.0, sink: int = 0, window: int = 0):
    """The k-means clusters :func:`attend` computes for these inputs (on the float32,
    or float64, working copies) with this softmax ``scale``, ``sink`` and ``window``:
    (q_order, k_order, KeySets), for the Triton kernels."""
    acc = torch.float64 if q.dtype == torch.float64 else torch.float32
    qf, kf = q.to(acc), k.to(acc)
    b, h, n, _ = qf.shape
    key_ok = _key_ok(qf, padded_length(n, bucket_size), key_padding_mask)
    elements = max(1, (chunk_elements or CHUNK_ELEMENTS) // (b * h))
    return kmeans_order(qf, kf, hashes.to(qf.device), bucket_size, key_ok, causal, elements,
                        scale, sink, window)


def _start_accumulators(qf, dv, seq_pad, lowrank: LowRank | None, filled=False
                        ) -> _Accumulators:
    """The accumulators before the first chunk: the low-rank sums, or empty (``filled``:
    uninitialised, for a first round that writes every row)."""
    b, h = qf.shape[:2]
    rows_total = b * h * seq_pad
    if filled:
        return _Accumulators(qf.new_empty(rows_total, dv), qf.new_empty(rows_total),
                             qf.new_empty(rows_total))
    if lowrank is None:
        return _Accumulators(qf.new_zeros(rows_total, dv), qf.new_zeros(rows_total),
                             qf.new_full((rows_total,), float("-inf")))
    log_lr = lowrank.log_lr
    lam = _pad_seq(log_lr.detach()[..., None], seq_pad).reshape(rows_total).clone()
    num0, den0 = lowrank.num, lowrank.den
    if log_lr.requires_grad:  # value 1, gradient of exp(log_lr): keeps d(scale)/dq
        unit = torch.exp(log_lr - log_lr.detach())
        num0, den0 = num0 * unit[..., None], den0 * unit
    return _Accumulators(_pad_seq(num0, seq_pad).reshape(rows_total, dv),
                         _pad_seq(den0[..., None], seq_pad).reshape(rows_total), lam)


def _online_merge(old_num, old_den, old_lam, num_c, den_c, lam_c):
    """Two partial sums, each in the scale exp(its lam), as one in the scale exp(max lam)
    (online softmax): (num, den, lam). ``old_num`` and ``old_den`` are rescaled in place
    (autograd-safe on copies: no earlier op saved them), so pass copies."""
    new_lam = torch.maximum(old_lam, lam_c)
    keep_old, take_new = torch.exp(old_lam - new_lam), torch.exp(lam_c - new_lam)
    num = old_num.mul_(keep_old[..., None]).add_(num_c * take_new[..., None])
    den = old_den.mul_(keep_old).add_(den_c * take_new)
    return num, den, new_lam


def _merge(accs: _Accumulators, rows, num_c, den_c, lam_c) -> None:
    """Fold one chunk into the accumulators at ``rows``, rescaling both to the larger
    log-scale (online softmax)."""
    merged = _online_merge(accs.num.index_select(0, rows), accs.den.index_select(0, rows),
                           accs.lam.index_select(0, rows), num_c, den_c, lam_c)
    for acc, value in zip((accs.num, accs.den, accs.lam), merged, strict=True):
        acc.index_copy_(0, rows, value)


def _copy_rows(accs: _Accumulators, rows, num_c, den_c, lam_c) -> None:
    """:func:`_merge` into rows that are still empty: a copy (the same values)."""
    for acc, value in zip((accs.num, accs.den, accs.lam), (num_c, den_c, lam_c), strict=True):
        acc.index_copy_(0, rows, value)


def _merge_run(accs: _Accumulators, batch_heads, seq_pad, start, num_c, den_c, lam_c,
               first=False):
    """:func:`_merge` for the rows ``start ..`` of every (batch, head), in that order
    (``first``: the rows are still empty, no low-rank part: a copy, the same values)."""
    m = lam_c.shape[0] // batch_heads
    num = accs.num.view(batch_heads, seq_pad, -1)[:, start:start + m]
    den = accs.den.view(batch_heads, seq_pad)[:, start:start + m]
    old_lam = accs.lam.view(batch_heads, seq_pad)[:, start:start + m]
    num_c, den_c = num_c.view(batch_heads, m, -1), den_c.view(batch_heads, m)
    lam_c = lam_c.view(batch_heads, m)
    if first:  # keep_old = exp(-inf) = 0, take_new = exp(0) = 1
        for acc, value in zip((num, den, old_lam), (num_c, den_c, lam_c), strict=True):
            acc.copy_(value)
        return
    # in place on the accumulators' rows (no op saved them: index_copy_ keeps its index)
    old_lam.copy_(_online_merge(num, den, old_lam, num_c, den_c, lam_c)[2])


def _dense_estimate(qf, lowrank: LowRank | None, pieces, common, buckets: Buckets):
    """The dense [b, h, n, n] estimate in the scale exp(common_i): low-rank everywhere
    plus the residual on the bucketed pairs (``return_weights`` only)."""
    b, h, n, _ = qf.shape
    seq_pad = buckets.seq_pad
    dense = qf.new_zeros(b, h, seq_pad, seq_pad)
    if lowrank is not None:
        low = torch.matmul(lowrank.qh, lowrank.kh.transpose(-1, -2)) * torch.exp(
            lowrank.log_lr - common[:, :, :n])[..., None]
        dense[:, :, :n, :n] = low.tril() if buckets.causal else low
    dense = dense.reshape(b, h, seq_pad * seq_pad)
    for q_pos, k_pos, resid, lam in pieces:  # [b,h,M], [b,h,M,K], [b,h,M,K], [b,h,M]
        rel = lam - torch.gather(common, 2, q_pos)
        scaled = resid * torch.exp(rel)[..., None]
        flat = (q_pos[..., None] * seq_pad + k_pos).reshape(b, h, -1)
        dense = dense.scatter_add(2, flat, scaled.reshape(b, h, -1))
    return dense.view(b, h, seq_pad, seq_pad)[:, :, :n, :n]


def _finish_weights(dense, den, log_scale, mode):
    """dense: estimate in the per-row scale exp(log_scale) -> normalised or absolute."""
    if mode == "unnormalized":
        return dense * torch.exp(log_scale)[..., None]
    return dense / den.clamp_min(torch.finfo(dense.dtype).tiny)[..., None]
