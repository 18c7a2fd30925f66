"""The sparse residual of one chunk of queries: the exact weights on the support minus
the low-rank estimate there, each pair divided by how many parts picked it.

Two shapes of chunk: a bucket chunk (g buckets of one round, [bucket, bucket] blocks)
and a fixed chunk (M queries with their sink and window keys, [M, sink + window]). Both
return what :func:`sbbench.attention.core.attend` merges into its accumulators.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sbbench.attention.supports import KeySets, in_fixed

FIXED_BLOCK = 16  # queries per block of the sink / window part (16: fewer keys per query
# than 32 at window 60, block + window - 1 = 75 instead of 91, and faster on the CPU)
FIXED_ELEMENTS = 1 << 18  # cap on its [queries, keys] temporaries (cache-sized)


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
        if buckets.has_fixed:  # pairs the sinks or the window hold are counted there only
            valid = valid & ~in_fixed(qb_pos[..., None], kb_pos[..., None, :], buckets.sink,
                                      buckets.window, buckets.causal)
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


def _pad_rows(x, before, after, value=0.0):
    """Pad dim 2 of a [b, h, n, ...] tensor with ``before`` / ``after`` rows of value."""
    if not before and not after:  # no copy
        return x.contiguous()
    if x.dim() == 3:
        return torch.nn.functional.pad(x, (before, after), value=value)
    return torch.nn.functional.pad(x, (0, 0, before, after), value=value)


def fixed_part(qf, kf, vf, scale, buckets: Buckets, lowrank: LowRank | None, elements: int,
               weights: bool = False):
    """The residual of the sink and window keys, block by block of queries.

    Queries go in blocks of M; the window keys of block t are one contiguous run of
    M + window - 1 keys (an unfold of the padded keys, no gather), so each block is a
    few small matmuls, [M, d] @ [d, M + window - 1], plus [M, d] @ [d, sink]. A sink key
    that is also in the query's window is counted in the window only: every pair once.
    Yields (query positions [b, h, m], numerator [rows, dv], denominator [rows], lam
    [b, h, m], and with ``weights`` the residual [b, h, m, S] in the scale exp(lam) and
    its key positions [b, h, m, S], else None, None).
    """
    b, h, n, d = qf.shape
    window, causal = buckets.window, buckets.causal
    sink = min(buckets.sink, n)
    left = window - 1 if causal else (window - 1) // 2  # query i sees i - left .. + window
    block = FIXED_BLOCK
    n_blocks = -(-n // block)
    width = block + window - 1  # window keys of one block
    after = n_blocks * block + window - 1 - left - n
    key_ok = buckets.key_ok[:, :, :n]
    device = qf.device
    # [b,h,nb,f,width]: the window keys of every block (views of the padded keys)
    def windows(x):
        return _pad_rows(x, left, after).unfold(2, width, block)

    k_win, v_win = windows(kf), windows(vf)
    ok_win = _pad_rows(key_ok, left, after, value=False).unfold(2, width, block)
    rows_in_block = torch.arange(block, device=device)[:, None]
    cols = torch.arange(width, device=device)[None, :]
    band = (cols >= rows_in_block) & (cols < rows_in_block + window)  # [M, width]
    q_blocks = _pad_rows(qf, 0, n_blocks * block - n).view(b, h, n_blocks, block, d)
    if lowrank is not None:
        qh_blocks = _pad_rows(lowrank.qh, 0, n_blocks * block - n).view(
            b, h, n_blocks, block, -1)
        kh_win = windows(lowrank.kh)
        log_lr = _pad_rows(lowrank.log_lr, 0, n_blocks * block - n).view(
            b, h, n_blocks, block)
    sink_pos = torch.arange(sink, device=device)
    k_sink = kf[:, :, None, :sink].transpose(-1, -2)  # [b, h, 1, d, sink]
    per_block = b * h * block * max(width + sink, d, vf.shape[-1])
    group = max(1, min(elements, FIXED_ELEMENTS) // per_block)
    for t0 in range(0, n_blocks, group):
        t1 = min(n_blocks, t0 + group)
        q_pos = (torch.arange(t0 * block, t1 * block, device=device)
                 .view(t1 - t0, block))  # [g, M]
        qg = q_blocks[:, :, t0:t1]
        # [b,h,g,M,d] @ [b,h,g,d,width] -> [b,h,g,M,width]; in place from here on (no
        # op before saved these temporaries for backward)
        logits = torch.matmul(qg, k_win[:, :, t0:t1]).mul_(scale)
        valid = band & ok_win[:, :, t0:t1, None, :]
        logits.masked_fill_(~valid, float("-inf"))
        with torch.no_grad():
            lam = logits.amax(dim=-1)  # [b,h,g,M]
        if sink:
            # [b,h,g,M,d] @ [b,h,1,d,sink] -> [b,h,g,M,sink]
            sink_logits = torch.matmul(qg, k_sink).mul_(scale)
            low = q_pos[..., None] - left
            in_window = (sink_pos >= low) & (sink_pos < low + window)
            sink_ok = key_ok[:, :, None, None, :sink] & ~in_window
            if causal:
                sink_ok = sink_ok & (sink_pos <= q_pos[..., None])
            sink_logits.masked_fill_(~sink_ok, float("-inf"))
            with torch.no_grad():
                lam = torch.maximum(lam, sink_logits.amax(dim=-1))
        with torch.no_grad():
            if lowrank is not None:
                lam = torch.maximum(lam, log_lr[:, :, t0:t1])
            lam = torch.where(torch.isfinite(lam), lam, torch.zeros_like(lam))
        resid = logits.sub_(lam[..., None]).exp_()  # 0 where invalid
        if sink:
            resid_sink = sink_logits.sub_(lam[..., None]).exp_()
        if lowrank is not None:
            qh = qh_blocks[:, :, t0:t1]
            scale_lr = torch.exp(log_lr[:, :, t0:t1] - lam)[..., None]
            est = torch.matmul(qh, kh_win[:, :, t0:t1]) * scale_lr  # [b,h,g,M,width]
            resid = resid - est.masked_fill_(~valid, 0.0)
            if sink:
                est = torch.matmul(qh, lowrank.kh[:, :, None, :sink].transpose(-1, -2))
                resid_sink = resid_sink - (est * scale_lr).masked_fill_(~sink_ok, 0.0)
        # [b,h,g,M,width] @ [b,h,g,width,dv] (+ the sinks) -> [b,h,g,M,dv]
        num = torch.matmul(resid, v_win[:, :, t0:t1].transpose(-1, -2))
        den = resid.sum(-1)
        if sink:
            num = num + torch.matmul(resid_sink, vf[:, :, None, :sink])
            den = den + resid_sink.sum(-1)
        keep = min((t1 - t0) * block, n - t0 * block)  # rows past n are padding
        m = (t1 - t0) * block
        positions = q_pos.reshape(m)[:keep].expand(b, h, keep)
        resid_out = keys = None
        if weights:
            k_pos = q_pos[..., None] - rows_in_block.view(1, block, 1) + cols - left
            if sink:
                resid = torch.cat([resid_sink, resid], dim=-1)
                k_pos = torch.cat([sink_pos.expand(t1 - t0, block, sink), k_pos], dim=-1)
            resid_out = resid.reshape(b, h, m, -1)[:, :, :keep]
            keys = k_pos.clamp(0, n - 1).reshape(m, -1)[:keep].expand(b, h, -1, -1)
        yield (positions, num.reshape(b, h, m, -1)[:, :, :keep].reshape(b * h * keep, -1),
               den.reshape(b, h, m)[:, :, :keep].reshape(-1),
               lam.reshape(b, h, m)[:, :, :keep], resid_out, keys)


def block_piece(q_pos, k_pos, resid, lam):
    """A bucket chunk's residual as (q_pos [b, h, M], k_pos [b, h, M, bucket], resid
    [b, h, M, bucket], lam [b, h, M]) for :func:`sbbench.attention.core._dense_estimate`."""
    b, h, g, bucket = lam.shape
    kb_pos = k_pos.view(b, h, g, 1, bucket).expand(b, h, g, bucket, bucket)
    return (q_pos, kb_pos.reshape(b, h, g * bucket, bucket),
            resid.reshape(b, h, g * bucket, bucket), lam.reshape(b, h, g * bucket))
