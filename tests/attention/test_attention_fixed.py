"""The sink / window part and the pairs it takes out of the bucket chunks, against
dense brute force: the bucket chunk's left-out pairs (found per query by a search over its
bucket's sorted keys) are exactly the pairs the sinks, the window, causality or a masked
key exclude, and the fixed part (edge blocks padded alone, sinks by one product per group
of blocks) is the exact softmax over each query's sink and window keys."""

from __future__ import annotations

import pytest
import torch
from conftest import qkv

from sbbench.attention.fixed import fixed_part
from sbbench.attention.residual import Buckets, _left_out
from sbbench.attention.supports import in_fixed

pytestmark = pytest.mark.usefixtures("single_thread")


def _buckets(key_ok, n, causal, sink, window, size=8):
    seq_pad = key_ok.shape[-1]
    buckets = Buckets(size, n, seq_pad, None, None, key_ok, True, causal)
    buckets.sink, buckets.window = sink, window
    buckets.keys_all_ok = bool(key_ok.all())
    return buckets


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("sink, window", [(0, 5), (3, 0), (2, 7), (4, 60)])
@pytest.mark.parametrize("masked", [False, True], ids=["all-keys", "masked-keys"])
def test_left_out_pairs_are_the_dense_test(causal, sink, window, masked):
    b, h, g, size, seq_pad = 2, 3, 5, 8, 48
    n = 45 if masked else seq_pad
    gen = torch.Generator().manual_seed(11)
    q_pos = torch.stack([torch.randperm(seq_pad, generator=gen)[:g * size]
                         for _ in range(b * h)]).view(b, h, g * size)
    k_pos = torch.stack([torch.randperm(seq_pad, generator=gen)[:size]
                         for _ in range(b * h * g)]).view(b, h, g * size)
    key_ok = torch.arange(seq_pad).expand(b, h, seq_pad) < n
    if masked:
        key_ok = key_ok & (torch.rand(b, 1, seq_pad, generator=gen) > 0.2)
    buckets = _buckets(key_ok, n, causal, sink, window, size)
    assert buckets.keys_all_ok == (not masked)
    qb, kb = q_pos.view(b, h, g, size), k_pos.view(b, h, g, size)
    found = torch.zeros(b, h, g, size, size)
    _left_out(qb, kb, k_pos, buckets).fill_(found, 1.0)
    expected = in_fixed(qb[..., None], kb[..., None, :], sink, window, causal)
    expected = expected | ~torch.gather(key_ok, 2, k_pos).view(b, h, g, 1, size)
    if causal:
        expected = expected | (kb[..., None, :] > qb[..., None])
    assert torch.equal(found.bool(), expected.expand_as(found))
    assert expected.any()


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("masked", [False, True], ids=["all-keys", "masked-keys"])
@pytest.mark.parametrize("elements", [1, 1 << 18], ids=["one-block-groups", "big-groups"])
def test_fixed_part_is_the_softmax_over_sinks_and_window(causal, masked, elements):
    """n = 203 (not a multiple of the block), window 60 (edge blocks at both ends)."""
    n, sink, window, scale = 203, 4, 60, 0.3
    q, k, v = qkv(2, 2, n, 8, seed=21)
    q, k, v = q.double(), k.double(), v.double()
    key_ok = torch.ones(2, 2, n, dtype=torch.bool)
    if masked:
        key_ok[1, :, -30:] = False
        key_ok[0, :, :2] = False
    buckets = _buckets(key_ok, n, causal, sink, window)
    num = torch.zeros(2, 2, n, 8, dtype=torch.float64)
    den = torch.zeros(2, 2, n, dtype=torch.float64)
    lam = torch.zeros(2, 2, n, dtype=torch.float64)
    seen = torch.zeros(n, dtype=torch.long)
    for pos, num_c, den_c, lam_c, _, _ in fixed_part(q, k, v, scale, buckets, None, elements):
        rows = pos[0, 0]
        seen[rows] += 1
        num[:, :, rows] = num_c.view(2, 2, -1, 8)
        den[:, :, rows] = den_c.view(2, 2, -1)
        lam[:, :, rows] = lam_c
    assert torch.equal(seen, torch.ones(n, dtype=torch.long))  # every query once
    i, j = torch.arange(n)[:, None], torch.arange(n)[None, :]
    pairs = in_fixed(i, j, sink, window, causal) & key_ok[:, :, None, :]
    if causal:
        pairs = pairs & (j <= i)
    logits = (q @ k.transpose(-1, -2) * scale).masked_fill(~pairs, float("-inf"))
    has = pairs.any(-1)
    weights = torch.exp(logits - lam[..., None])  # in the part's own scale exp(lam)
    torch.testing.assert_close(den, weights.sum(-1), rtol=1e-12, atol=0.0)
    torch.testing.assert_close(num, weights @ v, rtol=1e-10, atol=1e-12)
    assert torch.equal(den[~has], torch.zeros_like(den[~has]))
    assert has.all() != (masked and causal)  # keys 0, 1 masked: under causal query 0 has none
