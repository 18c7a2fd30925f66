"""The GPU tuning flow without a GPU: the kernels' declared spaces, keep() pruning for a
device profile, replayed timings (--simulate), and the dry run."""

from __future__ import annotations

import pytest
import yaml

from sbbench import tuned
from sbbench.cli.main import main

kernels = pytest.importorskip("sbbench.kernels")
if not getattr(kernels, "SEARCH_SPACES", None):
    pytest.skip("sbbench.kernels has no search spaces (no triton)", allow_module_level=True)


SHAPE = tuned.ShapeBucket(4096, 64, 256, 64, "float16")


def kept_configs():
    from sbbench.autotune.triton_tiles import device_limits, kernel_shape
    from sbbench.core.devices import get_device

    spec = kernels.SEARCH_SPACES["sparse"]
    return spec.configs(device_limits(get_device("h100-sxm")), kernel_shape(SHAPE))


def recorded(path):
    """Replayed timings for every config of the sparse kernel's space: one clear winner,
    one config that 'changed the output'. Returns (path, winner, rejected config)."""
    spec = kernels.SEARCH_SPACES["sparse"]
    kept = kept_configs()
    winner, wrong = kept[len(kept) // 2], kept[0]
    configs = kernels.expand_space(spec.space)
    names = sorted(configs[0])  # every tile name of the space (BLOCK_P, BLOCK_Q, ...)
    rows = [",".join(names) + ",time_ms,reason"]
    for config in configs:
        values = ",".join(str(config[name]) for name in names)
        if config == wrong:
            rows.append(f"{values},,output differs from the reference")
            continue
        base = 1.0 if config == winner else 1.5 + 0.0001 * sum(config.values())
        rows += [f"{values},{base * f:.4f}," for f in (0.99, 1.0, 1.01)]
    path.write_text("\n".join(rows) + "\n")
    return path, winner, wrong


def test_simulated_gpu_tune_writes_the_kernel_section(tmp_path, capsys):
    table, winner, wrong = recorded(tmp_path / "sparse.csv")
    out_dir = tmp_path / "out"
    argv = ["tune", "--gpu", "h100-sxm", "--kernels", "sparse", "--seq-len", "4096",
            "--head-dim", "64", "--simulate", str(table), "--out-dir", str(out_dir),
            "--no-static", "--no-cache", "--strategy", "successive_halving"]
    assert main(argv) == 0
    data = yaml.safe_load((out_dir / "h100-sxm.yaml").read_text())
    meta = data["metadata"]["kernels"]
    assert meta["source"].startswith("simulated: timings replayed from")
    entry = data["kernels"]["sparse"]["buckets"][0]
    assert entry["best"] == winner
    assert entry["time_ms"] == pytest.approx(1.0)
    assert entry["rejected"] == 1 and entry["rejected_configs"][0]["config"] == wrong
    assert data["kernels"]["sparse"]["default"] == kernels.DEFAULT_CONFIGS["sparse"]
    spec = kernels.SEARCH_SPACES["sparse"]
    n_space = len(kernels.expand_space(spec.space))
    assert entry["pruned"] == n_space - len(kept_configs()) > 0
    assert entry["evaluated"] == len(kept_configs())
    assert all(r["reason"].startswith("keep:") for r in entry["pruned_configs"])
    table = tuned.load("h100-sxm", folder=out_dir)
    assert table.lookup("sparse", SHAPE).source == "exact"


def test_simulate_needs_out_dir_and_dry_run_lists_pruning(tmp_path, capsys):
    assert main(["tune", "--gpu", "h100-sxm", "--simulate", "x.csv"]) == 2
    assert "--simulate needs --out-dir" in capsys.readouterr().err
    assert main(["tune", "--gpu", "a100-80gb", "--dry-run", "--no-static", "--seq-len",
                 "4096", "--head-dim", "128", "--kernels", "sparse,lowrank_state"]) == 0
    out = capsys.readouterr().out
    assert "sparse seq_len=4096 head_dim=128" in out and "pruned" in out
    assert main(["tune", "--gpu", "a100-80gb", "--dry-run", "--kernels", "flash"]) == 2
    assert "unknown kernel 'flash'" in capsys.readouterr().err


def test_static_pruning_through_the_kernels_compiler_is_cached(tmp_path, monkeypatch, capsys):
    """kernels.static.compile_config faked (a real compile takes seconds to minutes):
    configs over the H100's shared memory are dropped with the reason, and a second run
    compiles nothing (the usages are in the tuning cache)."""
    static = pytest.importorskip("sbbench.kernels.static")
    calls = []

    def fake_compile(kernel, config, arch, shape=None):
        calls.append((kernel, dict(config), arch))
        big = config["BLOCK_P"] == 64
        return static.ResourceUsage(kernel, arch, tuple(sorted(config.items())),
                                    300 * 1024 if big else 1024, 128,
                                    8 if config["num_stages"] == 3 else 0, True, "")

    monkeypatch.setattr(static, "compile_config", fake_compile)
    table, _, _ = recorded(tmp_path / "sparse.csv")
    argv = ["tune", "--gpu", "h100-sxm", "--kernels", "sparse", "--seq-len", "4096",
            "--head-dim", "64", "--simulate", str(table), "--out-dir", str(tmp_path / "o"),
            "--cache", str(tmp_path / "cache.jsonl"), "--jobs", "1"]
    assert main(argv) == 0
    assert "compiling" in capsys.readouterr().err
    assert calls and {arch for _, _, arch in calls} == {90}
    assert len(calls) == len(kept_configs())  # only what keep() left is compiled
    entry = yaml.safe_load((tmp_path / "o" / "h100-sxm.yaml").read_text())[
        "kernels"]["sparse"]["buckets"][0]
    reasons = [p["reason"] for p in entry["pruned_configs"]]
    assert any(r.startswith("shared memory: 307200 B per block > 232448 B on sm_90")
               for r in reasons)
    assert any(r.startswith("spills: 8 B per thread") for r in reasons)
    assert entry["best"]["BLOCK_P"] != 64 and entry["best"]["num_stages"] != 3
    n_calls = len(calls)
    assert main(argv) == 0
    assert len(calls) == n_calls
    assert "compiling" not in capsys.readouterr().err


def test_measured_kernel_evaluation_under_the_interpreter():
    """The GPU evaluator's logic (inputs, float64 reference, the untuned forward as the
    yardstick, one kernel's config varied) on the CPU under TRITON_INTERPRET=1: every
    config of the real kernels gives the untuned output, so none is rejected. On a CUDA
    machine the same runs compiled."""
    from sbbench.kernels.testing import device_for_tests, kernels_for_tests

    from sbbench.autotune.triton_tiles import GpuCase
    from sbbench.autotune.tuner import tune_case
    from sbbench.core.devices import get_device

    ready, kernel = kernels_for_tests(), "sparse"
    shape = tuned.ShapeBucket(64, 16, 16, 32, "float32")
    case = GpuCase(kernel, shape, get_device("h100-sxm"), kernel_spec=ready.SEARCH_SPACES[kernel],
                   heads=1, warmup_ms=0, rep_ms=0, min_samples=1, static=False,
                   torch_device=str(device_for_tests()))
    small = [c for c in case.space() if all(check(c) is None for check in case.checks())][:2]
    assert len(small) == 2
    case.space = lambda: small
    outcome = tune_case(case, device="test", code_version="test")
    assert outcome.default_eval.ok, outcome.default_eval.reason
    assert outcome.result.rejected() == [] and outcome.best is not None
    # the two configs, and the default when it was the fastest
    assert {str(t.config) for t in outcome.result.trials} >= {str(c) for c in small}
