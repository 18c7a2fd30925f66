"""Key centroids: a deterministic low-rank part (``lowrank="centroids"``).

Each head's keys are grouped in C k-means clusters (:data:`LLOYD_STEPS` Lloyd steps from C
distinct keys drawn by a ``torch.Generator``, :func:`draw_starts`); centroid ``c_m`` = the
mean of cluster m's keys. Off the support, ``exp(tau q_i.k_j)`` is estimated by
``exp(tau q_i.c_m(j))``: a factorisation ``exp(log_lr_i) qh_i.kh_j`` with query features
``qh_i = exp(tau q_i.c_m - log_lr_i)`` (``log_lr_i`` = the row maximum) and key features
``kh_j = onehot(m(j))``, so it takes the place of Performer's features in
:func:`sbbench.attention.core.attend`: the sparse part subtracts ``qh_i.kh_j`` on the
support pairs, and the estimate stays exact there. Not unbiased (by Jensen, the centroid
underestimates the cluster's mean weight) but of low variance: see reports/supports.
C counts as C keys per query, like Performer's ``n_features``. The clusters use every
(unmasked) key, later ones included under causal, as the k-means support does.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

LOWRANK_KINDS = ("performer", "centroids")
LLOYD_STEPS = 3  # chosen on the MiniLM capture (benchmarks/lowrank_variants.py)


def check_lowrank(lowrank) -> str:
    if lowrank not in LOWRANK_KINDS:
        raise ValueError(f"lowrank must be one of {', '.join(map(repr, LOWRANK_KINDS))}, "
                         f"got {lowrank!r}")
    return lowrank


def draw_starts(clusters: int, q: torch.Tensor, key_padding_mask: torch.Tensor | None,
                generator: torch.Generator | None) -> torch.Tensor:
    """[batch, heads, min(clusters, seq)] distinct key positions, unmasked ones first, each
    (batch, head) drawn from ``generator`` (on its device, then moved to q's)."""
    b, h, n, _ = q.shape
    gen_device = generator.device if generator is not None else torch.device("cpu")
    scores = torch.rand(b, h, n, generator=generator, device=gen_device, dtype=torch.float64)
    if key_padding_mask is not None:  # masked keys only where there are too few others
        scores = scores - 2.0 * (~key_padding_mask.to(gen_device))[:, None, :]
    return scores.topk(min(clusters, n), dim=-1).indices.to(q.device)


def _cluster_means(kf, onehot):
    """Centroids [b, h, C, d] and sizes [b, h, C] of the clusters ``onehot`` [b, h, n, C]."""
    sizes = onehot.sum(dim=2)
    sums = torch.matmul(onehot.transpose(-1, -2), kf)
    return sums / sizes.clamp_min(1)[..., None], sizes


def centroid_features(qf, kf, starts, scale, key_padding_mask, causal: bool = False,
                      steps: int = LLOYD_STEPS):
    """(qh [b, h, n, C], kh [b, h, n, C], log_lr [b, h, n]) with
    ``exp(tau q_i.c_m(j)) = exp(log_lr_i) qh_i.kh_j`` for every unmasked key j (under
    ``causal``, every j <= i); masked keys get zero key features and join no cluster.
    ``starts``: from :func:`draw_starts`. Under ``causal`` a query's stabiliser (row
    maximum) only counts the clusters with a member it may see, and the others get zero
    query features (their prefix sums are zero there): a cluster of later keys alone must
    not push the visible ones' features below the float range."""
    b, h, n, d = kf.shape
    count = starts.shape[-1]
    keep = None if key_padding_mask is None else key_padding_mask[:, None, :, None].to(kf.dtype)
    with torch.no_grad():  # the assignment is discrete: no gradient through it
        centres = torch.gather(kf, 2, starts[..., None].expand(b, h, count, d))
        for _ in range(max(1, steps)):
            # nearest centre: |c|^2 - 2 k.c (|k|^2 is the same for every centre)
            dist = (centres * centres).sum(-1)[:, :, None, :] - 2 * torch.matmul(
                kf, centres.transpose(-1, -2))
            onehot = F.one_hot(dist.argmin(dim=-1), count).to(kf.dtype)  # [b, h, n, C]
            if keep is not None:
                onehot = onehot * keep
            means, sizes = _cluster_means(kf, onehot)
            centres = torch.where(sizes[..., None] > 0, means, centres)  # empty: stay
    centres, sizes = _cluster_means(kf, onehot)  # with gradient through the keys
    logits = torch.matmul(qf, centres.transpose(-1, -2)).mul(scale)  # [b, h, n, C]
    logits = logits.masked_fill((sizes == 0)[:, :, None, :], float("-inf"))
    if causal:  # the first member of each cluster, against each query's position
        pos = torch.arange(n, device=kf.device)
        first = torch.where(onehot > 0, pos[:, None], n).amin(dim=2)  # [b, h, C]
        logits = logits.masked_fill(first[:, :, None, :] > pos[:, None], float("-inf"))
    with torch.no_grad():  # the stabiliser cancels
        log_lr = logits.amax(dim=-1)
        log_lr = torch.where(torch.isfinite(log_lr), log_lr, torch.zeros_like(log_lr))
    return torch.exp(logits - log_lr[..., None]), onehot, log_lr
