"""scripts/device_check.py (the GPU session's one command) on the CPU: argument handling
and a dry run through the interpreter that writes the table, JSON and CSV."""

from __future__ import annotations

import csv
import importlib.util
import json
from pathlib import Path

import pytest
from sbbench.kernels.testing import kernels_for_tests

kernels = kernels_for_tests()
if not getattr(kernels, "HAVE_TRITON", False):
    pytest.skip("triton is not installed", allow_module_level=True)

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "device_check.py"


@pytest.fixture(scope="module")
def device_check():
    spec = importlib.util.spec_from_file_location("device_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_arguments(device_check):
    gpu = device_check.parse_args(["out"])
    assert gpu.seqs == [32768, 4096, 8192, 16384, 65536] and gpu.head_dims == [64, 128]
    assert (gpu.heads, gpu.n_features, gpu.bucket_size) == (16, 256, 64)
    dry = device_check.parse_args(["out", "--dry-run", "--cases", "sdpa_flash, triton_lsh"])
    assert dry.seqs == [64] and dry.heads == 2 and dry.cases == ["sdpa_flash", "triton_lsh"]
    with pytest.raises(SystemExit):
        device_check.parse_args(["out", "--n-features", "7"])
    with pytest.raises(SystemExit):
        device_check.parse_args([])


def test_dry_run_writes_table_json_and_csv(device_check, tmp_path):
    rc = device_check.main([str(tmp_path), "--dry-run", "--skip-tests", "--seqs", "40",
                            "--cases", "sdpa_flash,triton_scatterbrain,kernel_sparse_round"])
    assert rc == 0
    report = json.loads((tmp_path / "device_check.json").read_text())
    names = [r["name"] for r in report["records"]]
    assert names == ["sdpa_flash", "triton_scatterbrain", "kernel_sparse_round"]
    assert all("median_ms" in r for r in report["records"]), report["records"]
    assert report["records"][1]["speedup_vs_sdpa"] > 0
    rows = list(csv.DictReader((tmp_path / "device_check.csv").open()))
    assert len(rows) == 3 and rows[0]["name"] == "sdpa_flash"
    table = (tmp_path / "device_check.md").read_text()
    assert "triton_scatterbrain" in table and "target point not measured" in table
    assert device_check.main([str(tmp_path), "--dry-run", "--skip-tests", "--seqs", "40",
                              "--cases", "flash"]) == 2
