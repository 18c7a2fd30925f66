"""The GPU checks to run first (scripts/device_check.sh runs this module before anything
else): what the CPU could only emulate or reason about.

- tf32: the products the interpreter emulates (testing.emulate_tf32) rounded by real
  tensor cores: the cancelling Scatterbrain cases at realistic sizes, and the Performer
  intermediates against their derived tf32 bound;
- 64-bit offsets: a packed [65,536 tokens, 3, 64 heads, 256] QKV buffer (6.4 GB in
  bf16), two of its heads attended: position x token stride reaches 3.2e9;
- the largest shapes: head_dim 256 (bucket 64) and bucket 256 (head_dim 64: query
  blocks), 2 rounds, causal, padding mask; head_dim 256 with bucket 256 refused in one
  line; bucket 1 at 65,536 tokens (65,536 tiles: the folded grid).
"""

from __future__ import annotations

import math

import pytest
import torch

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

from sbbench.kernels.testing import kernels_for_tests  # noqa: E402

kernels = kernels_for_tests()
if not getattr(kernels, "HAVE_TRITON", False):
    pytest.skip("triton is not installed", allow_module_level=True)

from sbbench.kernels import _common  # noqa: E402
from sbbench.kernels.testing import check_close, nan_filled_outputs  # noqa: E402

from sbbench.attention.core import attend  # noqa: E402
from sbbench.attention.features import draw_projections  # noqa: E402
from sbbench.attention.lsh import draw_hashes  # noqa: E402

FP16, BF16 = torch.float16, torch.bfloat16


def forward_vs_reference(q, k, v, *, n_features, sparse, bucket_size, n_hashes=1,
                         causal=False, mask=False, seed=0, configs=None):
    gen = torch.Generator().manual_seed(seed)
    seq, head_dim = q.shape[2], q.shape[3]
    projections = (draw_projections(n_features, head_dim, generator=gen,
                                    dtype=torch.float64).cuda() if n_features else None)
    hashes = draw_hashes(n_hashes, head_dim, generator=gen).to("cuda") \
        if sparse == "lsh" else None
    keep = None
    if mask:
        keep = torch.rand(q.shape[0], seq, generator=gen) > 0.2
        keep[:, 0] = True
        keep = keep.cuda()
    common = dict(scale=1.0 / math.sqrt(head_dim), projections=projections, hashes=hashes,
                  bucket_size=bucket_size, sparse=sparse, causal=causal,
                  key_padding_mask=keep)
    with nan_filled_outputs():
        out = kernels.scatterbrain_forward(q, k, v, configs=configs, **common)
    qc, kc, vc = (t.contiguous() for t in (q, k, v))
    ref = attend(qc, kc, vc, **common)
    ref64 = attend(qc.double(), kc.double(), vc.double(), **common)
    return check_close("out", out, ref, ref64, q.dtype)


def inputs(seq, head_dim, dtype, heads=4, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(1, heads, seq, head_dim, generator=gen).to("cuda", dtype)
            for _ in range(3)]


TF32_CASES = {
    "fp16-d48-m49-b24-lsh2-mask": dict(dtype=FP16, head_dim=48, n_features=98,
                                       bucket_size=24, sparse="lsh", n_hashes=2, mask=True),
    "fp16-d64-local-lowrank": dict(dtype=FP16, head_dim=64, n_features=256, bucket_size=64,
                                   sparse="local"),
    "bf16-d128-lsh2-causal-mask": dict(dtype=BF16, head_dim=128, n_features=256,
                                       bucket_size=64, sparse="lsh", n_hashes=2,
                                       causal=True, mask=True),
    "fp16-d128-performer-causal": dict(dtype=FP16, head_dim=128, n_features=256,
                                       bucket_size=None, sparse=None, causal=True),
}


@pytest.mark.parametrize("case", TF32_CASES.values(), ids=TF32_CASES.keys())
def test_risk_tf32_tolerances(case):
    case = dict(case)
    dtype, head_dim = case.pop("dtype"), case.pop("head_dim")
    q, k, v = inputs(2048, head_dim, dtype)
    forward_vs_reference(q, k, v, **case)


def test_risk_large_offsets_packed_qkv_65536_tokens():
    tokens, heads, head_dim = 65536, 64, 256
    packed = torch.empty(tokens, 3, heads, head_dim, dtype=BF16, device="cuda")
    gen = torch.Generator(device="cuda").manual_seed(0)
    for i in range(3):  # only the two attended heads need values
        packed[:, i, :2].normal_(generator=gen)
    q, k, v = (packed[:, i, :2].unsqueeze(0).transpose(1, 2) for i in range(3))
    assert q.stride(2) == 3 * heads * head_dim and _common.needs_int64([q])
    forward_vs_reference(q, k, v, n_features=64, sparse="local", bucket_size=64, causal=True)
    del packed


@pytest.mark.parametrize("head_dim,bucket", [(256, 64), (64, 256)], ids=["d256-b64",
                                                                        "d64-b256"])
def test_risk_largest_head_dim_and_bucket(head_dim, bucket):
    """The largest shapes keep() leaves a config for, 2 rounds, causal, padding mask."""
    q, k, v = inputs(4096, head_dim, BF16, heads=2)
    forward_vs_reference(q, k, v, n_features=256, sparse="lsh", bucket_size=bucket,
                         n_hashes=2, causal=True, mask=True)


def test_risk_head_dim_256_with_bucket_256_is_refused_in_one_line():
    """keep() leaves no sparse config there (the float32 [256, 256] operands of the
    residual product alone need 256 KiB of shared memory): one line, no launch."""
    q, k, v = inputs(512, 256, BF16, heads=1)
    with pytest.raises(ValueError, match="no config of the search space") as err:
        forward_vs_reference(q, k, v, n_features=256, sparse="local", bucket_size=256)
    assert "\n" not in str(err.value)


def test_risk_bucket_1_at_65536_tokens_folds_the_grid():
    q, k, v = inputs(65536, 32, BF16, heads=1)
    forward_vs_reference(q, k, v, n_features=0, sparse="local", bucket_size=1)
