"""Reports: files, columns, plots, and the split of measured and modeled rows."""

from __future__ import annotations

import csv

import pytest
from conftest import record_row

from sbbench.analyze.report import pareto_front, write_report
from sbbench.core.errors import UserError
from sbbench.core.record import COLUMNS
from sbbench.sweep.store import Store


@pytest.fixture
def store_path(tmp_path):
    path = tmp_path / "results.sqlite"
    with Store(path) as store:
        sweep = store.start_sweep("sbbench sweep --gpu cpu --grid quick", "cpu")
        for seq_len in (256, 1024):
            scale = seq_len / 256
            store.add(record_row("exact", seq_len, time_ms=1.0 * scale**2, error=1e-7,
                          energy=0.001 * scale))
            store.add(record_row("performer", seq_len, time_ms=0.5 * scale, error=0.3))
            store.add(record_row("scatterbrain", seq_len, time_ms=0.8 * scale, error=0.1))
            store.add(record_row("lsh", seq_len, time_ms=0.9 * scale, error=0.5))  # dominated
        store.add(record_row("performer", 2048, status="failed"))
        store.add(record_row("exact", 256, source="modeled", time_ms=0.1, error=None))
        store.finish_sweep(sweep, "done")
    return path


def test_report_files_and_columns(store_path, tmp_path):
    out = tmp_path / "reports"
    written = write_report(store_path, out, command="sbbench report --store x")
    assert sorted(written) == sorted([out / "cpu", out / "cpu" / "modeled"])
    device = out / "cpu"
    for name in ("README.md", "results.csv", "time_vs_seq_len.png", "memory_vs_seq_len.png",
                 "energy_per_token.png"):
        assert (device / name).is_file(), name
    # modeled rows: no energy, no errors -> no energy plot, no Pareto plots
    assert not (device / "modeled" / "energy_per_token.png").exists()
    assert not (device / "modeled" / "pareto").exists()
    assert len(list((device / "pareto").glob("*.png"))) == 2
    with open(device / "results.csv") as handle:
        reader = csv.DictReader(handle)
        assert reader.fieldnames == list(COLUMNS)
        rows = list(reader)
    assert len(rows) == 9 and {r["source"] for r in rows} == {"measured"}
    text = (device / "README.md").read_text()
    assert "sbbench report --store x" in text and "sbbench sweep --gpu cpu --grid quick" in text
    assert "Test CPU" in text and "torch 2.x" in text
    assert "RuntimeError: boom" in text  # failed points listed with their reason
    assert "| method" in text and "Pareto front" in text
    modeled = (out / "cpu" / "modeled" / "README.md").read_text()
    assert "cost model" in modeled and "not measured" in modeled


def test_pareto_front_drops_dominated_points(store_path):
    with Store(store_path) as store:
        frame = store.to_dataframe()
    shape = frame[(frame["seq_len"] == 1024) & (frame["source"] == "measured")]
    assert set(pareto_front(shape)["method"]) == {"exact", "performer", "scatterbrain"}


def test_report_errors(tmp_path, store_path):
    with pytest.raises(UserError, match="does not exist"):
        write_report(tmp_path / "missing.sqlite", tmp_path / "out")
    Store(tmp_path / "empty.sqlite").close()
    with pytest.raises(UserError, match="no results yet"):
        write_report(tmp_path / "empty.sqlite", tmp_path / "out")
    with pytest.raises(UserError, match="it has: cpu"):
        write_report(store_path, tmp_path / "out", devices=["h100-sxm"])
