"""Strategies on simulated tables: exhaustive finds the optimum exactly, random stays in
its budget, successive halving finds a clear winner while measuring less."""

from __future__ import annotations

import itertools
import json

import pytest

from sbbench.autotune import (
    STRATEGIES,
    Evaluation,
    SimulatedEvaluator,
    TuneOptions,
    exhaustive,
    load_recorded,
    random,
    successive_halving,
)
from sbbench.autotune.strategies import halving_schedule
from sbbench.core.errors import UserError

BLOCKS = (16, 32, 64, 128)
WARPS = (1, 2, 4, 8)
BEST = {"BLOCK_M": 64, "num_warps": 4}


def table(noise: float = 0.02, n_samples: int = 9):
    """A recorded table with one clear winner (BEST, 1.0 ms); others 1.3 .. 3 ms. Sample
    i of a config deviates by a deterministic +-noise, so the median is the nominal time."""
    rows = []
    for block, warps in itertools.product(BLOCKS, WARPS):
        config = {"BLOCK_M": block, "num_warps": warps}
        distance = abs(BLOCKS.index(block) - 2) + abs(WARPS.index(warps) - 2)
        nominal = 1.0 if config == BEST else 1.1 + 0.2 * distance
        samples = [nominal * (1 + noise * ((i * 7) % n_samples - n_samples // 2)
                              / (n_samples // 2)) for i in range(n_samples)]
        rows.append((config, samples))
    rows.append(({"BLOCK_M": 256, "num_warps": 8}, "oom: out of shared memory"))
    return rows


def space():
    return [c for c, _ in table()]


def test_exhaustive_finds_the_optimum_and_keeps_failures():
    evaluate = SimulatedEvaluator.from_configs(table())
    result = exhaustive(space(), evaluate)
    assert result.best.config == BEST
    assert result.best.median_ms == pytest.approx(1.0)
    assert len(evaluate.calls) == len(space())
    assert all(hint == 1.0 for _, hint in evaluate.calls)
    rejected = result.rejected()
    assert [t.config for t in rejected] == [{"BLOCK_M": 256, "num_warps": 8}]
    assert "oom" in rejected[0].evaluation.reason
    assert result.runner_ups(0.03) == []
    assert len(result.runner_ups(0.35)) == 4  # the four neighbours at 1.3 ms


def test_random_stays_in_budget_is_seeded_and_finds_best_with_full_budget():
    evaluate = SimulatedEvaluator.from_configs(table())
    result = random(space(), evaluate, TuneOptions(max_evals=5, seed=3))
    assert len(evaluate.calls) == 5 and result.evaluated == 5
    again = random(space(), SimulatedEvaluator.from_configs(table()),
                   TuneOptions(max_evals=5, seed=3))
    assert [t.config for t in again.trials] == [t.config for t in result.trials]
    best_of_sample = min((t for t in result.trials if t.evaluation.ok),
                         key=lambda t: t.median_ms)
    assert result.best.config == best_of_sample.config
    full = random(space(), SimulatedEvaluator.from_configs(table()),
                  TuneOptions(max_evals=len(space())))
    assert full.best.config == BEST
    with pytest.raises(ValueError, match="max_evals"):
        random(space(), evaluate, TuneOptions())


def test_successive_halving_finds_clear_winner_with_less_measurement():
    evaluate = SimulatedEvaluator.from_configs(table())
    result = successive_halving(space(), evaluate, TuneOptions(eta=3))
    assert result.best.config == BEST
    assert result.best.evaluation.effort == 1.0
    full = [c for c, hint in evaluate.calls if hint == 1.0]
    assert len(full) <= 3  # only the final rung is measured in full
    assert len(evaluate.calls) < 2 * len(space())
    # samples spent, in units of a full measurement: well under exhaustive's
    assert sum(hint for _, hint in evaluate.calls) < 0.5 * len(space())


def test_halving_schedule():
    assert halving_schedule(17, 3, 3, 0.1) == [
        (17, pytest.approx(1 / 9)), (6, pytest.approx(1 / 3)), (3, 1.0)]
    assert halving_schedule(2, 3, 3, 0.1) == [(2, 1.0)]
    assert halving_schedule(100, 2, 1, 0.1)[0] == (100, 0.1)  # floored at min_effort


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_every_strategy_survives_an_all_failing_space(name):
    evaluate = SimulatedEvaluator.from_configs([({"a": 1}, "boom"), ({"a": 2}, "boom")])
    result = STRATEGIES[name]([{"a": 1}, {"a": 2}], evaluate, TuneOptions(max_evals=2))
    assert result.best is None and len(result.rejected()) == 2


def test_max_seconds_stops_early():
    result = exhaustive(space(), SimulatedEvaluator.from_configs(table()),
                        TuneOptions(max_seconds=0.0))
    assert result.stopped_early and result.trials == []


def test_evaluation_needs_samples_when_ok():
    with pytest.raises(ValueError):
        Evaluation(True)
    assert Evaluation(True, (3.0, 1.0, 2.0)).median_ms == 2.0


def test_recorded_tables_in_yaml_json_and_csv(tmp_path):
    entries = [{"config": {"BLOCK_M": 64, "num_warps": 4}, "samples_ms": [1.0, 1.1]},
               {"config": {"BLOCK_M": 32, "num_warps": 4}, "samples_ms": [2.0]},
               {"config": {"BLOCK_M": 16, "num_warps": 4}, "reason": "spills"}]
    (tmp_path / "t.json").write_text(json.dumps({"configs": entries}))
    (tmp_path / "t.yaml").write_text("\n".join(
        f"- {json.dumps(e)}" for e in entries))
    (tmp_path / "t.csv").write_text(
        "BLOCK_M,num_warps,time_ms,reason\n64,4,1.0,\n64,4,1.1,\n32,4,2.0,\n16,4,,spills\n")
    tables = [load_recorded(tmp_path / f"t.{ext}") for ext in ("json", "yaml", "csv")]
    assert tables[0] == tables[1] == tables[2]
    evaluate = SimulatedEvaluator(tables[2])
    assert exhaustive(evaluate.configs(), evaluate).best.config == {"BLOCK_M": 64,
                                                                    "num_warps": 4}
    assert evaluate({"BLOCK_M": 16, "num_warps": 4}, 1.0).reason == "spills"
    assert "not in the recorded table" in evaluate({"BLOCK_M": 8, "num_warps": 4}, 1.0).reason
    (tmp_path / "bad.csv").write_text("BLOCK_M,time_ms\nx,1.0\n")
    with pytest.raises(UserError, match="integers"):
        load_recorded(tmp_path / "bad.csv")
