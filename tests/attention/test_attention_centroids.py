"""Key centroids as the low-rank part (``lowrank="centroids"``, sbbench.attention.centroids).

- Exact on the support: where every key is in the support, the output is exact attention.
- The estimate equals a dense float64 brute force of the same formula (k-means on the keys
  from the same start keys, exp(tau q.c) off the support), at odd sizes, causal and with
  a key padding mask.
- Deterministic given the generator; the default (Performer) is unchanged; the Triton
  backend refuses it in one line.
"""

from __future__ import annotations

import math

import pytest
import torch
from conftest import exp_scores, qkv

from sbbench.attention import (
    ScatterbrainAttention,
    draw_hashes,
    exact_attention,
    scatterbrain_attention,
)
from sbbench.attention.centroids import LLOYD_STEPS, draw_starts
from sbbench.core.errors import UserError

pytestmark = pytest.mark.usefixtures("single_thread")


def brute_force(q, k, starts, scale, key_padding_mask=None, steps=LLOYD_STEPS):
    """[b, h, n, n] float64 exp(tau q_i.c_m(j)), written per head with loops: Lloyd steps
    on the unmasked keys from the keys at ``starts``; masked keys 0."""
    b, h, n, _ = q.shape
    out = torch.zeros(b, h, n, n, dtype=torch.float64)
    for bi in range(b):
        ok = (torch.ones(n, dtype=torch.bool) if key_padding_mask is None
              else key_padding_mask[bi])
        for hi in range(h):
            keys, queries = k[bi, hi].double(), q[bi, hi].double()
            centres = keys[starts[bi, hi]].clone()
            for _ in range(steps):
                assign = {j: min(range(len(centres)),
                                 key=lambda m: float(((keys[j] - centres[m]) ** 2).sum()))
                          for j in range(n) if ok[j]}
                for m in range(len(centres)):
                    members = [j for j, a in assign.items() if a == m]
                    if members:
                        centres[m] = keys[members].mean(dim=0)
            for j, m in assign.items():
                out[bi, hi, :, j] = torch.exp(scale * queries @ centres[m])
    return out


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("masked", [False, True])
def test_exact_where_every_key_is_in_the_support(causal, masked):
    q, k, v = qkv(2, 2, 13, 5, head_dim_v=3)
    mask = None
    if masked:
        mask = torch.ones(2, 13, dtype=torch.bool)
        mask[0, 9:] = False
    call = dict(causal=causal, key_padding_mask=mask, softmax_scale=0.7, backend="torch")
    out, weights = scatterbrain_attention(
        q, k, v, n_features=4, bucket_size=13, sparse="local", lowrank="centroids",
        generator=torch.Generator().manual_seed(0), return_weights="unnormalized", **call)
    exact = exact_attention(q, k, v, **{n: call[n] for n in
                                        ("causal", "key_padding_mask", "softmax_scale")})
    torch.testing.assert_close(out, exact, rtol=1e-10, atol=1e-12)
    expected = exp_scores(q, k, causal=causal, softmax_scale=0.7)
    if masked:
        expected = expected * mask[:, None, None, :]
    torch.testing.assert_close(weights, expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("causal, masked, sparse", [
    (False, False, "lsh"), (True, False, "kmeans"), (False, True, "kmeans"),
    (True, True, None)])
def test_estimate_is_the_brute_force_of_the_formula(causal, masked, sparse):
    q, k, v = qkv(2, 3, 37, 5, head_dim_v=3, seed=1)
    mask = None
    if masked:
        mask = torch.ones(2, 37, dtype=torch.bool)
        mask[1, 30:] = False
        mask[0, 3] = False
    scale, clusters = 0.6, 6
    support_args = (dict(bucket_size=8, sink=2, window=3) if sparse
                    else dict(bucket_size=0, sink=2, window=5))
    call = dict(sparse=sparse, causal=causal, key_padding_mask=mask, softmax_scale=scale,
                backend="torch", hashes=draw_hashes(1, 5, generator=torch.Generator())
                if sparse else None, return_weights="unnormalized", **support_args)
    out, weights = scatterbrain_attention(q, k, v, n_features=clusters, lowrank="centroids",
                                          generator=torch.Generator().manual_seed(3), **call)
    _, sparse_only = scatterbrain_attention(q, k, v, n_features=0, **call)
    support = sparse_only != 0
    starts = draw_starts(clusters, q, mask, torch.Generator().manual_seed(3))
    expected = torch.where(support, exp_scores(q, k, softmax_scale=scale),
                           brute_force(q, k, starts, scale, mask))
    if causal:
        expected = expected.tril()
    torch.testing.assert_close(weights, expected, rtol=1e-9, atol=1e-12)
    dense_out = expected @ v / expected.sum(-1, keepdim=True)
    torch.testing.assert_close(out, dense_out, rtol=1e-9, atol=1e-12)


def test_low_rank_only_is_centroid_attention():
    """No support: the output is softmax attention to the centroids weighed by their
    cluster sizes (each key's own value)."""
    q, k, v = qkv(1, 2, 20, 4, seed=2)
    out, weights = scatterbrain_attention(
        q, k, v, n_features=4, bucket_size=0, sparse=None, lowrank="centroids",
        generator=torch.Generator().manual_seed(5), backend="torch", return_weights=True)
    starts = draw_starts(4, q, None, torch.Generator().manual_seed(5))
    dense = brute_force(q, k, starts, 1 / math.sqrt(4))
    torch.testing.assert_close(weights, dense / dense.sum(-1, keepdim=True))
    torch.testing.assert_close(out, weights @ v)


def test_deterministic_given_the_generator_and_depends_on_it():
    q, k, v = qkv(1, 2, 40, 8, dtype=torch.float32)
    call = dict(n_features=8, bucket_size=8, sparse="kmeans", sink=1, window=4,
                lowrank="centroids", backend="torch",
                hashes=draw_hashes(1, 8, generator=torch.Generator()))
    first, second, other = (scatterbrain_attention(
        q, k, v, generator=torch.Generator().manual_seed(seed), **call) for seed in (1, 1, 2))
    assert torch.equal(first, second)
    assert not torch.equal(first, other)


def test_more_clusters_than_keys_and_gradients():
    q, k, v = qkv(1, 1, 6, 4, requires_grad=True)
    mask = torch.tensor([[True, True, False, True, False, True]])
    out = scatterbrain_attention(q, k, v, n_features=10, bucket_size=2, sparse="local",
                                 lowrank="centroids", key_padding_mask=mask, backend="torch",
                                 generator=torch.Generator().manual_seed(0))
    out.sum().backward()
    assert torch.isfinite(out).all()
    assert all(torch.isfinite(t.grad).all() for t in (q, k, v))


@pytest.mark.parametrize("sparse, bucket_size", [(None, 0), ("lsh", 4)])
def test_causal_stabiliser_ignores_clusters_of_later_keys(sparse, bucket_size):
    # key 0 points away from every query, keys 1.. towards them: under causal query 0
    # sees key 0 alone, and the cluster of the later keys scores it ~2 a^2 higher. Were
    # that cluster in query 0's row maximum, its visible cluster's features would
    # underflow and row 0 come out as zeros instead of v_0.
    gen = torch.Generator().manual_seed(0)
    n, d, a = 16, 4, 12.0
    u = torch.zeros(d)
    u[0] = 1.0
    k = torch.stack([-a * u] + [a * u + 0.01 * torch.randn(d, generator=gen)
                                for _ in range(n - 1)])[None, None]
    q = (a * u).expand(n, d)[None, None].clone()
    v = torch.randn(1, 1, n, d, generator=gen)
    out = scatterbrain_attention(q, k, v, n_features=2, bucket_size=bucket_size,
                                 sparse=sparse, lowrank="centroids", causal=True,
                                 softmax_scale=1.0, backend="torch",
                                 generator=torch.Generator().manual_seed(0))
    ref = exact_attention(q, k, v, causal=True, softmax_scale=1.0)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out[0, 0, 0], ref[0, 0, 0])


def test_default_is_performer_and_bad_calls_are_refused():
    q, k, v = qkv(1, 2, 24, 8)
    call = dict(n_features=8, bucket_size=8, backend="torch")
    default = scatterbrain_attention(q, k, v, generator=torch.Generator().manual_seed(0),
                                     **call)
    named = scatterbrain_attention(q, k, v, generator=torch.Generator().manual_seed(0),
                                   lowrank="performer", **call)
    assert torch.equal(default, named)
    with pytest.raises(ValueError, match="lowrank must be one of"):
        scatterbrain_attention(q, k, v, lowrank="nystrom", **call)
    with pytest.raises(ValueError, match="takes no projections"):
        scatterbrain_attention(q, k, v, lowrank="centroids",
                               projections=torch.zeros(4, 8), **call)
    with pytest.raises(UserError, match="backend='torch' only"):
        scatterbrain_attention(q, k, v, lowrank="centroids", **{**call, "backend": "triton"})


def test_module_with_centroids():
    layer = ScatterbrainAttention(16, 2, n_features=4, bucket_size=4, sparse="kmeans",
                                  lowrank="centroids", seed=3, backend="torch")
    default = ScatterbrainAttention(16, 2, n_features=4, bucket_size=4, seed=3)
    assert "centroid_seed" not in default.state_dict()
    assert "lowrank='centroids'" in repr(layer)
    x = torch.randn(2, 12, 16, generator=torch.Generator().manual_seed(0))
    first = layer(x)
    assert torch.equal(first, layer(x))
    first.sum().backward()
    layer.redraw(torch.Generator().manual_seed(9))
    assert not torch.equal(first, layer(x))
