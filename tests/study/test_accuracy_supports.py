"""The accuracy study's support rows (k-means + sink + window, key centroids): their
budgets, that they run through the study's call path with finite errors, that the
headline rows do not move, and that the report's sentences about them come from the rows."""

from __future__ import annotations

import math
import re

import pandas as pd
import pytest
import torch

from sbbench.cli.accuracy import _DESCRIPTION
from sbbench.cli.main import main
from sbbench.core.types import Problem
from sbbench.measure.calls import call_method, draw_randomness
from sbbench.measure.inputs import make_qkv
from sbbench.study.accuracy import METHODS, StudyConfig, run_study
from sbbench.study.findings import _summary_lines
from sbbench.study.report import FILES, load_result, write_outputs
from sbbench.study.supports import SUPPORT_MIN_BUDGET, SUPPORTS, support_budget
from sbbench.study.tables import ratios_table

CONFIG = StudyConfig(seq_len=64, head_dim=16, heads=2, budget=16, seeds=(0, 1),
                     temperatures=(0.5, 4.0), kinds=("clustered",), split_sweep=False)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def result():
    return run_study(CONFIG)


@pytest.mark.parametrize("budget", [9, 11, 16, 33, 64, 128])
def test_support_budgets_use_exactly_the_budget(budget):
    for name in SUPPORTS:
        b = support_budget(name, budget)
        if budget < SUPPORT_MIN_BUDGET[name]:
            assert b is None
            continue
        assert b.memory_per_query == budget and b.sparse == "kmeans" and b.sink == 4
        assert b.bucket_size >= 1 and b.window >= 1 and b.n_hashes == 1
    assert support_budget("scatterbrain_kmeans", 64).n_features == 0
    centroids = support_budget("scatterbrain_centroids", 128)  # c32+kmeans48+sink4+window44
    assert (centroids.method, centroids.n_features, centroids.bucket_size,
            centroids.window) == ("scatterbrain_centroids", 32, 48, 44)
    assert support_budget("scatterbrain_kmeans", 8) is None
    assert support_budget("scatterbrain_centroids", 10) is None


@pytest.mark.parametrize("name", SUPPORTS)
def test_support_weights_are_normalised_and_give_the_output(name):
    """return_weights=True on the study's call path: rows sum to 1, output = weights @ v."""
    q, k, v = make_qkv(Problem(48, 8, heads=2, dtype="float64"), seed=3, kind="clustered",
                       temperature=2.0)
    budget = support_budget(name, 16)
    drawn = draw_randomness(budget, 8, torch.Generator().manual_seed(1))
    out, weights = call_method(budget, q, k, v, backend="torch", return_weights=True,
                               **drawn.options())
    torch.testing.assert_close(weights.sum(-1), torch.ones(1, 2, 48, dtype=torch.float64))
    torch.testing.assert_close(out, weights @ v)


def test_support_rows_have_the_budget_finite_errors_and_no_bucket_mass(result):
    raw = result.raw
    rows = raw[raw["method"].isin(SUPPORTS)]
    assert len(rows) == 2 * 2 * len(SUPPORTS)  # temperatures x seeds x rows
    assert (rows["memory_per_query"] == CONFIG.budget).all()
    for column in ("attn_error", "unnorm_error", "output_error"):
        assert rows[column].map(math.isfinite).all(), column
    assert rows["mass_captured"].isna().all()  # not hash buckets: no bucket mass
    assert set(rows["detail"]) == {"k-means bucket 8 + sink 4 + window 4",
                                   "4 key centroids + k-means bucket 6 + sink 4 + window 2"}
    ratios = result.ratios.set_index(["kind", "temperature"])
    best = ratios[["performer", "lsh"]].min(axis=1)
    for name in SUPPORTS:
        mean = rows[rows["method"] == name].groupby(["kind", "temperature"])["attn_error"].mean()
        pd.testing.assert_series_equal(ratios[name], mean, check_names=False)
        pd.testing.assert_series_equal(ratios[f"{name}_ratio"], mean / best,
                                       check_names=False)


def test_headline_rows_do_not_depend_on_the_support_rows(result):
    without = run_study(StudyConfig(**{**CONFIG.__dict__, "supports": False}))
    assert not without.raw["method"].isin(SUPPORTS).any()
    main_rows = result.raw[~result.raw["method"].isin(SUPPORTS)].reset_index(drop=True)
    pd.testing.assert_frame_equal(main_rows, without.raw, check_exact=True)
    pd.testing.assert_frame_equal(result.ratios[without.ratios.columns], without.ratios,
                                  check_exact=True)


def test_summary_sentences_come_from_the_rows(result, tmp_path):
    lines = _summary_lines(result)
    for name in SUPPORTS:
        ratio = result.ratios[f"{name}_ratio"]
        line = next(line for line in lines if f"`{name}`" in line)
        wins = int((ratio < 1.0).sum())
        assert f"in {wins} of {len(ratio)} regimes" in line
        assert f"from {ratio.min():.2f} to {ratio.max():.2f}" in line
    # change the rows: the sentence follows them
    doctored = result.ratios.copy()
    doctored["scatterbrain_kmeans_ratio"] = [0.123, 4.56]
    lines = _summary_lines(type(result)(**{**result.__dict__, "ratios": doctored}))
    line = next(line for line in lines if "`scatterbrain_kmeans`" in line)
    assert "in 1 of 2 regimes (wins at clustered T = 0.5)" in line
    assert "from 0.12 to 4.56" in line
    # the report and its table carry them; a stored run renders them again
    paths = write_outputs(result, tmp_path, command="sbbench accuracy --test")
    report = paths["report"].read_text()
    assert all(f"`{name}`" in report for name in SUPPORTS)
    assert "SB k-means+sink+window (ratio)" in ratios_table(result)
    again, _ = load_result(tmp_path)
    assert _summary_lines(again) == _summary_lines(result)


def test_no_support_rows_without_them():
    config = StudyConfig(**{**CONFIG.__dict__, "temperatures": (1.0,), "seeds": (0,),
                            "oracles": False})
    none = run_study(StudyConfig(**{**config.__dict__, "supports": False}))
    assert set(none.raw["method"]) == set(METHODS)
    assert not any("_ratio" in c and c.startswith("scatterbrain_") for c in none.ratios)
    assert not any("`scatterbrain_" in line for line in _summary_lines(none))


def test_cli_skips_the_rows_below_their_budget_with_one_line(tmp_path, capsys):
    assert main(["accuracy", "--quick", "--seq-len", "32", "--budget", "10",
                 "--temperatures", "1", "--kinds", "gaussian", "--seeds", "1",
                 "--no-oracles", "--no-split-sweep", "--out", str(tmp_path)]) == 0
    err = capsys.readouterr().err
    notes = [line for line in err.splitlines() if "too small" in line]
    assert len(notes) == 1 and "scatterbrain_centroids (needs >= 11)" in notes[0]
    raw = pd.read_csv(tmp_path / FILES["raw"])
    assert set(raw["method"]) == {*METHODS, "scatterbrain_kmeans"}
    # the help names the least budget both rows need
    assert re.search(rf"--budget >= {max(SUPPORT_MIN_BUDGET.values())}\b",
                     " ".join(_DESCRIPTION.split()))


def test_cli_no_supports_is_recorded_in_the_command(tmp_path, capsys):
    assert main(["accuracy", "--quick", "--seq-len", "32", "--budget", "16",
                 "--temperatures", "1", "--kinds", "gaussian", "--seeds", "1",
                 "--no-oracles", "--no-supports", "--out", str(tmp_path)]) == 0
    report = (tmp_path / FILES["report"]).read_text()
    assert "--no-supports" in report and "were switched off" in report
    assert set(pd.read_csv(tmp_path / FILES["raw"])["method"]) == set(METHODS)
