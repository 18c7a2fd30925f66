"""kernels.forward_refusal (what backend="auto" and the sweep ask before running): the
launches it predicts are those a forward makes, and it refuses exactly what the launches
refuse, in their words."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from sbbench.kernels.testing import device_for_tests, kernels_for_tests

kernels = kernels_for_tests()
if not getattr(kernels, "HAVE_TRITON", False):
    pytest.skip("triton is not installed", allow_module_level=True)

from sbbench.attention.features import draw_projections  # noqa: E402,I001
from sbbench.attention.lsh import draw_hashes  # noqa: E402
from sbbench.kernels import _common, forward_refusal, limits_for  # noqa: E402
from sbbench.kernels.refusal import launched_shapes  # noqa: E402

DEVICE = device_for_tests()
BF16, FP32 = torch.bfloat16, torch.float32


def inputs(seq, head_dim, dtype, n_features, n_hashes, sparse, seed=0):
    gen = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(1, 2, seq, head_dim, generator=gen).to(DEVICE, dtype)
               for _ in range(3))
    projections = (draw_projections(n_features, head_dim, generator=gen).to(DEVICE)
                   if n_features else None)
    hashes = draw_hashes(n_hashes, head_dim, generator=gen).to(DEVICE) if sparse == "lsh" \
        else None
    return q, k, v, projections, hashes


CASES = {  # n_features, sparse, n_hashes, causal, head_dim (80: the unfused low-rank sums)
    "performer": (16, None, 1, False, 16),
    "performer-causal": (16, None, 1, True, 16),
    "lsh-2": (0, "lsh", 2, False, 16),
    "scatterbrain-fused": (16, "lsh", 1, False, 16),
    "scatterbrain-d80": (16, "lsh", 1, False, 80),
    "local-causal": (16, "local", 1, True, 16),
}


@pytest.mark.parametrize("case", list(CASES))
def test_launched_shapes_are_the_forwards_launches(case, monkeypatch):
    n_features, sparse, n_hashes, causal, head_dim = CASES[case]
    seen = []
    real = _common.KernelSpec.choose

    def record(self, config, limits, shape):
        seen.append((self.name, shape))
        return real(self, config, limits, shape)

    monkeypatch.setattr(_common.KernelSpec, "choose", record)
    q, k, v, projections, hashes = inputs(32, head_dim, FP32, n_features, n_hashes, sparse)
    kernels.scatterbrain_forward(q, k, v, scale=1 / math.sqrt(head_dim),
                                 projections=projections, hashes=hashes, bucket_size=16,
                                 sparse=sparse, causal=causal, key_padding_mask=None)
    predicted = launched_shapes(head_dim, head_dim, dtype_bytes=4, n_features=n_features,
                                bucket_size=16, n_hashes=n_hashes, sparse=sparse,
                                causal=causal)
    # feature_stats runs for q and for k: one prediction covers both
    assert [s for i, s in enumerate(seen) if i == 0 or s != seen[i - 1]] == predicted


@pytest.mark.parametrize("arch", [80, 90])
def test_refuses_what_the_launches_refuse_in_their_words(arch):
    limits = limits_for(arch)
    refused = 0
    for dtype, head_dim, bucket, n_features, sparse, causal in itertools.product(
            (BF16, FP32), (64, 128, 256), (64, 128, 256), (0, 256), ("lsh", "local", None),
            (False, True)):
        if not n_features and sparse is None:
            continue
        reason = forward_refusal(dtype, head_dim, n_features=n_features, bucket_size=bucket,
                                 sparse=sparse, causal=causal, limits=limits)
        if not kernels.supports(dtype, head_dim):
            assert reason and "head_dim <= 128" in reason
            continue
        launch_error = None
        for name, shape in launched_shapes(head_dim, head_dim, dtype_bytes=dtype.itemsize,
                                           n_features=n_features, bucket_size=bucket,
                                           n_hashes=1, sparse=sparse, causal=causal):
            try:
                kernels.SEARCH_SPACES[name].choose(None, limits, shape)
            except ValueError as err:
                launch_error = str(err)
                break
        assert reason == launch_error, (dtype, head_dim, bucket, n_features, sparse, causal)
        refused += reason is not None
    assert refused  # head_dim 256 with bucket 256 among them


def test_a_refused_forward_raises_the_same_line(monkeypatch):
    """bf16, head_dim 256, bucket 256 on sm_90: the sparse launch refuses it."""
    sm90 = limits_for(90)
    monkeypatch.setattr(kernels.sparse, "launch_limits", lambda device: sm90)
    q, k, v, _, hashes = inputs(32, 256, BF16, 0, 1, "lsh")
    reason = forward_refusal(BF16, 256, n_features=0, bucket_size=256, sparse="lsh",
                             causal=False, limits=sm90)
    assert reason.startswith("sparse: no config of the search space fits sm_90")
    with pytest.raises(ValueError) as raised:
        kernels.scatterbrain_forward(q, k, v, scale=1 / 16, projections=None, hashes=hashes,
                                     bucket_size=256, sparse="lsh", causal=False,
                                     key_padding_mask=None)
    assert str(raised.value) == reason
