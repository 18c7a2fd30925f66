"""Kernel checks that need a CUDA GPU (skipped without one): realistic sizes against the
torch reference, a sample of every kernel's search space, and the static compile's
resource numbers against the compiled kernel's. scripts/device_check.sh runs these."""

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

from sbbench.kernels import KernelShape, expand_space, static  # noqa: E402
from sbbench.kernels.testing import check_close, nan_filled_outputs  # noqa: E402

from sbbench.attention.core import attend  # noqa: E402
from sbbench.attention.features import draw_projections  # noqa: E402
from sbbench.attention.lsh import draw_hashes  # noqa: E402

SEQ = 2048


def problem(head_dim, *, seq=SEQ, heads=4, n_features=256, n_hashes=1, mask=False, seed=0,
            dtype=torch.bfloat16):
    gen = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(1, heads, seq, head_dim, generator=gen) for _ in range(3))
    projections = draw_projections(n_features, head_dim, generator=gen, dtype=torch.float64)
    hashes = draw_hashes(n_hashes, head_dim, generator=gen)
    keep = None
    if mask:
        keep = torch.rand(1, seq, generator=gen) > 0.2
        keep[:, 0] = True
        keep = keep.cuda()
    q, k, v = (t.to("cuda", dtype) for t in (q, k, v))
    return q, k, v, projections.cuda(), hashes.to("cuda"), keep


CASES = {
    "d64-lsh1": dict(head_dim=64, sparse="lsh"),
    "d128-lsh2-causal-mask": dict(head_dim=128, sparse="lsh", n_hashes=2, causal=True,
                                  mask=True),
    "d64-performer-causal": dict(head_dim=64, sparse=None, causal=True),
    "d128-performer-mask": dict(head_dim=128, sparse=None, mask=True),
    "d64-local-lowrank-fp16": dict(head_dim=64, sparse="local", dtype=torch.float16),
    "d64-lsh1-fp32": dict(head_dim=64, sparse="lsh", dtype=torch.float32),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_gpu_forward_matches_the_reference(case):
    case = dict(case)
    causal, sparse = case.pop("causal", False), case.pop("sparse")
    dtype = case.get("dtype", torch.bfloat16)
    q, k, v, projections, hashes, keep = problem(**case)
    common = dict(scale=1.0 / math.sqrt(q.shape[-1]), projections=projections,
                  hashes=hashes if sparse == "lsh" else None,
                  bucket_size=64 if sparse else None, sparse=sparse, causal=causal,
                  key_padding_mask=keep)
    with nan_filled_outputs():
        out = kernels.scatterbrain_forward(q, k, v, **common)
    ref = attend(q, k, v, **common)
    ref64 = attend(q.double(), k.double(), v.double(), **common)
    check_close("out", out, ref, ref64, dtype)


def sampled_configs(spec, limits, shape, count=2):
    """Default plus evenly spaced kept configs (the whole space takes minutes to compile)."""
    kept = spec.configs(limits, shape)
    picks = [spec.default] + [kept[i * (len(kept) - 1) // max(1, count - 1)]
                              for i in range(count)]
    unique = []
    for c in picks:
        if c not in unique:
            unique.append(c)
    return unique


@pytest.mark.parametrize("kernel", ["feature_stats", "lowrank_state", "lowrank_apply",
                                    "lowrank_causal", "sparse"])
def test_gpu_sampled_configs_are_correct(kernel):
    major, minor = torch.cuda.get_device_capability()
    limits = kernels.limits_for(10 * major + minor)
    shape = KernelShape(head_dim=64, head_dim_v=64, n_features=256, bucket_size=64)
    spec = kernels.SEARCH_SPACES[kernel]
    causal = kernel == "lowrank_causal"
    sparse = None if kernel in ("lowrank_apply", "lowrank_causal") else "lsh"
    q, k, v, projections, hashes, _ = problem(64, seq=1024, heads=2)
    common = dict(scale=0.125, projections=projections, hashes=hashes,
                  bucket_size=64 if sparse else None, sparse=sparse, causal=causal,
                  key_padding_mask=None)
    ref = attend(q, k, v, **common)
    ref64 = attend(q.double(), k.double(), v.double(), **common)
    for config in sampled_configs(spec, limits, shape):
        with nan_filled_outputs():
            out = kernels.scatterbrain_forward(q, k, v, configs={kernel: config}, **common)
        check_close(f"{kernel} {config}", out, ref, ref64, torch.bfloat16)
    assert len(expand_space(spec.space)) >= len(spec.configs(limits, shape))


def test_gpu_static_compile_agrees_with_the_jit():
    """Registers / shared memory from the ahead-of-time compile equal the JIT kernel's for
    the same config on this GPU's architecture."""
    from sbbench.kernels import sparse

    major, minor = torch.cuda.get_device_capability()
    shape = KernelShape(head_dim=64, head_dim_v=64, n_features=256, bucket_size=64)
    usage = static.compile_config("sparse", sparse.DEFAULT, 10 * major + minor, shape)
    assert usage.ok, usage.reason
    launch = sparse.plan(shape, sparse.DEFAULT)
    q, k, v, projections, hashes, _ = problem(64, seq=4096, heads=1)
    # the same launch on real tensors: one round, low-rank from the state, like plan()
    kernels.scatterbrain_forward(q, k, v, scale=0.125, projections=projections,
                                 hashes=hashes, bucket_size=64, sparse="lsh", causal=False,
                                 key_padding_mask=None)
    compiled = [c for c in sparse._bucket_kernel.device_caches[0][0].values()
                if c.metadata.num_warps == launch.num_warps]
    assert compiled, "the JIT cache holds no sparse kernel"
    assert any(c.n_regs == usage.registers for c in compiled), \
        (usage, [(c.n_regs, c.metadata.shared) for c in compiled])
