"""Ratio mode with paired reference samples (CPU sweeps): each time sample divided by
the calibration kernel's sample taken right after it."""

from __future__ import annotations

import pytest

from sbbench.analyze.regress import compare
from sbbench.analyze.results import ResultSet, choose_reference, ratio_samples
from sbbench.core.errors import UserError
from sbbench.core.record import Record


def row(method: str, samples, reference, seq_len: int = 256) -> Record:
    return Record(device="cpu", method=method, backend="torch", seq_len=seq_len,
                  head_dim=64, batch=1, heads=4, dtype="float32", causal=False,
                  n_features=64 if method == "performer" else 0, bucket_size=0, n_hashes=0,
                  kernel_config="", inputs="clustered:t=1", code_version="v",
                  source="measured", time_samples_ms=list(samples),
                  reference_samples_ms=list(reference),
                  time_median_ms=sorted(samples)[len(samples) // 2])


def test_paired_ratios_cancel_load_that_moves_during_the_run():
    """The machine got 3x busier between the baseline and the current run (both the
    method and the calibration kernel slowed): no regression. A 1.3x slowdown of the
    method alone, under the same load shift, is caught."""
    base_ref = [2.0, 2.1, 1.9, 2.0, 2.05, 1.95, 2.0, 2.0]
    busy_ref = [6.0 * r / 2.0 for r in base_ref]
    rows_base = [row("exact", [r * 0.5 for r in base_ref], base_ref),
                 row("performer", [r * 1.0 for r in base_ref], base_ref),
                 row("exact", [r * 1.5 for r in base_ref], base_ref, 512),
                 row("performer", [r * 3.0 for r in base_ref], base_ref, 512)]
    same = [row(r.method, [s * 3.0 for s in r.time_samples_ms], busy_ref, r.seq_len)
            for r in rows_base]
    slow = [row(r.method, [s * 3.0 * (1.3 if r.method == "performer" else 1.0)
                           for s in r.time_samples_ms], busy_ref, r.seq_len)
            for r in rows_base]
    base = ResultSet(rows_base, label="base")
    assert choose_reference(base, ResultSet(same)) == "paired"
    ratios = ratio_samples(base, "paired")
    performer_256 = next(k for k in ratios if k[1] == "performer" and k[3] == 256)
    assert ratios[performer_256][0] == pytest.approx([1.0] * len(base_ref))
    assert compare(base, ResultSet(same), noise_z=0).ok
    result = compare(base, ResultSet(slow), noise_z=0)
    flagged = {f.point.split()[0] for f in result.regressions if f.metric == "time"}
    assert flagged == {"performer"} and result.reference == "paired"


def test_paired_needs_every_row_paired():
    paired = ResultSet([row("exact", [1.0, 1.1, 1.2], [2.0, 2.0, 2.0])])
    unpaired = ResultSet([row("exact", [1.0, 1.1, 1.2], [])])
    assert choose_reference(paired, unpaired) == "exact"
    with pytest.raises(UserError, match="paired"):
        choose_reference(paired, unpaired, "paired")
    assert choose_reference(paired, paired, "paired") == "paired"
