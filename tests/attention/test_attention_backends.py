"""backend="auto": the Triton kernels where they take the call, the torch path wherever
they do not (the resolver, tested directly: no GPU is needed to decide)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from sbbench.attention import backends
from sbbench.attention.backends import auto_refusal, resolve_backend

F32, BF16, F16 = torch.float32, torch.bfloat16, torch.float16


@pytest.fixture
def sm90():
    kernels = pytest.importorskip("sbbench.kernels")
    if not kernels.HAVE_TRITON:
        pytest.skip("triton is not installed")
    return kernels.limits_for(90)


def refusal(dtype, head_dim, limits, **changes):
    call = dict(n_features=256, bucket_size=64, sparse="lsh", n_hashes=1, causal=False)
    call.update(changes)
    return auto_refusal(dtype, head_dim, head_dim, limits=limits, **call)


def test_auto_takes_the_kernels_where_they_run(sm90):
    for dtype, head_dim in ((BF16, 64), (F16, 256), (F32, 128)):
        assert refusal(dtype, head_dim, sm90) is None
    assert refusal(BF16, 64, sm90, bucket_size=256, causal=True, n_hashes=2) is None
    assert refusal(BF16, 128, sm90, sparse=None, bucket_size=None) is None  # Performer
    assert refusal(BF16, 64, sm90, sparse="local") is None
    assert refusal(BF16, 64, sm90, sparse="kmeans", n_hashes=2) is None
    assert refusal(BF16, 64, sm90, sink=4, window=64, causal=True) is None
    assert refusal(BF16, 64, sm90, sparse=None, bucket_size=None, n_features=0,
                   window=8) is None  # sink / window only


@pytest.mark.parametrize("dtype, head_dim, changes, words", [
    (F32, 256, {}, "float32 head_dim <= 128, got 256"),
    (F32, 256, dict(sparse=None, bucket_size=None), "float32 head_dim <= 128"),
    (BF16, 512, {}, "bfloat16 head_dim <= 256, got 512"),
    (torch.float64, 64, {}, "not float64"),
    (BF16, 256, dict(bucket_size=256), "sparse: no config of the search space fits sm_90"),
    (BF16, 64, dict(bucket_size=512), "bucket_size must be in 1..256"),
    (BF16, 64, dict(return_weights=True), "return_weights"),
    (BF16, 64, dict(needs_grad=True), "forward only"),
], ids=["fp32-d256", "fp32-d256-performer", "bf16-d512", "fp64", "d256-bucket256",
        "bucket512", "weights", "grad"])
def test_auto_falls_back_to_torch_where_the_kernels_do_not_take_the_call(
        sm90, dtype, head_dim, changes, words):
    reason = refusal(dtype, head_dim, sm90, **changes)
    assert reason is not None and words in reason and "\n" not in reason


def fake_cuda(dtype, head_dim, requires_grad=False):
    """What the resolver reads of a CUDA tensor (no GPU here)."""
    return SimpleNamespace(is_cuda=True, dtype=dtype, shape=(1, 2, 64, head_dim),
                           device=torch.device("cuda"), requires_grad=requires_grad)


def test_resolve_backend_reads_the_call_on_a_gpu(sm90, monkeypatch):
    monkeypatch.setattr("sbbench.kernels._common.launch_limits", lambda device: sm90)
    projections = torch.zeros(128, 256)  # n_features 256
    hashes = SimpleNamespace(n_hashes=2)
    call = dict(projections=projections, hashes=hashes, bucket_size=64, sparse="lsh",
                causal=True, scale=0.1, key_padding_mask=None)
    q = fake_cuda(BF16, 64)
    assert resolve_backend("auto", q, q, q, **call) == "triton"
    wide = fake_cuda(F32, 256)
    assert resolve_backend("auto", wide, wide, wide, **call) == "torch"
    big = fake_cuda(BF16, 256)
    assert resolve_backend("auto", big, big, big, **{**call, "bucket_size": 256}) == "torch"
    assert resolve_backend("auto", q, q, q, return_weights=True, **call) == "torch"
    grad = fake_cuda(BF16, 64, requires_grad=True)
    assert resolve_backend("auto", q, grad, q, **call) == "torch"
    with torch.no_grad():  # inference: no gradient needed
        assert resolve_backend("auto", q, grad, q, **call) == "triton"
    # an explicit backend is never second-guessed
    assert resolve_backend("triton", wide, wide, wide, **call) == "triton"


def test_resolve_backend_without_a_gpu_or_kernels(monkeypatch):
    q = torch.zeros(1, 2, 8, 16)
    assert resolve_backend("auto", q) == "torch" and resolve_backend("torch", q) == "torch"
    with pytest.raises(ValueError, match="backend must be one of auto, torch, triton"):
        resolve_backend("cuda", q)
    monkeypatch.setattr(backends, "triton_available", lambda: False)
    assert resolve_backend("auto", fake_cuda(BF16, 64)) == "torch"
