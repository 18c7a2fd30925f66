"""scatterbrain_centroids (= scatterbrain_attention(lowrank="centroids")) as a method of
the whole tool: Budget, grid expansion, the call path, the triton refusal, a tiny CPU
sweep that select and the report read."""

from __future__ import annotations

import pytest
import torch

from sbbench.attention import scatterbrain_attention
from sbbench.core.errors import UserError
from sbbench.core.types import Budget, Problem
from sbbench.measure.calls import call_method, draw_randomness, make_call, split_budget
from sbbench.sweep import guards
from sbbench.sweep.grid import Grid, Point, expand, grid_from_dict

METHOD = "scatterbrain_centroids"


def test_budget_takes_any_count_of_centroids_but_not_zero():
    budget = Budget(METHOD, n_features=3, bucket_size=16, n_hashes=2)
    assert budget.sparse == "lsh" and budget.lowrank == "centroids" and budget.has_lowrank
    assert budget.memory_per_query == 3 + 32
    assert Budget(METHOD, 5, 16, 1, sparse="kmeans", sink=2, window=4).sparse == "kmeans"
    assert Budget("scatterbrain", 4, 16, 1).lowrank == "performer"
    with pytest.raises(ValueError, match=f"{METHOD} needs n_features >= 1 key centroids"):
        Budget(METHOD, n_features=0, bucket_size=16, n_hashes=1)
    with pytest.raises(ValueError, match="must be lsh or kmeans"):
        Budget(METHOD, 4, 16, 1, sparse="local")


def test_split_budget_gives_the_centroids_their_share_uneven_too():
    assert split_budget(METHOD, 99, n_hashes=1) == Budget(METHOD, 50, 49, 1)
    assert split_budget(METHOD, 64, n_hashes=2, lowrank_share=0.25) == Budget(METHOD, 16, 24, 2)


def _grid(**axes) -> Grid:
    base = {"seq_len": 64, "head_dim": 16, "heads": 2, "n_features": [0, 8],
            "bucket_size": 16, "methods": ["exact", "scatterbrain", METHOD]}
    return grid_from_dict("t", {**base, **axes})


def test_the_grid_crosses_it_like_scatterbrain_but_skips_zero_and_triton():
    expansion = expand(_grid(sparse=["lsh", "kmeans"], n_hashes=[1, 2], sink=[0, 2],
                             backends=["torch", "triton"]))
    ours = [p for p in expansion.points if p.budget.method == METHOD]
    plain = [p for p in expansion.points if p.budget.method == "scatterbrain"]
    assert {p.backend for p in ours} == {"torch"} and {p.backend for p in plain} == {
        "torch", "triton"}
    assert {p.budget.n_features for p in ours} == {8}  # 0 would be scatterbrain's f=0
    assert {(p.budget.sparse, p.budget.n_hashes, p.budget.sink) for p in ours} == {
        (kind, h, s) for kind in ("lsh", "kmeans") for h in (1, 2) for s in (0, 2)}
    assert len(ours) == 8
    assert any(f"8 {METHOD} point(s) on triton" in note for note in expansion.dropped)


def test_a_grid_with_only_zero_features_is_refused_in_one_line():
    with pytest.raises(UserError, match=f"{METHOD} need an n_features >= 1"):
        expand(_grid(n_features=[0], methods=[METHOD]))


def test_a_triton_point_is_refused_on_every_device():
    point = Point(Problem(64, 16), Budget(METHOD, 8, 16, 1), "triton")
    reason = guards.kernel_refusal(point, spec=None)
    assert reason and "torch backend only" in reason
    assert guards.kernel_refusal(Point(Problem(64, 16), Budget(METHOD, 8, 16, 1)), None) is None


@pytest.mark.parametrize("support", [dict(), dict(sparse="kmeans", sink=2, window=4)],
                         ids=["lsh", "kmeans-sink-window"])
def test_call_method_is_scatterbrain_attention_with_centroids(support):
    gen = torch.Generator().manual_seed(0)
    q, k, v = torch.randn(3, 1, 2, 48, 8, generator=gen).unbind(0)
    budget = Budget(METHOD, n_features=5, bucket_size=8, n_hashes=2, **support)
    out = call_method(budget, q, k, v, generator=torch.Generator().manual_seed(7),
                      backend="torch")
    want = scatterbrain_attention(q, k, v, n_features=5, bucket_size=8, n_hashes=2,
                                  lowrank="centroids", backend="torch",
                                  generator=torch.Generator().manual_seed(7), **support)
    torch.testing.assert_close(out, want, rtol=0, atol=0)
    performer = scatterbrain_attention(q, k, v, n_features=6, bucket_size=8, n_hashes=2,
                                       generator=torch.Generator().manual_seed(7), **support)
    assert not torch.allclose(out, performer)


def test_drawn_randomness_is_a_seed_and_the_call_repeats_itself():
    budget = Budget(METHOD, n_features=4, bucket_size=8, n_hashes=1)
    drawn = draw_randomness(budget, 8, torch.Generator().manual_seed(0))
    assert drawn.projections is None and drawn.hashes is not None
    assert isinstance(drawn.centroid_seed, int)
    q, k, v = torch.randn(3, 1, 2, 32, 8).unbind(0)
    call = make_call(budget, q, k, v, randomness=drawn, inject=False)
    torch.testing.assert_close(call(), call(), rtol=0, atol=0)
    other = make_call(budget, q, k, v, generator=torch.Generator().manual_seed(1),
                      inject=False)
    assert not torch.allclose(call(), other())
    # the seed decides the start keys: the same seed, the same estimate
    again = call_method(budget, q, k, v, backend="torch", **drawn.options())
    torch.testing.assert_close(call(), again, rtol=0, atol=0)


def test_a_tiny_sweep_records_it_and_select_and_the_report_list_it(tmp_path):
    from sbbench.analyze.report import write_report
    from sbbench.analyze.selection import candidates, select
    from sbbench.sweep.runner import Settings, run_sweep
    from sbbench.sweep.store import Store

    grid = Grid(name="tiny", seq_len=(64,), head_dim=(16,), heads=(2,), n_features=(0, 8),
                bucket_size=(16,), n_hashes=(1,), seeds=(0,), methods=("exact", METHOD),
                backends=("torch",))
    settings = Settings(device="cpu", seeds=(0,), warmup_ms=1.0, rep_ms=2.0, min_samples=3,
                        measure_memory=False, git_revision="test")
    path = tmp_path / "r.sqlite"
    with Store(path) as store:
        summary = run_sweep(expand(grid).points, settings, store, progress=False)
        rows = [r for r in store.records() if r.method == METHOD]
        frame = store.to_dataframe()
    assert summary.measured == 2 and len(rows) == 1
    (row,) = rows
    assert row.status == "ok" and row.n_features == 8 and row.sparse == "lsh"
    assert 0 < row.error_mean < 1 and row.time_median_ms > 0 and row.flops > 0
    assert METHOD in set(candidates(frame)["method"])
    selection = select(frame, device="cpu", targets=(1.0,))
    assert {e["method"] for e in selection.entries} <= {METHOD, "exact"}
    write_report(path, tmp_path / "reports", command="test")
    assert METHOD in (tmp_path / "reports" / "cpu" / "README.md").read_text()
