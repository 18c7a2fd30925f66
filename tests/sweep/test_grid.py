"""Grids: shipped YAML files, validation messages, command-line overrides, expansion."""

from __future__ import annotations

import pytest

from sbbench.core.errors import UserError
from sbbench.core.types import Budget, Problem
from sbbench.sweep.grid import (
    Grid,
    Point,
    apply_overrides,
    expand,
    grid_from_dict,
    load_grid,
    shipped_grids,
)


def test_shipped_grids_load_and_expand():
    assert {"quick", "full"} <= set(shipped_grids())
    quick = load_grid("quick")
    points = expand(quick).points
    assert points, "quick grid has points"
    assert max(p.problem.seq_len for p in points) <= 2048
    assert {p.backend for p in points} == {"torch"}
    assert len(expand(load_grid("full")).points) > len(points)


def test_expansion_crosses_each_method_with_its_own_axes():
    grid = Grid(name="t", seq_len=(512,), n_features=(32, 64), bucket_size=(16, 32),
                n_hashes=(1, 2), backends=("torch", "triton"), seeds=(0,))
    points = expand(grid).points
    by_method: dict[str, list[Point]] = {}
    for point in points:
        by_method.setdefault(point.budget.method, []).append(point)
    assert len(by_method["exact"]) == 1 and by_method["exact"][0].backend == "torch"
    assert len(by_method["performer"]) == 2 * 2          # features x backends
    assert len(by_method["lsh"]) == 2 * 2 * 2            # bucket x hashes x backends
    assert len(by_method["scatterbrain"]) == 2 * 2 * 2 * 2
    assert len(by_method["scatterbrain_local"]) == 2 * 2 * 2  # no hash axis
    assert all(p.budget.n_hashes == 1 for p in by_method["scatterbrain_local"])
    # exact comes first within a shape, so its time is known for the speedup column
    assert points[0].budget.method == "exact"


def test_bucket_not_smaller_than_sequence_is_dropped_and_reported():
    grid = Grid(name="t", seq_len=(64, 256), bucket_size=(128,), n_features=(16,),
                methods=("lsh",))
    expansion = expand(grid)
    assert [p.problem.seq_len for p in expansion.points] == [256]
    assert "bucket_size >= seq_len" in expansion.dropped[0]


def test_key_centroids_not_fewer_than_keys_are_dropped_and_reported():
    # C >= seq: each key its own cluster (the call would use min(C, seq) under a label
    # that counts C); Performer's features are not bounded by the keys and stay
    grid = Grid(name="t", seq_len=(64, 256), bucket_size=(16,), n_features=(128,),
                methods=("performer", "scatterbrain_centroids"), seeds=(0,))
    expansion = expand(grid)
    kept = [(p.budget.method, p.problem.seq_len) for p in expansion.points]
    assert ("scatterbrain_centroids", 256) in kept
    assert ("scatterbrain_centroids", 64) not in kept
    assert ("performer", 64) in kept and ("performer", 256) in kept
    assert "key centroids >= seq_len" in expansion.dropped[0]


def test_overrides_replace_axes():
    grid = apply_overrides(load_grid("quick"), {
        "seq-len": "1024,4096", "head-dim": "64", "features": "64,128",
        "bucket-size": "32,64", "hashes": "1,2", "methods": "exact,scatterbrain",
        "seeds": "3", "causal": "true,false", "batch": None, "inputs": "clustered",
    })
    assert grid.seq_len == (1024, 4096) and grid.input_kind == "clustered"
    assert grid.n_features == (64, 128) and grid.bucket_size == (32, 64)
    assert grid.n_hashes == (1, 2) and grid.methods == ("exact", "scatterbrain")
    assert grid.seeds == (0, 1, 2) and grid.causal == (True, False)
    assert grid.batch == load_grid("quick").batch
    points = expand(grid).points
    assert {p.budget.method for p in points} == {"exact", "scatterbrain"}
    assert len(points) == 2 * 2 * (1 + 2 * 2 * 2)  # seq x causal x (exact + f x b x h)


@pytest.mark.parametrize("overrides, message", [
    ({"seq-len": "1k"}, "--seq-len takes comma-separated integers"),
    ({"features": "63"}, "features must be even"),
    ({"methods": "exact,flash"}, "'flash'"),
    ({"causal": "maybe"}, "--causal takes true/false"),
    ({"dtype": "int8"}, "valid: float32"),
    ({"seeds": "1,2"}, "number of seeds"),
    ({"hashes": "0"}, "ints >= 1"),
], ids=["not-int", "odd-features", "unknown-method", "bad-bool", "bad-dtype", "seed-list",
        "zero"])
def test_bad_override_is_a_user_error(overrides, message):
    with pytest.raises(UserError, match=message):
        apply_overrides(load_grid("quick"), overrides)


def test_unknown_grid_lists_shipped_ones():
    with pytest.raises(UserError) as info:
        load_grid("nosuchgrid")
    assert "quick" in str(info.value) and "full" in str(info.value)


def test_bad_yaml_key_is_named(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("seq_len: [256]\nseq_lens: [512]\n")
    with pytest.raises(UserError, match="unknown key 'seq_lens'"):
        load_grid(str(path))
    path.write_text("seq_len: [256, oops]\n")
    with pytest.raises(UserError, match="seq_len must hold ints"):
        load_grid(str(path))
    path.write_text("seq_len: [256\n")
    with pytest.raises(UserError, match="not valid YAML"):
        load_grid(str(path))
    with pytest.raises(UserError, match="does not exist"):
        load_grid(str(tmp_path / "missing.yaml"))


def test_grid_file_by_path(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text("seq_len: 128\nmethods: [exact, performer]\nn_features: [8]\nseeds: [3, 5]\n")
    grid = load_grid(str(path))
    assert grid.name == "tiny" and grid.seq_len == (128,) and grid.seeds == (3, 5)
    assert len(expand(grid).points) == 2


def test_point_json_round_trip():
    point = Point(Problem(seq_len=100, head_dim=60, batch=2, heads=3, dtype="float16",
                          causal=True), Budget("scatterbrain", 8, 16, 2), "triton", '{"x": 1}')
    assert Point.from_json(point.to_json()) == point
    assert "scatterbrain/triton" in point.label()


def test_grid_from_dict_rejects_non_mapping():
    with pytest.raises(UserError, match="expected a mapping"):
        grid_from_dict("x", [1, 2])


def test_old_keys_still_work_with_a_note(tmp_path, capsys):
    path = tmp_path / "old.yaml"
    path.write_text("seq_len: 128\nmethods: [scatterbrain]\nfeatures: [8]\nbucket_size: [16]\n"
                    "hashes: [2]\ninputs: gaussian\n")
    grid = load_grid(str(path))
    assert grid.n_features == (8,) and grid.n_hashes == (2,) and grid.input_kind == "gaussian"
    notes = capsys.readouterr().err.splitlines()
    assert len(notes) == 3 and "'features' is now 'n_features'" in notes[0]
    assert [p.budget for p in expand(grid).points] == [Budget("scatterbrain", 8, 16, 2)]
    path.write_text("features: [8]\nn_features: [16]\n")
    with pytest.raises(UserError, match="keep only 'n_features'"):
        load_grid(str(path))


def test_shipped_grids_use_the_new_keys(capsys):
    for name in shipped_grids():
        load_grid(name)
    assert capsys.readouterr().err == ""


def test_a_directory_is_not_a_grid(tmp_path):
    with pytest.raises(UserError, match="is a directory") as info:
        load_grid(str(tmp_path))
    assert "does not exist" not in str(info.value)


def test_odd_features_only_for_key_centroids():
    with pytest.raises(UserError, match="only scatterbrain_centroids takes odd counts"):
        apply_overrides(load_grid("supports"), {"features": "3"})
    grid = apply_overrides(load_grid("supports"), {"features": "3",
                                                   "methods": "exact,scatterbrain_centroids"})
    budgets = {p.budget for p in expand(grid).points if p.budget.method != "exact"}
    assert budgets and {b.n_features for b in budgets} == {3}
