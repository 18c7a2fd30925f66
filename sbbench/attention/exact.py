"""Exact softmax attention: the ground truth every approximation is measured against."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from sbbench.attention.checks import check_mask, check_qkv, softmax_scale_for


def keep_mask(
    seq: int,
    *,
    causal: bool,
    key_padding_mask: torch.Tensor | None,
    device: torch.device,
) -> torch.Tensor | None:
    """Dense bool [batch or 1, 1, seq, seq] mask (True = attend); None if nothing is masked."""
    mask = None
    if causal:
        mask = torch.ones(seq, seq, dtype=torch.bool, device=device).tril()[None, None]
    if key_padding_mask is not None:
        pad = key_padding_mask[:, None, None, :]
        mask = pad if mask is None else mask & pad
    return mask


def exact_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: bool = False,
    key_padding_mask: torch.Tensor | None = None,
    softmax_scale: float | None = None,
    return_weights: bool = False,
):
    """Exact attention ``softmax(tau q k^T) v`` through torch's SDPA.

    q, k: [batch, heads, seq, head_dim]; v: [batch, heads, seq, head_dim_v];
    key_padding_mask: [batch, seq] bool, True = keep. A query that can see no key
    (every key masked) gets a zero output. With ``return_weights=True`` also returns the
    dense [batch, heads, seq, seq] attention matrix (small sizes only).
    """
    check_qkv(q, k, v)
    check_mask(key_padding_mask, q)
    scale = softmax_scale_for(q, softmax_scale)
    seq = q.shape[2]
    if return_weights:
        return _exact_dense(q, k, v, causal, key_padding_mask, scale)
    if key_padding_mask is None:
        return F.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=scale)
    mask = keep_mask(seq, causal=causal, key_padding_mask=key_padding_mask, device=q.device)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
    has_key = mask.any(dim=-1, keepdim=True)  # [b or 1, 1, seq, 1]
    return torch.where(has_key, out, torch.zeros((), dtype=out.dtype, device=out.device))


def _exact_dense(q, k, v, causal, key_padding_mask, scale):
    acc = torch.float64 if q.dtype == torch.float64 else torch.float32
    logits = scale * torch.matmul(q.to(acc), k.to(acc).transpose(-1, -2))
    mask = keep_mask(q.shape[2], causal=causal, key_padding_mask=key_padding_mask, device=q.device)
    if mask is not None:
        logits = logits.masked_fill(~mask, float("-inf"))
    row_max = logits.amax(dim=-1, keepdim=True).clamp_min(torch.finfo(acc).min)
    unnorm = torch.exp(logits - row_max)
    weights = unnorm / unnorm.sum(dim=-1, keepdim=True).clamp_min(torch.finfo(acc).tiny)
    out = torch.matmul(weights, v.to(acc))
    return out.to(q.dtype), weights
