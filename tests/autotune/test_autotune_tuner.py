"""Static pruning with reasons, correctness rejection, the tuning cache (resume), and a
bucket's entry in the tuning file -- all on CPU, with fakes for the compiler and GPU."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from sbbench import tuned
from sbbench.autotune import (
    CachedEvaluator,
    MeasuredEvaluator,
    SimulatedEvaluator,
    TuneCache,
    TuneOptions,
    exhaustive,
    keep_check,
    output_mismatch,
    prune,
    resource_check,
)
from sbbench.autotune.tuner import merge_target, tune_case
from sbbench.tuned import ShapeBucket

SMEM_LIMIT = 100 * 1024  # bytes per block on the fake device
REG_LIMIT = 255


def fake_compile(config):
    """A fake static compiler: shared memory grows with the tile, registers with tile /
    warps; BLOCK_M=128 with 1 warp spills; BLOCK_M=8 does not compile."""
    if config["BLOCK_M"] == 8:
        return SimpleNamespace(ok=False, reason="compile failed: tl.dot needs tiles >= 16",
                               shared_bytes=0, registers=0, spills=0)
    shared = config["BLOCK_M"] * 64 * 2 * config["num_stages"] * 4
    registers = 32 + config["BLOCK_M"] * 4 // config["num_warps"]
    spills = 24 if (config["BLOCK_M"] == 128 and config["num_warps"] == 1) else 0
    return {"ok": True, "reason": "", "shared_bytes": shared, "registers": registers,
            "spills": spills}


def space():
    return [{"BLOCK_M": m, "num_warps": w, "num_stages": s}
            for m in (8, 16, 32, 64, 128) for w in (1, 4) for s in (1, 2, 4)]


def checks():
    return [
        keep_check(lambda c, limits: c["num_stages"] <= limits["max_stages"],
                   {"max_stages": 2}),
        resource_check(fake_compile, arch="sm_90", smem_per_block_bytes=SMEM_LIMIT,
                       max_registers_per_thread=REG_LIMIT),
    ]


def test_pruning_drops_over_limit_configs_with_reasons():
    result = prune(space(), checks())
    reasons = {json.dumps(c, sort_keys=True): r for c, r in result.pruned}
    assert len(result.kept) + len(result.pruned) == len(space())

    def reason(m, w, s):
        return reasons.get(json.dumps({"BLOCK_M": m, "num_stages": s, "num_warps": w}))

    assert "keep() predicate" in reason(16, 4, 4)
    assert reason(8, 4, 1) == "compile: compile failed: tl.dot needs tiles >= 16 (sm_90)"
    # 128 * 64 * 2 * 2 * 4 = 131072 B > 102400 B
    assert reason(128, 4, 2).startswith("shared memory: 131072 B per block > 102400 B")
    assert reason(128, 1, 1).startswith("registers: 544 per thread > 255")
    assert reason(64, 4, 1) is None
    counts = result.reason_counts()
    assert set(counts) == {"keep", "compile", "shared memory", "registers"}
    for config in result.kept:
        usage = fake_compile(config)
        assert usage["shared_bytes"] <= SMEM_LIMIT and usage["registers"] <= REG_LIMIT
        assert usage["spills"] == 0


def test_spills_and_compiler_exceptions_are_reasons():
    check = resource_check(lambda c: {"ok": True, "shared_bytes": 0, "registers": 100,
                                      "spills": 3},
                           arch="sm_80", smem_per_block_bytes=1, max_registers_per_thread=255)
    assert check({}).startswith("spills: 3 B per thread")
    # the compiler's own verdict (its architecture limits) is kept with its kind
    check = resource_check(lambda c: {"ok": False, "shared_bytes": 10, "registers": 200,
                                      "spills": 0, "reason": "registers 200 x 512 > 65536"},
                           arch="sm_80", smem_per_block_bytes=100, max_registers_per_thread=255)
    assert check({}) == "registers: registers 200 x 512 > 65536 (sm_80)"

    def broken(config):
        raise RuntimeError("PTX assembly aborted\nmore")

    check = resource_check(broken, arch="sm_80", smem_per_block_bytes=1,
                           max_registers_per_thread=255)
    assert check({}) == "compile: RuntimeError: PTX assembly aborted"


def blocked_sum_call(x, block):
    """A toy 'kernel': row sums in column blocks of ``block``; block=3 has the classic
    tiling bug of dropping the last partial block."""

    def run():
        n = x.shape[-1]
        stop = n - n % block if block == 3 else n
        return sum(x[..., i:min(i + block, stop)].sum(-1) for i in range(0, stop, block))

    return run


def test_a_config_that_changes_the_output_is_rejected_and_never_timed():
    x = torch.randn(8, 64, generator=torch.Generator().manual_seed(0))
    ref64 = x.double().sum(-1)
    ref32 = x.sum(-1)
    timed = []

    def fake_time_fn(fn, **kwargs):
        timed.append(kwargs)
        return SimpleNamespace(samples_ms=(1.0, 1.0, 1.0))

    evaluate = MeasuredEvaluator(lambda c: blocked_sum_call(x, c["block"]),
                                 lambda out: output_mismatch(out, ref64, ref32),
                                 time_fn=fake_time_fn)
    good = evaluate({"block": 16}, 1.0)
    bad = evaluate({"block": 3}, 1.0)
    crash = MeasuredEvaluator(lambda c: (lambda: 1 / 0), lambda out: None,
                              time_fn=fake_time_fn)({"block": 1}, 1.0)
    assert good.ok and good.samples_ms == (1.0, 1.0, 1.0)
    assert not bad.ok and bad.samples_ms == ()
    assert "output differs from the reference" in bad.reason
    assert "relative RMS error" in bad.reason
    assert not crash.ok and crash.reason.startswith("failed: ZeroDivisionError")
    assert len(timed) == 1  # only the correct config was timed
    assert output_mismatch(ref32 * float("nan"), ref64, ref32) == "output has NaN/Inf"


def test_measured_evaluator_scales_the_timing_budget():
    calls = []

    def fake_time_fn(fn, **kwargs):
        calls.append(kwargs)
        return SimpleNamespace(samples_ms=(2.0,) * kwargs["min_samples"])

    evaluate = MeasuredEvaluator(lambda c: (lambda: torch.zeros(2)), lambda out: None,
                                 warmup_ms=20, rep_ms=100, min_samples=10,
                                 time_fn=fake_time_fn)
    assert evaluate({}, 0.25).effort == 0.25
    assert calls[0] == {"device": "cpu", "warmup_ms": 5.0, "rep_ms": 25.0, "min_samples": 3}


class FakeCase:
    """A (target, shape bucket) case backed by a recorded table."""

    target = "fake_kernel"
    shape = ShapeBucket(4096, 64, 256, 64, "float16")
    context = {"batch": 1, "heads": 4}

    def __init__(self):
        rows = []
        for config in space():
            time_ms = 1.0 + abs(config["BLOCK_M"] - 64) / 64 + 0.01 * config["num_stages"]
            rows.append((config, [time_ms] * 5))
        rows[space().index({"BLOCK_M": 32, "num_warps": 4, "num_stages": 1})] = (
            {"BLOCK_M": 32, "num_warps": 4, "num_stages": 1},
            "output differs from the reference: 3 of 10 elements ...")
        self.evaluator = SimulatedEvaluator.from_configs(rows)

    def space(self):
        return space()

    def default(self):
        return {"BLOCK_M": 16, "num_warps": 4, "num_stages": 1}

    def checks(self):
        return checks()


def test_tune_case_entry_counts_and_reasons(tmp_path):
    case = FakeCase()
    outcome = tune_case(case, strategy="exhaustive", device="h100-sxm", code_version="v1")
    entry = outcome.entry(within=0.03)
    pruned = prune(space(), checks())
    # 64 x 1 warp is faster on paper but needs 288 registers: pruned
    assert entry["best"] == {"BLOCK_M": 64, "num_warps": 4, "num_stages": 1}
    assert entry["time_ms"] == pytest.approx(1.01)
    assert entry["default_time_ms"] == pytest.approx(1.76)
    assert outcome.speedup() == pytest.approx(1.76 / 1.01)
    assert entry["pruned"] == len(pruned.pruned) == len(entry["pruned_configs"])
    assert entry["rejected"] == 1
    assert entry["rejected_configs"][0]["config"] == {"BLOCK_M": 32, "num_warps": 4,
                                                      "num_stages": 1}
    # within 3% of 1.01 ms: the same tile with 2 stages (1.02 ms)
    assert entry["runner_ups"] == [{"config": {"BLOCK_M": 64, "num_warps": 4,
                                               "num_stages": 2}, "time_ms": 1.02}]
    assert entry["evaluated"] == len(pruned.kept)
    # the entry is valid in a tuning file, and lookups find it
    section = {"fake_kernel": merge_target(None, case.default(), [entry])}
    path = tuned.write_section("h100-sxm", "kernels", section, folder=tmp_path)
    table = tuned.load("h100", folder=tmp_path)
    assert table.path == path
    assert table.lookup("fake_kernel", case.shape).config == entry["best"]


def test_cache_resume_second_run_measures_nothing(tmp_path):
    path = tmp_path / "cache.jsonl"
    case = FakeCase()
    first = tune_case(case, strategy="successive_halving", cache=TuneCache(path),
                      device="h100-sxm", code_version="v1")
    calls = len(case.evaluator.calls)
    assert first.measured == calls > 0
    second = tune_case(case, strategy="successive_halving", cache=TuneCache(path),
                       device="h100-sxm", code_version="v1")
    assert second.measured == 0 and len(case.evaluator.calls) == calls
    assert second.best.config == first.best.config
    assert second.entry() == {**first.entry()}
    # another code version measures again
    third = tune_case(case, strategy="exhaustive", cache=TuneCache(path), device="h100-sxm",
                      code_version="v2")
    assert third.measured > 0


def test_cache_survives_a_cut_off_line_and_serves_fuller_measurements(tmp_path):
    path = tmp_path / "cache.jsonl"
    evaluate = SimulatedEvaluator.from_configs([({"a": i}, [float(i)] * 10) for i in range(4)])
    cached = CachedEvaluator(evaluate, TuneCache(path), device="d", target="t", shape={},
                             context={}, code_version="v")
    exhaustive([{"a": i} for i in range(4)], cached)
    assert cached.measured == 4
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:3]) + "\n" + lines[3][: len(lines[3]) // 2])
    again = CachedEvaluator(evaluate, TuneCache(path), device="d", target="t", shape={},
                            context={}, code_version="v")
    exhaustive([{"a": i} for i in range(4)], again, TuneOptions())
    assert again.measured == 1 and again.hits == 3  # only the cut-off config again
    low = again({"a": 0}, 0.1)  # a full measurement serves a partial request
    assert low.cached and low.effort == 1.0
