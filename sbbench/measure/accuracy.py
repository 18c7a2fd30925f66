"""Error metrics against exact attention (layer 2; docs/measurement.md, accuracy).

Every metric is computed in float64 whatever the inputs' dtype, so the metric never adds
rounding error of its own. Attention matrices are [..., seq, seq] (rows = queries),
outputs [..., seq, head_dim]; leading dimensions are batch and heads.
"""

from __future__ import annotations

import math

import torch

from sbbench.attention.lsh import HashFunctions, bucket_ids, lsh_order


def relative_error(approx: torch.Tensor, reference: torch.Tensor) -> float:
    """Relative Frobenius error ``|approx - reference|_F / |reference|_F`` over all entries.

    0.0 when both are zero; inf when only the reference is zero; nan or inf propagate
    from a non-finite ``approx`` (an overflowed estimate is a result, not hidden).
    """
    if approx.shape != reference.shape:
        raise ValueError(f"approx must have the reference's shape {tuple(reference.shape)}, "
                         f"got {tuple(approx.shape)}")
    ref = reference.detach().to(torch.float64)
    diff = approx.detach().to(torch.float64) - ref
    ref_norm = torch.linalg.vector_norm(ref).item()
    diff_norm = torch.linalg.vector_norm(diff).item()
    if ref_norm == 0.0:
        return 0.0 if diff_norm == 0.0 else math.inf
    return diff_norm / ref_norm


def relative_error_per_slice(approx: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Relative Frobenius error of each [rows, cols] matrix in the last two dims.

    approx, reference: [..., rows, cols] -> float64 [...] (e.g. [batch, heads]).
    """
    if approx.shape != reference.shape or approx.dim() < 2:
        raise ValueError(f"approx and reference must be [..., rows, cols] of one shape, got "
                         f"{tuple(approx.shape)} and {tuple(reference.shape)}")
    ref = reference.detach().to(torch.float64)
    diff = approx.detach().to(torch.float64) - ref
    ref_norm = torch.linalg.vector_norm(ref, dim=(-2, -1))
    diff_norm = torch.linalg.vector_norm(diff, dim=(-2, -1))
    err = diff_norm / ref_norm
    return torch.where(ref_norm == 0, torch.where(diff_norm == 0, 0.0, math.inf), err)


def mean_slice_error(approx: torch.Tensor, reference: torch.Tensor) -> float:
    """Mean over batch and heads of the per-matrix relative Frobenius error.

    The accuracy study's "attention error" (on [b, h, seq, seq]) and "output error"
    (on [b, h, seq, head_dim]): every head counts once, whatever its norm.
    """
    return relative_error_per_slice(approx, reference).mean().item()


def row_entropy(weights: torch.Tensor) -> float:
    """Mean entropy (nats) of the rows of normalised attention weights [..., seq, seq].

    ``0 log 0 = 0``; a uniform row over n keys has entropy ``log n``, a one-hot row 0.
    """
    p = weights.detach().to(torch.float64)
    terms = torch.where(p > 0, -p * torch.log(p.clamp_min(torch.finfo(torch.float64).tiny)),
                        torch.zeros((), dtype=torch.float64))
    return terms.sum(dim=-1).mean().item()


def selected_pairs(
    q: torch.Tensor,
    k: torch.Tensor,
    hashes: HashFunctions,
    bucket_size: int,
) -> torch.Tensor:
    """The (query, key) pairs that LSH buckets select: bool [batch, heads, seq, seq].

    The union over hash rounds of "query i and key j share a bucket", with the same
    hashing (XBOX+ transform, sorted projections, balanced chunks of ``bucket_size``) as
    ``lsh_attention`` / ``scatterbrain_attention`` given the same ``hashes``. Hashing
    sees q and k in float32 (float64 inputs stay float64), as the attention core does.
    """
    acc = torch.float64 if q.dtype == torch.float64 else torch.float32
    seq = q.shape[2]
    q_order, k_order = lsh_order(q.to(acc), k.to(acc), hashes.to(q.device), bucket_size)
    q_bucket = bucket_ids(q_order, bucket_size)[..., :seq]  # [b, h, R, seq]
    k_bucket = bucket_ids(k_order, bucket_size)[..., :seq]
    # [b, h, R, seq, 1] == [b, h, R, 1, seq] -> any over rounds -> [b, h, seq, seq]
    return (q_bucket[..., :, None] == k_bucket[..., None, :]).any(dim=2)


def cumulative_mass(weights: torch.Tensor) -> torch.Tensor:
    """[..., seq, seq] -> float64 [..., seq, seq]: entry c - 1 of a row is the mass of that
    row's c largest weights (sort each row descending, then a cumulative sum)."""
    w = weights.detach().to(torch.float64)
    return torch.sort(w, dim=-1, descending=True).values.cumsum(dim=-1)


def mass_captured(
    weights: torch.Tensor,
    selected: torch.Tensor,
    *,
    cumulative: torch.Tensor | None = None,
) -> tuple[float, float]:
    """Share of each row's attention mass on ``selected`` pairs, against top-k.

    weights: normalised reference attention [..., seq, seq]; selected: bool, same shape;
    cumulative: ``cumulative_mass(weights)`` if already computed. Returns (mean over rows
    of the mass on the selected pairs, mean over rows of the mass of the row's top-k
    entries with k = that row's number of selected pairs): the first is what the buckets
    catch, the second the most any support of that size could.
    """
    if weights.shape != selected.shape:
        raise ValueError(f"selected must have the weights' shape {tuple(weights.shape)}, "
                         f"got {tuple(selected.shape)}")
    w = weights.detach().to(torch.float64)
    captured = (w * selected).sum(dim=-1)
    counts = selected.sum(dim=-1)  # [..., seq]
    if cumulative is None:
        cumulative = cumulative_mass(w)
    best = torch.gather(cumulative, -1, (counts - 1).clamp_min(0)[..., None])[..., 0]
    best = torch.where(counts > 0, best, torch.zeros_like(best))
    return captured.mean().item(), best.mean().item()
