"""Properties every method must have, whatever its approximation.

- key padding at the end gives the result of truncating the padded keys;
- heads and batch entries are independent;
- odd lengths, seq not a multiple of bucket_size;
- float16 / bfloat16 inputs: output in the input dtype, close to the float32 result;
- randomness: same seed, same output; other seed, other output;
- a query that sees no key gets a zero output.
"""

from __future__ import annotations

import pytest
import torch
from conftest import ALL_METHODS, APPROX_METHODS, HASHED_METHODS, attention, qkv

from sbbench.attention import (
    lsh_attention,
    performer_attention,
    scatterbrain_attention,
)

F64 = dict(rtol=1e-10, atol=1e-12)
CAUSAL = [pytest.param(False, id="full"), pytest.param(True, id="causal")]

pytestmark = pytest.mark.usefixtures("single_thread")  # many tiny calls (see conftest)


def n_hashes_for(method: str) -> int:
    """Two hash rounds wherever hashing is used, so multi-round bookkeeping is covered."""
    return 2 if method in HASHED_METHODS else 1


# ---------------------------------------------------------------- key padding


@pytest.mark.parametrize("causal", CAUSAL)
@pytest.mark.parametrize("method", ALL_METHODS)
def test_key_padding_equals_truncation(method, causal):
    """Batch entry i has its last pads[i] keys masked: its first seq - pads[i] outputs must
    equal a run on the truncated sequence. seq 40 with bucket_size 8 is 5 buckets; the
    truncated lengths 31 and 37 are not multiples of 8."""
    seq, pads = 40, [9, 3]
    q, k, v = qkv(2, 2, seq, 8, seed=21, scale=0.7)
    mask = torch.ones(2, seq, dtype=torch.bool)
    for i, pad in enumerate(pads):
        mask[i, seq - pad:] = False
    opts = dict(n_features=16, bucket_size=8, n_hashes=n_hashes_for(method), seed=21,
                causal=causal)
    out = attention(method, q, k, v, key_padding_mask=mask, **opts)
    assert torch.isfinite(out).all()  # masked query rows included
    for i, pad in enumerate(pads):
        keep = seq - pad
        sl = (slice(i, i + 1), slice(None), slice(0, keep))
        truncated = attention(method, q[sl], k[sl], v[sl], **opts)
        torch.testing.assert_close(out[i, :, :keep], truncated[0], **F64)
    # control: the mask matters (attending to the padded keys gives another result; with
    # causal the padded keys are in the future of the kept queries anyway, except through
    # the hashing, which the lsh methods must make mask-aware)
    if not causal:
        unmasked = attention(method, q, k, v, **opts)
        assert (unmasked[0, :, : seq - pads[0]] - out[0, :, : seq - pads[0]]).abs().max() > 1e-3


@pytest.mark.parametrize("causal", CAUSAL)
@pytest.mark.parametrize("method", APPROX_METHODS)
def test_query_that_sees_no_key_gets_zero(method, causal):
    """Batch entry 1 masks every key; entry 0 masks key 0 (a causal query 0 sees nothing)."""
    q, k, v = qkv(2, 2, 20, 8, seed=22)
    mask = torch.ones(2, 20, dtype=torch.bool)
    mask[0, 0] = False
    mask[1] = False
    out, weights = attention(method, q, k, v, bucket_size=8, n_hashes=n_hashes_for(method),
                             causal=causal, key_padding_mask=mask, return_weights=True)
    assert torch.isfinite(out).all() and torch.isfinite(weights).all()
    assert torch.equal(out[1], torch.zeros_like(out[1]))
    assert torch.equal(weights[1], torch.zeros_like(weights[1]))
    assert torch.equal(weights[0, :, :, 0], torch.zeros_like(weights[0, :, :, 0]))
    if causal:
        assert torch.equal(out[0, :, 0], torch.zeros_like(out[0, :, 0]))
    plain = attention(method, q, k, v, bucket_size=8, n_hashes=n_hashes_for(method),
                      causal=causal, key_padding_mask=mask)
    torch.testing.assert_close(plain, out, **F64)


# ---------------------------------------------------------------- independence


@pytest.mark.parametrize("causal", CAUSAL)
@pytest.mark.parametrize("method", ALL_METHODS)
def test_heads_and_batch_entries_are_independent(method, causal):
    """Every (batch, head) slice of a batched call equals a call on that slice alone, and
    changing one slice's inputs changes that slice's output only."""
    batch, heads, seq = 2, 3, 24
    q, k, v = qkv(batch, heads, seq, 8, seed=23, scale=0.7)
    mask = torch.ones(batch, seq, dtype=torch.bool)
    mask[1, -5:] = False
    opts = dict(n_features=16, bucket_size=8, n_hashes=n_hashes_for(method), seed=23,
                causal=causal)
    out = attention(method, q, k, v, key_padding_mask=mask, **opts)
    for b in range(batch):
        for h in range(heads):
            sl = (slice(b, b + 1), slice(h, h + 1))
            alone = attention(method, q[sl], k[sl], v[sl], key_padding_mask=mask[b:b + 1],
                              **opts)
            torch.testing.assert_close(out[b, h], alone[0, 0], **F64)

    q2, k2, v2 = q.clone(), k.clone(), v.clone()
    noise = qkv(1, 1, seq, 8, seed=24)
    q2[1, 2], k2[1, 2], v2[1, 2] = noise[0][0, 0], noise[1][0, 0], noise[2][0, 0]
    changed = attention(method, q2, k2, v2, key_padding_mask=mask, **opts)
    others = torch.ones(batch, heads, dtype=torch.bool)
    others[1, 2] = False
    torch.testing.assert_close(changed[others], out[others], **F64)
    assert (changed[1, 2] - out[1, 2]).abs().max() > 1e-3


# ---------------------------------------------------------------- odd lengths


@pytest.mark.parametrize("causal", CAUSAL)
@pytest.mark.parametrize("method", APPROX_METHODS)
def test_odd_length_63_weights_are_consistent(method, causal):
    """seq 63 with bucket_size 16: the padded keys (to 64) must get no weight anywhere, so
    the returned rows sum to 1 and the output is weights @ v."""
    seq, bucket_size = 63, 16
    q, k, v = qkv(2, 2, seq, 12, head_dim_v=7, seed=25, scale=0.7)
    out, weights = attention(method, q, k, v, bucket_size=bucket_size, causal=causal,
                             return_weights=True)
    assert out.shape == (2, 2, seq, 7) and weights.shape == (2, 2, seq, seq)
    row_sums = weights.sum(-1)
    if method == "lsh" and causal:  # a query whose bucket holds only later keys sees none
        assert ((row_sums - 1).abs() < 1e-10).logical_or(row_sums == 0).all()
    else:
        torch.testing.assert_close(row_sums, torch.ones_like(row_sums), **F64)
    torch.testing.assert_close(out, weights @ v, **F64)
    plain = attention(method, q, k, v, bucket_size=bucket_size, causal=causal)
    torch.testing.assert_close(plain, out, **F64)


def test_odd_length_63_lsh_buckets_hold_bucket_size_keys():
    """One round, seq 63, bucket_size 16: 48 queries see exactly 16 keys and the 15 of the
    last (partial) bucket see the 15 real keys of that bucket; padding is never seen."""
    q, k, v = qkv(1, 2, 63, 12, seed=26)
    _, weights = attention("lsh", q, k, v, bucket_size=16, return_weights=True)
    seen = (weights > 0).sum(-1)  # [1, 2, 63]
    for head in range(2):
        counts = torch.bincount(seen[0, head], minlength=17)
        assert counts[16] == 48 and counts[15] == 15, counts


@pytest.mark.parametrize("causal", CAUSAL)
@pytest.mark.parametrize("method", APPROX_METHODS)
def test_odd_length_1000(method, causal):
    """seq 1000, bucket_size 64 (not a divisor), float32: finite, right shape and dtype,
    each output a convex combination of values (inside their per-channel range), and the
    same estimate as the float64 run."""
    q, k, v = qkv(1, 2, 1000, 16, dtype=torch.float32, seed=27, scale=0.5)
    opts = dict(n_features=32, bucket_size=64, n_hashes=n_hashes_for(method), causal=causal)
    out = attention(method, q, k, v, **opts)
    assert out.shape == (1, 2, 1000, 16) and out.dtype == torch.float32
    assert torch.isfinite(out).all()
    low, high = v.amin(dim=2, keepdim=True), v.amax(dim=2, keepdim=True)
    assert ((out >= low - 1e-4) & (out <= high + 1e-4)).all()
    out64 = attention(method, q.double(), k.double(), v.double(), **opts)
    torch.testing.assert_close(out.double(), out64, rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------- dtypes


@pytest.mark.parametrize("causal", CAUSAL)
@pytest.mark.parametrize("method", ALL_METHODS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_half_inputs_give_half_outputs_close_to_float32(method, dtype, causal):
    """Half inputs accumulate in float32: the output is the float32 result on the same
    (rounded) inputs, rounded once to the input dtype (within 2 ulp)."""
    q, k, v = qkv(2, 2, 40, 16, dtype=dtype, seed=28, scale=0.7)
    opts = dict(n_features=32, bucket_size=16, n_hashes=n_hashes_for(method), causal=causal)
    out = attention(method, q, k, v, **opts)
    assert out.dtype == dtype and out.shape == (2, 2, 40, 16)
    assert torch.isfinite(out).all()
    ref = attention(method, q.float(), k.float(), v.float(), **opts)
    eps = torch.finfo(dtype).eps
    torch.testing.assert_close(out.float(), ref, rtol=2 * eps, atol=2 * eps)


# ---------------------------------------------------------------- randomness is an input

SEEDED_CALLS = {
    "performer": lambda q, k, v, gen: performer_attention(q, k, v, n_features=16,
                                                          generator=gen),
    "lsh": lambda q, k, v, gen: lsh_attention(q, k, v, bucket_size=8, n_hashes=2,
                                              generator=gen),
    "scatterbrain": lambda q, k, v, gen: scatterbrain_attention(
        q, k, v, n_features=16, bucket_size=8, n_hashes=2, generator=gen),
    "scatterbrain_local": lambda q, k, v, gen: scatterbrain_attention(
        q, k, v, n_features=16, bucket_size=8, sparse="local", generator=gen),
    "scatterbrain_kmeans": lambda q, k, v, gen: scatterbrain_attention(
        q, k, v, n_features=16, bucket_size=8, n_hashes=2, sparse="kmeans", sink=1,
        window=3, generator=gen),
    # no features: only the clustering's start is drawn, so this checks that it is
    "kmeans_only": lambda q, k, v, gen: scatterbrain_attention(
        q, k, v, n_features=0, bucket_size=8, n_hashes=2, sparse="kmeans", generator=gen),
}


@pytest.mark.parametrize("method", list(SEEDED_CALLS))
def test_same_seed_same_output_other_seed_other_output(method):
    q, k, v = qkv(2, 2, 32, 8, dtype=torch.float32, seed=29)
    call = SEEDED_CALLS[method]
    first = call(q, k, v, torch.Generator().manual_seed(5))
    again = call(q, k, v, torch.Generator().manual_seed(5))
    other = call(q, k, v, torch.Generator().manual_seed(6))
    assert torch.equal(first, again)
    assert (first - other).abs().max() > 1e-3
