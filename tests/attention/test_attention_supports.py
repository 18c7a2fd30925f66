"""The supports beyond SMYRF buckets: k-means clusters, sink keys, a local window,
n_features=0 and sparse=None; and the defaults reproducing the stored outputs.

- With the defaults (sparse="lsh" / "local", no sink, no window) the outputs and weights
  are bit for bit those stored in data/default_supports.pt, written by the code before
  these supports existed (tests/attention/data/make_default_supports.py).
- The unnormalised estimate equals exp(tau q.k) exactly on the support (every key once,
  however many parts pick it) and phi(q).phi(k) elsewhere; with n_features=0 the output
  is the exact softmax over the support.
- k-means clusters are balanced, each picks bucket_size distinct keys, and under causal or
  with sinks / a window a key's score adds the log of how many of the cluster's queries
  may see it and do not hold it already (so under causal a cluster's keys come from at
  or before its last query).
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from conftest import attention, exp_scores, qkv, randomness
from test_attention_scatterbrain import lowrank_dense, repeat_rounds, selected_pairs

from sbbench.attention import lsh_attention, scatterbrain_attention
from sbbench.attention.supports import kmeans_order

F64 = dict(rtol=1e-10, atol=1e-12)
FIXTURE = Path(__file__).parent / "data" / "default_supports.pt"

pytestmark = pytest.mark.usefixtures("single_thread")


# ---------------------------------------------------------------- faithfulness


def test_defaults_reproduce_the_stored_outputs():
    """Every stored case: same inputs, same seeds -> identical output and weights."""
    cases = torch.load(FIXTURE)
    assert len(cases) == 20
    for key, (stored_out, stored_weights) in cases.items():
        method, causal, masked, n_hashes = key.split("-")
        q, k, v = qkv(2, 2, 45, 8, seed=3)
        mask = None
        if masked == "True":
            mask = torch.ones(2, 45, dtype=torch.bool)
            mask[1, -7:] = False
        out, weights = attention(method, q, k, v, n_features=16, bucket_size=8,
                                 n_hashes=int(n_hashes), seed=5, causal=causal == "True",
                                 key_padding_mask=mask, return_weights="unnormalized")
        assert torch.equal(out, stored_out), key
        assert torch.equal(weights[0, 0], stored_weights), key


# ---------------------------------------------------------------- the support


def fixed_pairs(n: int, sink: int, window: int, causal: bool) -> torch.Tensor:
    """Bool [n, n]: key j is a sink (j < sink) or in query i's window (causal: the window
    previous positions, i included; else i - (window - 1) // 2 .. + window - 1)."""
    i = torch.arange(n)[:, None]
    j = torch.arange(n)[None, :]
    low = i - (window - 1) if causal else i - (window - 1) // 2
    return (j < sink) | ((j >= low) & (j < low + window))


def kmeans_pairs(q, k, hashes, bucket_size, mask, causal, sink=0, window=0) -> torch.Tensor:
    """Bool [b, h, n, n]: key j is in the key set of query i's cluster in some round
    (clusters as scatterbrain_attention makes them: default softmax scale, these sinks
    and window)."""
    b, h, n, _ = q.shape
    seq_pad = -(-n // bucket_size) * bucket_size
    key_ok = torch.zeros(b, seq_pad, dtype=torch.bool)
    key_ok[:, :n] = True if mask is None else mask
    _, _, sets = kmeans_order(q, k, hashes, bucket_size, key_ok[:, None].expand(b, h, -1),
                              causal, 1 << 20, 1.0 / math.sqrt(q.shape[-1]), sink, window)
    selected = torch.zeros(b, h, n, n, dtype=torch.bool)
    for r in range(sets.sets.shape[2]):
        rows = torch.gather(sets.sets[:, :, r], 2, sets.q_cluster[:, :, r, :n, None].expand(
            b, h, n, bucket_size))  # [b, h, n, bucket] the keys of each query's cluster
        hit = torch.zeros(b, h, n, seq_pad, dtype=torch.bool).scatter_(3, rows, True)
        selected |= hit[..., :n]
    return selected


SUPPORT_CASES = [
    pytest.param("lsh", 2, 3, 5, id="lsh-2hashes-sink3-window5"),
    pytest.param("kmeans", 1, 0, 0, id="kmeans"),
    pytest.param("kmeans", 2, 2, 4, id="kmeans-2rounds-sink2-window4"),
    pytest.param("local", 1, 1, 6, id="local-sink1-window6"),
    pytest.param(None, 1, 2, 7, id="none-sink2-window7"),
]


@pytest.mark.parametrize("masked", [False, True], ids=["nomask", "mask"])
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("sparse, n_hashes, sink, window", SUPPORT_CASES)
def test_estimate_is_exact_on_the_support_and_lowrank_elsewhere(sparse, n_hashes, sink,
                                                                 window, causal, masked):
    n, bucket_size = 30, 8
    q, k, v = qkv(2, 2, n, 8, head_dim_v=5, seed=51, scale=0.7)
    projections, hashes = randomness(16, n_hashes, 8, seed=51)
    mask = None
    if masked:
        mask = torch.ones(2, n, dtype=torch.bool)
        mask[0, 5] = mask[1, -4:] = False
    allowed = torch.ones(2, 1, n, n, dtype=torch.bool)
    if causal:
        allowed = allowed & torch.ones(n, n, dtype=torch.bool).tril()
    if mask is not None:
        allowed = allowed & mask[:, None, None, :]
    support = fixed_pairs(n, sink, window, causal).expand(2, 2, n, n)
    if sparse == "kmeans":
        support = support | kmeans_pairs(q, k, hashes, bucket_size, mask, causal, sink,
                                         window)
    elif sparse == "local" or (sparse == "lsh" and mask is None):  # no key mask there
        support = support | selected_pairs(q, k, hashes if sparse == "lsh" else None,
                                           bucket_size)
    elif sparse is not None:
        pytest.skip("the independent LSH pair list takes no key mask")
    support = support & allowed
    common = dict(bucket_size=bucket_size if sparse else 0, n_hashes=n_hashes, sparse=sparse,
                  hashes=hashes if sparse in ("lsh", "kmeans") else None, causal=causal,
                  key_padding_mask=mask, sink=sink, window=window,
                  return_weights="unnormalized")
    out0, sparse_only = scatterbrain_attention(q, k, v, n_features=0, **common)
    out, estimate = scatterbrain_attention(q, k, v, n_features=16, projections=projections,
                                           **common)
    scores = exp_scores(q, k)
    lowrank = lowrank_dense(q, k, projections)
    zero = torch.zeros(())
    torch.testing.assert_close(sparse_only, torch.where(support, scores, zero), **F64)
    expected = torch.where(support, scores, torch.where(allowed, lowrank, zero))
    torch.testing.assert_close(estimate, expected, **F64)
    # the low-rank part really differs from exp on the support (else this is vacuous)
    assert (lowrank[support] - scores[support]).abs().max() > 1e-3
    assert (allowed & ~support).any()
    # budget: at most bucket_size * n_hashes + sink + window keys per query
    budget = (bucket_size * n_hashes if sparse else 0) + sink + window
    assert support.sum(-1).max() <= budget
    # n_features=0: softmax over the support (rows with no key give 0)
    weights = sparse_only / sparse_only.sum(-1, keepdim=True).clamp_min(1e-300)
    torch.testing.assert_close(out0, weights @ v, **F64)
    rownorm = estimate / estimate.sum(-1, keepdim=True)
    torch.testing.assert_close(out, rownorm @ v, **F64)


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_kmeans_repeated_rounds_count_once(causal):
    """Two identical clusterings pick the same pairs: the estimate is that of one."""
    q, k, v = qkv(2, 2, 30, 8, seed=52, scale=0.7)
    projections, hashes = randomness(16, 2, 8, seed=52)

    def run(rounds):
        return scatterbrain_attention(
            q, k, v, n_features=16, bucket_size=8, n_hashes=len(rounds), sparse="kmeans",
            sink=2, window=3, causal=causal, projections=projections,
            hashes=repeat_rounds(hashes, rounds), return_weights="unnormalized")

    (out, est), (ref_out, ref_est) = run([0, 1, 0]), run([0, 1])
    torch.testing.assert_close(est, ref_est, **F64)
    torch.testing.assert_close(out, ref_out, **F64)
    assert (run([0])[1] - ref_est).abs().max() > 1e-3  # a distinct round does add pairs


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_kmeans_clusters_are_balanced_and_respect_causality(causal):
    n, bucket_size = 70, 16
    q, k, _ = qkv(2, 3, n, 8, seed=53)
    _, hashes = randomness(2, 2, 8, seed=53)
    seq_pad = 80
    key_ok = torch.zeros(2, 3, seq_pad, dtype=torch.bool)
    key_ok[..., :n] = True
    q_order, k_order, sets = kmeans_order(q, k, hashes, bucket_size, key_ok, causal, 512)
    assert torch.equal(q_order.sort(-1).values, torch.arange(seq_pad).expand_as(q_order))
    chunks = k_order.view(2, 3, 2, seq_pad // bucket_size, bucket_size)
    assert (chunks.sort(-1).values.diff(dim=-1) > 0).all()  # distinct keys per cluster
    q_chunks = q_order.view_as(chunks)
    last = torch.where(q_chunks < n, q_chunks, -1).amax(-1)
    if causal:  # every key a cluster picks is at or before its last query, when it can be
        enough = last >= bucket_size - 1
        assert ((chunks <= last[..., None]) | ~enough[..., None]).all()
        assert enough.sum() > 10
    # a small chunk size (several temporaries) gives the same clusters
    again = kmeans_order(q, k, hashes, bucket_size, key_ok, causal, 1 << 20)
    assert torch.equal(again[0], q_order) and torch.equal(again[1], k_order)


def test_kmeans_finds_more_softmax_mass_than_lsh_on_clustered_inputs():
    """Queries and keys drawn around 8 shared centres: clusters of the queries pick keys
    near their centre, the hash buckets hardly do."""
    from sbbench.core.types import Problem
    from sbbench.measure.inputs import make_qkv

    q, k, v = make_qkv(Problem(256, 32, heads=4, dtype="float64"), seed=54, kind="clustered",
                       temperature=4.0)
    _, hashes = randomness(2, 1, 32, seed=54)
    weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(32), dim=-1)

    def mass(sparse):
        _, est = scatterbrain_attention(q, k, v, n_features=0, bucket_size=32, sparse=sparse,
                                        hashes=hashes, return_weights="unnormalized")
        return (weights * (est != 0)).sum(-1).mean().item()

    assert mass("kmeans") > mass("lsh") + 0.1


def test_sink_and_window_with_lsh_attention_match_scatterbrain_without_features():
    q, k, v = qkv(1, 2, 40, 8, seed=55)
    _, hashes = randomness(2, 2, 8, seed=55)
    common = dict(bucket_size=8, n_hashes=2, hashes=hashes, sink=2, window=6, causal=True)
    torch.testing.assert_close(lsh_attention(q, k, v, **common),
                               scatterbrain_attention(q, k, v, n_features=0, **common), **F64)


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_two_level_kmeans_is_balanced_causal_and_picks_the_top_keys(causal, monkeypatch):
    """Two levels (forced from 4 clusters on: 9 clusters in 3 groups): the queries are a
    permutation cut into clusters, every cluster's keys are distinct, at or before its
    last query under causal, and with candidates covering every key they are exactly the
    top keys of the cluster's mean query (causal: plus the log of how many of its queries
    see the key); the result does not depend on the chunk size
    and is deterministic."""
    from sbbench.attention import supports

    monkeypatch.setattr(supports, "TWO_LEVEL_CLUSTERS", 4)
    monkeypatch.setattr(supports, "CANDIDATES", 3)  # a group's candidates: every key
    n, bucket_size, seq_pad = 70, 8, 72
    assert supports._groups(seq_pad // bucket_size) == 3
    q, k, _ = qkv(2, 2, n, 8, seed=57)
    _, hashes = randomness(2, 1, 8, seed=57)
    key_ok = torch.zeros(2, 2, seq_pad, dtype=torch.bool)
    key_ok[..., :n] = True
    q_order, k_order, sets = kmeans_order(q, k, hashes, bucket_size, key_ok, causal, 256)
    assert torch.equal(q_order.sort(-1).values, torch.arange(seq_pad).expand_as(q_order))
    q_chunks = q_order[:, :, 0].view(2, 2, -1, bucket_size)
    k_chunks = k_order[:, :, 0].view_as(q_chunks)
    assert (k_chunks.diff(dim=-1) > 0).all()  # distinct, ascending
    assert torch.equal(sets.sets[:, :, 0], k_chunks.sort(-1).values)
    real = q_chunks < n
    rows = torch.gather(q, 2, q_chunks.reshape(2, 2, -1, 1).clamp_max(n - 1).expand(
        -1, -1, -1, 8)).view(*q_chunks.shape, 8)
    means = (rows * real[..., None]).sum(-2) / real.sum(-1, keepdim=True).clamp_min(1)
    scores = means @ k.transpose(-1, -2)  # [2, 2, clusters, n]
    last = torch.where(real, q_chunks, -1).amax(-1)
    if causal:  # each key weighed by the cluster's queries that see it (scale 1: default)
        sees = real[..., None] & (torch.arange(n) <= q_chunks[..., None])
        scores = scores + sees.sum(-2).double().log()
    enough = (last >= bucket_size - 1) if causal else torch.ones_like(last, dtype=torch.bool)
    best = scores.topk(bucket_size, dim=-1).indices
    # the exact top keys, ascending
    assert torch.equal(best[enough].sort(-1).values, k_chunks[enough])
    assert enough.sum() >= 4
    again = kmeans_order(q, k, hashes, bucket_size, key_ok, causal, 1 << 20)
    assert torch.equal(again[0], q_order) and torch.equal(again[1], k_order)


@pytest.mark.parametrize("masked", [False, True], ids=["nomask", "mask"])
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_two_level_kmeans_estimate_is_exact_on_the_support(causal, masked, monkeypatch):
    """The support test above with two-level k-means (4 clusters in 2 groups)."""
    from sbbench.attention import supports

    monkeypatch.setattr(supports, "TWO_LEVEL_CLUSTERS", 4)
    assert supports._groups(32 // 8) == 2
    test_estimate_is_exact_on_the_support_and_lowrank_elsewhere("kmeans", 2, 2, 4, causal,
                                                                masked)


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_kmeans_keys_are_weighed_by_the_queries_they_serve(causal):
    """With sinks and a window (and under causal), a cluster takes the keys of largest
    scale * mean(q) . k + log(u), u = how many of its queries may see the key and do not
    hold it in their sinks or window (checked by brute force); unusable keys (u = 0) are
    taken only when too few others exist, and the choice differs from the plain mean."""
    n, bucket_size, sink, window, scale = 60, 8, 2, 9, 0.4
    q, k, _ = qkv(2, 2, n, 8, seed=58)
    _, hashes = randomness(2, 1, 8, seed=58)
    seq_pad = 64
    key_ok = torch.zeros(2, 2, seq_pad, dtype=torch.bool)
    key_ok[..., :n] = True
    q_order, k_order, _ = kmeans_order(q, k, hashes, bucket_size, key_ok, causal, 256,
                                       scale, sink, window)
    q_chunks = q_order[:, :, 0].view(2, 2, -1, bucket_size)
    k_chunks = k_order[:, :, 0].view_as(q_chunks)
    real = q_chunks < n
    rows = torch.gather(q, 2, q_chunks.reshape(2, 2, -1, 1).clamp_max(n - 1).expand(
        -1, -1, -1, 8)).view(*q_chunks.shape, 8)
    means = (rows * real[..., None]).sum(-2) / real.sum(-1, keepdim=True).clamp_min(1)
    plain = means @ k.transpose(-1, -2)  # [2, 2, clusters, n]
    # serves[b, h, c, i, j]: query i of cluster c may see key j and does not hold it
    serves = ~fixed_pairs(n, sink, window, causal)[q_chunks.clamp_max(n - 1)] & real[..., None]
    if causal:
        serves = serves & (torch.arange(n) <= q_chunks[..., None])
    usable = serves.sum(-2)  # [2, 2, clusters, n]
    scores = scale * plain + usable.double().log()
    enough = (usable > 0).sum(-1) >= bucket_size
    assert enough.sum() >= 8
    best = scores.topk(bucket_size, dim=-1).indices
    # the exact top keys, ascending
    assert torch.equal(best[enough].sort(-1).values, k_chunks[enough])
    assert not torch.equal(plain.topk(bucket_size, dim=-1).indices[enough], best[enough])
