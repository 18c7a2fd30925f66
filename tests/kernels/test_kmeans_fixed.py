"""The kernels' k-means key sets (overlapping per-cluster key lists, a pair in c rounds'
sets counted 1/c), sink keys and windows (kernels/fixed.py, the pairs they hold left out of
the buckets) against sbbench.attention.core.attend with the same clusters, in the dtype
and in float64: odd sizes, causal, key padding, 1 and 2 rounds, with and without the
low-rank part, NaN-filled outputs. Without CUDA the kernels run under TRITON_INTERPRET=1."""

from __future__ import annotations

import math

import pytest
import torch
from sbbench.kernels.testing import device_for_tests, kernels_for_tests

kernels = kernels_for_tests()
if not getattr(kernels, "HAVE_TRITON", False):
    pytest.skip("triton is not installed", allow_module_level=True)

from sbbench.attention import core, scatterbrain_attention  # noqa: E402,I001
from sbbench.attention.features import draw_projections  # noqa: E402
from sbbench.attention.lsh import draw_hashes  # noqa: E402
from sbbench.kernels.testing import check_close, nan_filled_outputs  # noqa: E402

DEVICE = device_for_tests()
FP32, BF16, FP16 = torch.float32, torch.bfloat16, torch.float16


@pytest.fixture(autouse=True)
def _nan_outputs():
    with nan_filled_outputs():
        yield


def inputs(dtype, seq, head_dim, n_features, mask, seed):
    gen = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(1, 2, seq, head_dim, generator=gen) for _ in range(3))
    projections = (draw_projections(n_features, head_dim, generator=gen, dtype=torch.float64)
                   .to(DEVICE) if n_features else None)
    keep = None
    if mask:
        keep = torch.rand(1, seq, generator=gen) > 0.3
        keep[:, 0] = True
        keep = keep.to(DEVICE)
    return (*(t.to(DEVICE, dtype) for t in (q, k, v)), projections, keep, gen)


def run_case(dtype, seq, head_dim, *, n_features, sparse, bucket_size=8, n_hashes=1,
             causal=False, mask=False, sink=0, window=0, configs=None, seed=0, floor=None,
             monkeypatch=None):
    """Kernel vs attend in the dtype and in float64. k-means: both references take the
    kernel's clusters (those of the float32 copies; float64 copies could cluster a
    near-tie differently)."""
    q, k, v, projections, keep, gen = inputs(dtype, seq, head_dim, n_features, mask, seed)
    hashes = (draw_hashes(n_hashes, head_dim, generator=gen).to(DEVICE)
              if sparse in ("lsh", "kmeans") else None)
    common = dict(scale=1.0 / math.sqrt(head_dim), projections=projections, hashes=hashes,
                  bucket_size=bucket_size if sparse else None, sparse=sparse, causal=causal,
                  key_padding_mask=keep)
    orders = None
    if sparse == "kmeans":
        orders = core.kmeans_buckets(q, k, hashes, bucket_size, causal, keep)
        monkeypatch.setattr(core, "kmeans_order", lambda *args: orders)
    out = kernels.scatterbrain_forward(q, k, v, configs=configs, orders=orders, sink=sink,
                                       window=window, **common)
    ref = core.attend(q, k, v, sink=sink, window=window, **common)
    ref64 = core.attend(q.double(), k.double(), v.double(), sink=sink, window=window, **common)
    return check_close("out", out, ref, ref64, dtype, floor)


@pytest.mark.parametrize("dtype,seq,head_dim,n_features,bucket,n_hashes,causal,mask", [
    pytest.param(FP32, 37, 16, 16, 8, 1, False, False, id="fp32-s37-b8-h1"),
    pytest.param(BF16, 63, 32, 32, 16, 2, True, True, id="bf16-s63-b16-h2-causal-mask"),
    pytest.param(FP16, 37, 16, 0, 8, 2, False, True, id="fp16-s37-b8-h2-mask-no-lowrank"),
])
def test_kmeans_key_sets(monkeypatch, dtype, seq, head_dim, n_features, bucket, n_hashes,
                         causal, mask):
    run_case(dtype, seq, head_dim, n_features=n_features, sparse="kmeans",
             bucket_size=bucket, n_hashes=n_hashes, causal=causal, mask=mask,
             monkeypatch=monkeypatch)


@pytest.mark.parametrize("dtype,sparse,n_features,n_hashes,causal,mask,sink,window", [
    pytest.param(FP32, "kmeans", 16, 2, True, False, 3, 5, id="fp32-kmeans-h2-causal"),
    pytest.param(FP16, "kmeans", 0, 1, False, True, 2, 6, id="fp16-kmeans-mask-no-lowrank"),
    pytest.param(BF16, "lsh", 32, 2, False, True, 3, 6, id="bf16-lsh-h2-mask"),
    pytest.param(FP32, "local", 0, 1, True, True, 0, 9, id="fp32-local-window-causal-mask"),
    pytest.param(BF16, "lsh", 16, 1, True, False, 4, 0, id="bf16-lsh-sink-causal"),
])
def test_buckets_with_sink_and_window(monkeypatch, dtype, sparse, n_features, n_hashes,
                                      causal, mask, sink, window):
    run_case(dtype, 37, 16, n_features=n_features, sparse=sparse, n_hashes=n_hashes,
             causal=causal, mask=mask, sink=sink, window=window, monkeypatch=monkeypatch)


@pytest.mark.parametrize("dtype,n_features,causal,mask,sink,window", [
    pytest.param(FP32, 16, False, False, 4, 0, id="fp32-sink-only"),
    pytest.param(BF16, 0, True, True, 0, 7, id="bf16-window-only-causal-mask-no-lowrank"),
    pytest.param(FP16, 32, True, True, 3, 8, id="fp16-both-causal-mask"),
    pytest.param(FP32, 0, False, True, 2, 6, id="fp32-both-mask-no-lowrank"),
])
def test_sink_and_window_without_buckets(dtype, n_features, causal, mask, sink, window):
    run_case(dtype, 37, 16, n_features=n_features, sparse=None, causal=causal, mask=mask,
             sink=sink, window=window)


@pytest.mark.parametrize("causal", [False, True], ids=["centred", "causal"])
def test_wide_window_and_many_sinks_in_small_tiles(causal):
    """A window and sinks several key tiles wide, in blocks of 16 queries: a block's key
    run spans many tiles, sink keys inside the window are counted there only, the last
    block holds 15 of 16 rows (seq 63)."""
    run_case(FP32, 63, 16, n_features=16, sparse=None, causal=causal, mask=True, sink=20,
             window=40, configs={"fixed": {"BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_P": 16,
                                           "num_warps": 2, "num_stages": 1}})


def test_into_a_preallocated_nan_buffer(monkeypatch):
    """sparse_attention writes every element of the ``out`` it is given."""
    q, k, v, _, keep, gen = inputs(FP32, 37, 16, 0, True, 3)
    hashes = draw_hashes(2, 16, generator=gen).to(DEVICE)
    orders = core.kmeans_buckets(q, k, hashes, 8, False, keep)
    monkeypatch.setattr(core, "kmeans_order", lambda *args: orders)
    out = torch.full((1, 2, 37, 16), float("nan"), device=DEVICE)
    got = kernels.sparse_attention(q, k, v, scale=0.25, bucket_size=8, q_order=orders[0],
                                   k_order=orders[1], key_sets=orders[2],
                                   key_padding_mask=keep, sink=2, window=3, out=out)
    assert got is out
    common = dict(scale=0.25, projections=None, hashes=hashes, bucket_size=8,
                  sparse="kmeans", causal=False, key_padding_mask=keep, sink=2, window=3)
    check_close("out", out, core.attend(q, k, v, **common),
                core.attend(q.double(), k.double(), v.double(), **common), FP32)


def test_public_function_runs_them_on_the_kernels():
    """backend='triton' takes k-means, sink and window (no refusal) and, with the same
    generator, gives the torch backend's estimate."""
    gen = torch.Generator().manual_seed(5)
    q, k, v = (torch.randn(1, 2, 45, 16, generator=gen).to(DEVICE) for _ in range(3))
    keep = (torch.arange(45) < 40).expand(1, 45).to(DEVICE)
    for kwargs in (dict(n_features=16, bucket_size=8, n_hashes=2, sparse="kmeans", sink=2,
                        window=4, causal=True, key_padding_mask=keep),
                   dict(n_features=0, bucket_size=0, sparse=None, window=5)):
        outs = [scatterbrain_attention(q, k, v, generator=torch.Generator().manual_seed(1),
                                       backend=backend, **kwargs)
                for backend in ("torch", "triton")]
        torch.testing.assert_close(outs[1], outs[0], rtol=1e-4, atol=1e-5, msg=str(kwargs))


def test_what_the_kernels_still_refuse():
    q = torch.randn(1, 1, 16, 16, device=DEVICE)
    with pytest.raises(ValueError, match="needs orders"):
        kernels.scatterbrain_forward(q, q, q, scale=0.25, projections=None, hashes=None,
                                     bucket_size=8, sparse="kmeans", causal=False,
                                     key_padding_mask=None)
    with pytest.raises(ValueError, match="nothing to compute"):
        kernels.scatterbrain_forward(q, q, q, scale=0.25, projections=None, hashes=None,
                                     bucket_size=None, sparse=None, causal=False,
                                     key_padding_mask=None)
    with pytest.raises(ValueError, match="sink and window must be >= 0"):
        kernels.scatterbrain_forward(q, q, q, scale=0.25, projections=None, hashes=None,
                                     bucket_size=None, sparse=None, causal=False,
                                     key_padding_mask=None, window=-1)
