"""Model-only rows (sweep.point_model): the calibrated modeled time, the roofline as its
own column, speed-ups of one kind of time; and the kernels' refusal of triton points
(guards.kernel_refusal), applied before anything runs."""

from __future__ import annotations

import dataclasses

import pytest

from sbbench.core.device_table import Efficiency
from sbbench.core.devices import get_device
from sbbench.core.types import Budget, Problem
from sbbench.measure import costmodel
from sbbench.sweep import guards
from sbbench.sweep.grid import Point
from sbbench.sweep.point import measure_point
from sbbench.sweep.point_model import model_point
from sbbench.sweep.runner import Settings

PROBLEM = Problem(16384, 128, batch=1, heads=16, dtype="float16")
SCATTERBRAIN = Budget("scatterbrain", n_features=256, bucket_size=64, n_hashes=1)


def settings(device: str, **changes) -> Settings:
    return Settings(device=device, git_revision="test", **changes)


def rows(spec, budget=SCATTERBRAIN, problem=PROBLEM, backend="torch"):
    exact = model_point(Point(problem, Budget("exact")), settings(spec.name), spec)
    other = model_point(Point(problem, budget, backend), settings(spec.name), spec)
    return exact, other


def roofline_ms(budget, spec, problem=PROBLEM) -> float:
    return costmodel.roofline_time_s(problem, budget, spec) * 1e3


def test_calibrated_exact_row_reports_the_calibrated_time_and_keeps_the_roofline():
    h100 = get_device("h100-sxm")
    exact, _ = rows(h100)
    modeled = costmodel.modeled_time(PROBLEM, Budget("exact"), h100)
    assert exact.status == "ok" and exact.source == "modeled" and exact.timer == "modeled"
    assert exact.time_median_ms == pytest.approx(modeled.time_s * 1e3)
    assert exact.roofline_time_ms == pytest.approx(roofline_ms(Budget("exact"), h100))
    assert exact.time_median_ms == pytest.approx(exact.roofline_time_ms / modeled.efficiency)
    assert exact.roofline_fraction == pytest.approx(modeled.efficiency)
    assert exact.reason == modeled.note  # "modeled (calibrated on ...)", as the table says
    assert exact.reason.startswith("modeled (calibrated on FlashAttention-3")
    assert exact.speedup_vs_exact == 1.0 and exact.telemetry.startswith("not measured")


def test_a_calibrated_exact_is_compared_with_an_uncalibrated_method_by_rooflines():
    """H100: exact is calibrated (0.55 of the roofline), Scatterbrain is not; dividing
    the calibrated exact time by Scatterbrain's roofline would credit Scatterbrain with
    exact's measured inefficiency (about 1.8x)."""
    h100 = get_device("h100-sxm")
    exact, sb = rows(h100)
    assert sb.timer == "roofline" and sb.time_median_ms == sb.roofline_time_ms
    assert sb.reason.startswith("modeled (roofline; no published scatterbrain measurement "
                                "on h100-sxm")
    assert "speedup vs exact from the rooflines of both (only exact is calibrated" in sb.reason
    assert sb.speedup_vs_exact == pytest.approx(exact.roofline_time_ms / sb.roofline_time_ms)
    mixed = exact.time_median_ms / sb.time_median_ms
    assert mixed > 1.5 * sb.speedup_vs_exact  # what the mixed ratio would have claimed


def test_both_calibrated_compare_calibrated_times():
    h100 = get_device("h100-sxm")
    spec = dataclasses.replace(h100, efficiency={
        **h100.efficiency, "scatterbrain": Efficiency(0.25, "a test figure", (1.0,))})
    exact, sb = rows(spec)
    assert sb.timer == "modeled" and sb.reason.startswith("modeled (calibrated on a test figure")
    assert sb.time_median_ms == pytest.approx(sb.roofline_time_ms / 0.25)
    assert "speedup vs" not in sb.reason
    assert sb.speedup_vs_exact == pytest.approx(exact.time_median_ms / sb.time_median_ms)
    assert sb.speedup_vs_exact != pytest.approx(exact.roofline_time_ms / sb.roofline_time_ms)


def test_an_uncalibrated_device_models_rooflines_and_says_so():
    a100 = get_device("a100-80gb")
    assert not a100.efficiency
    exact, sb = rows(a100)
    for row in (exact, sb):
        assert row.status == "ok" and row.timer == "roofline"
        assert row.time_median_ms == row.roofline_time_ms and row.roofline_fraction == 1.0
        assert row.reason.startswith("modeled (roofline; no published")
        assert "speedup vs" not in row.reason
    assert sb.speedup_vs_exact == pytest.approx(exact.time_median_ms / sb.time_median_ms)


def test_a_profile_without_the_dtype_peak_is_skipped():
    cpu = get_device("cpu")
    if cpu.peak_flops.get("float16"):
        pytest.skip("this CPU profile has a float16 peak")
    row = model_point(Point(PROBLEM, Budget("exact")), settings("cpu"), cpu)
    assert row.status == "skipped" and "nothing to predict from" in row.reason


# ---- triton points the kernels refuse -----------------------------------------------

REFUSED = Point(Problem(4096, 256, heads=16, dtype="bfloat16"),
                Budget("lsh", bucket_size=256, n_hashes=1), "triton")


def test_kernel_refusal_names_the_launch_that_would_refuse():
    pytest.importorskip("triton")
    h100 = get_device("h100-sxm")
    reason = guards.kernel_refusal(REFUSED, h100)
    assert reason.startswith("the Triton kernels refuse it on sm_90: sparse: no config of "
                             "the search space fits sm_90")
    fp32 = Point(Problem(4096, 256, dtype="float32"),
                 Budget("performer", n_features=64), "triton")
    assert "float32 head_dim <= 128, got 256" in guards.kernel_refusal(fp32, h100)
    runs = Point(Problem(4096, 64, dtype="bfloat16"),
                 Budget("lsh", bucket_size=256, n_hashes=1), "triton")
    assert guards.kernel_refusal(runs, h100) is None
    kmeans = Point(Problem(4096, 64, dtype="bfloat16"),
                   Budget("scatterbrain", n_features=256, bucket_size=64, n_hashes=2,
                          sparse="kmeans", sink=4, window=64), "triton")
    assert guards.kernel_refusal(kmeans, h100) is None  # k-means, sink, window: kernels
    # torch points, exact, and a profile without a GPU architecture: nothing to refuse
    assert guards.kernel_refusal(dataclasses.replace(REFUSED, backend="torch"), h100) is None
    assert guards.kernel_refusal(REFUSED, get_device("cpu")) is None


def test_refused_points_are_skipped_before_anything_runs():
    pytest.importorskip("triton")
    h100 = get_device("h100-sxm")
    modeled = model_point(REFUSED, settings("h100-sxm"), h100)
    assert modeled.status == "skipped" and "refuse it on sm_90" in modeled.reason
    assert modeled.time_median_ms is None and modeled.speedup_vs_exact is None
    # a measured sweep on a GPU records it without launching anything (no CUDA here)
    measured = measure_point(REFUSED, settings("h100-sxm", torch_device="cuda"), h100)
    assert measured.status == "skipped" and measured.reason == modeled.reason
    assert measured.time_median_ms is None and not measured.time_samples_ms
