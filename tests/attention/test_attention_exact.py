"""Where the approximations must be exact, and how they converge to exact attention.

- exact_attention against a plain float64 softmax, with causal and key padding;
- one bucket (bucket_size >= seq): every query sees every key, so LSH and Scatterbrain
  (LSH or local) equal exact attention whatever the random features and hashes;
- many random features: Performer and Scatterbrain approach exact attention, and the
  Performer error falls as n_features grows.
"""

from __future__ import annotations

import math

import pytest
import torch
from conftest import attention, exp_scores, qkv, randomness, relative_error

from sbbench.attention import (
    exact_attention,
    lsh_attention,
    scatterbrain_attention,
)
from sbbench.attention.features import positive_features

F64 = dict(rtol=1e-9, atol=1e-10)

# Many tiny calls: one intra-op thread is several times faster (and far faster on a loaded
# 2-core machine, where threads spin-wait for each other).
pytestmark = pytest.mark.usefixtures("single_thread")


def softmax_reference(q, k, v, *, causal=False, key_padding_mask=None, softmax_scale=None):
    """Plain float64 softmax attention; a query that sees no key gets zero weights."""
    q, k, v = q.double(), k.double(), v.double()
    seq = q.shape[2]
    tau = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(q.shape[-1])
    logits = tau * q @ k.transpose(-1, -2)
    keep = torch.ones(q.shape[0], 1, seq, seq, dtype=torch.bool)
    if causal:
        keep = keep & torch.ones(seq, seq, dtype=torch.bool).tril()
    if key_padding_mask is not None:
        keep = keep & key_padding_mask[:, None, None, :]
    weights = torch.softmax(logits.masked_fill(~keep, -math.inf), dim=-1)
    weights = torch.nan_to_num(weights, nan=0.0)  # rows with no key: softmax of all -inf
    return weights @ v, weights


def padding_mask(batch: int, seq: int, pads: list[int]) -> torch.Tensor:
    """[batch, seq] bool: True for the first seq - pads[i] positions of batch entry i."""
    mask = torch.ones(batch, seq, dtype=torch.bool)
    for i, pad in enumerate(pads):
        if pad:
            mask[i, seq - pad:] = False
    return mask


# ---------------------------------------------------------------- exact attention itself


@pytest.mark.parametrize("masked", [False, True], ids=["nomask", "mask"])
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_exact_matches_softmax_reference(causal, masked):
    q, k, v = qkv(2, 3, 21, 8, head_dim_v=5, seed=1)
    mask = padding_mask(2, 21, [0, 6]) if masked else None
    # a key masked at position 0 leaves causal query 0 with no key at all
    if masked:
        mask[1, 0] = False
    ref_out, ref_weights = softmax_reference(q, k, v, causal=causal, key_padding_mask=mask,
                                             softmax_scale=0.3)
    out = exact_attention(q, k, v, causal=causal, key_padding_mask=mask, softmax_scale=0.3)
    out_w, weights = exact_attention(q, k, v, causal=causal, key_padding_mask=mask,
                                     softmax_scale=0.3, return_weights=True)
    torch.testing.assert_close(out, ref_out, **F64)
    torch.testing.assert_close(out_w, ref_out, **F64)
    torch.testing.assert_close(weights, ref_weights, **F64)
    assert out.shape == (2, 3, 21, 5) and out.dtype == torch.float64


def test_exact_with_every_key_masked_gives_zero():
    q, k, v = qkv(2, 2, 9, 4)
    mask = torch.ones(2, 9, dtype=torch.bool)
    mask[1] = False
    out, weights = exact_attention(q, k, v, key_padding_mask=mask, return_weights=True)
    assert torch.equal(out[1], torch.zeros_like(out[1]))
    assert torch.equal(weights[1], torch.zeros_like(weights[1]))
    torch.testing.assert_close(out[0], exact_attention(q[:1], k[:1], v[:1])[0], **F64)


# ---------------------------------------------------------------- one bucket: exact

ONE_BUCKET_CASES = [
    pytest.param("lsh", 1, id="lsh"),
    pytest.param("lsh", 3, id="lsh-3hashes"),
    pytest.param("scatterbrain", 1, id="scatterbrain"),
    pytest.param("scatterbrain", 2, id="scatterbrain-2hashes"),
    pytest.param("scatterbrain_local", 1, id="scatterbrain_local"),
]


@pytest.mark.parametrize("seed", [0, 1, 2], ids=lambda s: f"seed{s}")
@pytest.mark.parametrize("seq, bucket_size", [(32, 32), (37, 40)], ids=["seq32-b32", "seq37-b40"])
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("method, n_hashes", ONE_BUCKET_CASES)
def test_one_bucket_equals_exact(method, n_hashes, causal, seq, bucket_size, seed):
    """bucket_size >= seq: every pair is in the bucket, the estimate is exact on it.

    n_features=2 (one projection) is the worst low-rank part there is: the residual must
    cancel it whatever it is. With several hash rounds every pair is found in each
    round and must still count once."""
    q, k, v = qkv(2, 2, seq, 8, seed=seed)
    out, weights = attention(method, q, k, v, n_features=2, bucket_size=bucket_size,
                             n_hashes=n_hashes, seed=seed, causal=causal, return_weights=True)
    ref_out, ref_weights = softmax_reference(q, k, v, causal=causal)
    torch.testing.assert_close(out, ref_out, **F64)
    torch.testing.assert_close(weights, ref_weights, **F64)
    plain = attention(method, q, k, v, n_features=2, bucket_size=bucket_size,
                      n_hashes=n_hashes, seed=seed, causal=causal)
    torch.testing.assert_close(plain, ref_out, **F64)


@pytest.mark.parametrize("stretch", [1.0, 3.0], ids=["gaussian", "stretched-x3"])
@pytest.mark.parametrize("sparse", ["lsh", "local"])
def test_one_bucket_is_exact_whatever_the_projections(sparse, stretch):
    """Projections far from Gaussian (norms x3, so phi(q).phi(k) overshoots exp(tau q.k) by
    up to ~1e10) still give exp(tau q.k) on every pair. The residual exp(tau q.k) -
    phi(q).phi(k) cancels, so the float64 rounding error is eps * phi(q).phi(k), not
    eps * exp(tau q.k): the tolerance is 8 eps max(phi.phi / exp)."""
    q, k, v = qkv(1, 2, 24, 8, seed=4)
    projections, hashes = randomness(16, 1, 8, seed=4)
    projections = projections * stretch
    tau = 1.0 / math.sqrt(8)
    lowrank = positive_features(q, projections, tau) @ positive_features(
        k, projections, tau).transpose(-1, -2)
    scores = exp_scores(q, k)
    overshoot = (lowrank / scores).max().item()
    assert (overshoot > 1e9) == (stretch == 3.0)  # the stretched case really is extreme
    tol = 8 * torch.finfo(torch.float64).eps * max(overshoot, 1.0)
    kwargs = dict(n_features=16, bucket_size=24, sparse=sparse, projections=projections,
                  hashes=hashes if sparse == "lsh" else None)
    out, unnormalized = scatterbrain_attention(q, k, v, return_weights="unnormalized", **kwargs)
    assert ((unnormalized - scores) / scores).abs().max().item() <= tol
    torch.testing.assert_close(out, softmax_reference(q, k, v)[0], rtol=tol, atol=tol)
    plain = scatterbrain_attention(q, k, v, **kwargs)
    torch.testing.assert_close(plain, softmax_reference(q, k, v)[0], rtol=tol, atol=tol)


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("method", ["lsh", "scatterbrain", "scatterbrain_local"])
def test_one_bucket_with_key_padding_equals_exact(method, causal):
    q, k, v = qkv(2, 2, 30, 8, seed=5)
    mask = padding_mask(2, 30, [0, 7])
    mask[0, 3] = False  # and one masked key in the middle
    out = attention(method, q, k, v, bucket_size=32, n_hashes=2 if method == "lsh" else 1,
                    causal=causal, key_padding_mask=mask)
    ref = softmax_reference(q, k, v, causal=causal, key_padding_mask=mask)[0]
    torch.testing.assert_close(out, ref, **F64)


@pytest.mark.parametrize("input_scale", [1.0, 6.0], ids=["logits~3", "logits~150"])
@pytest.mark.parametrize("method", ["lsh", "scatterbrain", "scatterbrain_local"])
def test_one_bucket_float32_close_to_exact(method, input_scale):
    """float32, also with logits up to ~150 (exp overflows float32 beyond ~88): the
    stabilisation must keep every exponential in range."""
    q, k, v = qkv(2, 2, 40, 16, dtype=torch.float32, seed=6, scale=input_scale)
    out = attention(method, q, k, v, n_features=8, bucket_size=64, softmax_scale=0.25)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, exact_attention(q, k, v, softmax_scale=0.25),
                               rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("method", ["lsh", "scatterbrain", "scatterbrain_local"])
def test_one_bucket_with_explicit_softmax_scale(method):
    q, k, v = qkv(1, 2, 16, 8, seed=10, scale=0.5)
    out = attention(method, q, k, v, bucket_size=16, softmax_scale=0.9)
    torch.testing.assert_close(out, softmax_reference(q, k, v, softmax_scale=0.9)[0], **F64)
    # and the scale is used: the default 1/sqrt(8) gives another result
    assert (out - softmax_reference(q, k, v)[0]).abs().max() > 1e-3


@pytest.mark.parametrize("method", ["exact", "performer", "lsh", "scatterbrain",
                                    "scatterbrain_local"])
def test_single_position_returns_its_value(method):
    """seq 1: the only key is the query's own; the output is v whatever the estimate."""
    q, k, v = qkv(2, 2, 1, 4, seed=10)
    out = attention(method, q, k, v, n_features=2, bucket_size=1)
    torch.testing.assert_close(out, v, **F64)


def test_lsh_with_several_buckets_is_not_exact():
    """Control for the tests above: with buckets smaller than seq the LSH output differs."""
    q, k, v = qkv(1, 2, 32, 8, seed=7)
    _, hashes = randomness(2, 1, 8, seed=7)
    out = lsh_attention(q, k, v, bucket_size=8, hashes=hashes)
    assert relative_error(out, exact_attention(q, k, v)) > 0.05


# ---------------------------------------------------------------- many features: converge


def test_performer_error_falls_as_n_features_grows():
    """Mean relative error of the attention matrix over 4 seeds: it must fall at every
    step of 4x more features, and by at least 4x over 64x more features (the Monte-Carlo
    rate would give 8x; inputs are small so the estimator's tails stay light)."""
    q, k, v = qkv(1, 2, 48, 8, seed=8, scale=0.35)
    exact_weights = exact_attention(q, k, v, return_weights=True)[1]
    errors = []
    for n_features in (8, 32, 128, 512):
        per_seed = [
            relative_error(attention("performer", q, k, v, n_features=n_features, seed=seed,
                                     return_weights=True)[1], exact_weights)
            for seed in range(4)
        ]
        errors.append(sum(per_seed) / len(per_seed))
    assert all(errors[i + 1] < errors[i] for i in range(len(errors) - 1)), errors
    assert errors[-1] < errors[0] / 4, errors


@pytest.mark.parametrize("method", ["performer", "scatterbrain", "scatterbrain_local"])
def test_very_many_features_approach_exact(method):
    q, k, v = qkv(1, 2, 32, 8, seed=9, scale=0.3)
    exact_out, exact_weights = exact_attention(q, k, v, return_weights=True)
    out, weights = attention(method, q, k, v, n_features=4096, bucket_size=8,
                             return_weights=True)
    assert relative_error(weights, exact_weights) < 0.02
    assert relative_error(out, exact_out) < 0.02
    few_out = attention(method, q, k, v, n_features=4, bucket_size=8)
    assert relative_error(few_out, exact_out) > relative_error(out, exact_out)
