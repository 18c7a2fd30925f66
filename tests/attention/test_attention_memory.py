"""Memory grows linearly with seq: the approximate methods never build a seq x seq tensor
unless asked for the dense weights.

A TorchDispatchMode sees every aten op and records the size of the storage behind each
output tensor (a view or an expand of a small tensor is not an allocation; a fresh
[seq, seq] result is). Forward and backward are both recorded.
"""

from __future__ import annotations

import pytest
import torch
from conftest import APPROX_METHODS, HASHED_METHODS, attention, qkv
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

pytestmark = pytest.mark.usefixtures("single_thread")


class LargestAllocation(TorchDispatchMode):
    """Records the largest storage (in elements) behind any op's output."""

    def __init__(self) -> None:
        super().__init__()
        self.elements = 0
        self.op = None

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for leaf in tree_leaves(out):
            if isinstance(leaf, torch.Tensor):
                elements = leaf.untyped_storage().nbytes() // leaf.element_size()
                if elements > self.elements:
                    self.elements, self.op = elements, str(func)
        return out


def largest_allocation(method: str, seq: int, *, causal: bool, masked: bool,
                       backward: bool = False, **kwargs) -> tuple[int, str]:
    q, k, v = qkv(1, 1, seq, 16, dtype=torch.float32, seed=41, requires_grad=backward)
    mask = None
    if masked:
        mask = torch.ones(1, seq, dtype=torch.bool)
        mask[0, -seq // 5:] = False
    with LargestAllocation() as recorder:
        out = attention(method, q, k, v, n_features=32, bucket_size=64,
                        n_hashes=2 if method in HASHED_METHODS else 1,
                        causal=causal, key_padding_mask=mask, **kwargs)
        if backward:
            out.square().sum().backward()
    return recorder.elements, recorder.op


@pytest.mark.parametrize("masked", [False, True], ids=["nomask", "mask"])
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("method", APPROX_METHODS)
def test_no_seq_by_seq_tensor(method, causal, masked):
    """At seq 2048 (b = h = 1) no tensor reaches seq^2 elements, and the largest one at
    most doubles (linear growth) from seq 1024 to 2048."""
    seq = 2048
    largest, op = largest_allocation(method, seq, causal=causal, masked=masked)
    assert largest < seq * seq, f"{op} allocated {largest} elements >= seq^2 = {seq * seq}"
    half, _ = largest_allocation(method, seq // 2, causal=causal, masked=masked)
    assert largest <= 2.5 * half, f"largest tensor grew from {half} to {largest} ({op})"


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("method", ["scatterbrain", "performer", "lsh",
                                    "scatterbrain_kmeans", "sink_window"])
def test_no_seq_by_seq_tensor_in_backward(method, causal):
    seq = 2048
    largest, op = largest_allocation(method, seq, causal=causal, masked=True, backward=True)
    assert largest < seq * seq, f"{op} allocated {largest} elements >= seq^2 = {seq * seq}"


@pytest.mark.parametrize("method", ["exact", "scatterbrain"])
def test_recorder_sees_dense_weights(method):
    """Control: the dense path (return_weights) is caught, so the tests above can fail."""
    seq = 512
    largest, _ = largest_allocation(method, seq, causal=False, masked=False,
                                    return_weights=True)
    assert largest >= seq * seq


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_two_level_kmeans_has_no_seq_by_seq_tensor(causal):
    """From 64 clusters on k-means takes two levels (groups, then clusters with each
    group's candidate keys): at seq 8192 (128 clusters of 64) still no seq^2 tensor, and
    linear growth from 4096."""
    from sbbench.attention.supports import TWO_LEVEL_CLUSTERS, _groups

    seq = 8192
    assert seq // 64 >= TWO_LEVEL_CLUSTERS and _groups(seq // 128) > 1
    largest, op = largest_allocation("scatterbrain_kmeans", seq, causal=causal, masked=True)
    assert largest < seq * seq, f"{op} allocated {largest} elements >= seq^2 = {seq * seq}"
    half, _ = largest_allocation("scatterbrain_kmeans", seq // 2, causal=causal, masked=True)
    assert largest <= 2.5 * half, f"largest tensor grew from {half} to {largest} ({op})"
