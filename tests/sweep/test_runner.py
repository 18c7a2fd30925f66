"""The runner: measured rows, failures recorded, resume, model-only, memory child."""

from __future__ import annotations

import math

import pytest
import torch

from sbbench.core.devices import get_device
from sbbench.core.provenance import code_version
from sbbench.core.types import Budget, Problem
from sbbench.measure.calibration import sweep_cpu_clock
from sbbench.measure.memory import MemoryServer
from sbbench.sweep import point as sweep_point
from sbbench.sweep.grid import Grid, Point, expand
from sbbench.sweep.point import PointFailed, memory_job
from sbbench.sweep.progress import Progress
from sbbench.sweep.runner import Settings, run_sweep
from sbbench.sweep.store import Store

TINY = Grid(name="tiny", seq_len=(64,), head_dim=(16,), heads=(2,), n_features=(8,),
            bucket_size=(16,), n_hashes=(1,), seeds=(0, 1),
            methods=("exact", "performer", "lsh", "scatterbrain", "scatterbrain_local"))


def settings(**changes) -> Settings:
    base = dict(device="cpu", seeds=(0, 1), warmup_ms=1.0, rep_ms=3.0, min_samples=5,
                measure_memory=False, git_revision="test")
    base.update(changes)
    return Settings(**base)


@pytest.fixture(scope="module")
def memory_server():
    with MemoryServer() as server:
        yield server


def test_sweep_measures_every_point(tmp_path, memory_server):
    points = expand(TINY).points
    with Store(tmp_path / "r.sqlite") as store:
        summary = run_sweep(points, settings(measure_memory=True), store, progress=False,
                            memory_server=memory_server)
        records = store.records()
    assert summary.measured == len(points) == len(records) == 5
    for record in records:
        assert record.status == "ok", record.reason
        assert record.source == "measured"
        # auto clock: the computing thread's CPU time with one torch thread, else wall
        assert record.timer == sweep_cpu_clock("auto", torch.get_num_threads())
        assert len(record.time_samples_ms) >= 5 and record.time_median_ms > 0
        # the calibration kernel, timed right after each sample
        assert len(record.reference_samples_ms) == len(record.time_samples_ms)
        assert min(record.reference_samples_ms) > 0
        assert record.time_p20_ms <= record.time_median_ms <= record.time_p80_ms
        assert record.n_seeds == 2 and record.reference_dtype == "float64"
        assert record.error_mean is not None and record.attn_error_mean is not None
        assert record.peak_memory_bytes >= record.baseline_memory_bytes > 0
        assert record.memory_method.startswith("child_")
        assert "outside the timed closure" in record.timed_region
        assert record.telemetry.startswith("unavailable:") and record.energy_j is None
        assert record.flops > 0 and record.working_set_bytes > 0
        assert {"before", "after"} <= set(record.device_state)
        assert record.versions and record.code_version == code_version()
        assert record.git_revision == "test"  # provenance, not part of the key
    exact = [r for r in records if r.method == "exact"]
    assert all(r.error_mean < 1e-5 for r in exact)
    approx = [r for r in records if r.method != "exact"]
    assert all(r.speedup_vs_exact is not None for r in approx)
    assert all(r.error_mean > 1e-4 for r in approx)


def test_failing_points_are_recorded_and_the_sweep_goes_on(tmp_path, monkeypatch):
    real = sweep_point.make_call

    def broken(point, q, k, v, generator):
        if point.budget.method == "lsh":
            raise RuntimeError("kernel exploded\nsecond line")
        if point.budget.method == "performer":
            return lambda return_weights=False: torch.full_like(q, math.nan)
        return real(point, q, k, v, generator)

    monkeypatch.setattr(sweep_point, "make_call", broken)
    points = expand(TINY).points
    with Store(tmp_path / "r.sqlite") as store:
        summary = run_sweep(points, settings(), store, progress=False)
        records = {(r.method, r.seq_len): r for r in store.records()}
    assert len(records) == len(points)
    assert summary.statuses == {"ok": 3, "failed": 2}
    lsh = records[("lsh", 64)]
    assert lsh.status == "failed" and lsh.reason == "RuntimeError: kernel exploded"
    nan = records[("performer", 64)]
    assert nan.status == "failed" and "non-finite output" in nan.reason
    assert nan.time_median_ms is None and not nan.time_samples_ms  # failed check: no time
    assert records[("scatterbrain", 64)].status == "ok"


def test_out_of_memory_is_a_result(tmp_path, monkeypatch):
    def oom(point, settings_, *rest):
        raise RuntimeError("CUDA out of memory. Tried to allocate 2 GiB")

    monkeypatch.setattr(sweep_point, "check_accuracy", oom)
    point = expand(TINY).points[0]
    record = sweep_point.measure_point(point, settings())
    assert record.status == "oom" and "out of memory" in record.reason


def test_interrupted_sweep_resumes_without_loss(tmp_path, monkeypatch):
    points = expand(TINY).points
    path = tmp_path / "r.sqlite"
    real = sweep_point.measure_point
    calls = {"n": 0}

    def interrupt_third(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(sweep_point, "measure_point", interrupt_third)
    with Store(path) as store, pytest.raises(KeyboardInterrupt):
        run_sweep(points, settings(), store, progress=False)
    with Store(path) as store:
        first = {r.key(): r for r in store.records()}
        assert len(first) == 2
        assert store.sweeps()[-1]["outcome"] == "interrupted"
        monkeypatch.setattr(sweep_point, "measure_point", real)
        summary = run_sweep(points, settings(), store, progress=False)
        after = {r.key(): r for r in store.records()}
    assert summary.resumed == 2 and summary.measured == len(points) - 2
    assert len(after) == len(points)
    assert all(after[key] == record for key, record in first.items())  # untouched


def test_redo_failed_measures_failed_points_again(tmp_path, monkeypatch):
    points = expand(Grid(name="t", seq_len=(64,), head_dim=(16,), heads=(1,),
                         methods=("exact", "performer"), n_features=(8,), seeds=(0,))).points
    path = tmp_path / "r.sqlite"
    real = sweep_point.check_accuracy

    def fail_performer(point, settings_, *rest):
        if point.budget.method == "performer":
            raise ValueError("flaky")
        return real(point, settings_, *rest)

    monkeypatch.setattr(sweep_point, "check_accuracy", fail_performer)
    with Store(path) as store:
        run_sweep(points, settings(seeds=(0,)), store, progress=False)
        monkeypatch.setattr(sweep_point, "check_accuracy", real)
        again = run_sweep(points, settings(seeds=(0,)), store, progress=False)
        assert again.measured == 0
        redo = run_sweep(points, settings(seeds=(0,)), store, progress=False, redo="failed")
        assert redo.measured == 1 and redo.resumed == 1
        assert [r.status for r in store.records()] == ["ok", "ok"] and len(store) == 2


def test_model_only_rows_are_marked_modeled(tmp_path):
    grid = Grid(name="t", seq_len=(1024, 4096), head_dim=(64,), dtype=("float16",),
                methods=("exact", "scatterbrain"), n_features=(64,), bucket_size=(64,))
    spec = get_device("h100-sxm")
    with Store(tmp_path / "r.sqlite") as store:
        run_sweep(expand(grid).points, settings(device=spec.name), store, spec=spec,
                  model_only=True, progress=False)
        records = store.records()
    assert len(records) == 4
    for record in records:
        assert record.source == "modeled" and record.status == "ok"
        assert not record.time_samples_ms and record.roofline_time_ms > 0
        assert record.error_mean is None and record.energy_j is None
        assert record.reason.startswith("modeled (")
        if record.method == "exact":  # calibrated on published H100 measurements
            assert record.timer == "modeled" and record.speedup_vs_exact == 1.0
            assert record.time_median_ms > record.roofline_time_ms
            assert record.reason.startswith("modeled (calibrated on FlashAttention-3")
        else:  # no published Scatterbrain figure: the roofline, said so
            assert record.timer == "roofline"
            assert record.time_median_ms == record.roofline_time_ms
            assert record.reason.startswith("modeled (roofline; no published scatterbrain")
            assert "speedup vs exact from the rooflines" in record.reason
    assert all(r.speedup_vs_exact for r in records if r.method != "exact")


def test_triton_on_cpu_is_skipped_with_a_reason():
    point = Point(Problem(seq_len=64, head_dim=16), Budget("performer", n_features=8), "triton")
    record = sweep_point.measure_point(point, settings())
    assert record.status == "skipped" and "CUDA" in record.reason


def test_memory_server_measures_and_reports_failures(memory_server):
    point = Point(Problem(seq_len=512, head_dim=32, heads=4), Budget("exact"))
    bad = Point(Problem(seq_len=64, head_dim=16), Budget("lsh", bucket_size=16, n_hashes=1))
    with memory_server as server:
        result = server.start(memory_job(point, settings(seeds=(0,)))).result()
        assert result["peak_bytes"] > result["baseline_bytes"] > 0
        server.start(memory_job(bad, settings(seeds=(0,), input_kind="nonsense")))
        with pytest.raises(PointFailed, match="kind must be one of"):
            server.result()
        again = server.start(memory_job(point, settings(seeds=(0,)))).result()  # still serving
        assert again["method"] == result["method"]


def test_progress_bar_counts_and_eta(capsys):
    import io

    stream = io.StringIO()
    bar = Progress(3, stream=stream)
    bar.step("a", ran_seconds=2.0)
    bar.step("b (in store)")
    bar.step("c", ran_seconds=4.0)
    bar.close()
    lines = stream.getvalue().splitlines()
    assert len(lines) == 3 and lines[0].startswith("[")
    assert "1/3" in lines[0] and "ETA 0:04" in lines[0]  # 2 s a point, 2 left
    assert "3/3" in lines[2] and "ETA 0:00" in lines[2]


@pytest.mark.parametrize("budget", [Budget("exact"), Budget("performer", n_features=8),
                                    Budget("lsh", bucket_size=16, n_hashes=2),
                                    Budget("scatterbrain", 8, 16, 2),
                                    Budget("scatterbrain_local", 8, 16, 1)],
                         ids=lambda b: b.method)
def test_timed_closure_computes_what_call_method_computes(budget):
    """The runner draws projections/hashes outside the timed closure; the estimate must
    stay the one ``methods.call_method`` gives for the same seed."""
    from sbbench.measure.calls import call_method

    point = Point(Problem(seq_len=60, head_dim=12, heads=2), budget)
    q, k, v, call = sweep_point.prepare(point, settings(), seed=3)
    expected = call_method(budget, q, k, v, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(call(), expected, rtol=0, atol=0)


def test_a_point_claimed_by_another_sweep_is_left_to_it(tmp_path):
    points = expand(TINY).points
    path = tmp_path / "r.sqlite"
    with Store(path) as store, Store(path) as other:
        other.host, other.pid = "another-host", 4242  # a live sweep on another machine
        taken = points[1]
        assert other.claim(sweep_point.base_record(taken, settings(), "measured").key())
        summary = run_sweep(points, settings(), store, progress=False)
        assert summary.claimed_elsewhere == 1 and summary.measured == len(points) - 1
        assert "another sweep" in summary.line()
        records = store.records()
        assert len(records) == len(points) - 1
        assert taken.budget.method not in {r.method for r in records}
        assert all("concurrent" in r.noise.split(",") for r in records)
        assert store.conn.execute("SELECT pid FROM claims").fetchall() == [(4242,)]
        key = sweep_point.base_record(taken, settings(), "measured").key()
        other.release(key)
        again = run_sweep(points, settings(), store, progress=False)
        assert again.measured == 1 and again.resumed == len(points) - 1
        assert store.get(key).status == "ok"
        assert "concurrent" not in store.get(key).noise.split(",")  # alone this time


def test_an_interrupted_sweep_releases_its_claims(tmp_path, monkeypatch):
    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(sweep_point, "measure_point", interrupt)
    with Store(tmp_path / "r.sqlite") as store:
        with pytest.raises(KeyboardInterrupt):
            run_sweep(expand(TINY).points, settings(), store, progress=False)
        assert store.sweeps()[-1]["outcome"] == "interrupted"
        assert store.conn.execute("SELECT COUNT(*) FROM claims").fetchone()[0] == 0


def test_noisy_timings_are_flagged(tmp_path, monkeypatch):
    from sbbench.sweep import guards

    assert guards.noise_flags(1.0, 2.0, "cuda") == ["spread"]
    assert guards.noise_flags(1.0, 1.2, "cuda") == []
    monkeypatch.setattr(guards.os, "getloadavg", lambda: (64.0, 1.0, 1.0))
    monkeypatch.setattr(guards.os, "cpu_count", lambda: 2)
    assert guards.noise_flags(1.0, 1.2, "cpu") == ["load=64.00"]
    assert guards.noise_flags(1.0, 1.2, "cuda") == []
    record = sweep_point.measure_point(expand(TINY).points[0], settings())
    assert record.status == "ok" and "load=64.00" in record.noise.split(",")
    assert guards.add_flag("spread", "concurrent") == "spread,concurrent"
    assert guards.add_flag("concurrent", "concurrent") == "concurrent"


def test_a_point_that_cannot_fit_is_refused_without_running(tmp_path, monkeypatch):
    def must_not_run(*args, **kwargs):
        raise AssertionError("a point that cannot fit was attempted")

    monkeypatch.setattr(sweep_point, "check_accuracy", must_not_run)
    monkeypatch.setattr(sweep_point, "inputs_for", must_not_run)
    huge = Point(Problem(seq_len=10**9, head_dim=64, heads=4), Budget("exact"))
    with Store(tmp_path / "r.sqlite") as store:
        summary = run_sweep([huge], settings(measure_memory=True), store, progress=False)
        (record,) = store.records()
    assert summary.statuses == {"oom": 1}
    assert record.status == "oom" and record.reason.startswith("does not fit: needs ")
    assert "GiB, device has " in record.reason and not record.time_samples_ms
    assert record.working_set_bytes > 10**12
