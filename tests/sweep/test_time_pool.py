"""Timing in fresh processes (``Settings.time_processes``): pooled samples, failures of a
worker kept apart, rows never lost when the pool is interrupted."""

from __future__ import annotations

import pytest

from sbbench.sweep import point as sweep_point
from sbbench.sweep import time_pool
from sbbench.sweep.grid import Grid, expand
from sbbench.sweep.runner import Settings, estimate_seconds, run_sweep
from sbbench.sweep.store import Store
from sbbench.sweep.time_pool import TimingPool, add_process_samples

TINY = Grid(name="tiny", seq_len=(64,), head_dim=(16,), heads=(2,), n_features=(8,),
            bucket_size=(16,), n_hashes=(1,), seeds=(0,))


def settings(**changes) -> Settings:
    base = dict(device="cpu", seeds=(0,), warmup_ms=1.0, rep_ms=3.0, min_samples=3,
                measure_memory=False, measure_energy=False, git_revision="test")
    base.update(changes)
    return Settings(**base)


def test_a_sweep_pools_the_samples_of_its_timing_processes(tmp_path):
    points = expand(TINY).points
    with Store(tmp_path / "r.sqlite") as store:
        summary = run_sweep(points, settings(time_processes=1), store, progress=False)
        records = store.records()
    assert summary.measured == len(records) == len(points)
    exact = next(r for r in records if r.method == "exact")
    for record in records:
        assert record.status == "ok", record.reason
        pooled = record.device_state["timing_processes"]
        assert pooled["errors"] == [] and len(pooled["samples"]) == 2
        own, worker = pooled["samples"]
        assert own >= 3 and worker >= 2  # min_samples here, a share of it in a worker
        assert len(record.time_samples_ms) == own + worker
        assert len(record.reference_samples_ms) == len(record.time_samples_ms)
        assert record.time_p20_ms <= record.time_median_ms <= record.time_p80_ms
        # speedups use exact's pooled median, exact being pooled in the same job
        if record.method != "exact":
            expected = exact.time_median_ms / record.time_median_ms
            assert record.speedup_vs_exact == pytest.approx(expected)


def test_worker_samples_the_sweeps_calls(monkeypatch):
    """In this process (the worker's function): every point gets paired samples, a
    failing point an error, the others still timed."""
    points = expand(TINY).points
    real = sweep_point.prepare

    def fail_on_lsh(point, *args, **kwargs):
        if point.budget.method == "lsh":
            raise RuntimeError("no such kernel")
        return real(point, *args, **kwargs)

    monkeypatch.setattr(sweep_point, "prepare", fail_on_lsh)
    results = time_pool.sample_points(points, settings())
    assert len(results) == len(points)
    for point, result in zip(points, results, strict=True):
        if point.budget.method == "lsh":
            assert result == {"error": "RuntimeError: no such kernel"}
            continue
        assert len(result["samples_ms"]) >= 3
        assert len(result["reference_samples_ms"]) == len(result["samples_ms"])
        assert min(result["samples_ms"]) > 0


def test_points_round_trip_through_json():
    for point in expand(TINY).points:
        assert time_pool.point_from_json(time_pool.point_json(point)) == point


def test_pooling_keeps_errors_apart_and_recomputes_the_spread():
    record = sweep_point.base_record(expand(TINY).points[0], settings(), "measured")
    record.time_samples_ms, record.reference_samples_ms = [1.0] * 3, [2.0] * 3
    record.time_median_ms = record.time_p20_ms = record.time_p80_ms = 1.0
    record.noise = "load=3.00"
    add_process_samples(record, [
        {"samples_ms": [3.0, 3.0, 3.0], "reference_samples_ms": [2.0, 2.0, 2.0]},
        {"error": "timing worker gave no answer"},
    ])
    assert record.time_samples_ms == [1.0] * 3 + [3.0] * 3
    assert record.time_median_ms == 2.0
    assert record.device_state["timing_processes"] == {
        "samples": [3, 3], "errors": ["timing worker gave no answer"]}
    assert "spread" in record.noise.split(",") and "load=3.00" in record.noise


def test_a_dead_worker_gives_errors_not_a_crash(monkeypatch):
    monkeypatch.setattr(time_pool.sys, "executable", "/bin/false")
    with TimingPool(1) as pool:
        results = pool.time(expand(TINY).points[:2], settings())
    assert results == [[{"error": "timing worker gave no answer"}] * 2]


def test_an_interrupted_pool_keeps_the_measured_rows(tmp_path, monkeypatch):
    def interrupt(self, points, settings):
        raise KeyboardInterrupt

    monkeypatch.setattr(TimingPool, "time", interrupt)
    points = expand(TINY).points
    with Store(tmp_path / "r.sqlite") as store:
        with pytest.raises(KeyboardInterrupt):
            run_sweep(points, settings(time_processes=2), store, progress=False)
        records = store.records()
        assert store.sweeps()[-1]["outcome"] == "interrupted"
        assert not store.others_claiming()
    # the first shape's rows, measured in this process, are written as they are
    assert len(records) == len(points)
    assert all("timing_processes" not in r.device_state for r in records)


def test_the_estimate_counts_the_timing_processes():
    points = expand(TINY).points
    assert estimate_seconds(points, settings(time_processes=2)) > estimate_seconds(
        points, settings())
