"""Budget selection (sbbench.analyze.selection, `sbbench select`) on hand-made results: Pareto
fronts, the cheapest budget per error target, where exact attention is faster, the
budgets section through tuned.py, and the command line."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import yaml

from sbbench import tuned
from sbbench.analyze.selection import (
    budget_entries,
    candidates,
    cheapest_meeting,
    pareto_fronts,
    pareto_mask,
    parse_targets,
    select,
)
from sbbench.analyze.selection_report import budgets_markdown
from sbbench.analyze.thresholds import exact_thresholds, threshold_along
from sbbench.cli.main import main
from sbbench.core.errors import UserError
from sbbench.core.record import COLUMNS, Record
from sbbench.core.types import Budget
from sbbench.sweep.store import Store

SIZES = {"exact": (0, 0, 0), "p16": ("performer", 16, 0, 0), "p64": ("performer", 64, 0, 0),
         "l32": ("lsh", 0, 32, 1), "s64": ("scatterbrain", 32, 32, 1),
         "s128": ("scatterbrain", 64, 64, 2)}


def _record(name, seq_len, time_ms, error, *, head_dim=64, batch=1, heads=4, status="ok",
            source="measured", inputs="clustered:t=1", memory=None, energy=None,
            code_version="v1", timestamp="2025-01-01T00:00:00+00:00", device="cpu"):
    method, n_features, bucket_size, n_hashes = (("exact", 0, 0, 0) if name == "exact"
                                                  else SIZES[name])
    return Record(device=device, method=method, backend="torch", seq_len=seq_len,
                  head_dim=head_dim, batch=batch, heads=heads, dtype="float32", causal=False,
                  n_features=n_features, bucket_size=bucket_size, n_hashes=n_hashes,
                  kernel_config="", inputs=inputs, code_version=code_version, source=source,
                  status=status, time_median_ms=time_ms,
                  time_p20_ms=None if time_ms is None else time_ms * 0.95,
                  time_p80_ms=None if time_ms is None else time_ms * 1.05,
                  error_mean=error, error_std=None if error is None else error / 10,
                  peak_memory_delta_bytes=memory, energy_j=energy, timestamp=timestamp)


def _frame(records) -> pd.DataFrame:
    return pd.DataFrame([r.as_dict() for r in records], columns=list(COLUMNS))


# One shape (seq_len 1024): time and error of each candidate.
#   exact  10.0 ms  1e-7      p16 1.0 ms 0.20     p64 2.0 ms 0.08
#   l32     3.0 ms  0.09 (dominated by p64)      s64 4.0 ms 0.03    s128 8.0 ms 0.008
SHAPE_1024 = [("exact", 10.0, 1e-7), ("p16", 1.0, 0.20), ("p64", 2.0, 0.08),
              ("l32", 3.0, 0.09), ("s64", 4.0, 0.03), ("s128", 8.0, 0.008)]


def _one_shape(**extra):
    return [_record(name, 1024, t, e, **extra) for name, t, e in SHAPE_1024]


def _label(row) -> str:
    return {("exact", 0): "exact", ("performer", 16): "p16", ("performer", 64): "p64",
            ("lsh", 0): "l32", ("scatterbrain", 32): "s64",
            ("scatterbrain", 64): "s128"}[(row["method"], row["n_features"])]


# ---- Pareto -----------------------------------------------------------------------------

def test_pareto_mask_on_a_hand_made_set():
    values = np.array([[1, 5], [2, 3], [3, 3], [2, 3], [4, 1], [5, 5]])
    # [3,3] is beaten by [2,3]; [5,5] by everything; the two equal [2,3] both stay.
    assert pareto_mask(values).tolist() == [True, True, False, True, True, False]
    three = np.array([[1, 1, 9], [1, 1, 1], [2, 0.5, 9]])
    assert pareto_mask(three).tolist() == [False, True, True]
    with pytest.raises(ValueError):
        pareto_mask(np.array([[1.0, math.nan]]))


def test_pareto_front_of_error_vs_time_and_with_memory():
    memory = {"exact": 1, "p16": 5, "p64": 6, "l32": 2, "s64": 7, "s128": 9}
    records = [_record(name, 1024, t, e, memory=memory[name] << 20)
               for name, t, e in SHAPE_1024]
    fronts = pareto_fronts(candidates(_frame(records)))
    on_front = {_label(r) for _, r in fronts.iterrows() if r["on_front"]}
    assert on_front == {"exact", "p16", "p64", "s64", "s128"}  # l32 is beaten by p64
    on_all = {_label(r) for _, r in fronts.iterrows() if r["on_front_all"]}
    assert on_all == on_front | {"l32"}  # ... but uses the least memory of the approximations
    assert set(fronts["front_objectives"]) == {"error,time_ms,memory_bytes"}


# ---- candidates ---------------------------------------------------------------------------

def test_candidates_keep_measured_ok_rows_latest_version_and_worst_input():
    records = _one_shape() + [
        _record("p16", 1024, None, None, status="failed"),  # same key as p16: a failure
        _record("l32", 1024, 0.5, None, source="modeled"),  # the cost model: no error
        _record("p64", 1024, 2.2, 0.12, inputs="gaussian:t=1"),  # a harder regime
        _record("s64", 1024, 3.0, 0.02, code_version="v2",  # a newer measurement
                timestamp="2025-06-01T00:00:00+00:00"),
        _record("s64", 1024, 1.0, 0.02, device="h100-sxm"),
    ]
    frame = _frame(records)
    cands = candidates(frame, device="cpu")
    by_label = {_label(r): r for _, r in cands.iterrows()}
    assert set(by_label) == {"exact", "p16", "p64", "l32", "s64", "s128"}
    assert by_label["p64"]["error"] == pytest.approx(0.12)  # worst of the two regimes
    assert by_label["p64"]["time_ms"] == pytest.approx(2.1)  # median over regimes
    assert by_label["p64"]["inputs"] == "clustered:t=1,gaussian:t=1"
    assert by_label["s64"]["time_ms"] == pytest.approx(3.0)  # v2 only (latest)
    assert by_label["l32"]["time_ms"] == pytest.approx(3.0)  # the modeled row is ignored
    assert set(candidates(frame)["device"]) == {"cpu", "h100-sxm"}


# ---- error targets ------------------------------------------------------------------------

def test_cheapest_budget_meeting_each_target():
    choices = cheapest_meeting(candidates(_frame(_one_shape())), (0.01, 0.05, 0.1, 0.5))
    got = {row["max_error"]: _label(row) for _, row in choices.iterrows()}
    assert got == {0.01: "s128", 0.05: "s64", 0.1: "p64", 0.5: "p16"}
    assert (choices["exact_time_ms"] == 10.0).all() and choices["met"].all()


def test_exact_is_chosen_where_it_is_fastest_and_unmet_targets_say_so():
    short = [_record("exact", 128, 0.5, 1e-7), _record("p16", 128, 0.8, 0.2),
             _record("s64", 128, 1.2, 0.03)]
    choices = cheapest_meeting(candidates(_frame(short)), (0.05, 0.5))
    assert list(choices["method"]) == ["exact", "exact"]
    no_exact = [_record("p16", 128, 0.8, 0.2)]
    choices = cheapest_meeting(candidates(_frame(no_exact)), (0.05, 0.5))
    assert choices["met"].tolist() == [False, True]
    assert math.isnan(choices["exact_time_ms"].iloc[1])


def test_parse_targets():
    assert parse_targets("1%,2%, 0.05,10%") == (0.01, 0.02, 0.05, 0.1)
    with pytest.raises(ValueError):
        parse_targets("5x")
    with pytest.raises(ValueError):
        parse_targets("0")


# ---- where exact is faster ----------------------------------------------------------------

def test_threshold_with_a_crossover():
    # exact ~ L^2, best approximation ~ L: ratio = 0.004 L / (1e-5 L^2 ... ) crosses 1 at
    # L = 400: time_exact = L^2 / 160000 ms, time_approx = L / 400 ms.
    lengths = [128, 256, 512, 1024, 2048]
    exact = [length**2 / 160000 for length in lengths]
    approx = [length / 400 for length in lengths]
    result = threshold_along(lengths, exact, approx)
    assert result.exact_faster_below == 512 and result.monotone
    assert result.crossover == pytest.approx(400.0, rel=1e-9)  # exact in log-log
    assert "below 512" in result.describe()


def test_threshold_edge_cases():
    lengths = [256, 512, 1024]
    exact_always = threshold_along(lengths, [1, 2, 4], [2, 3, 5])
    assert exact_always.exact_faster_below is None
    assert "every measured length" in exact_always.describe()
    approx_always = threshold_along(lengths, [2, 4, 8], [1, 1, 1])
    assert approx_always.exact_faster_below == 256 and approx_always.crossover is None
    bumpy = threshold_along([256, 512, 1024, 2048], [1, 2, 4, 8], [2, 1, 5, 4])
    assert bumpy.exact_faster_below == 2048 and not bumpy.monotone
    # an approximation missing at a length (none meets the target) counts as exact faster
    missing = threshold_along(lengths, [1, 2, 4], [None, math.nan, 2])
    assert missing.exact_faster_below == 1024 and missing.ratios[0] == math.inf
    assert threshold_along([256], [math.nan], [1.0]).seq_lens == ()


def test_exact_thresholds_per_family_and_target():
    records = []
    for length in (256, 512, 1024, 2048):
        records += [_record("exact", length, length**2 / 160000, 1e-7),
                    _record("p16", length, length / 800, 0.2),  # fast, inaccurate
                    _record("s64", length, length / 400, 0.03)]  # slower, accurate
    thresholds = {t.criterion: t for t in exact_thresholds(candidates(_frame(records)),
                                                           (0.01, 0.05))}
    assert thresholds["any budget"].exact_faster_below == 256  # p16 wins everywhere
    assert thresholds["max_error <= 0.05"].exact_faster_below == 512  # s64 from 400
    assert thresholds["max_error <= 0.01"].exact_faster_below is None  # only exact


# ---- the budgets section ------------------------------------------------------------------

def test_budget_entries_pass_the_schema_and_answer_lookups(tmp_path):
    records = _one_shape() + [_record(name, 1024, t * 8, e, batch=8)  # bigger batch wins
                              for name, t, e in SHAPE_1024]
    records += [_record("exact", 128, 0.5, 1e-7), _record("p16", 128, 0.8, 0.2)]
    selection = select(_frame(records), device="cpu", targets=(0.01, 0.05, 0.5))
    entries = selection.entries
    assert {(e["seq_len"], e["batch"]) for e in entries} == {(1024, 8), (128, 1)}
    assert len(entries) == 6
    for entry in entries:
        for key in ("seq_len", "head_dim", "max_error", "method", "n_features",
                    "bucket_size", "n_hashes", "error", "time_ms", "exact_time_ms"):
            assert key in entry
    path = tuned.write_section("cpu", "budgets", entries, metadata={"date": "now"},
                               folder=tmp_path)
    table = tuned.load("cpu", folder=tmp_path)
    assert len(table.budgets) == 6 and path.exists()
    lookup = tuned.lookup_budget
    assert lookup("cpu", 1024, 64, 0.05, folder=tmp_path) == Budget("scatterbrain", 32, 32, 1)
    assert lookup("cpu", 1024, 64, 0.5, folder=tmp_path) == Budget("performer", 16)
    assert lookup("cpu", 1024, 64, 0.01, folder=tmp_path) == Budget("scatterbrain", 64, 64, 2)
    assert lookup("cpu", 128, 64, 0.5, folder=tmp_path) == Budget("exact")
    assert lookup("cpu", 900, 64, 0.05, folder=tmp_path) == Budget("scatterbrain", 32, 32, 1)


def test_budget_entries_skip_unmet_targets():
    choices = cheapest_meeting(candidates(_frame([_record("p16", 128, 0.8, 0.2)])),
                               (0.05, 0.5))
    entries = budget_entries(choices)
    assert [e["max_error"] for e in entries] == [0.5]
    assert entries[0]["exact_time_ms"] is None and "speedup" not in entries[0]


# ---- the command line ---------------------------------------------------------------------

def _store(path, records):
    with Store(path) as store:
        for record in records:
            store.add(record)
    return str(path)


def test_select_command_writes_the_budgets_section_and_the_report(tmp_path, capsys):
    records = []
    for length in (256, 1024):
        records += [_record(name, length, t * length / 1024, e) for name, t, e in SHAPE_1024]
    store = _store(tmp_path / "r.sqlite", records)
    folder, reports = tmp_path / "tuned", tmp_path / "reports"
    folder.mkdir()
    (folder / "cpu.yaml").write_text(yaml.safe_dump({
        "schema_version": 1, "device": "cpu",
        "kernels": {"torch:scatterbrain": {"default": {"chunk_elements": 1024},
                                           "buckets": []}}}))
    argv = ["select", "--gpu", "cpu", "--store", store, "--tuning-dir", str(folder),
            "--report-out", str(reports), "--targets", "1%,5%"]
    assert main(argv) == 0
    data = yaml.safe_load((folder / "cpu.yaml").read_text())
    assert "torch:scatterbrain" in data["kernels"]  # the tuner's section is kept
    assert len(data["budgets"]) == 4
    meta = data["metadata"]["budgets"]
    assert meta["command"].startswith("sbbench select --gpu cpu") and meta["date"]
    assert {t["against"] for t in meta["exact_faster_below"]} == {
        "any budget", "max_error <= 0.01", "max_error <= 0.05"}
    text = (reports / "cpu" / "budgets.md").read_text()
    for part in ("# Budget selection: cpu", "- command: `sbbench select", "- date: ",
                 "- device: cpu", "## Cheapest budget meeting each error target",
                 "## Where exact attention is simply faster", "## Pareto fronts"):
        assert part in text
    capsys.readouterr()
    assert main(argv + ["--dry-run"]) == 0
    assert "# Budget selection: cpu" in capsys.readouterr().out


def test_select_command_user_errors(tmp_path, capsys):
    assert main(["select", "--gpu", "cpu", "--store", str(tmp_path / "none.sqlite")]) == 2
    assert "does not exist" in capsys.readouterr().err
    store = _store(tmp_path / "r.sqlite", _one_shape(device="h100-sxm"))
    assert main(["select", "--gpu", "cpu", "--store", store, "--dry-run"]) == 2
    assert "it has: h100-sxm" in capsys.readouterr().err
    assert main(["select", "--gpu", "cpu", "--store", store, "--targets", "x"]) == 2
    assert main(["select", "--gpu", "nosuchgpu", "--store", store]) == 2
    modeled = _store(tmp_path / "m.sqlite", [_record("p16", 128, 0.8, None, source="modeled")])
    assert main(["select", "--gpu", "cpu", "--store", modeled, "--dry-run"]) == 2
    assert "measured" in capsys.readouterr().err


# ---- per-head statistics and honest "not reachable" answers ---------------------------------

def test_selection_targets_a_per_head_statistic():
    """A budget whose mean error meets the target but whose worst heads do not is chosen
    on the mean and refused on p90 / max."""
    exact = _record("exact", 256, 10.0, 1e-7)
    approx = _record("p16", 256, 1.0, 0.05)
    approx.error_heads = [0.01] * 8 + [0.2, 0.3]
    approx.error_p50, approx.error_p90, approx.error_max = 0.01, 0.21, 0.3
    frame = _frame([exact, approx])
    on_mean = cheapest_meeting(candidates(frame, error_stat="mean"), (0.1,))
    assert on_mean["method"].tolist() == ["performer"] and on_mean["reachable"].all()
    on_p90 = cheapest_meeting(candidates(frame, error_stat="p90"), (0.1,))
    assert on_p90["method"].tolist() == ["exact"]
    assert not on_p90["reachable"].any()
    assert on_p90["best_approx"].tolist() == ["performer f=16"]
    assert on_p90["best_approx_error"].tolist() == [pytest.approx(0.21)]
    with pytest.raises(UserError):
        candidates(frame, error_stat="p99")


def test_unreachable_targets_are_written_with_the_best_error(tmp_path):
    records = [_record("exact", 256, 10.0, 1e-7), _record("p16", 256, 1.0, 0.4),
               _record("p64", 256, 20.0, 0.05)]
    selection = select(_frame(records), device="cpu", targets=(0.01, 0.1, 0.5),
                       error_stat="mean")
    by_target = {e["max_error"]: e for e in selection.entries}
    assert by_target[0.01]["method"] == "exact" and by_target[0.01]["reachable"] is False
    assert by_target[0.01]["best_approx"] == "performer f=64"
    assert by_target[0.01]["best_approx_error"] == pytest.approx(0.05)
    # reachable, but exact is faster than the approximation meeting it
    assert by_target[0.1]["method"] == "exact" and by_target[0.1]["reachable"] is True
    assert by_target[0.5]["method"] == "performer" and by_target[0.5]["reachable"] is True
    assert any("not reachable" in note for note in selection.notes)
    text = budgets_markdown(selection, device="cpu", command="c", date="d", store="s")
    assert "not reachable (best: performer f=64 at 5%)" in text
    # the tuning file round-trips the new keys
    path = tuned.write_section("cpu", "budgets", selection.entries, folder=tmp_path)
    entries = tuned.load("cpu", folder=tmp_path).budgets
    unreachable = [e for e in entries if e.reachable is False]
    assert path.is_file() and len(unreachable) == 1
    assert unreachable[0].best_approx_error == pytest.approx(0.05)
