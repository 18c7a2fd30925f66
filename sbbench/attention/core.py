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

from dataclasses import dataclass

import torch

from sbbench.attention.features import key_features, query_features
from sbbench.attention.lsh import HashFunctions, bucket_ids, local_order, lsh_order, padded_length
from sbbench.attention.supports import KeySets, fixed_membership, kmeans_order, window_keys

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


@dataclass
class _LowRank:
    """The low-rank part in the hat scale: phi(q_i).phi(k_j) = exp(log_lr_i) qh_i.kh_j."""

    qh: torch.Tensor  # [b, h, n, F]
    kh: torch.Tensor  # [b, h, n, F]
    log_lr: torch.Tensor  # [b, h, n]
    num: torch.Tensor  # [b, h, n, dv]
    den: torch.Tensor  # [b, h, n]


@dataclass
class _Buckets:
    """Where every query and key goes in the sparse part, and which pairs are valid."""

    bucket_size: int
    seq: int
    seq_pad: int
    q_order: torch.Tensor | None  # [b, h, R, seq_pad] sorted padded positions (None: no
    k_order: torch.Tensor | None  # buckets); k-means: chunk c of k_order = cluster c's keys
    key_ok: torch.Tensor  # [b, h, seq_pad] bool: a real, unmasked key
    any_invalid: bool  # some pair must be masked (causal, padding or key mask)
    causal: bool
    q_bucket: torch.Tensor | None = None  # [b, h, R, seq_pad] bucket per position (R > 1)
    k_bucket: torch.Tensor | None = None
    key_sets: KeySets | None = None  # k-means: the key set of every cluster
    sink: int = 0
    window: int = 0

    @property
    def n_rounds(self) -> int:
        return 0 if self.q_order is None else self.q_order.shape[2]

    @property
    def has_fixed(self) -> bool:
        """Whether sink or window keys join the support."""
        return bool(self.sink or self.window)

    def round_hits(self, q_pos: torch.Tensor, k_pos: torch.Tensor) -> torch.Tensor:
        """In how many rounds key k_pos [b, h, M, K] is in query q_pos [b, h, M]'s set."""
        if self.key_sets is not None:
            return self.key_sets.contains(q_pos, k_pos).sum(dim=2)
        b, h, m, width = k_pos.shape
        rounds = self.n_rounds
        qb = torch.gather(self.q_bucket, 3, q_pos[:, :, None].expand(b, h, rounds, m))
        kb = torch.gather(self.k_bucket, 3, k_pos.reshape(b, h, 1, m * width).expand(
            b, h, rounds, m * width)).view(b, h, rounds, m, width)
        return (qb[..., None] == kb).sum(dim=2)


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
):
    """Core of every approximate method (inputs already validated).

    q, k: [b, h, n, d]; v: [b, h, n, dv]. ``projections`` None -> no low-rank part;
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
    if projections is not None:
        lowrank = _lowrank_part(qf, kf, vf, projections, scale, key_padding_mask, causal)

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
                            max(1, elements // (b * h)))
    buckets.sink, buckets.window = sink, window
    if buckets.has_fixed and buckets.n_rounds and buckets.q_bucket is None \
            and buckets.key_sets is None:
        buckets.q_bucket = bucket_ids(buckets.q_order, bucket_size)
        buckets.k_bucket = bucket_ids(buckets.k_order, bucket_size)
    accs = _start_accumulators(qf, dv, buckets.seq_pad, lowrank)
    row_offsets = torch.arange(0, b * h * buckets.seq_pad, buckets.seq_pad,
                               device=q.device).view(b, h, 1)
    step = buckets_per_chunk(b * h, bucket_size or 1, width, chunk_elements) * (bucket_size
                                                                                 or 1)

    pieces = []
    for r in range(buckets.n_rounds):
        for start in range(0, buckets.seq_pad, step):
            q_pos = buckets.q_order[:, :, r, start:start + step]  # [b, h, slots]
            k_pos = buckets.k_order[:, :, r, start:start + step]
            num_c, den_c, lam, resid = _sparse_chunk(qf, kf, vf, scale, q_pos, k_pos, buckets,
                                                     lowrank)
            rows = (q_pos + row_offsets).reshape(-1)  # each query once per round
            _merge(accs, rows, num_c, den_c, lam.reshape(-1))
            if return_weights:
                pieces.append(_block_piece(q_pos, k_pos, resid, lam))
    if buckets.has_fixed:
        rows_step = max(1, elements // (b * h * (sink + window) * width))
        for start in range(0, n, rows_step):
            q_pos = torch.arange(start, min(n, start + rows_step), device=q.device
                                 ).expand(b, h, -1)
            num_c, den_c, lam, resid, keys = _fixed_chunk(qf, kf, vf, scale, q_pos, buckets,
                                                          lowrank)
            _merge(accs, (q_pos + row_offsets).reshape(-1), num_c, den_c, lam.reshape(-1))
            if return_weights:
                pieces.append((q_pos, keys, resid, lam))

    num = accs.num.view(b, h, buckets.seq_pad, dv)[:, :, :n]
    den = accs.den.view(b, h, buckets.seq_pad)[:, :, :n]
    out = num / den.clamp_min(torch.finfo(acc).tiny)[..., None]
    if not return_weights:
        return out.to(q.dtype)
    common = accs.lam.view(b, h, buckets.seq_pad)
    dense = _dense_estimate(qf, lowrank, pieces, common, buckets)
    return out.to(q.dtype), _finish_weights(dense, den, common[:, :, :n], return_weights)


def _lowrank_part(qf, kf, vf, projections, scale, key_padding_mask, causal) -> _LowRank:
    """Features of q and k and the low-rank numerator / denominator (hat scale)."""
    proj = projections.to(device=qf.device, dtype=qf.dtype)
    qh, lq = query_features(qf, proj, scale)  # [b,h,n,F], [b,h,n]
    kh, lk = key_features(kf, proj, scale, key_padding_mask)  # [b,h,n,F], [b,h]
    log_lr = lq + lk[..., None]  # phi(q_i).phi(k_j) = exp(log_lr_i) qh_i.kh_j
    num, den = lowrank_sums(qh, kh, vf, causal)
    return _LowRank(qh, kh, log_lr, num, den)


def _bucket_order(qf, kf, hashes, bucket_size, sparse, causal, key_padding_mask,
                  elements) -> _Buckets:
    """Buckets of the padded sequence: LSH (sorted hash order), k-means clusters, local
    blocks or none (sparse None)."""
    b, h, n, _ = qf.shape
    seq_pad = n if sparse is None else padded_length(n, bucket_size)
    key_ok = torch.zeros(b, seq_pad, dtype=torch.bool, device=qf.device)
    key_ok[:, :n] = True if key_padding_mask is None else key_padding_mask
    key_ok = key_ok[:, None, :].expand(b, h, seq_pad)
    key_sets = None
    if sparse is None:
        q_order = k_order = None
    elif sparse == "local":
        q_order, k_order = local_order(b, h, n, bucket_size, qf.device)
    elif sparse == "kmeans":
        q_order, k_order, key_sets = kmeans_order(qf, kf, hashes.to(qf.device), bucket_size,
                                                  key_ok, causal, elements)
    else:
        q_order, k_order = lsh_order(qf, kf, hashes.to(qf.device), bucket_size,
                                     key_padding_mask)
    buckets = _Buckets(
        bucket_size, n, seq_pad, q_order, k_order, key_ok=key_ok,
        any_invalid=causal or seq_pad > n or key_padding_mask is not None, causal=causal,
        key_sets=key_sets)
    if buckets.n_rounds > 1 and key_sets is None:
        buckets.q_bucket = bucket_ids(q_order, bucket_size)  # [b,h,R,n_pad]
        buckets.k_bucket = bucket_ids(k_order, bucket_size)
    return buckets


def _start_accumulators(qf, dv, seq_pad, lowrank: _LowRank | None) -> _Accumulators:
    """The accumulators before the first chunk: the low-rank sums, or empty."""
    b, h = qf.shape[:2]
    rows_total = b * h * seq_pad
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


def _sparse_chunk(qf, kf, vf, scale, q_pos, k_pos, buckets: _Buckets,
                  lowrank: _LowRank | None):
    """The residual of one chunk of buckets of one round.

    q_pos, k_pos: [b, h, g * bucket] padded positions in sorted order. Returns the
    chunk's numerator [rows, dv], denominator [rows], log-scale lam [b, h, g, bucket] and
    the residual weights [b, h, g, bucket, bucket] (in the scale exp(lam)).
    """
    b, h, n, _ = qf.shape
    dv = vf.shape[-1]
    bucket_size, n_rounds = buckets.bucket_size, buckets.n_rounds
    g = q_pos.shape[-1] // bucket_size  # buckets in this chunk
    # positions >= n read row n - 1 (finite); their keys are masked below and their
    # query rows are cut off at the end
    qi, ki = q_pos.clamp_max(n - 1), k_pos.clamp_max(n - 1)

    def blocks(x, order):  # [b,h,n,f] -> [b,h,g,bucket,f] in sorted order
        return _gather_seq(x, order).view(b, h, g, bucket_size, x.shape[-1])

    qb_pos = q_pos.view(b, h, g, bucket_size)
    kb_pos = k_pos.view(b, h, g, bucket_size)
    # [.., bucket, d] @ [.., d, bucket] -> [b, h, g, bucket, bucket]
    logits = torch.matmul(blocks(qf, qi), blocks(kf, ki).transpose(-1, -2)).mul_(scale)
    valid = None
    if buckets.any_invalid:
        valid = torch.gather(buckets.key_ok, 2, k_pos).view(b, h, g, 1, bucket_size)
        if buckets.causal:
            valid = valid & (kb_pos[..., None, :] <= qb_pos[..., :, None])
        logits = logits.masked_fill(~valid, float("-inf"))
    count = None
    if (buckets.key_sets is not None and n_rounds > 1) or buckets.has_fixed:
        # a pair found c times (rounds, sinks, window) counts 1/c each
        q_flat = q_pos
        k_flat = kb_pos[..., None, :].expand(b, h, g, bucket_size, bucket_size).reshape(
            b, h, g * bucket_size, bucket_size)
        hits = (buckets.round_hits(q_flat, k_flat) if n_rounds > 1
                else torch.ones_like(k_flat))
        if buckets.has_fixed:
            hits = hits + fixed_membership(q_flat, k_flat, buckets.sink, buckets.window,
                                           buckets.causal)
        count = hits.clamp_min(1).to(qf.dtype).view(b, h, g, bucket_size, bucket_size)
        logits = logits - torch.log(count)
    elif n_rounds > 1:  # a pair found in c rounds counts 1/c in each
        same = torch.gather(
            buckets.q_bucket, 3, q_pos[:, :, None].expand(b, h, n_rounds, -1)
        ).view(b, h, n_rounds, g, bucket_size, 1) == torch.gather(
            buckets.k_bucket, 3, k_pos[:, :, None].expand(b, h, n_rounds, -1)
        ).view(b, h, n_rounds, g, 1, bucket_size)
        count = same.sum(dim=2).clamp_min(1).to(qf.dtype)
        logits = logits - torch.log(count)
    if lowrank is not None:
        log_lr_rows = torch.gather(lowrank.log_lr, 2, qi).view(b, h, g, bucket_size)
    with torch.no_grad():  # the stabiliser cancels: no gradient through it
        lam = logits.amax(dim=-1)  # [b,h,g,bucket]; a max, never a log-sum-exp
        if lowrank is not None:
            lam = torch.maximum(lam, log_lr_rows)
        lam = torch.where(torch.isfinite(lam), lam, torch.zeros_like(lam))
    resid = torch.exp(logits - lam[..., None])  # 0 where invalid
    if lowrank is not None:
        # [.., bucket, F] @ [.., F, bucket] -> [b, h, g, bucket, bucket]
        est = torch.matmul(blocks(lowrank.qh, qi), blocks(lowrank.kh, ki).transpose(-1, -2))
        est = est * torch.exp(log_lr_rows - lam)[..., None]
        if count is not None:
            est = est / count
        if valid is not None:
            est = est.masked_fill(~valid, 0.0)
        resid = resid - est
    # [.., bucket, bucket] @ [.., bucket, dv] -> [b, h, g, bucket, dv]
    num_c = torch.matmul(resid, blocks(vf, ki)).reshape(-1, dv)
    den_c = resid.sum(dim=-1).reshape(-1)
    return num_c, den_c, lam, resid


def _fixed_chunk(qf, kf, vf, scale, q_pos, buckets: _Buckets, lowrank: _LowRank | None):
    """The residual of the sink and window keys of queries q_pos [b, h, M] (original
    positions). Returns numerator [rows, dv], denominator [rows], lam [b, h, M], the
    residual [b, h, M, S] (scale exp(lam)) and the key positions [b, h, M, S]."""
    b, h, n, d = qf.shape
    m = q_pos.shape[-1]
    keys, valid = window_keys(q_pos, n, buckets.sink, buckets.window, buckets.causal)
    width = keys.shape[-1]
    flat = keys.reshape(b, h, m * width)
    valid = valid & torch.gather(buckets.key_ok, 2, flat).view_as(keys)

    def rows_of(x, order):  # [b,h,n,f] -> [b,h,M,S,f]
        return _gather_seq(x, order).view(b, h, m, width, x.shape[-1])

    # [b,h,M,1,d] @ [b,h,M,d,S] -> [b,h,M,1,S]
    logits = torch.matmul(_gather_seq(qf, q_pos)[..., None, :],
                          rows_of(kf, flat).transpose(-1, -2))[..., 0, :].mul_(scale)
    hits = fixed_membership(q_pos, keys, buckets.sink, buckets.window, buckets.causal)
    if buckets.n_rounds:
        hits = hits + buckets.round_hits(q_pos, keys)
    count = hits.clamp_min(1).to(qf.dtype)
    logits = (logits - torch.log(count)).masked_fill(~valid, float("-inf"))
    if lowrank is not None:
        log_lr_rows = torch.gather(lowrank.log_lr, 2, q_pos)
    with torch.no_grad():
        lam = logits.amax(dim=-1)  # [b, h, M]
        if lowrank is not None:
            lam = torch.maximum(lam, log_lr_rows)
        lam = torch.where(torch.isfinite(lam), lam, torch.zeros_like(lam))
    resid = torch.exp(logits - lam[..., None])
    if lowrank is not None:
        # [b,h,M,1,F] @ [b,h,M,F,S] -> [b,h,M,S]
        est = torch.matmul(_gather_seq(lowrank.qh, q_pos)[..., None, :],
                           rows_of(lowrank.kh, flat).transpose(-1, -2))[..., 0, :]
        est = est * torch.exp(log_lr_rows - lam)[..., None] / count
        resid = resid - est.masked_fill(~valid, 0.0)
    # [b,h,M,1,S] @ [b,h,M,S,dv] -> [b,h,M,dv]
    num_c = torch.matmul(resid[..., None, :], rows_of(vf, flat))[..., 0, :]
    return num_c.reshape(-1, vf.shape[-1]), resid.sum(dim=-1).reshape(-1), lam, resid, keys


def _block_piece(q_pos, k_pos, resid, lam):
    """A bucket chunk's residual as (q_pos [b, h, M], k_pos [b, h, M, bucket], resid
    [b, h, M, bucket], lam [b, h, M]) for :func:`_dense_estimate`."""
    b, h, g, bucket = lam.shape
    kb_pos = k_pos.view(b, h, g, 1, bucket).expand(b, h, g, bucket, bucket)
    return (q_pos, kb_pos.reshape(b, h, g * bucket, bucket),
            resid.reshape(b, h, g * bucket, bucket), lam.reshape(b, h, g * bucket))


def _merge(accs: _Accumulators, rows, num_c, den_c, lam_c) -> None:
    """Fold one chunk into the accumulators at ``rows``, rescaling both to the larger
    log-scale (online softmax)."""
    old_lam = accs.lam.index_select(0, rows)
    new_lam = torch.maximum(old_lam, lam_c)
    keep_old, take_new = torch.exp(old_lam - new_lam), torch.exp(lam_c - new_lam)
    # in place (autograd-safe: no earlier op saved the accumulators for backward)
    accs.num.index_copy_(0, rows, accs.num.index_select(0, rows) * keep_old[:, None]
                         + num_c * take_new[:, None])
    accs.den.index_copy_(0, rows, accs.den.index_select(0, rows) * keep_old
                         + den_c * take_new)
    accs.lam.index_copy_(0, rows, new_lam)


def _dense_estimate(qf, lowrank: _LowRank | None, pieces, common, buckets: _Buckets):
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
