"""The sink and window part of the support: the residual of every query's fixed keys.

Queries go in blocks of M (:data:`FIXED_BLOCK`); the window keys of block t are one
contiguous run of M + window - 1 keys (an unfold of the keys: a view, no gather), so each
block is a few small matmuls, [M, d] @ [d, M + window - 1]; the sink keys are one
[rows, d] @ [d, sink] product per group of blocks. A sink key that is also in the query's
window is counted in the window only: every pair once. The blocks whose window runs past
either end of the sequence (a few at each end) read a zero-padded copy of their own keys
only; the rest read the keys in place.
"""

from __future__ import annotations

import torch

from sbbench.attention.residual import Buckets, LowRank

FIXED_BLOCK = 16  # queries per block of the sink / window part (16: fewer keys per query
# than 32 at window 60, block + window - 1 = 75 instead of 91, and faster on the CPU)
FIXED_ELEMENTS = 1 << 18  # cap on its [queries, keys] temporaries (cache-sized)


def _pad_rows(x, before, after, value=0.0):
    """Pad dim 2 of a [b, h, n, ...] tensor with ``before`` / ``after`` rows of value."""
    if not before and not after:  # no copy
        return x.contiguous()
    if x.dim() == 3:
        return torch.nn.functional.pad(x, (before, after), value=value)
    return torch.nn.functional.pad(x, (0, 0, before, after), value=value)


def _segments(n_blocks, block, left, width, n, group):
    """Runs (t0, t1) of at most ``group`` blocks, the blocks whose window keys
    ``t * block - left + [0, width)`` run past either end in runs of their own."""
    head = min(n_blocks, -(-left // block))  # the first block starting at key >= 0
    tail = max(head, min(n_blocks, (n + left - width) // block + 1))  # first past n
    for lo, hi in ((0, head), (head, tail), (tail, n_blocks)):
        for t0 in range(lo, hi, group):
            yield t0, min(hi, t0 + group)


def _windows(x, t0, t1, block, left, width, value=0.0):
    """The window rows of blocks t0 .. t1 - 1 of x [b, h, n, ...]: [b, h, t1 - t0, ...,
    width] (a view of x, or of a padded copy of these rows where they run past an end)."""
    n = x.shape[2]
    start, stop = t0 * block - left, (t1 - 1) * block - left + width
    rows = x[:, :, max(start, 0):min(stop, n)]
    if start < 0 or stop > n:
        rows = _pad_rows(rows, max(0, -start), max(0, stop - n), value)
    return rows.unfold(2, width, block)


def fixed_part(qf, kf, vf, scale, buckets: Buckets, lowrank: LowRank | None, elements: int,
               weights: bool = False):
    """The residual of the sink and window keys, group of blocks by group of blocks.

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
    key_ok = buckets.key_ok[:, :, :n]
    device = qf.device
    rows_in_block = torch.arange(block, device=device)[:, None]
    cols = torch.arange(width, device=device)[None, :]
    band = (cols >= rows_in_block) & (cols < rows_in_block + window)  # [M, width]
    off_band = ~band
    q_blocks = _pad_rows(qf, 0, n_blocks * block - n).view(b, h, n_blocks, block, d)
    if lowrank is not None:
        qh_blocks = _pad_rows(lowrank.qh, 0, n_blocks * block - n).view(
            b, h, n_blocks, block, -1)
        log_lr = _pad_rows(lowrank.log_lr, 0, n_blocks * block - n).view(
            b, h, n_blocks, block)
    sink_pos = torch.arange(sink, device=device)
    k_sink = kf[:, :, :sink].transpose(-1, -2)  # [b, h, d, sink]
    per_block = b * h * block * max(width + sink, d, vf.shape[-1])
    group = max(1, min(elements, FIXED_ELEMENTS) // per_block)
    for t0, t1 in _segments(n_blocks, block, left, width, n, group):
        g, m = t1 - t0, (t1 - t0) * block
        q_pos = (torch.arange(t0 * block, t1 * block, device=device)
                 .view(g, block))  # [g, M]
        qg = q_blocks[:, :, t0:t1]
        # [b,h,g,M,d] @ [b,h,g,d,width] -> [b,h,g,M,width]; in place from here on (no
        # op before saved these temporaries for backward)
        logits = torch.matmul(qg, _windows(kf, t0, t1, block, left, width)).mul_(scale)
        start, stop = t0 * block - left, (t1 - 1) * block - left + width
        if start >= 0 and stop <= n and buckets.keys_all_ok:
            invalid = off_band  # [M, width], the same for every block
        else:
            ok_win = _windows(key_ok, t0, t1, block, left, width, value=False)
            invalid = ~(band & ok_win[:, :, :, None, :])
        logits.masked_fill_(invalid, float("-inf"))
        with torch.no_grad():
            lam = logits.amax(dim=-1)  # [b,h,g,M]
        if sink:
            # [b,h,g*M,d] @ [b,h,d,sink] -> [b,h,g,M,sink]
            sink_logits = torch.matmul(qg.reshape(b, h, m, d), k_sink).view(
                b, h, g, block, sink).mul_(scale)
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
            kh_win = _windows(lowrank.kh, t0, t1, block, left, width)
            est = torch.matmul(qh, kh_win) * scale_lr  # [b,h,g,M,width]
            resid = resid - est.masked_fill_(invalid, 0.0)
            if sink:
                est = torch.matmul(qh, lowrank.kh[:, :, None, :sink].transpose(-1, -2))
                resid_sink = resid_sink - (est * scale_lr).masked_fill_(~sink_ok, 0.0)
        # [b,h,g,M,width] @ [b,h,g,width,dv] (+ the sinks) -> [b,h,g,M,dv]
        v_win = _windows(vf, t0, t1, block, left, width)
        num = torch.matmul(resid, v_win.transpose(-1, -2))
        den = resid.sum(-1)
        if sink:  # [b,h,g*M,sink] @ [b,h,sink,dv]
            num = num + torch.matmul(resid_sink.reshape(b, h, m, sink),
                                     vf[:, :, :sink]).view_as(num)
            den = den + resid_sink.sum(-1)
        keep = min(m, n - t0 * block)  # rows past n are padding
        positions = q_pos.reshape(m)[:keep].expand(b, h, keep)
        resid_out = keys = None
        if weights:
            k_pos = q_pos[..., None] - rows_in_block.view(1, block, 1) + cols - left
            if sink:
                resid = torch.cat([resid_sink, resid], dim=-1)
                k_pos = torch.cat([sink_pos.expand(g, block, sink), k_pos], dim=-1)
            resid_out = resid.reshape(b, h, m, -1)[:, :, :keep]
            keys = k_pos.clamp(0, n - 1).reshape(m, -1)[:keep].expand(b, h, -1, -1)
        yield (positions, num.reshape(b, h, m, -1)[:, :, :keep].reshape(b * h * keep, -1),
               den.reshape(b, h, m)[:, :, :keep].reshape(-1),
               lam.reshape(b, h, m)[:, :, :keep], resid_out, keys)
