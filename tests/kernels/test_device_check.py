"""scripts/device_check.sh (the GPU session's one command) on the CPU: its dry run prints
the three steps (GPU tests, the device_check grid's sweep, the report) and runs the
sweep's dry run; the shipped device_check and torch_path grids hold the risky shapes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

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
    assert len(steps) == 4
    risks, tests, sweep, report = steps
    # the risk checks come first, and the other GPU tests do not repeat them
    assert "-m gpu" in risks and risks.rstrip().endswith(
        "tests/kernels/test_gpu_risks.py > " + str(tmp_path / "out" / "risks.log"))
    assert "-m pytest" in tests and "-m gpu" in tests and str(tmp_path / "out") in tests
    assert "--deselect tests/kernels/test_gpu_risks.py" in tests
    store = str(tmp_path / "out" / "device_check.sqlite")
    assert "-m sbbench sweep --gpu h200 --grid device_check" in sweep and store in sweep
    assert "-m sbbench report --store " + store in report
    # the sweep's dry run: every point of the grid, nothing measured
    assert "120 points, 0 already in" in done.stdout
    assert "triton" in done.stdout and "bfloat16" in done.stdout
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


def test_device_check_grid_holds_the_risky_shapes():
    grid = load_grid("device_check")
    points = expand(grid).points
    assert {p.backend for p in points if p.budget.method != "exact"} == {"torch", "triton"}
    assert any(p.budget.method == "exact" for p in points)
    assert max(p.problem.head_dim for p in points) == 256
    assert any(p.budget.bucket_size == 256 and p.problem.head_dim == 256 for p in points)
    assert any(p.problem.causal for p in points) and any(not p.problem.causal for p in points)
    assert {p.budget.method for p in points} == {"exact", "performer", "lsh", "scatterbrain",
                                                 "scatterbrain_local"}


def test_torch_path_grid_is_the_former_benchmarks():
    grid = load_grid("torch_path")
    assert grid.seq_len == (1024, 2048, 4096, 8192, 16384, 32768, 65536)
    assert grid.methods == ("exact", "scatterbrain") and grid.backends == ("torch",)
    assert (grid.features, grid.bucket_size, grid.hashes) == ((128,), (64,), (1,))
    assert (grid.head_dim, grid.heads, grid.batch, grid.dtype) == ((64,), (4,), (1,),
                                                                  ("float32",))
    assert (grid.warmup_ms, grid.rep_ms) == (25.0, 100.0)
    assert len(expand(grid).points) == 14
