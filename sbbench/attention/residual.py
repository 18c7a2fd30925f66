"""The sparse residual of one chunk of queries: the exact weights on the support minus
the low-rank estimate there, each pair divided by how many parts picked it.

Two shapes of chunk: a bucket chunk (g buckets of one round, [bucket, bucket] blocks)
and a fixed chunk (M queries with their sink and window keys, [M, sink + window]). Both
return what :func:`sbbench.attention.core.attend` merges into its accumulators.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sbbench.attention.supports import KeySets, fixed_membership, window_keys


def gather_seq(x: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """x: [b, h, n, f], order: [b, h, m] -> x[b, h, order, :]: [b, h, m, f].

    A row gather on the flattened [b * h * n, f] tensor (index_select copies whole rows;
    take_along_dim with a broadcast index is several times slower on the CPU)."""
    b, h, n, f = x.shape
    offsets = torch.arange(0, b * h * n, n, device=x.device).view(b, h, 1)
    rows = (order + offsets).reshape(-1)
    return x.reshape(b * h * n, f).index_select(0, rows).view(b, h, order.shape[-1], f)


@dataclass
class LowRank:
    """The low-rank part in the hat scale: phi(q_i).phi(k_j) = exp(log_lr_i) qh_i.kh_j."""

    qh: torch.Tensor  # [b, h, n, F]
    kh: torch.Tensor  # [b, h, n, F]
    log_lr: torch.Tensor  # [b, h, n]
    num: torch.Tensor  # [b, h, n, dv]
    den: torch.Tensor  # [b, h, n]


@dataclass
class Buckets:
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


def sparse_chunk(qf, kf, vf, scale, q_pos, k_pos, buckets: Buckets,
                  lowrank: LowRank | None):
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
        return gather_seq(x, order).view(b, h, g, bucket_size, x.shape[-1])

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


def fixed_chunk(qf, kf, vf, scale, q_pos, buckets: Buckets, lowrank: LowRank | None):
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
        return gather_seq(x, order).view(b, h, m, width, x.shape[-1])

    # [b,h,M,1,d] @ [b,h,M,d,S] -> [b,h,M,1,S]
    logits = torch.matmul(gather_seq(qf, q_pos)[..., None, :],
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
        est = torch.matmul(gather_seq(lowrank.qh, q_pos)[..., None, :],
                           rows_of(lowrank.kh, flat).transpose(-1, -2))[..., 0, :]
        est = est * torch.exp(log_lr_rows - lam)[..., None] / count
        resid = resid - est.masked_fill(~valid, 0.0)
    # [b,h,M,1,S] @ [b,h,M,S,dv] -> [b,h,M,dv]
    num_c = torch.matmul(resid[..., None, :], rows_of(vf, flat))[..., 0, :]
    return num_c.reshape(-1, vf.shape[-1]), resid.sum(dim=-1).reshape(-1), lam, resid, keys


def block_piece(q_pos, k_pos, resid, lam):
    """A bucket chunk's residual as (q_pos [b, h, M], k_pos [b, h, M, bucket], resid
    [b, h, M, bucket], lam [b, h, M]) for :func:`sbbench.attention.core._dense_estimate`."""
    b, h, g, bucket = lam.shape
    kb_pos = k_pos.view(b, h, g, 1, bucket).expand(b, h, g, bucket, bucket)
    return (q_pos, kb_pos.reshape(b, h, g * bucket, bucket),
            resid.reshape(b, h, g * bucket, bucket), lam.reshape(b, h, g * bucket))
