"""Budget.prefix_consistent against what the methods do: under causal, do later tokens
move the outputs of earlier positions?"""

from __future__ import annotations

import pytest
import torch

from sbbench.core.types import Budget, budget_label
from sbbench.measure.calls import call_method, draw_randomness


@pytest.mark.parametrize("budget", [
    Budget("exact"),
    Budget("performer", n_features=16),
    Budget("lsh", bucket_size=8, n_hashes=1),
    Budget("scatterbrain", n_features=8, bucket_size=8, n_hashes=1),
    Budget("scatterbrain", n_features=0, bucket_size=8, n_hashes=1, sparse="kmeans", sink=2,
           window=6),
    Budget("scatterbrain_local", n_features=8, bucket_size=8, n_hashes=1),
    Budget("scatterbrain_centroids", n_features=4, bucket_size=8, n_hashes=1),
], ids=budget_label)
def test_prefix_consistent_says_whether_later_tokens_move_earlier_outputs(budget):
    # causal: the outputs of the first 24 of 61 positions with and without the rest; the
    # same iff the budget says it is prefix consistent (later tokens drawn far apart from
    # the first ones so that a method that looks at them is moved by them)
    gen = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(1, 2, 61, 8, generator=gen, dtype=torch.float64) for _ in range(3))
    q[:, :, 24:] *= 4.0
    k[:, :, 24:] += 3.0
    draws = draw_randomness(budget, 8, torch.Generator().manual_seed(0))
    common = dict(causal=True, backend="torch", **draws.options())
    full = call_method(budget, q, k, v, **common)[:, :, :24]
    cut = call_method(budget, q[:, :, :24], k[:, :, :24], v[:, :, :24], **common)
    assert torch.allclose(full, cut, rtol=1e-9, atol=1e-12) == budget.prefix_consistent
