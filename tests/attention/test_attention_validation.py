"""Bad input raises ValueError / TypeError naming the argument, never an obscure
error from inside a matmul. Each case runs against every function that takes the argument.
"""

from __future__ import annotations

import pytest
import torch
from conftest import qkv

from sbbench import attention

B, H, N, D = 2, 2, 12, 8

CALLS = {
    "exact": lambda q, k, v, **kw: attention.exact_attention(q, k, v, **kw),
    "performer": lambda q, k, v, **kw: attention.performer_attention(
        q, k, v, **{"n_features": 8, **kw}),
    "lsh": lambda q, k, v, **kw: attention.lsh_attention(q, k, v, **{"bucket_size": 4, **kw}),
    "scatterbrain": lambda q, k, v, **kw: attention.scatterbrain_attention(
        q, k, v, **{"n_features": 8, "bucket_size": 4, **kw}),
}
ALL = list(CALLS)


def good():
    return qkv(B, H, N, D, dtype=torch.float32)


def tensors(**replace):
    """Good q, k, v with some replaced."""
    q, k, v = good()
    parts = {"q": q, "k": k, "v": v, **replace}
    return parts["q"], parts["k"], parts["v"]


# (id, methods, q/k/v replacements, kwargs, error type, message regex)
TENSOR_CASES = [
    ("q-not-tensor", ALL, dict(q=[[1.0]]), {}, TypeError, r"q must be a torch\.Tensor"),
    ("q-int", ALL, dict(q=torch.ones(B, H, N, D, dtype=torch.int64)), {}, TypeError,
     r"q must be a floating tensor.*int64"),
    ("v-int", ALL, dict(v=torch.ones(B, H, N, D, dtype=torch.int32)), {}, TypeError,
     r"v must be a floating tensor"),
    ("k-bool", ALL, dict(k=torch.ones(B, H, N, D, dtype=torch.bool)), {}, TypeError,
     r"k must be a floating tensor"),
    ("dtype-mismatch", ALL, dict(k=torch.zeros(B, H, N, D, dtype=torch.float64)), {},
     TypeError, r"q, k, v must share one dtype"),
    ("q-3d", ALL, dict(q=torch.zeros(B, N, D)), {}, ValueError,
     r"q must have shape \[batch, heads, seq, head_dim\]"),
    ("k-seq-mismatch", ALL, dict(k=torch.zeros(B, H, N + 1, D)), {}, ValueError,
     r"k must have the shape of q"),
    ("head-dim-mismatch", ALL, dict(k=torch.zeros(B, H, N, D + 1)), {}, ValueError,
     r"k must have the shape of q.*head_dim"),
    ("v-batch-mismatch", ALL, dict(v=torch.zeros(B + 1, H, N, D)), {}, ValueError,
     r"v must have shape \[batch, heads, seq, head_dim_v\]"),
    ("v-seq-mismatch", ALL, dict(v=torch.zeros(B, H, N - 1, D)), {}, ValueError,
     r"v must have shape"),
    ("empty-seq", ALL,
     dict(q=torch.zeros(B, H, 0, D), k=torch.zeros(B, H, 0, D), v=torch.zeros(B, H, 0, D)),
     {}, ValueError, r"seq and head_dim must be >= 1"),
    ("mask-shape", ALL, {}, dict(key_padding_mask=torch.ones(B, N + 1, dtype=torch.bool)),
     ValueError, r"key_padding_mask must have shape \[batch, seq\]"),
    ("mask-3d", ALL, {}, dict(key_padding_mask=torch.ones(B, 1, N, dtype=torch.bool)),
     ValueError, r"key_padding_mask must have shape"),
    ("mask-float", ALL, {}, dict(key_padding_mask=torch.ones(B, N)), TypeError,
     r"key_padding_mask must have dtype torch\.bool"),
    ("mask-int", ALL, {}, dict(key_padding_mask=torch.ones(B, N, dtype=torch.int64)),
     TypeError, r"key_padding_mask must have dtype torch\.bool"),
    ("mask-list", ALL, {}, dict(key_padding_mask=[[True] * N] * B), TypeError,
     r"key_padding_mask must be a bool tensor"),
    ("softmax-scale-negative", ALL, {}, dict(softmax_scale=-1.0), ValueError,
     r"softmax_scale must be a positive"),
    ("softmax-scale-str", ALL, {}, dict(softmax_scale="0.1"), TypeError, r"softmax_scale"),
]


@pytest.mark.parametrize(
    "methods, replace, kwargs, error, message",
    [pytest.param(*case[1:], id=case[0]) for case in TENSOR_CASES],
)
def test_bad_tensors_are_named(methods, replace, kwargs, error, message):
    for method in methods:
        q, k, v = tensors(**replace)
        with pytest.raises(error, match=message):
            CALLS[method](q, k, v, **kwargs)


BUDGET_CASES = [
    ("bucket-size-0", ["lsh", "scatterbrain"], dict(bucket_size=0), ValueError,
     r"bucket_size must be >= 1"),
    ("bucket-size-negative", ["lsh", "scatterbrain"], dict(bucket_size=-4), ValueError,
     r"bucket_size must be >= 1"),
    ("bucket-size-float", ["lsh", "scatterbrain"], dict(bucket_size=4.0), TypeError,
     r"bucket_size must be an int"),
    ("bucket-size-bool", ["lsh", "scatterbrain"], dict(bucket_size=True), TypeError,
     r"bucket_size must be an int"),
    # scatterbrain takes n_features=0 (no low-rank part); performer has nothing else
    ("n-features-0", ["performer"], dict(n_features=0), ValueError,
     r"n_features must be >= 1"),
    ("n-features-negative", ["performer", "scatterbrain"], dict(n_features=-2), ValueError,
     r"n_features must be >= 1"),
    ("n-features-odd", ["performer", "scatterbrain"], dict(n_features=7), ValueError,
     r"n_features must be even"),
    ("n-features-str", ["performer", "scatterbrain"], dict(n_features="8"), TypeError,
     r"n_features must be an int"),
    ("n-hashes-0", ["lsh", "scatterbrain"], dict(n_hashes=0), ValueError,
     r"n_hashes must be >= 1"),
    ("sparse-unknown", ["scatterbrain"], dict(sparse="dense"), ValueError,
     r"sparse must be one of lsh, kmeans, local or None, got 'dense'"),
    ("sparse-none-with-buckets", ["scatterbrain"], dict(sparse=None), ValueError,
     r"sparse=None has no buckets: bucket_size must be 0"),
    ("sparse-none-empty", ["scatterbrain"],
     dict(sparse=None, bucket_size=0, n_features=0), ValueError, r"attends to nothing"),
    ("sink-negative", ["lsh", "scatterbrain"], dict(sink=-1), ValueError,
     r"sink must be >= 0"),
    ("window-float", ["lsh", "scatterbrain"], dict(window=2.0), TypeError,
     r"window must be an int >= 0"),
    ("local-with-hashes", ["scatterbrain"], dict(sparse="local", n_hashes=2), ValueError,
     r"n_hashes must be 1"),
    ("backend-unknown", ["performer", "lsh", "scatterbrain"], dict(backend="cuda"),
     ValueError, r"backend must be one of auto, torch, triton, got 'cuda'"),
    ("weights-need-torch-backend", ["performer", "lsh", "scatterbrain"],
     dict(backend="triton", return_weights=True), ValueError,
     r"return_weights needs backend='torch'"),
    ("return-weights-str", ["performer", "lsh", "scatterbrain"],
     dict(return_weights="dense"), ValueError, r"return_weights must be"),
    ("projections-shape", ["performer", "scatterbrain"],
     dict(projections=torch.zeros(4, D + 1)), ValueError,
     r"projections must have shape \[n_features // 2, head_dim\] = \[4, 8\]"),
    ("projections-rows", ["performer", "scatterbrain"], dict(projections=torch.zeros(8, D)),
     ValueError, r"projections must have shape"),
    ("projections-not-tensor", ["performer", "scatterbrain"],
     dict(projections=[[0.0] * D] * 4), TypeError, r"projections must be a tensor"),
    ("hashes-count", ["lsh", "scatterbrain"],
     dict(n_hashes=2, hashes=attention.draw_hashes(3, D)), ValueError,
     r"hashes must hold n_hashes=2 functions for head_dim=8"),
    ("hashes-head-dim", ["lsh", "scatterbrain"], dict(hashes=attention.draw_hashes(1, D + 2)),
     ValueError, r"hashes must hold"),
    ("hashes-not-hashfunctions", ["lsh", "scatterbrain"],
     dict(hashes=torch.zeros(1, D + 2)), TypeError, r"hashes must be a HashFunctions"),
]


@pytest.mark.parametrize(
    "methods, kwargs, error, message",
    [pytest.param(*case[1:], id=case[0]) for case in BUDGET_CASES],
)
def test_bad_budget_and_options_are_named(methods, kwargs, error, message):
    for method in methods:
        q, k, v = good()
        with pytest.raises(error, match=message):
            CALLS[method](q, k, v, **kwargs)


def test_valid_inputs_pass_the_checks():
    """Control for the cases above: the same calls with good arguments run."""
    q, k, v = good()
    mask = torch.ones(B, N, dtype=torch.bool)
    projections = attention.draw_projections(8, D)
    for method in ALL:
        assert CALLS[method](q, k, v, key_padding_mask=mask).shape == (B, H, N, D)
    out = attention.scatterbrain_attention(q, k, v, n_features=8, bucket_size=4, n_hashes=2,
                                           projections=projections,
                                           hashes=attention.draw_hashes(2, D))
    assert out.shape == (B, H, N, D)
    assert isinstance(attention.draw_hashes(2, D), attention.HashFunctions)


@pytest.mark.parametrize(
    "call, error, message",
    [
        pytest.param(lambda: attention.draw_projections(7, 8), ValueError,
                     r"n_features must be even",
                     id="projections-odd"),
        pytest.param(lambda: attention.draw_projections(8, 0), ValueError,
                     r"head_dim must be >= 1",
                     id="projections-head-dim"),
        pytest.param(lambda: attention.draw_hashes(0, 8), ValueError, r"n_hashes must be >= 1",
                     id="hashes-zero"),
        pytest.param(lambda: attention.draw_hashes(2, 2.5), TypeError,
                     r"head_dim must be an int",
                     id="hashes-head-dim-float"),
    ],
)
def test_bad_draw_arguments_are_named(call, error, message):
    with pytest.raises(error, match=message):
        call()


@pytest.mark.parametrize("shape", [(0, H, N, D), (B, 0, N, D)], ids=["batch0", "heads0"])
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("method", ALL)
def test_no_batch_or_no_heads_gives_an_empty_output(method, causal, shape):
    """Like exact attention: an empty output of the right shape, and backward works."""
    q, k, v = (torch.randn(*shape[:3], 6, requires_grad=True) if i == 2
               else torch.randn(*shape, requires_grad=True) for i in range(3))
    out = CALLS[method](q, k, v, causal=causal)
    assert out.shape == (*shape[:3], 6) and out.dtype == q.dtype
    out.sum().backward()
    assert q.grad.shape == q.shape and v.grad.shape == v.shape


@pytest.mark.parametrize("method", ["performer", "lsh", "scatterbrain"])
def test_no_batch_with_return_weights(method):
    q, k, v = (torch.randn(0, H, N, D) for _ in range(3))
    out, weights = CALLS[method](q, k, v, return_weights=True)
    assert out.shape == (0, H, N, D) and weights.shape == (0, H, N, N)
