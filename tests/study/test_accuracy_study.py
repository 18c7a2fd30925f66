"""The accuracy study: seeded inputs with a controlled temperature, error metrics, the
oracles (checked against brute force and torch.linalg), a tiny end-to-end run that writes
its files, and the CLI's one-line errors. Fast (seconds) on a 2-core CPU."""

from __future__ import annotations

import itertools
import math

import pandas as pd
import pytest
import torch

from sbbench.attention import draw_hashes, lsh_attention
from sbbench.cli.main import main
from sbbench.core.types import Problem
from sbbench.measure.accuracy import (
    mass_captured,
    mean_slice_error,
    relative_error,
    row_entropy,
    selected_pairs,
)
from sbbench.measure.inputs import make_qkv
from sbbench.study.accuracy import RAW_COLUMNS, StudyConfig, run_split_sweep, run_study
from sbbench.study.oracle import (
    leading_subspace,
    oracle_approximations,
    sparse_plus_lowrank,
    topk_sparse,
    truncated_svd,
)
from sbbench.study.report import FILES, load_result, write_outputs
from sbbench.study.summary import best_splits, regime_ratios, summarise

SMALL = Problem(seq_len=64, head_dim=16, heads=2, dtype="float64")


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One torch thread, as ``sbbench accuracy`` uses by default: on a busy 2-core machine
    two threads make the small LAPACK calls of the oracles many times slower (results
    change only by rounding)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def softmax_weights(q, k):
    return torch.softmax((q @ k.mT).double() / math.sqrt(q.shape[-1]), dim=-1)


# ---------------------------------------------------------------- inputs


@pytest.mark.parametrize("kind", ["gaussian", "clustered"])
def test_inputs_are_seeded_and_shaped(kind):
    problem = Problem(seq_len=40, head_dim=8, batch=2, heads=3, dtype="bfloat16")
    a = make_qkv(problem, seed=3, kind=kind, temperature=2.0)
    b = make_qkv(problem, seed=3, kind=kind, temperature=2.0)
    c = make_qkv(problem, seed=4, kind=kind, temperature=2.0)
    for x, y, z in zip(a, b, c, strict=True):
        assert x.shape == (2, 3, 40, 8) and x.dtype == torch.bfloat16
        assert torch.equal(x, y)
        assert not torch.equal(x, z)


@pytest.mark.parametrize("kind", ["gaussian", "clustered"])
def test_temperature_only_scales_q_and_k(kind):
    q1, k1, v1 = make_qkv(SMALL, seed=0, kind=kind, temperature=1.0)
    q4, k4, v4 = make_qkv(SMALL, seed=0, kind=kind, temperature=4.0)
    assert torch.equal(q4, 2.0 * q1)  # sqrt(4) = 2 and doubling are exact in float64
    assert torch.equal(k4, 2.0 * k1)
    assert torch.equal(v4, v1)


@pytest.mark.parametrize("kind", ["gaussian", "clustered"])
def test_temperature_moves_entropy_monotonically_from_uniform_to_peaked(kind):
    temperatures = [0.05, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0]
    entropies = [row_entropy(softmax_weights(*make_qkv(SMALL, seed=1, kind=kind,
                                                       temperature=t)[:2]))
                 for t in temperatures]
    assert all(a > b for a, b in itertools.pairwise(entropies)), entropies
    assert entropies[0] > 0.99 * math.log(SMALL.seq_len)  # near uniform
    assert entropies[-1] < 0.15 * math.log(SMALL.seq_len)  # near one-hot


def test_clustered_inputs_have_structure():
    """Same-cluster pairs dominate: clustered rows are more peaked than gaussian ones at
    the same temperature, and their attention matrix is closer to low rank."""
    problem = Problem(seq_len=128, head_dim=32, heads=2, dtype="float64")
    gauss = softmax_weights(*make_qkv(problem, seed=0, kind="gaussian")[:2])
    clust = softmax_weights(*make_qkv(problem, seed=0, kind="clustered")[:2])
    assert row_entropy(clust) < row_entropy(gauss) - 0.3
    assert (mean_slice_error(truncated_svd(clust, 8), clust)
            < mean_slice_error(truncated_svd(gauss, 8), gauss))


@pytest.mark.parametrize("kwargs, match", [
    (dict(kind="uniform"), "kind must be one of"),
    (dict(temperature=0.0), "temperature must be"),
    (dict(temperature=float("nan")), "temperature must be"),
    (dict(n_clusters=0), "n_clusters"),
])
def test_inputs_reject_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_qkv(SMALL, seed=0, **kwargs)


# ---------------------------------------------------------------- metrics


def test_relative_error_basics():
    ref = torch.randn(3, 5, dtype=torch.float64)
    assert relative_error(ref, ref) == 0.0
    assert relative_error(torch.zeros_like(ref), ref) == pytest.approx(1.0)
    assert relative_error(1.1 * ref, ref) == pytest.approx(0.1)
    # half-precision input is measured in float64, not in its own precision
    assert relative_error(ref.half(), ref) == pytest.approx(
        relative_error(ref.half().double(), ref), rel=1e-12)
    assert relative_error(torch.zeros(2), torch.zeros(2)) == 0.0
    assert relative_error(torch.ones(2), torch.zeros(2)) == math.inf
    with pytest.raises(ValueError, match="shape"):
        relative_error(ref, ref.T)


def test_mean_slice_error_weights_every_head_equally():
    ref = torch.stack([torch.ones(4, 4), 100 * torch.ones(4, 4)])[None]  # [1, 2, 4, 4]
    approx = ref.clone()
    approx[0, 0] *= 1.5  # 50% off on the small head, exact on the large one
    assert mean_slice_error(approx, ref) == pytest.approx(0.25)
    assert relative_error(approx, ref) < 0.01


def test_row_entropy_and_mass_captured():
    n = 8
    uniform = torch.full((1, 1, n, n), 1.0 / n)
    assert row_entropy(uniform) == pytest.approx(math.log(n))
    assert row_entropy(torch.eye(n)[None, None]) == pytest.approx(0.0)
    weights = torch.tensor([[0.5, 0.3, 0.2, 0.0], [0.1, 0.1, 0.1, 0.7]])
    selected = torch.tensor([[False, True, True, False], [True, False, False, False]])
    captured, best = mass_captured(weights, selected)
    assert captured == pytest.approx((0.5 + 0.1) / 2)
    assert best == pytest.approx((0.8 + 0.7) / 2)  # top-2 of row 0, top-1 of row 1


@pytest.mark.parametrize("n_hashes, seq, bucket", [(1, 64, 16), (2, 61, 8)])
def test_selected_pairs_are_the_pairs_lsh_attends_to(n_hashes, seq, bucket):
    q, k, v = make_qkv(Problem(seq, 16, heads=2), seed=0, temperature=0.5)
    hashes = draw_hashes(n_hashes, 16, generator=torch.Generator().manual_seed(0))
    _, estimate = lsh_attention(q, k, v, bucket_size=bucket, n_hashes=n_hashes,
                                hashes=hashes, return_weights="unnormalized")
    selected = selected_pairs(q, k, hashes, bucket)
    assert torch.equal(estimate > 0, selected)
    assert (selected.sum(-1) >= bucket).all()


# ---------------------------------------------------------------- oracles


def test_topk_is_optimal_among_sparse_supports_of_that_size():
    gen = torch.Generator().manual_seed(0)
    matrix = torch.rand(3, 5, generator=gen, dtype=torch.float64) - 0.3
    k = 2
    best = math.inf
    supports = list(itertools.combinations(range(5), k))
    for rows in itertools.product(supports, repeat=3):
        mask = torch.zeros_like(matrix, dtype=torch.bool)
        for i, cols in enumerate(rows):
            mask[i, list(cols)] = True
        best = min(best, torch.linalg.norm(matrix - matrix * mask).item())
    approx = topk_sparse(matrix, k)
    assert ((approx != 0).sum(dim=-1) == k).all()
    assert torch.linalg.norm(matrix - approx).item() == pytest.approx(best, rel=1e-12)


def test_svd_oracle_matches_torch_truncated_error():
    weights = softmax_weights(*make_qkv(SMALL, seed=2, kind="clustered")[:2])
    rank = 6
    singular = torch.linalg.svdvals(weights)
    expected = (singular[..., rank:] ** 2).sum(-1).sqrt() / singular.pow(2).sum(-1).sqrt()
    got = torch.linalg.norm(weights - truncated_svd(weights, rank), dim=(-2, -1)) / \
        torch.linalg.norm(weights, dim=(-2, -1))
    assert torch.allclose(got, expected, rtol=1e-9, atol=1e-12)
    # the randomized path (used above 256 rows) is within 1% of the exact error
    approx = truncated_svd(weights, rank, leading_subspace(weights, rank + 16))
    randomized = torch.linalg.norm(weights - approx, dim=(-2, -1)) / \
        torch.linalg.norm(weights, dim=(-2, -1))
    assert (randomized >= expected - 1e-12).all() and (randomized <= 1.01 * expected).all()


def test_sparse_plus_lowrank_respects_budget_and_beats_its_parts():
    gen = torch.Generator().manual_seed(0)
    n, rank, spikes = 48, 2, 3
    low = torch.rand(2, n, rank, generator=gen, dtype=torch.float64) @ \
        torch.rand(2, rank, n, generator=gen, dtype=torch.float64)
    sparse_true = torch.zeros(2, n, n, dtype=torch.float64)
    sparse_true.scatter_(-1, torch.randint(0, n, (2, n, spikes), generator=gen), 5.0)
    matrix = low + sparse_true
    sparse, lowrank = sparse_plus_lowrank(matrix, spikes + 1, rank)
    assert ((sparse != 0).sum(dim=-1) <= spikes + 1).all()
    assert (torch.linalg.matrix_rank(lowrank) <= rank).all()
    budget = spikes + 1 + 2 * rank
    oracles = oracle_approximations(matrix, budget, shares=(2 * rank / budget,))
    err = {name: mean_slice_error(a, matrix) for name, (a, _) in oracles.items()}
    assert err["oracle_sparse_lowrank"] < 0.2 * min(err["oracle_topk"], err["oracle_svd"])


@pytest.mark.parametrize("seq", [64, 300])  # exact SVD, randomized SVD
@pytest.mark.parametrize("temperature", [0.3, 1.5, 6.0])
def test_robust_pca_oracle_no_worse_than_better_part(seq, temperature):
    problem = Problem(seq_len=seq, head_dim=16, heads=2, dtype="float64")
    weights = softmax_weights(*make_qkv(problem, seed=0, kind="clustered",
                                        temperature=temperature)[:2])
    oracles = oracle_approximations(weights, 16)
    per_head = {name: torch.linalg.norm((a.double() - weights), dim=(-2, -1))
                for name, (a, _) in oracles.items()}
    parts = torch.minimum(per_head["oracle_topk"], per_head["oracle_svd"])
    assert (per_head["oracle_sparse_lowrank"] <= parts * (1 + 1e-6)).all()


# ---------------------------------------------------------------- the study

TINY = StudyConfig(seq_len=48, head_dim=16, heads=2, budget=8, seeds=(0, 1, 2),
                   temperatures=(0.3, 3.0), split_shares=(0.25, 0.5, 0.75))


@pytest.fixture(scope="module")
def tiny_result():
    return run_study(TINY)


def test_tiny_study_writes_tables_plot_and_report(tiny_result, tmp_path):
    paths = write_outputs(tiny_result, tmp_path, command="sbbench accuracy --test")
    for key in FILES:
        assert paths[key].exists(), key
    raw = pd.read_csv(paths["raw"])
    assert list(raw.columns) == list(RAW_COLUMNS)
    assert set(raw["method"]) == {"performer", "lsh", "scatterbrain", "oracle_topk",
                                  "oracle_svd", "oracle_sparse_lowrank"}
    assert len(raw) == 2 * 2 * 3 * 6  # kinds x temperatures x seeds x methods
    summary = pd.read_csv(paths["summary"])
    for column in ("kind", "temperature", "entropy", "method", "attn_error",
                   "attn_error_std", "unnorm_error", "output_error", "mass_captured",
                   "mass_topk"):
        assert column in summary.columns
    ratios = pd.read_csv(paths["ratios"])
    assert len(ratios) == 4
    for column in ("ratio", "ratio_min", "ratio_max", "output_ratio", "best_baseline",
                   "oracle_ratio", "headroom", "lsh_mass", "lsh_topk_mass"):
        assert column in ratios.columns
    main_rows = raw[raw["method"].isin(["performer", "lsh", "scatterbrain"])]
    assert (main_rows["memory_per_query"] == TINY.budget).all()
    assert paths["plot"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    markdown = paths["markdown"].read_text()
    assert "| kind" in markdown and "scatterbrain" in markdown
    report = paths["report"].read_text()
    assert "sbbench accuracy --test" in report and "Machine:" in report
    assert "ratio" in report and "What limits it" in report
    # the folder can be rebuilt and rendered again without rerunning
    again, meta = load_result(tmp_path)
    assert meta["command"] == "sbbench accuracy --test"
    pd.testing.assert_frame_equal(again.ratios, tiny_result.ratios, check_dtype=False)


def test_tiny_study_is_deterministic_and_sane(tiny_result):
    again = run_study(TINY)
    pd.testing.assert_frame_equal(again.raw, tiny_result.raw)
    raw = tiny_result.raw
    assert raw["attn_error"].notna().all() and (raw["attn_error"] >= 0).all()
    # mass the buckets catch never exceeds the top-k mass of the same count
    sparse = raw[raw["method"].isin(["lsh", "scatterbrain"])]
    assert (sparse["mass_captured"] <= sparse["mass_topk"] + 1e-12).all()
    # entropy falls with temperature in both kinds
    ratios = tiny_result.ratios
    for _, part in ratios.groupby("kind"):
        assert part.sort_values("temperature")["entropy"].is_monotonic_decreasing


def test_split_sweep_finds_a_split_no_worse_than_the_default(tiny_result):
    sweep_raw = run_split_sweep(TINY, [("clustered", 3.0)], lambda message: None)
    sweep = summarise(sweep_raw)
    splits = best_splits(tiny_result.ratios, tiny_result.summary, sweep)
    assert len(splits) == 1
    row = splits.iloc[0]
    default = tiny_result.ratios.set_index(["kind", "temperature"]).loc[("clustered", 3.0)]
    # the default split is one of the swept ones, and LSH at 2 rounds joins the baselines
    assert row["best_attn_error"] <= default["scatterbrain"] + 1e-12
    assert row["best_n_features"] + row["best_bucket_size"] * row["best_n_hashes"] <= 8
    assert set(sweep["n_hashes"]) == {1, 2}
    assert regime_ratios(tiny_result.raw, tiny_result.summary).shape == \
        tiny_result.ratios.shape


# ---------------------------------------------------------------- CLI


@pytest.mark.parametrize("argv, message", [
    (["--seq-len", "abc"], "--seq-len must be an integer"),
    (["--seq-len", "128", "--budget", "128"], "--budget"),
    (["--temperatures", "1,-2"], "--temperatures must be"),
    (["--temperatures", "hot"], "--temperatures must be"),
    (["--kinds", "gaussian,uniform"], "--kinds must be"),
    (["--seeds", "0"], "--seeds must be an integer >= 1"),
    (["--seq-len", "100000"], "seq"),
])
def test_cli_bad_input_is_one_line_and_exit_2(argv, message, capsys, tmp_path):
    assert main(["accuracy", "--out", str(tmp_path / "out"), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("sbbench accuracy: error:") and message in err


def test_cli_tiny_run_writes_the_report(tmp_path, capsys):
    out = tmp_path / "acc"
    code = main(["accuracy", "--quick", "--seq-len", "32", "--budget", "8",
                 "--temperatures", "1", "--kinds", "gaussian", "--seeds", "1",
                 "--no-oracles", "--out", str(out)])
    assert code == 0
    captured = capsys.readouterr()
    assert "[1/1] gaussian temperature 1 seed 0" in captured.err
    report = (out / FILES["report"]).read_text()
    assert "--seq-len 32" in report and "--no-oracles" in report
    assert "oracle" not in pd.read_csv(out / FILES["summary"])["method"].str.cat()
