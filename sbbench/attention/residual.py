"""The sparse residual of one chunk of queries: the exact weights on the support minus
the low-rank estimate there, each pair divided by how many parts picked it.

Two shapes of chunk: a bucket chunk (g buckets of one round, [bucket, bucket] blocks,
here) and a fixed chunk (M queries with their sink and window keys, [M, sink + window],
:mod:`sbbench.attention.fixed`). Both return what :func:`sbbench.attention.core.attend`
merges into its accumulators.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sbbench.attention.supports import KeySets


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
    keys_all_ok: bool = False  # every key is real and unmasked (no padding, no key mask)
    sink: int = 0
    window: int = 0

    @property
    def n_rounds(self) -> int:
        return 0 if self.q_order is None else self.q_order.shape[2]

    @property
    def has_fixed(self) -> bool:
        """Whether sink or window keys join the support."""
        return bool(self.sink or self.window)


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
    valid = left_out = None
    if buckets.has_fixed:  # pairs the sinks or the window hold are counted there only
        left_out = _left_out(qb_pos, kb_pos, k_pos, buckets)
        left_out.fill_(logits, float("-inf"))  # in place: no op saved it for backward
    elif buckets.any_invalid:
        valid = torch.gather(buckets.key_ok, 2, k_pos).view(b, h, g, 1, bucket_size)
        if buckets.causal:
            valid = valid & (kb_pos[..., None, :] <= qb_pos[..., :, None])
        logits.masked_fill_(~valid, float("-inf"))  # in place: no op saved it for backward
    count = None
    if buckets.key_sets is not None and n_rounds > 1:  # a pair in c rounds counts 1/c each
        k_flat = kb_pos[..., None, :].expand(b, h, g, bucket_size, bucket_size).reshape(
            b, h, g * bucket_size, bucket_size)
        hits = buckets.key_sets.contains(q_pos, k_flat).sum(dim=2)
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
    resid = logits.sub_(lam[..., None]).exp_()  # 0 where invalid; in place, as above
    if lowrank is not None:
        # [.., bucket, F] @ [.., F, bucket] -> [b, h, g, bucket, bucket]
        est = torch.matmul(blocks(lowrank.qh, qi), blocks(lowrank.kh, ki).transpose(-1, -2))
        est = est * torch.exp(log_lr_rows - lam)[..., None]
        if count is not None:
            est = est / count
        if valid is not None:
            est = est.masked_fill(~valid, 0.0)
        elif left_out is not None:
            est = left_out.fill_(est.clone(), 0.0)
        resid = resid - est
    # [.., bucket, bucket] @ [.., bucket, dv] -> [b, h, g, bucket, dv]
    num_c = torch.matmul(resid, blocks(vf, ki)).reshape(-1, dv)
    den_c = resid.sum(dim=-1).reshape(-1)
    return num_c, den_c, lam, resid


@dataclass
class _LeftOut:
    """The pairs of a bucket chunk [b, h, g, bucket, bucket] that it leaves out: flat
    indices ``pairs`` (sinks and window; some maybe twice), the keys that no query may
    use (``keys`` [b, h, g, 1, bucket] bool) and under causal the later keys (``later``
    [b, h, g, bucket, bucket] bool); None where there are none."""

    pairs: torch.Tensor
    keys: torch.Tensor | None
    later: torch.Tensor | None

    def fill_(self, x: torch.Tensor, value: float) -> torch.Tensor:
        x.view(-1).index_fill_(0, self.pairs, value)
        for mask in (self.keys, self.later):
            if mask is not None:
                x.masked_fill_(mask, value)
        return x


def _left_out(qb_pos, kb_pos, k_pos, buckets: Buckets) -> _LeftOut:
    """The pairs :func:`in_fixed` (or causality, or a masked key) takes out of a bucket
    chunk. The sink and window pairs are found per query as ranges of its bucket's sorted
    keys (a search over the bucket, not a test of every pair): few of a bucket's keys lie
    in a query's window. qb_pos, kb_pos [b, h, g, bucket]; k_pos [b, h, g * bucket]."""
    b, h, g, size = qb_pos.shape
    qb_pos = qb_pos.contiguous()
    perm = None  # k-means keys come ascending per cluster; others are sorted here
    keys = kb_pos.contiguous() if buckets.key_sets is not None else None
    if keys is None:
        keys, perm = torch.sort(kb_pos, dim=-1)  # the chunk's keys ascending per bucket
    window, sink, causal = buckets.window, buckets.sink, buckets.causal
    starts, stops = [], []  # [b * h * g * size]: ranges [start, stop) of the sorted keys
    if window:
        low = qb_pos - (window - 1) if causal else qb_pos - (window - 1) // 2
        starts.append(torch.searchsorted(keys, low).view(-1))
        stops.append(torch.searchsorted(keys, low + window).view(-1))
    if sink:  # keys 0 .. sink - 1 lead each sorted bucket
        stops.append((keys < sink).sum(-1, keepdim=True).expand_as(qb_pos).reshape(-1))
        starts.append(torch.zeros_like(stops[-1]))
    rows = qb_pos.numel()
    start = torch.cat(starts)
    counts = torch.cat(stops).sub_(start).clamp_min_(0)
    nonempty = counts.nonzero().squeeze(1)  # the few ranges that hold a pair
    start, counts = start[nonempty], counts[nonempty]
    total = int(counts.sum())
    which = torch.repeat_interleave(torch.arange(nonempty.numel(), device=start.device),
                                    counts, output_size=total)  # each pair's range
    offsets = counts.cumsum(0).sub_(counts)
    column = start[which] + torch.arange(total, device=start.device) - offsets[which]
    row = nonempty[which] % rows  # the query row [b, h, g, size] flattened
    if perm is not None:  # the column in the chunk's own key order
        column = perm.reshape(-1)[(row // size) * size + column]
    keys_out = later = None
    if not buckets.keys_all_ok:
        keys_out = ~torch.gather(buckets.key_ok, 2, k_pos).view(b, h, g, 1, size)
    if causal:  # the keys after the query: about half the pairs, one dense test
        later = kb_pos[..., None, :] > qb_pos[..., :, None]
    return _LeftOut(row * size + column, keys_out, later)


def block_piece(q_pos, k_pos, resid, lam):
    """A bucket chunk's residual as (q_pos [b, h, M], k_pos [b, h, M, bucket], resid
    [b, h, M, bucket], lam [b, h, M]) for :func:`sbbench.attention.core._dense_estimate`."""
    b, h, g, bucket = lam.shape
    kb_pos = k_pos.view(b, h, g, 1, bucket).expand(b, h, g, bucket, bucket)
    return (q_pos, kb_pos.reshape(b, h, g * bucket, bucket),
            resid.reshape(b, h, g * bucket, bucket), lam.reshape(b, h, g * bucket))
