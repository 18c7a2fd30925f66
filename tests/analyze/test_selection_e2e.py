"""Selection on end-to-end rows (sbbench e2e --store): alone they select like any rows;
mixed with per-call rows of a sweep they are refused (their times and errors measure
different things)."""

from __future__ import annotations

import pandas as pd
import pytest

from sbbench.analyze.selection import select
from sbbench.core.errors import UserError
from sbbench.core.record import Record


def row(method: str, inputs: str, time_ms: float, error: float, n_features: int = 0):
    return Record(device="cpu", method=method, backend="torch", seq_len=64, head_dim=16,
                  batch=1, heads=2, dtype="float32", causal=True, n_features=n_features,
                  bucket_size=0, n_hashes=0, kernel_config="", inputs=inputs,
                  code_version="v", source="measured", time_median_ms=time_ms,
                  error_mean=error, error_p50=error, error_p90=error, error_max=error,
                  timestamp="2026-11-30T00:00:00+00:00").as_dict()


def test_e2e_rows_select_on_their_error_and_say_so():
    from sbbench.analyze.selection_report import budgets_markdown

    frame = pd.DataFrame([row("exact", "e2e:toy@ab", 10.0, 0.0),
                          row("performer", "e2e:toy@ab", 4.0, 0.03, 8)])
    selection = select(frame, device="cpu", targets=(0.01, 0.05))
    chosen = dict(zip(selection.choices["max_error"], selection.choices["method"],
                      strict=True))
    assert chosen == {0.01: "exact", 0.05: "performer"}
    text = budgets_markdown(selection, device="cpu", command="c", date="d", store="s")
    assert "end-to-end error of the whole model" in text


def test_mixed_e2e_and_per_call_rows_are_refused():
    frame = pd.DataFrame([row("exact", "e2e:toy@ab", 10.0, 0.0),
                          row("exact", "clustered:t=1", 1.0, 0.0)])
    with pytest.raises(UserError, match="separate stores"):
        select(frame, device="cpu")


def test_e2e_records_store_a_nonnegative_error_and_keep_the_raw_value():
    from sbbench.models.e2e import e2e_records

    base = dict(model="m", method="exact", n_features=0, bucket_size=0, n_hashes=0,
                tokens=16, seed=0, seconds=0.5, layers="0,1", heads=2, head_dim=8,
                causal=False, decoder=False, e2e_error=-4.4e-16)
    (record,) = e2e_records([base], text_sha256="cd" * 32)
    assert record.error_p90 == record.error_mean == 0.0
    assert "-4.4e-16" in record.reason and record.inputs == "e2e:m@cdcdcdcd"
    assert record.time_samples_ms == [500.0] and not record.causal
