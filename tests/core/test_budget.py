"""Budget: the sparse kind, sink and window fields, their validation and the label."""

from __future__ import annotations

import pytest

from sbbench.core.types import Budget, budget_label


def test_sparse_defaults_to_the_method_own_kind():
    assert Budget("scatterbrain", 64, 64, 1).sparse == "lsh"
    assert Budget("lsh", bucket_size=32, n_hashes=2).sparse == "lsh"
    assert Budget("scatterbrain_local", 64, 64, 1).sparse == "local"
    assert Budget("performer", 64).sparse is None and Budget("exact").sparse is None


def test_memory_per_query_counts_sink_and_window():
    budget = Budget("scatterbrain", 32, 32, 2, sparse="kmeans", sink=4, window=28)
    assert budget.memory_per_query == 32 + 64 + 4 + 28
    assert Budget("scatterbrain", 64, 64, 1).memory_per_query == 128


def test_round_trip_through_as_dict_and_old_dicts():
    budget = Budget("scatterbrain", 32, 32, 2, sparse="kmeans", sink=4, window=8)
    assert Budget(**budget.as_dict()) == budget
    old = {"method": "scatterbrain", "n_features": 64, "bucket_size": 64, "n_hashes": 1}
    assert Budget(**old) == Budget("scatterbrain", 64, 64, 1, sparse="lsh")


@pytest.mark.parametrize("kwargs, message", [
    (dict(method="scatterbrain", n_features=8, bucket_size=8, n_hashes=1, sparse="local"),
     r"sparse of scatterbrain must be lsh or kmeans"),
    (dict(method="lsh", bucket_size=8, n_hashes=1, sparse="kmeans"), r"must be lsh"),
    (dict(method="performer", n_features=8, sparse="lsh"), r"must be None"),
    (dict(method="performer", n_features=8, window=4), r"window must be 0"),
    (dict(method="lsh", bucket_size=8, n_hashes=1, sink=-1), r"sink must be an int >= 0"),
    (dict(method="lsh", bucket_size=8, n_hashes=1, window=True), r"window must be an int"),
])
def test_bad_fields_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Budget(**kwargs)


def test_label_shows_new_fields_only_when_set():
    assert budget_label(Budget("scatterbrain", 64, 64, 1)) == "f=64 bucket=64 hashes=1"
    label = budget_label(Budget("scatterbrain", 32, 32, 2, sparse="kmeans", sink=4,
                                window=28))
    assert label == "f=32 bucket=32 hashes=2 kmeans sink=4 window=28"
    row = {"method": "lsh", "n_features": 0, "bucket_size": 8, "n_hashes": 1,
           "sink": float("nan")}  # a table without the value
    assert budget_label(row) == "bucket=8 hashes=1"


def test_scatterbrain_may_leave_out_its_low_rank_part():
    sparse_only = Budget("scatterbrain", 0, 64, 1, sparse="kmeans", sink=4, window=60)
    assert not sparse_only.has_lowrank and sparse_only.has_sparse
    assert sparse_only.memory_per_query == 128
    assert budget_label(sparse_only) == "f=0 bucket=64 hashes=1 kmeans sink=4 window=60"
    assert Budget("scatterbrain", 64, 64, 1).has_lowrank
    assert Budget("performer", 64).has_lowrank
    for method, extra in (("performer", {}), ("scatterbrain_local", dict(bucket_size=8,
                                                                        n_hashes=1))):
        with pytest.raises(ValueError, match=f"{method} needs an even n_features >= 2, "):
            Budget(method, 0, **extra)
    with pytest.raises(ValueError, match=r"n_features >= 2 \(or 0: no low-rank part\)"):
        Budget("scatterbrain", 3, 8, 1)


def test_costmodel_counts_no_low_rank_work_without_features():
    from sbbench.core.types import Problem
    from sbbench.measure import costmodel

    problem = Problem(seq_len=1024, head_dim=64, batch=1, heads=2)
    sparse_only = Budget("scatterbrain", 0, 64, 1, sparse="kmeans", sink=4, window=60)
    with_lowrank = Budget("scatterbrain", 32, 64, 1, sparse="kmeans", sink=4, window=60)
    flops = costmodel.flop_terms(problem, sparse_only)
    assert not [t for t in flops if "lowrank" in t or "features" in t]
    assert "bucket_lowrank" in costmodel.flop_terms(problem, with_lowrank)
    moved = costmodel.byte_terms(problem, sparse_only)
    assert "state_write" not in moved and "projections" not in moved
    assert costmodel.bytes_moved(problem, sparse_only) < costmodel.bytes_moved(problem,
                                                                                with_lowrank)

