"""The kernels' cases with the sparse part's axes, without a GPU: the fixed (sink /
window) kernel is tuned only for buckets with sink or window keys, its entry carries the
bucket's kind, sink and window, and the measured evaluator runs the bucket's support
(k-means key sets from the library) under the interpreter."""

from __future__ import annotations

import pytest
import yaml

from sbbench import tuned
from sbbench.cli.main import main
from sbbench.tuned import ShapeBucket

kernels = pytest.importorskip("sbbench.kernels")
if not getattr(kernels, "SEARCH_SPACES", None):
    pytest.skip("sbbench.kernels has no search spaces (no triton)", allow_module_level=True)

GPU = ["tune", "--gpu", "h100-sxm", "--seq-len", "4096", "--head-dim", "64", "--no-static"]
SUPPORT = ["--sparse", "kmeans", "--sink", "4", "--window", "60"]


def recorded(path, kernel):
    """Replayed timings for every config of ``kernel``'s space, the middle one fastest."""
    configs = kernels.expand_space(kernels.SEARCH_SPACES[kernel].space)
    names = sorted(configs[0])
    winner = configs[len(configs) // 2]
    rows = [",".join(names) + ",time_ms,reason"]
    for config in configs:
        base = 1.0 if config == winner else 2.0
        rows += [",".join(str(config[n]) for n in names) + f",{base * f:.3f},"
                 for f in (0.99, 1.0, 1.01)]
    path.write_text("\n".join(rows) + "\n")
    return path, winner


def test_the_fixed_kernel_only_where_a_bucket_has_sink_or_window(capsys):
    assert main([*GPU, "--dry-run", "--sink", "0,4"]) == 0
    lines = capsys.readouterr().out.splitlines()
    fixed = [line for line in lines if line.startswith("fixed ")]
    assert len(fixed) == 1 and "sink=4" in fixed[0]
    assert len(lines) == 8  # 3 kernels x 2 buckets, lowrank_apply once (no sink), fixed
    assert {line.split()[0] for line in lines} == {"feature_stats", "lowrank_state", "sparse",
                                                  "lowrank_apply", "fixed"}
    assert main([*GPU, "--dry-run", "--kernels", "fixed"]) == 0
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "skipped fixed seq_len=4096" in captured.err and "sink or window > 0" in captured.err


def test_simulated_fixed_tune_writes_the_buckets_support(tmp_path, monkeypatch):
    table, winner = recorded(tmp_path / "fixed.csv", "fixed")
    out_dir = tmp_path / "out"
    assert main([*GPU, *SUPPORT, "--kernels", "fixed,sparse", "--simulate", str(table),
                 "--out-dir", str(out_dir), "--no-cache"]) == 0
    data = yaml.safe_load((out_dir / "h100-sxm.yaml").read_text())
    entry = data["kernels"]["fixed"]["buckets"][0]
    assert entry["best"] == winner
    assert {k: entry["shape"][k] for k in ("sparse", "sink", "window")} == {
        "sparse": "kmeans", "sink": 4, "window": 60}
    shape = ShapeBucket(4096, 64, 256, 64, "float16", "kmeans", 4, 60)
    loaded = tuned.load("h100-sxm", folder=out_dir)
    assert loaded.lookup("fixed", shape).source == "exact"
    monkeypatch.setenv(tuned.ENV_DIR, str(out_dir))
    choice = tuned.tuned_choice("h100-sxm", seq_len=4096, head_dim=64, max_error=0.05,
                                dtype="float16", method="scatterbrain", shape=shape)
    assert choice.kernel_configs["fixed"] == winner and choice.sources["fixed"] == "exact"


def test_measured_fixed_evaluation_on_kmeans_buckets_under_the_interpreter():
    """The measured evaluator with a k-means bucket plus sink and window keys (key sets
    from attention.core.kmeans_buckets, the float64 torch reference with the same
    support): the fixed kernel's configs give the untuned output, none rejected."""
    from sbbench.kernels.testing import device_for_tests, kernels_for_tests

    from sbbench.autotune.triton_tiles import GpuCase
    from sbbench.autotune.tuner import tune_case
    from sbbench.core.devices import get_device

    ready = kernels_for_tests()
    shape = ShapeBucket(64, 16, 16, 16, "float32", "kmeans", 2, 8)
    case = GpuCase("fixed", shape, get_device("h100-sxm"),
                   kernel_spec=ready.SEARCH_SPACES["fixed"], heads=1, warmup_ms=0, rep_ms=0,
                   min_samples=1, static=False, torch_device=str(device_for_tests()))
    assert case.shape == shape and case.context["method"] == "scatterbrain"
    small = [c for c in case.space() if all(check(c) is None for check in case.checks())][:1]
    case.space = lambda: small
    outcome = tune_case(case, device="test", code_version="test")
    assert outcome.default_eval.ok, outcome.default_eval.reason
    assert outcome.result.rejected() == [] and outcome.best is not None
