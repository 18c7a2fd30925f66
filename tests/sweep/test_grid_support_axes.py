"""The sparse-part axes of a grid: bucket kind, sink and window (expansion, validation,
command-line flags, labels, and the sweep rows' key)."""

from __future__ import annotations

import pytest

from sbbench.core.errors import UserError
from sbbench.core.types import Budget, budget_label
from sbbench.sweep.grid import Grid, apply_overrides, expand, grid_from_dict, load_grid


def by_method(grid: Grid) -> dict[str, list[Budget]]:
    out: dict[str, list[Budget]] = {}
    for point in expand(grid).points:
        out.setdefault(point.budget.method, []).append(point.budget)
    return out


def test_defaults_give_each_method_its_own_kind_and_no_sink_or_window():
    budgets = by_method(Grid(name="t", seq_len=(512,), seeds=(0,)))
    assert {b.sparse for b in budgets["scatterbrain"]} == {"lsh"}
    assert {b.sparse for b in budgets["scatterbrain_local"]} == {"local"}
    assert {b.sparse for b in budgets["lsh"]} == {"lsh"}
    assert {b.sparse for b in budgets["performer"] + budgets["exact"]} == {None}
    assert all(b.sink == 0 and b.window == 0 for bs in budgets.values() for b in bs)


def test_sparse_sink_and_window_cross_the_methods_with_a_sparse_part():
    grid = grid_from_dict("t", {"seq_len": 512, "n_features": 32, "bucket_size": 32,
                                "n_hashes": 1, "sparse": ["lsh", "kmeans"], "sink": [0, 4],
                                "window": [0, 64]})
    budgets = by_method(grid)
    assert len(budgets["scatterbrain"]) == 2 * 2 * 2  # kinds x sink x window
    assert {(b.sparse, b.sink, b.window) for b in budgets["scatterbrain"]} == {
        (kind, s, w) for kind in ("lsh", "kmeans") for s in (0, 4) for w in (0, 64)}
    assert len(budgets["lsh"]) == 2 * 2 and {b.sparse for b in budgets["lsh"]} == {"lsh"}
    assert len(budgets["scatterbrain_local"]) == 2 * 2
    assert {b.sparse for b in budgets["scatterbrain_local"]} == {"local"}
    assert len(budgets["performer"]) == 1 and len(budgets["exact"]) == 1
    assert len({(b.method, b.sparse, b.sink, b.window) for bs in budgets.values()
                for b in bs}) == sum(len(bs) for bs in budgets.values())


def test_only_kmeans_leaves_lsh_its_own_kind():
    budgets = by_method(Grid(name="t", seq_len=(512,), sparse=("kmeans",),
                             methods=("lsh", "scatterbrain")))
    assert {b.sparse for b in budgets["scatterbrain"]} == {"kmeans"}
    assert {b.sparse for b in budgets["lsh"]} == {"lsh"}


def test_support_as_long_as_the_sequence_is_dropped_and_reported():
    expansion = expand(Grid(name="t", seq_len=(64, 256), bucket_size=(16,), sink=(4,),
                            window=(64,), methods=("lsh",)))
    assert [p.problem.seq_len for p in expansion.points] == [256]
    assert "sink + window >= seq_len" in expansion.dropped[0]


@pytest.mark.parametrize("axes, message", [
    ({"sparse": "kmeans", "methods": ["lsh", "performer"]},
     r"sparse kmeans: no method of the grid \(lsh, performer\) can choose it"),
    ({"sparse": "local", "methods": ["scatterbrain"]}, "sparse local: no method"),
    ({"sparse": "hash"}, "sparse has 'hash'; valid: lsh, kmeans, local"),
    ({"sink": -1}, "sink must hold ints >= 0"),
    ({"window": True}, "window must hold ints >= 0"),
    ({"n_features": 0, "methods": ["performer", "scatterbrain"]},
     r"n_features 0: performer need an n_features >= 2"),
    ({"n_features": -2}, "n_features must hold ints >= 0"),
], ids=["kmeans-without-scatterbrain", "local-kind", "unknown-kind", "negative", "bool",
        "features-0-only", "features-negative"])
def test_invalid_combinations_are_one_line_errors(axes, message):
    with pytest.raises(UserError, match=message) as info:
        expand(grid_from_dict("t", axes))
    assert "\n" not in str(info.value)


def test_flags_set_the_axes():
    grid = apply_overrides(load_grid("quick"), {"sparse": "lsh,kmeans", "sink": "0,4",
                                                 "window": "64", "methods": "scatterbrain"})
    assert grid.sparse == ("lsh", "kmeans") and grid.sink == (0, 4) and grid.window == (64,)
    with pytest.raises(UserError, match="--sink takes comma-separated integers"):
        apply_overrides(load_grid("quick"), {"sink": "four"})


def test_label_names_what_is_not_the_default():
    assert budget_label(Budget("scatterbrain", 64, 64, 1, sparse="kmeans", sink=4,
                               window=64)) == "f=64 bucket=64 hashes=1 kmeans sink=4 window=64"
    assert budget_label(Budget("scatterbrain", 64, 64, 1)) == "f=64 bucket=64 hashes=1"


def test_the_sweep_row_key_holds_the_support(tmp_path):
    from sbbench.sweep.grid import Point
    from sbbench.sweep.point import base_record
    from sbbench.sweep.runner import Settings

    settings = Settings(device="cpu")
    problem = expand(Grid(name="t", seq_len=(256,), methods=("exact",))).points[0].problem
    kmeans = base_record(Point(problem, Budget("scatterbrain", 32, 32, 1, sparse="kmeans",
                                               sink=4, window=64)), settings, "measured")
    lsh = base_record(Point(problem, Budget("scatterbrain", 32, 32, 1)), settings, "measured")
    assert (kmeans.sparse, kmeans.sink, kmeans.window) == ("kmeans", 4, 64)
    assert (lsh.sparse, lsh.sink, lsh.window) == ("lsh", 0, 0)
    assert kmeans.key() != lsh.key()
    exact = base_record(Point(problem, Budget("exact")), settings, "measured")
    assert (exact.sparse, exact.sink, exact.window) == ("", 0, 0)


def test_a_sweep_stores_kmeans_and_lsh_points_side_by_side(tmp_path):
    from sbbench.sweep.runner import Settings, run_sweep
    from sbbench.sweep.store import Store

    grid = Grid(name="tiny", seq_len=(64,), head_dim=(16,), heads=(2,), n_features=(8,),
                bucket_size=(16,), n_hashes=(1,), seeds=(0,), methods=("exact", "scatterbrain"),
                sparse=("lsh", "kmeans"), window=(0, 8))
    settings = Settings(device="cpu", seeds=(0,), warmup_ms=1.0, rep_ms=2.0, min_samples=3,
                        measure_memory=False, git_revision="test")
    points = expand(grid).points
    with Store(tmp_path / "r.sqlite") as store:
        summary = run_sweep(points, settings, store, progress=False)
        rows = {(r.sparse, r.window): r for r in store.records() if r.method == "scatterbrain"}
        again = run_sweep(points, settings, store, progress=False)  # resumes: all done
    assert summary.measured == len(points) == 1 + 4 and again.measured == 0
    assert set(rows) == {("lsh", 0), ("lsh", 8), ("kmeans", 0), ("kmeans", 8)}
    assert all(r.status == "ok" and r.error_mean > 0 for r in rows.values())
    # the supports differ, so do the estimates
    assert len({round(r.error_mean, 12) for r in rows.values()}) == 4


def test_the_features_flag_takes_0_like_the_grid(capsys):
    from sbbench.cli.main import main

    assert main(["sweep", "--gpu", "cpu", "--grid", "supports", "--features", "0",
                 "--methods", "exact,lsh,scatterbrain", "--dry-run"]) == 0
    assert "f=0 bucket=32" in capsys.readouterr().out
    assert main(["sweep", "--gpu", "cpu", "--grid", "supports", "--features", "0",
                 "--dry-run"]) == 2  # its scatterbrain_centroids need centroids
    assert "scatterbrain_centroids need an n_features >= 1" in capsys.readouterr().err
    assert main(["sweep", "--gpu", "cpu", "--grid", "quick", "--features", "0",
                 "--dry-run"]) == 2  # performer needs features
    assert "performer, scatterbrain_local need an n_features >= 2" in capsys.readouterr().err


def test_n_features_0_is_scatterbrain_without_low_rank_and_skipped_elsewhere():
    grid = grid_from_dict("t", {"seq_len": 512, "n_features": [0, 32], "bucket_size": 32,
                                "methods": ["performer", "scatterbrain", "scatterbrain_local"],
                                "sparse": "kmeans", "sink": 4, "window": 28})
    budgets = by_method(grid)
    assert [b.n_features for b in budgets["performer"]] == [32]
    assert [b.n_features for b in budgets["scatterbrain_local"]] == [32]
    assert sorted(b.n_features for b in budgets["scatterbrain"]) == [0, 32]


def test_a_sweep_measures_a_sparse_only_scatterbrain(tmp_path):
    from sbbench.sweep.runner import Settings, run_sweep
    from sbbench.sweep.store import Store

    grid = Grid(name="tiny", seq_len=(64,), head_dim=(16,), heads=(2,), n_features=(0, 8),
                bucket_size=(16,), n_hashes=(1,), seeds=(0,), methods=("exact", "scatterbrain"),
                sparse=("kmeans",), sink=(2,), window=(8,))
    settings = Settings(device="cpu", seeds=(0,), warmup_ms=1.0, rep_ms=2.0, min_samples=3,
                        measure_memory=False, git_revision="test")
    with Store(tmp_path / "r.sqlite") as store:
        run_sweep(expand(grid).points, settings, store, progress=False)
        rows = {r.n_features: r for r in store.records() if r.method == "scatterbrain"}
    assert set(rows) == {0, 8} and all(r.status == "ok" for r in rows.values())
    assert 0 < rows[0].error_mean < 1 and rows[0].error_mean != rows[8].error_mean
