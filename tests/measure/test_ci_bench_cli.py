"""``sbbench ci-bench`` (the CI benchmark's command) and its one run-a-budget path."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch

from sbbench.attention import (
    draw_hashes,
    draw_projections,
    lsh_attention,
    performer_attention,
    scatterbrain_attention,
)
from sbbench.cli import ci_bench as cli
from sbbench.core.errors import UserError
from sbbench.core.types import Budget, Problem
from sbbench.sweep import ci_bench, ci_sampling

ROOT = Path(__file__).resolve().parents[2]


def parse(argv: list[str]):
    parser = argparse.ArgumentParser(prog="sbbench")
    cli.register(parser.add_subparsers(dest="command"))
    return parser.parse_args(["ci-bench", *argv])


def test_cli_defaults_are_the_benchmarks():
    args = parse(["--out", "x.json"])
    options = ci_sampling.Options()
    assert (args.seconds, args.processes, args.min_rounds, args.threads, args.timer) == (
        options.seconds, options.processes, options.min_rounds, options.threads,
        options.timer)
    assert cli.TIMER_CHOICES == tuple(ci_sampling.TIMERS)
    with pytest.raises(SystemExit):
        parse([])  # --out is required


def test_bad_values_are_user_errors():
    with pytest.raises(UserError, match="min-rounds"):
        cli.run_ci_bench_command(parse(["--out", "x.json", "--min-rounds", "1"]))
    with pytest.raises(UserError, match="inject-slowdown"):
        cli.run_ci_bench_command(parse(["--out", "x.json", "--inject-slowdown", "0.5"]))


def test_command_writes_a_result_set_sampled_in_a_child_process(tmp_path, monkeypatch):
    monkeypatch.setattr(ci_sampling, "SHAPES", ci_sampling.SHAPES[:1])
    monkeypatch.setattr(ci_sampling.Options, "__init__", _small_options(
        ci_sampling.Options.__init__))
    out = tmp_path / "ci.json"
    assert cli.run_ci_bench_command(parse(["--out", str(out), "--seconds", "0",
                                           "--min-rounds", "2", "--processes", "1"])) == 0
    data = json.loads(out.read_text())
    assert data["meta"]["command"].startswith("sbbench ci-bench --out ")
    assert data["meta"]["processes"] == 1 and data["meta"]["rounds"] >= 2
    methods = [r["method"] for r in data["records"]]
    assert methods == ["exact", "performer", "lsh", "scatterbrain", "calibration"]
    assert all(len(r["time_samples_ms"]) >= 2 for r in data["records"])
    assert data["records"][0]["device_state"]["cpu"]


def _small_options(init):
    """Options with one shape and a short warm-up (the child gets them as JSON)."""
    def small(self, *args, **kwargs):
        kwargs.setdefault("shapes", (Problem(seq_len=64, head_dim=16, batch=1, heads=2),))
        kwargs.setdefault("warmup_ms", 1.0)
        init(self, *args, **kwargs)
    return small


def _old_call(problem: Problem, budget: Budget, q, k, v, generator):
    """The CI benchmark's former own closure: projections, then hash functions."""
    head_dim = problem.head_dim
    projections = (draw_projections(budget.n_features, head_dim, generator=generator)
                   if budget.n_features else None)
    hashes = (draw_hashes(budget.n_hashes, head_dim, generator=generator)
              if budget.method in ("lsh", "scatterbrain") else None)
    if budget.method == "performer":
        return performer_attention(q, k, v, n_features=budget.n_features,
                                   projections=projections)
    if budget.method == "lsh":
        return lsh_attention(q, k, v, bucket_size=budget.bucket_size,
                             n_hashes=budget.n_hashes, hashes=hashes)
    return scatterbrain_attention(q, k, v, n_features=budget.n_features,
                                  bucket_size=budget.bucket_size, n_hashes=budget.n_hashes,
                                  projections=projections, hashes=hashes)


@pytest.mark.parametrize("budget", ci_sampling.BUDGETS[1:], ids=lambda b: b.method)
def test_same_numbers_as_the_former_own_draw(budget):
    from sbbench.measure.calls import make_call

    problem = Problem(seq_len=128, head_dim=32, batch=1, heads=2)
    q, k, v = ci_sampling.inputs(problem, 0)
    new = make_call(budget, q, k, v, generator=torch.Generator().manual_seed(0))()
    old = _old_call(problem, budget, q, k, v, torch.Generator().manual_seed(0))
    assert torch.equal(new, old)
    mean, std = ci_bench.accuracy(problem, budget, seeds=(0,))
    assert mean > 0 and std == 0


def test_ci_run_calls_the_command():
    text = (ROOT / ".ci" / "run").read_text()
    assert "sbbench ci-bench --out" in text and "sbbench.sweep.ci_bench" not in text
