"""The sweep report's opening recommendation, its error scale, one row per point across
code versions, the noise column, no machine paths, and a budgets.md that matches."""

from __future__ import annotations

import pandas as pd
from conftest import record_row

from sbbench.analyze.recommend import recommend
from sbbench.analyze.report import public_text, write_report
from sbbench.analyze.report_tables import shape_table
from sbbench.core.types import budget_label
from sbbench.sweep.store import Store


def _store(path, extra=()):
    with Store(path) as store:
        sweep = store.start_sweep(f"sbbench sweep --gpu cpu --store {path}", "cpu")
        # 256: performer meets 0.1 and beats exact
        store.add(record_row("exact", 256, time_ms=1.0, error=1e-7))
        store.add(record_row("performer", 256, time_ms=0.5, error=0.05))
        store.add(record_row("lsh", 256, time_ms=0.4, error=0.5))
        # 512: nothing meets 0.1
        store.add(record_row("exact", 512, time_ms=1.0, error=1e-7))
        store.add(record_row("performer", 512, time_ms=0.5, error=0.5))
        store.add(record_row("lsh", 512, time_ms=0.6, error=1.3))
        # 1024: the approximation meeting 0.1 is slower than exact
        store.add(record_row("exact", 1024, time_ms=1.0, error=1e-7))
        store.add(record_row("scatterbrain", 1024, time_ms=2.0, error=0.05))
        for record in extra:
            store.add(record)
        store.finish_sweep(sweep, "done")
    return path


def _shape(frame, seq_len):
    rows = frame[frame["seq_len"] == seq_len].copy()
    rows["budget"] = [budget_label(r) for r in rows.itertuples()]
    return rows


def test_recommendation_per_shape(tmp_path):
    with Store(_store(tmp_path / "r.sqlite"), readonly=True) as store:
        frame = store.to_dataframe()
    assert recommend(_shape(frame, 256)).startswith("performer f=32: the fastest with error "
                                                    "<= 0.1")
    text = recommend(_shape(frame, 512))
    assert text.startswith("exact: no approximation reached error <= 0.1; best was "
                           "performer at budget f=32")
    assert recommend(_shape(frame, 1024)).startswith("exact (1 ms)")
    assert recommend(_shape(frame, 512), target=0.6).startswith("performer")


def test_report_opens_with_recommendations_and_the_error_scale(tmp_path):
    out = tmp_path / "reports"
    write_report(_store(tmp_path / "r.sqlite"), out, command="sbbench report")
    text = (out / "cpu" / "README.md").read_text()
    assert text.index("## Recommendation") < text.index("## Results per shape")
    assert "returning all zeros scores" in text and "worse than returning nothing" in text
    assert text.count("- **seq_len") == 3


def test_one_row_per_point_across_code_versions(tmp_path):
    newer = record_row("performer", 256, time_ms=0.25, error=0.05)
    newer.code_version, newer.timestamp = "0.1.0+newer", "2026-02-01T00:00:00"
    out = tmp_path / "reports"
    write_report(_store(tmp_path / "r.sqlite", [newer]), out)
    text = (out / "cpu" / "README.md").read_text()
    assert "from 2 code versions; 1 older row(s) of the same points left out" in text
    section = text[text.index("### seq_len 256"):text.index("### seq_len 512")]
    assert section.count("| performer") == 1 and "0.25" in section
    assert len(pd.read_csv(out / "cpu" / "results.csv")) == 8


def test_no_absolute_paths_and_a_matching_budgets_file(tmp_path):
    out = tmp_path / "reports"
    (out / "cpu").mkdir(parents=True)
    (out / "cpu" / "budgets.md").write_text("STALE budgets of another run\n")
    store = _store(tmp_path / "r.sqlite")
    write_report(store, out, command=f"sbbench report --store {store} --out {out}")
    text = (out / "cpu" / "README.md").read_text()
    assert str(tmp_path) not in text and "`r.sqlite`" in text
    budgets = (out / "cpu" / "budgets.md").read_text()
    assert "STALE" not in budgets and "# Budget selection: cpu" in budgets
    assert str(tmp_path) not in budgets
    assert "[budgets.md](budgets.md)" in text
    assert public_text("run /home/me/x.sqlite and ./rel/y") == "run x.sqlite and ./rel/y"


def test_noise_column_only_where_recorded():
    frame = pd.DataFrame([record_row(method, 256).as_dict() for method in ("exact", "performer")])
    frame["budget"] = [budget_label(r) for r in frame.itertuples()]
    assert "noise" not in shape_table(frame)
    frame["noise"] = ["±2%", ""]
    table = shape_table(frame)
    assert table.splitlines()[0].rstrip(" |").endswith("noise") and "±2%" in table


def test_the_report_says_what_to_measure_next_when_only_hash_buckets_were_measured(tmp_path):
    out = tmp_path / "reports"
    write_report(_store(tmp_path / "r.sqlite"), out, command="sbbench report")
    text = (out / "cpu" / "README.md").read_text()
    assert ("`sbbench sweep --gpu cpu --grid supports --store r.sqlite --report`"
            in " ".join(text.split()))
    # with a k-means row in the store, or every target reached, no hint
    kmeans = record_row("scatterbrain", 512, time_ms=3.0, error=0.3)
    kmeans.sparse, kmeans.sink, kmeans.window = "kmeans", 4, 28
    write_report(_store(tmp_path / "k.sqlite", extra=[kmeans]), tmp_path / "k",
                 command="sbbench report")
    assert "--grid supports" not in (tmp_path / "k" / "cpu" / "README.md").read_text()
    from sbbench.analyze.recommend import next_step
    with Store(_store(tmp_path / "a.sqlite"), readonly=True) as store:
        frame = store.to_dataframe()
    assert next_step(frame, targets=(2.0,)) == ""
    assert next_step(frame, targets=(0.1,)).startswith("Not reached here")
