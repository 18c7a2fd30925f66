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
LLOYD_SAMPLES = 16  # queries per cluster (on average) that the Lloyd steps look at
ASSIGN_ELEMENTS = 1 << 18  # cap on the [rows, clusters] scores of one assignment chunk


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
    deterministic given ``hashes``) and runs :data:`LLOYD_ITERATIONS` spherical Lloyd
    steps on a strided subsample of the queries (every ``bucket_size //``
    :data:`LLOYD_SAMPLES`-th position: mini-batch Lloyd), then assigns every query once
    and cuts the queries, sorted by (cluster, affinity), into chunks of ``bucket_size``.
    Under ``causal`` a cluster only picks keys at or before its last query. Temporaries
    are [rows, clusters] or [clusters, n] chunks of about ``elements``: memory is linear
    in n and the cost O(n * clusters * d) for the assignment and the key choice.
    """
    b, h, n, d = q.shape
    seq_pad = key_ok.shape[-1]
    n_clusters = seq_pad // bucket_size
    stride = max(1, bucket_size // LLOYD_SAMPLES)
    # masked positions sort behind every real one, as padding does (and as in lsh_order),
    # so the real positions cluster as in a run on the truncated sequence
    real = key_ok[..., :n]
    with torch.no_grad():
        q, k = q.detach(), k.detach()
        init_order, _ = lsh_order(q, k, hashes, bucket_size, key_ok[:, 0, :n])
        unit = q / torch.linalg.vector_norm(q, dim=-1, keepdim=True).clamp_min(1e-12)
        unit = unit.masked_fill(~real[..., None], 0.0)
        sample, sample_real = unit[:, :, ::stride], real[..., ::stride]
        centroids = unit.new_zeros(b, h, n_clusters, d)
        q_orders, k_orders, sets, clusters = [], [], [], []
        for r in range(hashes.n_hashes):
            # the starting centres: the means of the SMYRF buckets' sampled real queries;
            # a bucket without any holds no centre (so the clusters of the real positions
            # do not depend on how many padded or masked ones there are)
            start = _bucket_of(init_order[:, :, r], bucket_size)[..., :n:stride]
            assign = start.masked_fill(~sample_real, n_clusters)
            counts = _counts(assign, n_clusters, sample.dtype)
            alive = counts > 0
            centroids = _scatter_means(sample, assign, n_clusters, centroids)
            for _ in range(LLOYD_ITERATIONS):
                assign, _ = _assign(sample, centroids, alive, elements)
                assign = assign.masked_fill(~sample_real, n_clusters)  # a dropped bin
                centroids = _scatter_means(sample, assign, n_clusters, centroids)
            assign, affinity = _assign(unit, centroids, alive, elements)
            q_order, cluster_of = _balanced_order(assign, affinity, real, seq_pad,
                                                  bucket_size)
            keys = _top_keys(q, k, cluster_of, real, bucket_size, key_ok, causal, elements)
            q_orders.append(q_order)
            k_orders.append(keys.reshape(b, h, seq_pad))
            sets.append(torch.sort(keys, dim=-1).values)
            clusters.append(cluster_of)
    return (torch.stack(q_orders, 2), torch.stack(k_orders, 2),
            KeySets(torch.stack(sets, 2), torch.stack(clusters, 2)))


def _bucket_of(order, bucket_size):
    """Inverse of a sorted order [b, h, seq_pad]: the chunk of every position."""
    ids = torch.arange(order.shape[-1], device=order.device) // bucket_size
    return torch.empty_like(order).scatter_(-1, order, ids.expand_as(order).contiguous())


def _counts(assign, n_clusters, dtype):
    """How many rows each cluster holds: [b, h, clusters] (bin ``n_clusters`` dropped)."""
    b, h, n = assign.shape
    return torch.zeros(b, h, n_clusters + 1, dtype=dtype, device=assign.device).scatter_add_(
        2, assign, torch.ones(b, h, n, dtype=dtype, device=assign.device))[:, :, :n_clusters]


def _balanced_order(assign, affinity, real, seq_pad, bucket_size):
    """Queries sorted by (cluster, -affinity), padded and masked ones last: q_order
    [b, h, seq_pad] and its inverse cut into chunks, cluster_of [b, h, seq_pad]."""
    b, h, n = assign.shape
    n_clusters = seq_pad // bucket_size
    assign = torch.cat([assign.masked_fill(~real, n_clusters),
                        assign.new_full((b, h, seq_pad - n), n_clusters)], dim=2)
    affinity = torch.cat([affinity, affinity.new_zeros(b, h, seq_pad - n)], dim=2)
    by_affinity = torch.sort(-affinity, dim=-1, stable=True).indices
    by_cluster = torch.sort(torch.gather(assign, 2, by_affinity), dim=-1,
                            stable=True).indices
    q_order = torch.gather(by_affinity, 2, by_cluster)  # [b, h, seq_pad]
    return q_order, _bucket_of(q_order, bucket_size)


def _assign(unit, centroids, alive, elements):
    """Nearest live centroid (largest cosine) of every row: ([b, h, n] long, [b, h, n])."""
    n, n_clusters = unit.shape[2], centroids.shape[2]
    step = _chunk_rows(n, n_clusters, min(elements, ASSIGN_ELEMENTS))
    # cosines lie in [-1, 1]: a bias of -4 keeps a dead centre below every live one, added
    # in place to the [rows, clusters] scores (only when some centre is dead)
    bias = None
    if not bool(alive.all()):
        bias = torch.where(alive, 0.0, -4.0).to(unit.dtype)[:, :, None, :]
    centres_t = centroids.transpose(-1, -2).contiguous()  # [b, h, d, C]
    ids, best = [], []
    for start in range(0, n, step):
        # [b,h,rows,d] @ [b,h,d,C] -> [b,h,rows,C]
        scores = torch.matmul(unit[:, :, start:start + step], centres_t)
        if bias is not None:
            scores.add_(bias)
        value, index = scores.max(dim=-1)
        ids.append(index)
        best.append(value)
    return torch.cat(ids, 2), torch.cat(best, 2)


def _scatter_means(unit, assign, n_clusters, previous):
    """Normalised means of the rows of each cluster (an empty cluster keeps its centre)."""
    b, h, n, d = unit.shape
    sums = unit.new_zeros(b, h, n_clusters + 1, d).scatter_add_(
        2, assign[..., None].expand(b, h, n, d), unit)[:, :, :n_clusters]
    norm = torch.linalg.vector_norm(sums, dim=-1, keepdim=True)
    return torch.where(norm > 0, sums / norm.clamp_min(1e-12), previous)


def _top_keys(q, k, cluster_of, real, bucket_size, key_ok, causal, elements):
    """The ``bucket_size`` keys of largest ``mean(q) . k`` per cluster: [b, h, C, bucket]
    padded positions (masked, padded or, under causal, later-than-every-query keys only
    fill a set that has fewer candidates; they are masked per pair later)."""
    b, h, n, d = q.shape
    seq_pad = cluster_of.shape[-1]
    n_clusters = seq_pad // bucket_size
    # the mean of each cluster's real queries, and its last one (the causal horizon)
    member = cluster_of[..., :n].masked_fill(~real, n_clusters)
    sums = q.new_zeros(b, h, n_clusters + 1, d).scatter_add_(
        2, member[..., None].expand(b, h, n, d), q)[:, :, :n_clusters]
    centroids = sums / _counts(member, n_clusters, q.dtype).clamp_min(1)[..., None]
    positions = torch.arange(seq_pad, device=q.device)
    k_pad = k if seq_pad == n else torch.cat([k, k.new_zeros(b, h, seq_pad - n, d)], dim=2)
    k_t = k_pad.transpose(-1, -2)
    masked = causal or not bool(key_ok.all())
    if causal:
        last = torch.full((b, h, n_clusters + 1), -1, dtype=torch.long, device=q.device)
        last = last.scatter_reduce_(2, member, positions[:n].expand(b, h, n), "amax")
    step = _chunk_rows(n_clusters, seq_pad, elements)
    chosen = []
    for start in range(0, n_clusters, step):
        # [b,h,c,d] @ [b,h,d,seq_pad] -> [b,h,c,seq_pad]
        scores = torch.matmul(centroids[:, :, start:start + step], k_t)
        if masked:
            ok = key_ok[:, :, None, :]
            if causal:
                ok = ok & (positions <= last[:, :, start:start + step, None])
            scores.masked_fill_(~ok, float("-inf"))
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
