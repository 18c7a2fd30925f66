"""Gradients: torch.autograd.gradcheck in float64 on small cases, and the one-bucket case
against the gradient of exact attention.

The stabilisers (row and global maxima, lambda) are taken without gradient because they
cancel; the hash order is piecewise constant. gradcheck checks that both are right.
"""

from __future__ import annotations

import pytest
import torch
from conftest import attention, qkv

pytestmark = pytest.mark.usefixtures("single_thread")  # many tiny calls (see conftest)

GRAD_CASES = [
    pytest.param("scatterbrain", 2, False, False, True, id="scatterbrain-2hashes"),
    pytest.param("scatterbrain", 2, True, False, True, id="scatterbrain-2hashes-causal"),
    pytest.param("scatterbrain", 2, True, False, False, id="scatterbrain-2hashes-causal-fullmode"),
    pytest.param("scatterbrain", 3, True, True, True, id="scatterbrain-3hashes-causal-mask"),
    pytest.param("scatterbrain_local", 1, False, True, True, id="scatterbrain_local-mask"),
    pytest.param("scatterbrain_local", 1, True, False, True, id="scatterbrain_local-causal"),
    pytest.param("performer", 1, False, False, True, id="performer"),
    pytest.param("performer", 1, True, True, True, id="performer-causal-mask"),
    pytest.param("lsh", 2, False, False, True, id="lsh-2hashes"),
    pytest.param("lsh", 2, True, False, True, id="lsh-2hashes-causal"),
    pytest.param("lsh", 1, False, True, True, id="lsh-mask"),
    pytest.param("scatterbrain_kmeans", 2, False, False, True, id="kmeans-2rounds"),
    pytest.param("scatterbrain_kmeans", 2, True, True, True, id="kmeans-2rounds-causal-mask"),
    pytest.param("sink_window", 1, True, True, True, id="sink_window-causal-mask"),
    pytest.param("sink_window", 1, False, False, True, id="sink_window"),
]


@pytest.mark.parametrize("method, n_hashes, causal, masked, fast_mode", GRAD_CASES)
def test_gradcheck(method, n_hashes, causal, masked, fast_mode):
    """Analytical gradients of q, k, v match central finite differences (seq 10, bucket 4:
    three buckets, the last one padded). gradcheck's fast mode compares u^T J w for random
    u, w (a wrong Jacobian fails it with probability 1) at a fraction of the cost of the
    full Jacobian, which one case still checks."""
    heads = 2 if fast_mode else 1  # the full Jacobian costs one call per input element
    q, k, v = qkv(1, heads, 10, 4, head_dim_v=3, seed=31, scale=0.8, requires_grad=True)
    mask = None
    if masked:
        mask = torch.ones(1, 10, dtype=torch.bool)
        mask[0, 7:] = False
        mask[0, 2] = False

    def fn(q, k, v):
        return attention(method, q, k, v, n_features=8, bucket_size=4, n_hashes=n_hashes,
                         seed=31, causal=causal, key_padding_mask=mask)

    assert torch.autograd.gradcheck(fn, (q, k, v), eps=1e-6, atol=1e-6, rtol=1e-5,
                                    fast_mode=fast_mode)


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("method", ["lsh", "scatterbrain", "scatterbrain_local",
                                    "scatterbrain_kmeans"])
def test_one_bucket_gradient_equals_exact_gradient(method, causal):
    """One bucket holds every key (for k-means plus a sink and a window that pick some
    keys again: counted once, the estimate is still exact)."""
    q, k, v = qkv(2, 2, 13, 6, seed=32, requires_grad=True)
    grad_out = qkv(2, 2, 13, 6, seed=33)[0]
    out = attention(method, q, k, v, n_features=4, bucket_size=16, causal=causal)
    grads = torch.autograd.grad(out, (q, k, v), grad_out)
    exact = attention("exact", q, k, v, causal=causal)
    exact_grads = torch.autograd.grad(exact, (q, k, v), grad_out)
    for name, got, want in zip("qkv", grads, exact_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-8, atol=1e-10, msg=f"grad of {name}")
