"""Where the sparse part looks: k-means query clusters, attention sinks, a local window,
and how often a (query, key) pair is picked by all of them together.

A *support* is the set of keys a query attends to exactly. Three kinds of parts make it:

- buckets (one set per round): SMYRF hash buckets or fixed local blocks (:mod:`lsh`), or
  k-means clusters (:func:`kmeans_order`): queries are split into balanced clusters of
  ``bucket_size``; each cluster attends to the ``bucket_size`` keys with the largest
  ``centroid . k``. Since ``centroid . k`` is the mean of ``q . k`` over the cluster, these
  are the keys with the largest mean logit over the cluster's queries.
- sinks: every query also attends to keys ``0 .. sink - 1``;
- a window: every query also attends to its ``window`` nearest positions (causal: the
  ``window`` previous ones, itself included; otherwise centred, clipped at the ends).

Every key of the support counts exactly once, so the low-rank correction stays unbiased:
a pair the sinks or the window hold is left out of the buckets (:func:`fixed_membership`),
a sink key inside the window is counted in the window only, and a pair found in ``c``
bucket rounds counts ``1 / c`` in each (:meth:`KeySets.contains` for k-means).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sbbench.attention.lsh import HashFunctions, lsh_order

LLOYD_ITERATIONS = 3  # a few iterations: the clusters only need to group similar queries


@dataclass
class KeySets:
    """The keys of every k-means cluster: sets [b, h, R, clusters, bucket] sorted key
    positions (padded), q_cluster [b, h, R, seq_pad] the cluster of every query."""

    sets: torch.Tensor
    q_cluster: torch.Tensor

    def contains(self, q_pos: torch.Tensor, k_pos: torch.Tensor) -> torch.Tensor:
        """q_pos [b, h, M], k_pos [b, h, M, K] -> [b, h, R, M, K] bool: whether key
        ``k_pos`` is in the set of query ``q_pos``'s cluster, per round."""
        b, h, n_rounds, n_clusters, bucket = self.sets.shape
        found = []
        for r in range(n_rounds):
            cluster = torch.gather(self.q_cluster[:, :, r], 2, q_pos)  # [b, h, M]
            flat = self.sets[:, :, r].reshape(b * h * n_clusters, bucket)
            offsets = torch.arange(0, b * h * n_clusters, n_clusters,
                                   device=q_pos.device).view(b, h, 1)
            rows = flat.index_select(0, (cluster + offsets).reshape(-1)).view(
                b, h, -1, bucket)  # [b, h, M, bucket]
            at = torch.searchsorted(rows, k_pos.contiguous()).clamp_max_(bucket - 1)
            found.append(torch.gather(rows, 3, at) == k_pos)
        return torch.stack(found, dim=2)


def _chunk_rows(total: int, width: int, elements: int) -> int:
    """Rows of a [rows, width] temporary that keep it near ``elements``."""
    return max(1, min(total, elements // max(1, width)))


def kmeans_order(q, k, hashes: HashFunctions, bucket_size: int, key_ok, causal: bool,
                 elements: int) -> tuple[torch.Tensor, torch.Tensor, KeySets]:
    """Balanced k-means clusters of the queries and their top keys, per round.

    q, k: [b, h, n, d]; key_ok: [b, h, seq_pad] bool (real, unmasked keys). Returns
    q_order [b, h, R, seq_pad] (a permutation: chunk c holds cluster c's queries),
    k_order [b, h, R, seq_pad] (chunk c holds cluster c's keys, best first) and their
    :class:`KeySets`. Round r starts from the SMYRF buckets of hash r (so it is
    deterministic given ``hashes``), runs :data:`LLOYD_ITERATIONS` spherical Lloyd steps,
    then cuts the queries, sorted by (cluster, affinity), into chunks of ``bucket_size``.
    Under ``causal`` a cluster only picks keys at or before its last query. Temporaries
    are [rows, clusters] or [clusters, n] chunks of about ``elements``: memory is linear
    in n and the cost O(n * clusters * d) per step.
    """
    b, h, n, d = q.shape
    seq_pad = key_ok.shape[-1]
    n_clusters = seq_pad // bucket_size
    # masked positions sort behind every real one, as padding does (and as in lsh_order),
    # so the real positions cluster as in a run on the truncated sequence
    real = key_ok[..., :n]
    with torch.no_grad():
        q, k = q.detach(), k.detach()
        init_order, _ = lsh_order(q, k, hashes, bucket_size, key_ok[:, 0, :n])
        unit = q / torch.linalg.vector_norm(q, dim=-1, keepdim=True).clamp_min(1e-12)
        unit = unit.masked_fill(~real[..., None], 0.0)
        unit_pad = torch.cat([unit, unit.new_zeros(b, h, seq_pad - n, d)], dim=2)
        q_orders, k_orders, sets, clusters = [], [], [], []
        for r in range(hashes.n_hashes):
            centroids = _cluster_means(unit_pad, init_order[:, :, r], bucket_size, key_ok)
            # a starting bucket of padded / masked positions only holds no centre: the
            # clusters of the real positions do not depend on how many there are
            alive = torch.gather(key_ok, 2, init_order[:, :, r]).view(
                b, h, n_clusters, bucket_size).any(-1)
            for _ in range(LLOYD_ITERATIONS):
                assign, _ = _assign(unit, centroids, alive, elements)
                assign = assign.masked_fill(~real, n_clusters)  # a bin that is dropped
                centroids = _scatter_means(unit, assign, n_clusters, centroids)
            assign, affinity = _assign(unit, centroids, alive, elements)
            # balanced: sort by (cluster, -affinity), padding and masked last, cut in chunks
            assign = torch.cat([assign.masked_fill(~real, n_clusters),
                                assign.new_full((b, h, seq_pad - n), n_clusters)], dim=2)
            affinity = torch.cat([affinity, affinity.new_zeros(b, h, seq_pad - n)], dim=2)
            by_affinity = torch.sort(-affinity, dim=-1, stable=True).indices
            by_cluster = torch.sort(torch.gather(assign, 2, by_affinity), dim=-1,
                                    stable=True).indices
            q_order = torch.gather(by_affinity, 2, by_cluster)  # [b, h, seq_pad]
            keys = _top_keys(q, k, q_order, bucket_size, key_ok, causal, elements)
            cluster_of = torch.empty_like(q_order).scatter_(
                2, q_order, (torch.arange(seq_pad, device=q.device) // bucket_size
                             ).expand_as(q_order).contiguous())
            q_orders.append(q_order)
            k_orders.append(keys.reshape(b, h, seq_pad))
            sets.append(torch.sort(keys, dim=-1).values)
            clusters.append(cluster_of)
    return (torch.stack(q_orders, 2), torch.stack(k_orders, 2),
            KeySets(torch.stack(sets, 2), torch.stack(clusters, 2)))


def _cluster_means(x_pad, order, bucket_size, key_ok):
    """Means of consecutive chunks of ``order`` over real, unmasked rows:
    [b, h, clusters, d]."""
    b, h, seq_pad, d = x_pad.shape
    blocks = torch.gather(x_pad, 2, order[..., None].expand(b, h, seq_pad, d))
    real = torch.gather(key_ok, 2, order).to(x_pad.dtype).view(b, h, -1, bucket_size, 1)
    sums = (blocks.view(b, h, -1, bucket_size, d) * real).sum(3)
    return sums / real.sum(3).clamp_min(1)


def _assign(unit, centroids, alive, elements):
    """Nearest live centroid (largest cosine) of every row: ([b, h, n] long, [b, h, n])."""
    n, n_clusters = unit.shape[2], centroids.shape[2]
    step = _chunk_rows(n, n_clusters, elements)
    # cosines lie in [-1, 1]: a bias of -4 keeps a dead centre below every live one, added
    # inside the matmul (no masked copy of the [rows, clusters] scores)
    bias = torch.where(alive, 0.0, -4.0).to(unit.dtype)[:, :, None, :]
    centres_t = centroids.transpose(-1, -2).contiguous()  # [b, h, d, C]
    ids, best = [], []
    for start in range(0, n, step):
        rows = unit[:, :, start:start + step]
        # [b,h,rows,d] @ [b,h,d,C] + bias -> [b,h,rows,C]
        scores = torch.matmul(rows, centres_t).add_(bias)
        value, index = scores.max(dim=-1)
        ids.append(index)
        best.append(value)
    return torch.cat(ids, 2), torch.cat(best, 2)


def _scatter_means(unit, assign, n_clusters, previous):
    """Normalised means of the rows of each cluster (an empty cluster keeps its centre)."""
    b, h, n, d = unit.shape
    sums = unit.new_zeros(b, h, n_clusters + 1, d).scatter_add_(
        2, assign[..., None].expand(b, h, n, d), unit)[:, :, :n_clusters]
    counts = unit.new_zeros(b, h, n_clusters + 1).scatter_add_(
        2, assign, unit.new_ones(b, h, n))[:, :, :n_clusters]
    norm = torch.linalg.vector_norm(sums, dim=-1, keepdim=True)
    return torch.where(counts[..., None] > 0, sums / norm.clamp_min(1e-12), previous)


def _top_keys(q, k, q_order, bucket_size, key_ok, causal, elements):
    """The ``bucket_size`` keys of largest ``mean(q) . k`` per cluster: [b, h, C, bucket]
    padded positions (masked, padded or, under causal, later-than-every-query keys only
    fill a set that has fewer candidates; they are masked per pair later)."""
    b, h, n, d = q.shape
    seq_pad = q_order.shape[-1]
    n_clusters = seq_pad // bucket_size
    q_pad = torch.cat([q, q.new_zeros(b, h, seq_pad - n, d)], dim=2)
    centroids = _cluster_means(q_pad, q_order, bucket_size, key_ok)  # [b, h, C, d]
    k_pad = torch.cat([k, k.new_zeros(b, h, seq_pad - n, d)], dim=2)
    real = torch.gather(key_ok, 2, q_order)  # real, unmasked queries set the horizon
    last = torch.where(real, q_order, -1).view(b, h, n_clusters, bucket_size).amax(-1)
    positions = torch.arange(seq_pad, device=q.device)
    step = _chunk_rows(n_clusters, seq_pad, elements)
    chosen = []
    for start in range(0, n_clusters, step):
        # [b,h,c,d] @ [b,h,d,seq_pad] -> [b,h,c,seq_pad]
        scores = torch.matmul(centroids[:, :, start:start + step], k_pad.transpose(-1, -2))
        ok = key_ok[:, :, None, :]
        if causal:
            ok = ok & (positions <= last[:, :, start:start + step, None])
        scores = scores.masked_fill(~ok, float("-inf"))
        chosen.append(scores.topk(bucket_size, dim=-1).indices)
    return torch.cat(chosen, 2)


def fixed_membership(q_pos, k_pos, sink: int, window: int, causal: bool) -> torch.Tensor:
    """How many of the sink and window parts pick each pair: [b, h, M, K] int.
    q_pos [b, h, M] or [b, h, M, 1]; k_pos [b, h, M, K]."""
    q_pos = q_pos if q_pos.dim() == k_pos.dim() else q_pos[..., None]
    count = (k_pos < sink).to(torch.int64)
    if window:
        low = q_pos - (window - 1) if causal else q_pos - (window - 1) // 2
        count = count + ((k_pos >= low) & (k_pos < low + window)).to(torch.int64)
    return count
