"""64-bit offsets: a launch whose tensors span 2^30 elements or more computes element
offsets (pid * seq * d, position * stride) in int64. On the CPU, with an input view whose
token stride makes position * stride pass 2^31 over a lazily allocated buffer (only the
touched rows get memory), and every interpreted access checked against the arguments'
storage (testing.checked_memory): int32 offsets wrap and fail, int64 ones match the
reference."""

from __future__ import annotations

import math

import pytest
import torch
from sbbench.kernels.testing import kernels_for_tests

kernels = kernels_for_tests()
if not getattr(kernels, "HAVE_TRITON", False):
    pytest.skip("triton is not installed", allow_module_level=True)

from sbbench.kernels import _common, causal_lowrank, feature_map, lowrank, sparse  # noqa: E402,I001
from sbbench.kernels.testing import check_close, checked_memory, device_for_tests  # noqa: E402

from sbbench.attention.core import attend  # noqa: E402
from sbbench.attention.features import draw_projections  # noqa: E402
from sbbench.attention.lsh import draw_hashes  # noqa: E402

DEVICE = device_for_tests()
TOKEN_STRIDE = 2 ** 26  # positions >= 32 put position * stride past 2^31
SEQ, HEADS, HEAD_DIM = 40, 2, 32


def packed_qkv(dtype=torch.float16):
    """q, k, v: [1, HEADS, SEQ, HEAD_DIM] views of one buffer laid out [token, 3, heads,
    d] whose token stride is TOKEN_STRIDE elements (5 GiB of address space; only the SEQ
    touched rows are backed by memory)."""
    buffer = torch.empty(SEQ * TOKEN_STRIDE, dtype=dtype, device=DEVICE)
    row = HEADS * HEAD_DIM
    views = [buffer.as_strided((1, HEADS, SEQ, HEAD_DIM),
                               (SEQ * TOKEN_STRIDE, HEAD_DIM, TOKEN_STRIDE, 1), i * row)
             for i in range(3)]
    gen = torch.Generator().manual_seed(0)
    for view in views:
        view.copy_(torch.randn(view.shape, generator=gen))
    return views


def test_the_launcher_decides_from_the_sizes():
    # the strides of a packed [65536 tokens, 3, 64 heads, 256] QKV buffer (token stride
    # 49,152): position 65,535 x 49,152 = 3.2e9 > 2^31
    tokens, row = 65536, 3 * 64 * 256
    q = torch.empty(0, device="meta").as_strided((1, 64, tokens, 256),
                                                 (tokens * row, 256, row, 1))
    assert _common.element_span(q) > 2 ** 31
    assert _common.needs_int64([q, 3, None])
    small = torch.empty(0, device="meta").as_strided((1, 64, 4096, 256),
                                                     (4096 * row, 256, row, 1))
    assert not _common.needs_int64([small])  # 2.0e8 elements: int32 is exact
    flat = torch.empty(4, 64, 65536, 256, device="meta")  # pid * seq * d > 2^31
    assert _common.needs_int64([flat])
    launch = sparse.plan(_common.KernelShape(), sparse.DEFAULT)
    assert launch.args["INT64"] is False


CASES = {
    "lsh-lowrank": dict(sparse="lsh", causal=False),
    "local-lowrank-causal": dict(sparse="local", causal=True),
}


def _run(q, k, v, sparse_mode, causal):
    gen = torch.Generator().manual_seed(1)
    projections = draw_projections(32, HEAD_DIM, generator=gen, dtype=torch.float64)
    hashes = draw_hashes(1, HEAD_DIM, generator=gen) if sparse_mode == "lsh" else None
    common = dict(scale=1.0 / math.sqrt(HEAD_DIM), projections=projections.to(DEVICE),
                  hashes=hashes.to(DEVICE) if hashes is not None else None, bucket_size=16,
                  sparse=sparse_mode, causal=causal, key_padding_mask=None)
    out = kernels.scatterbrain_forward(q, k, v, **common)
    qc, kc, vc = (t.contiguous() for t in (q, k, v))
    ref = attend(qc, kc, vc, **common)
    ref64 = attend(qc.double(), kc.double(), vc.double(), **common)
    return out, ref, ref64


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_large_strides_use_64_bit_offsets(case, monkeypatch):
    q, k, v = packed_qkv()
    assert _common.needs_int64([q])
    with checked_memory():
        out, ref, ref64 = _run(q, k, v, case["sparse"], case["causal"])
    check_close("out", out, ref, ref64, torch.float16)
    if DEVICE.type == "cuda":
        return  # int32 offsets would fault the GPU; the check below is the interpreter's
    # the same launches with int32 offsets: position * stride wraps
    for module in (feature_map, lowrank, causal_lowrank, sparse):
        monkeypatch.setattr(module, "needs_int64", lambda values: False)
    with checked_memory(), pytest.raises(Exception, match="out-of-bounds"):
        _run(q, k, v, case["sparse"], case["causal"])


@pytest.mark.skipif(DEVICE.type == "cuda", reason="an interpreter check")
def test_checked_memory_accepts_in_bounds_and_names_the_address():
    q = torch.randn(1, 1, 16, 16, device=DEVICE)
    weights = kernels.scaled_projections(torch.randn(8, 16), 0.25, q.device)
    with checked_memory() as ranges:
        kernels.feature_stats(q, weights, 0.25)
    assert ranges
    launch = feature_map._stats_launch(q, weights, 0.25, feature_map.DEFAULT)
    launch.args["stride_xn"] = 17  # rows 15 x 17 + 15 > 256 elements
    with checked_memory(), pytest.raises(Exception, match="out-of-bounds load at address"):
        launch.run()
