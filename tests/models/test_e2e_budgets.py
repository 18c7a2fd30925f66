"""The budgets of ``sbbench e2e``: one memory per query split per method, sink and window
taken out of the sparse methods' share (no model needed)."""

from __future__ import annotations

import pytest

from sbbench.core.errors import UserError
from sbbench.models.e2e import budgets_at


def test_every_budget_spends_the_memory_it_is_given():
    budgets = budgets_at([256], ("performer", "lsh", "scatterbrain", "scatterbrain_local"),
                         sparse="kmeans", sink=4, window=124)
    assert [b.memory_per_query for b in budgets] == [256] * 4
    by = {b.method: b for b in budgets}
    assert (by["scatterbrain"].sparse, by["scatterbrain"].sink, by["scatterbrain"].window) == (
        "kmeans", 4, 124)
    assert by["lsh"].sparse == "lsh" and by["lsh"].window == 124  # lsh has no kmeans kind
    assert by["scatterbrain_local"].sparse == "local"
    assert by["performer"].sink == 0 and by["performer"].n_features == 256


def test_key_centroids_split_like_scatterbrain_and_take_its_kinds():
    (budget,) = budgets_at([99], ("scatterbrain_centroids",), sparse="kmeans", sink=4,
                           window=24)
    assert budget.memory_per_query == 99 and budget.sparse == "kmeans"
    assert (budget.n_features, budget.bucket_size) == (36, 35)  # any count: no even rounding


def test_a_budget_too_small_for_its_sink_and_window_is_a_user_error():
    with pytest.raises(UserError, match="budget 64 for lsh"):
        budgets_at([64], ("lsh",), sink=4, window=124)
