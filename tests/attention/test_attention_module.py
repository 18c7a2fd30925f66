"""ScatterbrainAttention: a drop-in self-attention layer; forward and backward work.

With one bucket (bucket_size >= seq) its attention is exact, so the layer must equal
torch.nn.MultiheadAttention with the same weights: this pins the head split, the
projections and the output layer, not only the shapes.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sbbench.attention import HashFunctions, ScatterbrainAttention, scatterbrain_attention

pytestmark = pytest.mark.usefixtures("single_thread")  # many tiny calls (see conftest)

EMBED, HEADS, SEQ = 24, 3, 20


def inputs(batch=2, seq=SEQ, dtype=torch.float64, seed=51):
    return torch.randn(batch, seq, EMBED, generator=torch.Generator().manual_seed(seed),
                       dtype=dtype)


def matching_mha(layer: ScatterbrainAttention) -> nn.MultiheadAttention:
    """nn.MultiheadAttention with the layer's weights (its in_proj is [q; k; v] too)."""
    mha = nn.MultiheadAttention(EMBED, HEADS, batch_first=True, dtype=torch.float64)
    with torch.no_grad():
        mha.in_proj_weight.copy_(layer.qkv.weight)
        mha.in_proj_bias.copy_(layer.qkv.bias)
        mha.out_proj.weight.copy_(layer.out.weight)
        mha.out_proj.bias.copy_(layer.out.bias)
    return mha


@pytest.mark.parametrize("masked", [False, True], ids=["nomask", "mask"])
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("sparse, extra", [
    pytest.param("lsh", {}, id="lsh"), pytest.param("local", {}, id="local"),
    pytest.param("kmeans", dict(n_hashes=2, sink=2, window=5), id="kmeans-sink-window"),
    pytest.param(None, dict(bucket_size=0, n_features=0, window=64), id="window-only")])
def test_one_bucket_layer_equals_multihead_attention(sparse, extra, causal, masked):
    torch.manual_seed(0)
    options = {"n_features": 4, "bucket_size": 32, **extra}
    layer = ScatterbrainAttention(EMBED, HEADS, sparse=sparse, causal=causal,
                                  **options).double()
    mha = matching_mha(layer)
    x = inputs()
    mask = None
    if masked:
        mask = torch.ones(2, SEQ, dtype=torch.bool)
        mask[1, -6:] = False
    out = layer(x, key_padding_mask=mask)
    attn_mask = (torch.ones(SEQ, SEQ, dtype=torch.bool).triu(1) if causal else None)
    ref, _ = mha(x, x, x, need_weights=False, attn_mask=attn_mask,
                 key_padding_mask=None if mask is None else ~mask)  # True = ignore there
    assert out.shape == (2, SEQ, EMBED) and out.dtype == torch.float64
    torch.testing.assert_close(out, ref, rtol=1e-9, atol=1e-10)


def test_layer_is_scatterbrain_attention_on_its_projections():
    """Several buckets: the layer equals the functional call on its own q, k, v, projection
    and hash buffers."""
    layer = ScatterbrainAttention(EMBED, HEADS, n_features=8, bucket_size=4, n_hashes=2,
                                  seed=3).double()
    x = inputs()
    q, k, v = layer.qkv(x).view(2, SEQ, 3, HEADS, EMBED // HEADS).permute(2, 0, 3, 1, 4)
    attn = scatterbrain_attention(
        q, k, v, n_features=8, bucket_size=4, n_hashes=2, projections=layer.projections,
        hashes=HashFunctions(layer.hash_directions, layer.hash_shifts))
    expected = layer.out(attn.transpose(1, 2).reshape(2, SEQ, EMBED))
    torch.testing.assert_close(layer(x), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("sparse, n_hashes", [("lsh", 2), ("local", 1)], ids=["lsh", "local"])
def test_forward_and_backward_reach_every_parameter(sparse, n_hashes, causal):
    layer = ScatterbrainAttention(EMBED, HEADS, n_features=8, bucket_size=8,
                                  n_hashes=n_hashes, sparse=sparse, causal=causal)
    x = inputs(dtype=torch.float32).requires_grad_(True)
    mask = torch.ones(2, SEQ, dtype=torch.bool)
    mask[0, -3:] = False
    out = layer(x, key_padding_mask=mask)
    assert out.shape == (2, SEQ, EMBED) and out.dtype == torch.float32
    out.square().mean().backward()
    for name, param in layer.named_parameters():
        assert param.grad is not None, name
        assert torch.isfinite(param.grad).all(), name
        assert param.grad.abs().sum() > 0, name
    assert x.grad is not None and torch.isfinite(x.grad).all()
    # the random features and hashes are buffers, not trained
    assert {name for name, _ in layer.named_buffers()} == {
        "projections", "hash_directions", "hash_shifts"}
    assert all(not buf.requires_grad for buf in layer.buffers())


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_half_precision_layer(dtype):
    """A layer cast to half precision runs forward and backward in that dtype, close to
    the float32 layer (the attention accumulates in float32; the linear layers do not).
    Local blocks: rounding q, k can reorder LSH hashes, a legitimate but larger change."""
    layer = ScatterbrainAttention(EMBED, HEADS, n_features=8, bucket_size=8, sparse="local",
                                  seed=4)
    x = inputs(dtype=torch.float32, seed=54)
    ref = layer(x)
    half = layer.to(dtype)
    out = half(x.to(dtype))
    assert out.dtype == dtype
    torch.testing.assert_close(out.float(), ref, rtol=0.05, atol=0.05)
    out.float().square().sum().backward()
    assert all(p.grad is not None and p.grad.dtype == dtype and torch.isfinite(p.grad).all()
               for p in half.parameters())


def test_layer_gradcheck():
    layer = ScatterbrainAttention(12, 2, n_features=4, bucket_size=4, n_hashes=2,
                                  causal=True).double()
    x = torch.randn(1, 9, 12, dtype=torch.float64, requires_grad=True,
                    generator=torch.Generator().manual_seed(52))
    assert torch.autograd.gradcheck(layer, (x,), eps=1e-6, atol=1e-6, rtol=1e-5,
                                    fast_mode=True)


def test_training_step_reduces_a_loss():
    """A few steps of SGD on a fixed target lower the loss: gradients point downhill."""
    torch.manual_seed(1)
    layer = ScatterbrainAttention(EMBED, HEADS, n_features=8, bucket_size=8)
    x, target = inputs(dtype=torch.float32), inputs(dtype=torch.float32, seed=53)
    losses = []
    for _ in range(5):
        layer.zero_grad()
        loss = (layer(x) - target).square().mean()
        loss.backward()
        with torch.no_grad():  # plain SGD, lr 0.05
            for param in layer.parameters():
                param -= 0.05 * param.grad
        losses.append(loss.item())
    assert losses[-1] < losses[0], losses


def test_seed_state_dict_and_redraw():
    x = inputs(dtype=torch.float32)
    torch.manual_seed(2)
    first = ScatterbrainAttention(EMBED, HEADS, n_features=8, bucket_size=8, seed=7)
    torch.manual_seed(2)
    same = ScatterbrainAttention(EMBED, HEADS, n_features=8, bucket_size=8, seed=7)
    assert torch.equal(first(x), same(x))
    torch.manual_seed(2)
    other = ScatterbrainAttention(EMBED, HEADS, n_features=8, bucket_size=8, seed=8)
    assert (first(x) - other(x)).abs().max() > 1e-4

    copy = ScatterbrainAttention(EMBED, HEADS, n_features=8, bucket_size=8, seed=99)
    copy.load_state_dict(first.state_dict())  # buffers travel with the state dict
    assert torch.equal(copy(x), first(x))

    before = first(x)
    first.redraw(torch.Generator().manual_seed(123))
    assert (first(x) - before).abs().max() > 1e-4
    assert first.projections.shape == (4, EMBED // HEADS)


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        pytest.param(dict(embed_dim=10, num_heads=3), ValueError,
                     r"embed_dim \(10\) must be divisible by num_heads \(3\)", id="heads"),
        pytest.param(dict(n_features=5), ValueError, r"n_features must be even",
                     id="n_features"),
        pytest.param(dict(bucket_size=0), ValueError, r"bucket_size must be >= 1",
                     id="bucket_size"),
        pytest.param(dict(n_hashes=0), ValueError, r"n_hashes must be >= 1", id="n_hashes"),
        pytest.param(dict(sparse="block"), ValueError, r"sparse must be one of",
                     id="sparse"),
        pytest.param(dict(sparse=None), ValueError, r"bucket_size must be 0", id="no-buckets"),
        pytest.param(dict(window=-1), ValueError, r"window must be >= 0", id="window"),
        pytest.param(dict(num_heads=0), ValueError, r"num_heads must be >= 1", id="num_heads"),
    ],
)
def test_bad_layer_options_are_named(kwargs, error, message):
    options = {"embed_dim": EMBED, "num_heads": HEADS, **kwargs}
    with pytest.raises(error, match=message):
        ScatterbrainAttention(options.pop("embed_dim"), options.pop("num_heads"), **options)


@pytest.mark.parametrize(
    "shape", [(2, SEQ), (2, SEQ, EMBED + 1), (1, 2, SEQ, EMBED)], ids=["2d", "embed", "4d"])
def test_bad_layer_input_is_named(shape):
    layer = ScatterbrainAttention(EMBED, HEADS, n_features=8, bucket_size=8)
    with pytest.raises(ValueError, match=r"x must have shape \[batch, seq, embed_dim=24\]"):
        layer(torch.zeros(shape))


def test_layer_with_new_supports_runs_backward_and_says_so():
    layer = ScatterbrainAttention(EMBED, HEADS, n_features=0, bucket_size=8, n_hashes=2,
                                  sparse="kmeans", sink=1, window=4, causal=True).double()
    x = inputs().requires_grad_(True)
    layer(x).square().sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().max() > 0
    assert "sparse='kmeans'" in repr(layer) and "sink=1, window=4" in repr(layer)
