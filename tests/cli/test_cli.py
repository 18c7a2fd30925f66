"""`sbbench sweep` and `sbbench report` from the command line: errors, dry run, a real
tiny sweep with its report, --model-only, and Ctrl-C then resume."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import TINY_GRID

from sbbench.cli.main import main
from sbbench.core.errors import UserError
from sbbench.sweep.store import Store

ROOT = Path(__file__).resolve().parents[2]
@pytest.fixture
def tiny_grid(tmp_path) -> str:
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY_GRID)
    return str(path)


@pytest.mark.parametrize("argv, message", [
    (["sweep", "--gpu", "cpu", "--grid", "nosuchgrid"],
     "shipped grids: device_check, device_check_d256, full, quick, supports, torch_path"),
    (["sweep", "--gpu", "cpu", "--seq-len", "1k"], "--seq-len takes comma-separated"),
    (["sweep", "--gpu", "cpu", "--features", "31"], "features must be even"),
    (["sweep", "--gpu", "nosuchgpu", "--dry-run"], "nosuchgpu"),
    (["sweep", "--gpu", "h100-sxm", "--seq-len", "256"], "--model-only"),
    (["report", "--store", "does-not-exist.sqlite"], "does not exist"),
    (["sweep", "--gpu", "cpu", "--time-processes", "-1", "--dry-run"],
     "--time-processes must be an integer >= 0"),
], ids=["unknown-grid", "bad-int", "odd-features", "unknown-gpu", "gpu-not-here",
        "missing-store", "negative-time-processes"])
def test_user_errors_exit_2_with_one_line(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith(f"sbbench {argv[0]}: error:") and message in err


def test_bad_grid_key_is_named(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text("seq_len: [128]\nbucket: [32]\n")
    assert main(["sweep", "--gpu", "cpu", "--grid", str(path)]) == 2
    assert "unknown key 'bucket'" in capsys.readouterr().err


def test_dry_run_lists_points_and_measures_nothing(tiny_grid, tmp_path, capsys):
    store = tmp_path / "r.sqlite"
    assert main(["sweep", "--gpu", "cpu", "--grid", tiny_grid, "--store", str(store),
                 "--dry-run", "--features", "8,16"]) == 0
    out = capsys.readouterr().out
    assert "GFLOP" in out and "working set MiB" in out
    assert "5 points, 0 already in" in out and "scatterbrain" in out
    assert not store.exists()


def test_sweep_then_report(tiny_grid, tmp_path, capsys):
    store, reports = tmp_path / "r.sqlite", tmp_path / "reports"
    argv = ["sweep", "--gpu", "cpu", "--grid", tiny_grid, "--store", str(store), "--no-memory"]
    assert main(argv) == 0
    assert "3 points: 3 run (3 ok)" in capsys.readouterr().err
    # the same command again resumes: nothing left to run
    assert main(argv) == 0
    assert "0 run (none), 3 already in the store" in capsys.readouterr().err
    assert main(["report", "--store", str(store), "--out", str(reports)]) == 0
    for name in ("README.md", "results.csv", "time_vs_seq_len.png", "memory_vs_seq_len.png"):
        assert (reports / "cpu" / name).is_file(), name
    readme = (reports / "cpu" / "README.md").read_text()
    assert "sbbench sweep --gpu cpu --grid" in readme  # the command that made the rows
    assert "sbbench report --store" in readme


def test_model_only_sweep_for_a_gpu_that_is_not_here(tmp_path, capsys):
    store = tmp_path / "r.sqlite"
    assert main(["sweep", "--gpu", "h100-sxm", "--model-only", "--grid", "full",
                 "--seq-len", "4096,8192", "--head-dim", "128", "--methods",
                 "exact,scatterbrain", "--features", "64", "--bucket-size", "64,128",
                 "--hashes", "1", "--store", str(store),
                 "--report", "--report-out", str(tmp_path / "reports")]) == 0
    assert "report written to" in capsys.readouterr().err
    readme = (tmp_path / "reports" / "h100-sxm" / "modeled" / "README.md").read_text()
    # the table says how each time was modeled, the header where the calibration comes from
    assert re.search(r"\| modeled ms +\| modeled as +\|", readme)
    assert re.search(r"\| exact +\| torch +\| - +\| ok +\| [0-9.]+ +\| calibrated +\|", readme)
    assert "- exact: modeled (calibrated on FlashAttention-3 (621 TFLOP/s)" in readme
    assert "- scatterbrain: modeled (roofline; no published scatterbrain measurement" in readme
    with Store(store) as opened:
        records = opened.records()
    assert records and {r.source for r in records} == {"modeled"}
    assert {r.device for r in records} == {"h100-sxm"}
    assert all(r.status == "ok" and r.time_median_ms > 0 for r in records)


def test_interrupted_sweep_keeps_rows_and_resumes(tmp_path, tiny_grid):
    """Ctrl-C (SIGINT) a real `sbbench sweep` process mid-run, then rerun it."""
    store = tmp_path / "r.sqlite"
    argv = ["sweep", "--gpu", "cpu", "--grid", tiny_grid, "--store", str(store),
            "--no-memory", "--no-progress", "--rep-ms", "400", "--seq-len", "64,128"]
    proc = subprocess.Popen([sys.executable, "-m", "sbbench.cli", *argv], cwd=ROOT,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 90
    rows = 0
    while time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
        try:
            with Store(store, readonly=True) as opened:
                rows = len(opened)
        except UserError:  # not created yet
            continue
        if rows >= 1:
            break
    assert rows >= 1, "the sweep wrote no row in time"
    os.kill(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    if proc.returncode == 0:
        pytest.skip("the sweep finished before it could be interrupted")
    assert proc.returncode == 130, err
    assert "interrupted; results written so far are kept" in err
    with Store(store) as opened:
        before = {r.key(): r for r in opened.records()}
        assert opened.sweeps()[-1]["outcome"] == "interrupted"
    assert 1 <= len(before) < 6
    assert main([*argv, "--rep-ms", "3"]) == 0  # resume: the rest, quickly
    with Store(store) as opened:
        after = {r.key(): r for r in opened.records()}
        assert opened.conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert len(after) == 6
    assert all(after[key] == record for key, record in before.items())


def test_dry_run_says_what_another_sweep_holds_and_what_cannot_fit(tiny_grid, tmp_path,
                                                                   capsys, monkeypatch):
    """A point another live sweep has claimed, and one the device's memory cannot hold,
    are named before anything runs."""
    import subprocess
    import sys

    from sbbench.sweep import guards
    from sbbench.sweep.grid import expand, load_grid
    from sbbench.sweep.runner import Settings, point_key
    from sbbench.sweep.store import Store

    store_path = tmp_path / "r.sqlite"
    point = expand(load_grid(tiny_grid)).points[1]
    key = point_key(point, Settings(device="cpu"))
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        with Store(store_path) as store:
            store.pid = other.pid  # the claim of another live process
            assert store.claim(key)
        monkeypatch.setattr(guards, "device_memory_bytes", lambda *a, **k: 1)
        assert main(["sweep", "--gpu", "cpu", "--grid", tiny_grid, "--store", str(store_path),
                     "--dry-run"]) == 0
    finally:
        other.kill()
    out = capsys.readouterr().out
    assert "1 of them are being measured by another sweep" in out
    assert "3 point(s) cannot fit in this device's memory" in out
