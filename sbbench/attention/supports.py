"""Where the sparse part looks: k-means query clusters, attention sinks, a local window,
and how often a (query, key) pair is picked by all of them together.

A *support* is the set of keys a query attends to exactly. Three kinds of parts make it:

- buckets (one set per round): SMYRF hash buckets or fixed local blocks (:mod:`lsh`), or
  k-means clusters (:func:`kmeans_order`): queries are split into balanced clusters of
  ``bucket_size``; each cluster attends to the ``bucket_size`` keys with the largest
  ``centroid . k``. Since ``centroid . k`` is the mean of ``q . k`` over the cluster, these
  are the keys with the largest mean logit over the cluster's queries. Under causal or
  with sinks / a window, a key only serves the cluster's queries that may see it and do
  not hold it already (sinks, window): the score adds the log of how many those are
  (:func:`_usable`), so a cluster spends no keys on pairs that would be masked.
- sinks: every query also attends to keys ``0 .. sink - 1``;
- a window: every query also attends to its ``window`` nearest positions (causal: the
  ``window`` previous ones, itself included; otherwise centred, clipped at the ends).

Every key of the support counts exactly once, so the low-rank correction stays unbiased:
a pair the sinks or the window hold is left out of the buckets (:func:`in_fixed`),
a sink key inside the window is counted in the window only, and a pair found in ``c``
bucket rounds counts ``1 / c`` in each (:meth:`KeySets.contains` for k-means).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from sbbench.attention.lsh import HashFunctions, lsh_order

LLOYD_ITERATIONS = 3  # a few iterations: the clusters only need to group similar queries
INNER_ITERATIONS = 2  # the same inside each group of the two-level clustering (its start,
# the hash buckets within a group of similar queries, is closer: 2 gave the errors of 3)
LLOYD_SAMPLES = 16  # queries per cluster (on average) that the Lloyd steps look at ..
LLOYD_ALL_ROWS = 4096  # .. once there are more rows than this (else all of them)
ASSIGN_ELEMENTS = 1 << 18  # cap on the [rows, clusters] scores of one assignment chunk
TWO_LEVEL_CLUSTERS = 64  # from this many clusters on, groups of clusters first
CANDIDATES = 2  # a group's candidate keys: this many times its queries
_FAR = torch.iinfo(torch.long).max  # the position of a non-real query in _members


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
                 elements: int, scale: float = 1.0, sink: int = 0, window: int = 0
                 ) -> tuple[torch.Tensor, torch.Tensor, KeySets]:
    """Balanced k-means clusters of the queries and their top keys, per round.

    q, k: [b, h, n, d]; key_ok: [b, h, seq_pad] bool (real, unmasked keys). Returns
    q_order [b, h, R, seq_pad] (a permutation: chunk c holds cluster c's queries),
    k_order [b, h, R, seq_pad] (chunk c holds cluster c's keys, ascending) and their
    :class:`KeySets`. Round r starts from the SMYRF buckets of hash r (so it is
    deterministic given ``hashes``), runs :data:`LLOYD_ITERATIONS` spherical Lloyd steps
    (beyond :data:`LLOYD_ALL_ROWS` queries on a strided subsample: mini-batch Lloyd,
    about :data:`LLOYD_SAMPLES` per cluster), assigns every query once and cuts the queries,
    sorted by (cluster, affinity), into chunks of ``bucket_size``; each cluster takes the
    keys of largest ``mean(q) . k``, or under ``causal`` or with ``sink`` / ``window``
    (the fixed part of the same call) of largest ``scale * mean(q) . k + log(u)``, u the
    number of the cluster's queries that may see the key and do not hold it in their
    sinks or window (:func:`_usable`; keys with u = 0 only fill a cluster that has too few
    others): ``exp`` of it estimates the softmax mass the key adds over the cluster, with
    ``scale`` the softmax scale. From :data:`TWO_LEVEL_CLUSTERS` clusters on, two levels
    (:func:`_groups`): balanced groups of clusters first, each group's clusters within
    it, and each cluster chooses among its group's best :data:`CANDIDATES` x group-size
    keys (weighed the same way), so the cost is about O(n sqrt(clusters) d) instead of
    O(n clusters d). Temporaries are chunks of about ``elements``: memory is linear in n.
    """
    b, h, n, d = q.shape
    seq_pad = key_ok.shape[-1]
    n_clusters = seq_pad // bucket_size
    n_groups = _groups(n_clusters)
    # under causal or with a fixed part, keys are weighed by the queries they serve
    fixed = _Fixed(scale, sink, window, causal) if causal or sink or window else None
    # masked positions sort behind every real one, as padding does (and as in lsh_order),
    # so the real positions cluster as in a run on the truncated sequence
    real = torch.cat([key_ok[..., :n], key_ok.new_zeros(b, h, seq_pad - n)], dim=2)
    with torch.no_grad():
        q, k = q.detach(), k.detach()
        init_order, _ = lsh_order(q, k, hashes, bucket_size, key_ok[:, 0, :n],
                                  queries_only=True)
        unit = q / torch.linalg.vector_norm(q, dim=-1, keepdim=True).clamp_min(1e-12)
        if seq_pad > n or not bool(real.all()):
            unit = torch.cat([unit.masked_fill(~real[..., :n, None], 0.0),
                              unit.new_zeros(b, h, seq_pad - n, d)], dim=2)
        k_pad = k if seq_pad == n else torch.cat([k, k.new_zeros(b, h, seq_pad - n, d)], 2)
        positions = torch.arange(seq_pad, device=q.device).expand(b, h, seq_pad)
        q_orders, k_orders, sets, clusters = [], [], [], []
        for r in range(hashes.n_hashes):
            init = init_order[:, :, r]
            if n_groups == 1:
                q_order = _balanced_kmeans(unit, real, init, bucket_size, elements)
                cluster_of = _bucket_of(q_order, bucket_size)
                sums, counts = _centres(q, cluster_of, real, n_clusters)
                keys = _pick(sums / counts.clamp_min(1)[..., None],
                             fixed and _members(q_order, real, bucket_size), k_pad,
                             positions, key_ok, bucket_size, fixed, elements,
                             every_key=True)
            else:
                q_order, keys = _two_levels(q, k_pad, unit, real, init, n_groups,
                                            bucket_size, key_ok, fixed, elements)
                cluster_of = _bucket_of(q_order, bucket_size)
            q_orders.append(q_order)
            keys = torch.sort(keys, dim=-1).values  # ascending: the set and the order
            k_orders.append(keys.reshape(b, h, seq_pad))
            sets.append(keys)
            clusters.append(cluster_of)
    return (torch.stack(q_orders, 2), torch.stack(k_orders, 2),
            KeySets(torch.stack(sets, 2), torch.stack(clusters, 2)))


def _groups(n_clusters: int) -> int:
    """Groups of the two-level clustering: the largest divisor of ``n_clusters`` up to
    its square root, from :data:`TWO_LEVEL_CLUSTERS` clusters on (else 1: one level)."""
    if n_clusters < TWO_LEVEL_CLUSTERS:
        return 1
    return max(g for g in range(1, math.isqrt(n_clusters) + 1) if n_clusters % g == 0)


def _two_levels(q, k_pad, unit, real, init, n_groups, bucket_size, key_ok, fixed,
                elements):
    """Balanced groups of ``seq_pad / n_groups`` queries, then balanced clusters inside
    each group; keys: each group's best candidates, each cluster's best among them.
    Returns q_order [b, h, seq_pad] and the keys [b, h, clusters, bucket]."""
    b, h, seq_pad, d = unit.shape
    size = seq_pad // n_groups  # queries per group
    per_group = size // bucket_size  # clusters per group
    order1 = _balanced_kmeans(unit, real, init, size, elements)
    # inside each group ([b, h * groups, size]), start from the SMYRF order again
    rank = _bucket_of(init, 1)  # position -> place in the hash order
    local = torch.sort(torch.gather(rank, 2, order1).view(b, h * n_groups, size),
                       dim=-1).indices
    unit2 = _rows(unit, order1).view(b, h * n_groups, size, d)
    real2 = torch.gather(real, 2, order1).view(b, h * n_groups, size)
    order2 = _balanced_kmeans(unit2, real2, local, bucket_size, elements, INNER_ITERATIONS)
    q_order = torch.gather(order1.view(b, h * n_groups, size), 2, order2).view(b, h, seq_pad)
    # keys: the group's candidates first, then each cluster's among them
    cluster_of = _bucket_of(q_order, bucket_size)
    n_cand = min(seq_pad, CANDIDATES * size)
    positions = torch.arange(seq_pad, device=q.device).expand(b, h, seq_pad)
    sums, counts = _centres(q, cluster_of, real, n_groups * per_group)
    centres = sums / counts.clamp_min(1)[..., None]
    # a group's sums and counts are those of its clusters
    group = (sums.view(b, h, n_groups, per_group, d).sum(3)
             / counts.view(b, h, n_groups, per_group).sum(3).clamp_min(1)[..., None])
    cand = _pick(group, fixed and _members(q_order, real, size), k_pad, positions, key_ok,
                 n_cand, fixed, elements, every_key=True)
    if fixed is not None:  # ascending, for _usable
        cand = torch.sort(cand, dim=-1).values
    cand = cand.reshape(b, h, n_groups * n_cand)
    view = (b, h * n_groups)
    members = fixed and _members(q_order, real, bucket_size).view(*view, per_group,
                                                                   bucket_size)
    chosen = _pick(centres.view(*view, per_group, d), members,
                   _rows(k_pad, cand).view(*view, n_cand, d), cand.view(*view, n_cand),
                   torch.gather(key_ok, 2, cand).view(*view, n_cand), bucket_size, fixed,
                   elements)
    return q_order, chosen.view(b, h, n_groups * per_group, bucket_size)


def _rows(x, order):
    """x [b, h, n, d], order [b, h, m] -> x[b, h, order]: [b, h, m, d] (a row
    index_select: gather with a broadcast index is several times slower on the CPU)."""
    b, h, n, d = x.shape
    offsets = torch.arange(0, b * h * n, n, device=x.device).view(b, h, 1)
    return x.reshape(b * h * n, d).index_select(0, (order + offsets).reshape(-1)).view(
        b, h, order.shape[-1], d)


def _bucket_of(order, bucket_size):
    """Inverse of a sorted order [b, h, seq_pad]: the chunk of every position."""
    ids = torch.arange(order.shape[-1], device=order.device) // bucket_size
    return torch.empty_like(order).scatter_(-1, order, ids.expand_as(order).contiguous())


def _counts(assign, n_clusters, dtype):
    """How many rows each cluster holds: [b, h, clusters] (bin ``n_clusters`` dropped)."""
    ones = torch.ones(assign.shape, dtype=dtype, device=assign.device)
    return _bin_sums(ones, assign, n_clusters + 1)[:, :, :n_clusters]


def _bin_sums(x, index, bins):
    """Sums of x [b, h, n, ...] over the rows of each bin, index [b, h, n] in 0 .. bins - 1:
    [b, h, bins, ...] (one flat index_add_: several times faster on the CPU than a
    scatter_add_ with a broadcast index, and the same sums in the same order)."""
    b, h, n = index.shape
    offsets = torch.arange(0, b * h * bins, bins, device=index.device).view(b, h, 1)
    tail = x.shape[3:]
    return x.new_zeros(b * h * bins, *tail).index_add_(
        0, (index + offsets).reshape(-1), x.reshape(b * h * n, *tail)).view(b, h, bins, *tail)


def _balanced_kmeans(unit, real, init, bucket_size, elements, iterations=LLOYD_ITERATIONS):
    """Balanced spherical k-means of the rows of unit [b, h, m, d] (real [b, h, m]: the
    rows that count) started from the chunks of ``init`` [b, h, m] (an order): the order
    [b, h, m] whose chunks of ``bucket_size`` are the clusters, non-real rows last."""
    b, h, m, d = unit.shape
    n_clusters = m // bucket_size
    stride = max(1, bucket_size // LLOYD_SAMPLES) if m > LLOYD_ALL_ROWS else 1
    sample, sample_real = unit[:, :, ::stride], real[..., ::stride]
    # the starting centres: the means of the SMYRF buckets' sampled real rows; a bucket
    # without any holds no centre (so the clusters of the real rows do not depend on how
    # many padded or masked ones there are)
    assign = _bucket_of(init, bucket_size)[..., ::stride].masked_fill(~sample_real,
                                                                      n_clusters)
    alive = _counts(assign, n_clusters, unit.dtype) > 0
    centroids = _scatter_means(sample, assign, n_clusters, unit.new_zeros(b, h, n_clusters, d))
    for _ in range(iterations):
        assign, _ = _assign(sample, centroids, alive, elements)
        assign = assign.masked_fill(~sample_real, n_clusters)  # a bin that is dropped
        centroids = _scatter_means(sample, assign, n_clusters, centroids)
    assign, affinity = _assign(unit, centroids, alive, elements)
    # balanced: sort by (cluster, -affinity), non-real last, cut in chunks
    # (affinity in [-5, 1]: cluster * 8 - affinity orders by cluster first, exactly in
    # float64; ties keep the positions' order)
    key = assign.masked_fill(~real, n_clusters).to(torch.float64).mul_(8).sub_(affinity)
    return torch.sort(key, dim=-1, stable=True).indices


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
    sums = _bin_sums(unit, assign, n_clusters + 1)[:, :, :n_clusters]
    norm = torch.linalg.vector_norm(sums, dim=-1, keepdim=True)
    return torch.where(norm > 0, sums / norm.clamp_min(1e-12), previous)


def _centres(q, member, real, n_sets):
    """The sum [b, h, sets, d] and count [b, h, sets] of each set's real queries
    (``member`` [b, h, seq_pad]: the set of every position)."""
    n = q.shape[2]
    member = member[..., :n].masked_fill(~real[..., :n], n_sets)
    sums = _bin_sums(q, member, n_sets + 1)[:, :, :n_sets]
    return sums, _counts(member, n_sets, q.dtype)


@dataclass
class _Fixed:
    """What decides which queries a key serves: the softmax scale, the sinks and window of
    the fixed part, causality."""

    scale: float
    sink: int
    window: int
    causal: bool


def _members(order, real, size):
    """The real positions of every chunk of ``size`` of ``order`` [b, h, seq_pad], sorted:
    [b, h, chunks, size], the non-real ones replaced by a position past every key."""
    b, h, seq_pad = order.shape
    chunks = torch.where(torch.gather(real, 2, order), order, _FAR)
    return torch.sort(chunks.view(b, h, seq_pad // size, size), dim=-1).values


def _usable(members, key_pos, fixed: _Fixed, dtype, every_key=False):
    """How many queries of every set may see each key and do not hold it in their sinks
    or window: members [b, h, s, size] (sorted, non-real ones past every key), key_pos
    [b, h, K] ascending (``every_key``: 0 .. K - 1) -> [b, h, s, K] counts (``dtype``).
    Each member is placed among the keys once (a search over K, or with ``every_key``
    arithmetic, not over the members for every key), the counts are a running sum over
    the keys."""
    b, h, s, size = members.shape
    width = key_pos.shape[-1]
    flat = members.reshape(b, h, s * size).contiguous()

    def place(shift):  # how many keys j have j + shift <= i, for every member i
        if every_key:  # clamped first: the non-real members' position does not overflow
            return (flat.clamp_max(width + abs(shift)) - (shift - 1)).clamp_(0, width)
        return torch.searchsorted(key_pos + shift, flat, right=True)

    def below(*shifts):  # [b, h, s, K]: the set's real queries i < key + shifts[0], less
        # those i < key + shifts[1] (one histogram and one running sum)
        at = [place(shift).view(b, h * s, size) for shift in shifts]
        ones = torch.ones(b, h * s, size, dtype=dtype, device=members.device)
        values = ones if len(at) == 1 else torch.cat([ones, -ones], 2)
        hist = _bin_sums(values, torch.cat(at, 2), width + 1)
        return hist.view(b, h, s, width + 1)[..., :width].cumsum_(3)

    real = (members != _FAR).sum(-1, keepdim=True).to(dtype)
    window = fixed.window
    if fixed.causal:  # query i sees key j when j <= i, holds it in its window when
        count = below(window).neg_().add_(real)  # i < j + window (real - below, in place)
    elif window:  # query i holds key j in its window when j + left - window < i <= j + left
        left = (window - 1) // 2
        count = below(left + 1, left + 1 - window).neg_().add_(real)
    else:
        count = real.expand(b, h, s, width).clone()
    if fixed.sink:
        count.masked_fill_(key_pos[:, :, None, :] < fixed.sink, 0)
    return count


def _pick(centres, members, keys, key_pos, key_ok, n_keys, fixed: _Fixed | None, elements,
          every_key=False):
    """The ``n_keys`` keys of largest ``centre . k`` per set (with ``fixed``:
    ``scale * centre . k + log(usable)``, see :func:`_usable`, ``members`` [b, h, sets,
    size] each set's sorted real query positions): [b, h, sets, n_keys] positions (in
    no particular order). keys [b, h, K, d] at positions key_pos
    [b, h, K] (ascending with ``fixed``; ``every_key``: they are 0 .. K - 1), key_ok
    [b, h, K]; masked, padded or unusable keys only fill a set that has fewer candidates
    (they are masked per pair later)."""
    n_sets, width = centres.shape[2], keys.shape[2]
    if fixed is not None:  # the scale on the centres: one pass over [sets, d], not [sets, K]
        centres = centres * fixed.scale
    centres_t = centres.transpose(-1, -2)
    masked = not bool(key_ok.all())
    step = _chunk_rows(n_sets, width, elements)
    chosen = []
    for start in range(0, n_sets, step):
        # [b,h,K,d] @ [b,h,d,s] -> [b,h,K,s] (faster than [s,d] @ [d,K] for few sets)
        scores = torch.matmul(keys, centres_t[..., start:start + step]).transpose(-1, -2)
        if fixed is not None:
            usable = _usable(members[:, :, start:start + step], key_pos, fixed, scores.dtype,
                             every_key)
            scores = scores.add_(usable.log_())
        if masked:
            scores.masked_fill_(~key_ok[:, :, None, :], float("-inf"))
        top = scores.topk(n_keys, dim=-1, sorted=False).indices
        chosen.append(torch.gather(key_pos, 2, top.flatten(2)).view(top.shape))
    return torch.cat(chosen, 2)


def in_fixed(q_pos, k_pos, sink: int, window: int, causal: bool) -> torch.Tensor:
    """Whether the sink or window parts pick each pair: bool, q_pos and k_pos broadcast
    (e.g. [b, h, M, 1] and [b, h, 1, K] -> [b, h, M, K])."""
    found = k_pos < sink
    if window:
        low = q_pos - (window - 1) if causal else q_pos - (window - 1) // 2
        found = found | ((k_pos >= low) & (k_pos < low + window))
    return found
