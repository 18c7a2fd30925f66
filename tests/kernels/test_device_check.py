"""scripts/device_check.sh (the GPU session's one command) on the CPU: its dry run prints
the three steps (GPU tests, the device_check grid's sweep, the report) and runs the
sweep's dry run; the shipped device_check and torch_path grids hold the risky shapes."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from sbbench.core.types import Budget
from sbbench.sweep.grid import expand, load_grid

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "device_check.sh"


def run_script(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON": sys.executable}
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True,
                          env=env, timeout=120)


def test_dry_run_prints_the_steps_and_the_grid(tmp_path):
    done = run_script(str(tmp_path / "out"), "--gpu", "h200", "--dry-run")
    assert done.returncode == 0, done.stderr
    steps = [line[2:] for line in done.stdout.splitlines() if line.startswith("+ ")]
    assert len(steps) == 5
    risks, tests, sweep, sweep_d256, report = steps
    # the risk checks come first, and the other GPU tests do not repeat them
    assert "-m gpu" in risks and risks.rstrip().endswith(
        "tests/kernels/test_gpu_risks.py > " + str(tmp_path / "out" / "risks.log"))
    assert "-m pytest" in tests and "-m gpu" in tests and str(tmp_path / "out") in tests
    assert "--deselect tests/kernels/test_gpu_risks.py" in tests
    store = str(tmp_path / "out" / "device_check.sqlite")
    for step, grid in ((sweep, "device_check"), (sweep_d256, "device_check_d256")):
        assert "-m sbbench sweep --gpu h200 --store " + store in step
        assert step.endswith(f"--grid {grid}")
    assert "-m sbbench report --store " + store in report
    # the sweeps' dry runs: every point of both grids, none refused, nothing measured
    assert "60 points, 0 already in" in done.stdout
    assert "36 points, 0 already in" in done.stdout
    assert "triton" in done.stdout and "bfloat16" in done.stdout
    assert "refuse" not in done.stdout
    assert not (tmp_path / "out" / "device_check.sqlite").exists()


@pytest.mark.parametrize("args", [(), ("--dry-run",), ("out", "--gpu"), ("out", "--bogus")],
                         ids=["no-outdir", "flag-first", "gpu-without-name", "unknown-flag"])
def test_usage_errors_exit_2(args):
    done = run_script(*args)
    assert done.returncode == 2 and "usage:" in done.stderr


def test_the_risk_module_holds_the_risk_cases():
    """What device_check.sh runs first: tf32 tolerances, a large-offset case, the largest
    head_dim and bucket (collected on the CPU; they run on a GPU)."""
    done = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-m", "gpu",
                           "-p", "no:cacheprovider", str(ROOT / "tests/kernels/test_gpu_risks.py")],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    ids = [line for line in done.stdout.splitlines() if "::" in line]
    assert any("test_risk_tf32_tolerances[bf16-d128-lsh2-causal-mask]" in i for i in ids), ids
    assert any("test_risk_tf32_tolerances[fp16-d48-m49-b24-lsh2-mask]" in i for i in ids)
    assert any("large_offsets" in i for i in ids)
    assert any("largest_head_dim_and_bucket" in i for i in ids)


DEVICE_CHECK_GRIDS = ("device_check", "device_check_d256")


def device_check_points():
    return [point for name in DEVICE_CHECK_GRIDS for point in expand(load_grid(name)).points]


def test_device_check_grids_hold_the_risky_shapes():
    points = device_check_points()
    triton = [p for p in points if p.backend == "triton"]
    assert {p.backend for p in points if p.budget.method != "exact"} == {"torch", "triton"}
    assert any(p.budget.method == "exact" for p in points)
    # the largest head_dim and the largest bucket the kernels take, each on the kernels
    assert max(p.problem.head_dim for p in triton) == 256
    assert max(p.budget.bucket_size for p in triton) == 256
    assert any(p.problem.causal for p in points) and any(not p.problem.causal for p in points)
    assert {p.budget.method for p in points} == {"exact", "performer", "lsh", "scatterbrain",
                                                 "scatterbrain_local"}
    assert {p.budget.method for p in triton} == {"performer", "lsh", "scatterbrain",
                                                 "scatterbrain_local"}


def test_the_kernels_take_every_triton_point_of_the_device_check_grids():
    """The checks the sweep makes before running a point (guards.kernel_refusal: what the
    launch would refuse; guards.fit_refusal: the memory) pass for every triton point of
    both grids on every GPU profile, so the GPU minutes go to runnable points."""
    from sbbench.core.devices import get_device, list_devices
    from sbbench.sweep import guards

    if not getattr(kernels_module(), "HAVE_TRITON", False):
        pytest.skip("triton is not installed")
    gpus = [get_device(name) for name in list_devices() if get_device(name).kind == "cuda"]
    assert {spec.arch for spec in gpus} >= {"sm_80", "sm_90"}
    triton = [p for p in device_check_points() if p.backend == "triton"]
    assert len(triton) == 44
    for spec in gpus:
        for point in triton:
            assert guards.kernel_refusal(point, spec) is None, (spec.name, point.label())
            assert guards.fit_refusal(point, spec.mem_bytes) is None, (spec.name, point.label())
    # the check can fail: the case the grids leave out is refused on both architectures
    refused = replace(triton[0], problem=replace(triton[0].problem, head_dim=256),
                      budget=Budget("lsh", bucket_size=256, n_hashes=1))
    for spec in gpus:
        assert "no config of the search space fits" in guards.kernel_refusal(refused, spec)


def kernels_module():
    import sbbench.kernels

    return sbbench.kernels


def test_torch_path_grid_is_the_former_benchmarks():
    grid = load_grid("torch_path")
    assert grid.seq_len == (1024, 2048, 4096, 8192, 16384, 32768, 65536)
    assert grid.methods == ("exact", "scatterbrain") and grid.backends == ("torch",)
    assert (grid.features, grid.bucket_size, grid.hashes) == ((128,), (64,), (1,))
    assert (grid.head_dim, grid.heads, grid.batch, grid.dtype) == ((64,), (4,), (1,),
                                                                  ("float32",))
    assert (grid.warmup_ms, grid.rep_ms) == (25.0, 100.0)
    assert len(expand(grid).points) == 14
