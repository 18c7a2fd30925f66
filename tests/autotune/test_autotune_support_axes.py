"""`sbbench tune` with the sparse part's axes: the bucket kind (--sparse), sink and
window keys (--sink, --window) crossed into the shape buckets, the torch path's calls
(scatterbrain_local and scatterbrain_centroids included) and the kernels' cases (the
fixed kernel only where a bucket has sink or window keys)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import yaml

from sbbench import tuned
from sbbench.autotune.run import TuneRequest, cpu_cases
from sbbench.autotune.shapes import shape_buckets
from sbbench.autotune.torch_path import CpuCase
from sbbench.autotune.tuner import tune_case
from sbbench.cli.main import main
from sbbench.core.devices import get_device
from sbbench.core.errors import UserError
from sbbench.core.types import Budget, Problem
from sbbench.measure.calls import call_method
from sbbench.tuned import ShapeBucket

FAST = dict(warmup_ms=0.0, rep_ms=1.0, min_samples=3)
SMALL = ["--seq-len", "128", "--head-dim", "16", "--features", "8", "--bucket-size", "16"]


def test_default_axes_give_the_buckets_of_before():
    buckets = shape_buckets("cpu")
    assert buckets == [ShapeBucket(s, 64, 64, 64, "float32") for s in (1024, 4096)]
    assert all(set(b.as_dict()) == set(tuned.SHAPE_KEYS) for b in buckets)


def test_the_support_axes_are_crossed_and_checked():
    buckets = shape_buckets("cpu", seq_len=(256,), sparse=("lsh", "kmeans"), sink=(0, 4),
                            window=(0, 60))
    assert len(buckets) == 8
    assert {(b.sparse, b.sink, b.window) for b in buckets} == {
        (k, s, w) for k in ("lsh", "kmeans") for s in (0, 4) for w in (0, 60)}
    with pytest.raises(UserError, match="--sparse 'hash'"):
        shape_buckets("cpu", sparse=("hash",))
    with pytest.raises(UserError, match="--window must be >= 0"):
        shape_buckets("cpu", window=(-1,))


def test_cpu_cases_skip_what_a_method_cannot_use():
    shapes = shape_buckets("cpu", seq_len=(128,), sparse=("lsh", "kmeans"), sink=(4,),
                           window=(60, 124))
    methods = ("scatterbrain", "lsh", "performer", "scatterbrain_local",
               "scatterbrain_centroids")
    pairs, skipped = cpu_cases(TuneRequest(get_device("cpu"), shapes, methods=methods))
    got = {(m, s.sparse, s.sink, s.window) for m, s in pairs}
    assert got == {("scatterbrain", "lsh", 4, 60), ("scatterbrain", "kmeans", 4, 60),
                   ("scatterbrain_centroids", "lsh", 4, 60),
                   ("scatterbrain_centroids", "kmeans", 4, 60), ("lsh", "lsh", 4, 60),
                   ("scatterbrain_local", "local", 4, 60), ("performer", "", 0, 0)}
    assert any(n.startswith("lsh ") and "lsh takes lsh buckets" in n for n in skipped)
    assert any("scatterbrain_local takes local buckets" in n for n in skipped)
    assert any("window=124" in n and "sink + window >= seq_len" in n for n in skipped)


def test_cpu_cases_skip_as_many_key_centroids_as_keys():
    # the sweep grid's rule (core.types.covers_every_key): C >= seq is each key its own
    # cluster; Performer's features are not bounded by the keys
    shapes = shape_buckets("cpu", seq_len=(128,), features=(128,), sparse=("kmeans",))
    methods = ("scatterbrain", "scatterbrain_centroids")
    pairs, skipped = cpu_cases(TuneRequest(get_device("cpu"), shapes, methods=methods))
    assert [m for m, _ in pairs] == ["scatterbrain"]
    assert any(n.startswith("scatterbrain_centroids ") and "key centroids >= seq_len" in n
               for n in skipped)


@pytest.mark.parametrize("method, sparse", [("scatterbrain", "kmeans"),
                                            ("scatterbrain_local", "lsh"),
                                            ("scatterbrain_centroids", "kmeans"),
                                            ("lsh", "lsh")])
def test_the_case_runs_the_buckets_support(method, sparse, single_thread):
    shape = ShapeBucket(128, 16, 8, 16, "float32", sparse, 2, 8)
    case = CpuCase(method, shape, heads=2, chunk_elements=(256, 1 << 20), threads=(1,),
                   **FAST)
    budget = case.budget
    assert (budget.sink, budget.window) == (2, 8)
    assert budget.sparse == ("local" if method == "scatterbrain_local" else sparse)
    # the case's call is the one path's call of that budget, randomness included
    with torch.inference_mode():
        want = call_method(budget, case.q, case.k, case.v, backend="torch",
                           softmax_scale=case.scale, **case.randomness.options())
        plain = call_method(dataclasses.replace(budget, sink=0, window=0),
                            case.q, case.k, case.v, backend="torch",
                            softmax_scale=case.scale, **case.randomness.options())
        got = case.call(None)()
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert not torch.allclose(got, plain)  # the sink and window keys are in the call
    outcome = tune_case(case, device="cpu", code_version="test")
    assert outcome.result.rejected() == [] and outcome.default_eval.ok
    assert outcome.entry()["shape"]["window"] == 8


def test_sbbench_tune_cpu_writes_and_finds_kmeans_sink_window(tmp_path, monkeypatch, capsys,
                                                              single_thread):
    monkeypatch.setenv(tuned.ENV_DIR, str(tmp_path))
    common = ["tune", "--gpu", "cpu", *SMALL, "--heads", "2", "--threads", "1",
              "--warmup-ms", "0", "--rep-ms", "1", "--min-samples", "3", "--no-cache",
              "--methods", "scatterbrain"]
    assert main([*common, "--chunk-elements", "1024"]) == 0
    assert main([*common, "--chunk-elements", "65536", "--sparse", "kmeans", "--sink", "4",
                 "--window", "8"]) == 0
    out = capsys.readouterr().out
    assert "support" in out and "kmeans sink=4 window=8" in out
    data = yaml.safe_load((tmp_path / "cpu.yaml").read_text())
    shapes = [b["shape"] for b in data["kernels"]["torch:scatterbrain"]["buckets"]]
    assert {(s.get("sparse"), s.get("sink"), s.get("window")) for s in shapes} == {
        (None, None, None), ("kmeans", 4, 8)}
    problem = Problem(128, 16, heads=2)
    kmeans = Budget("scatterbrain", 8, 16, 1, sparse="kmeans", sink=4, window=8)
    lsh = Budget("scatterbrain", 8, 16, 1)
    picked = {tuned.lookup_cpu_config(problem, b)["chunk_elements"] for b in (kmeans, lsh)}
    # each call finds its own bucket (a default the listed one did not beat may win)
    assert tuned.load("cpu").lookup("torch:scatterbrain", ShapeBucket.of(problem, kmeans)
                                    ).source == "exact"
    assert len(picked) == 2 or picked == {tuned.cpu_default("scatterbrain")["chunk_elements"]}


def test_bad_support_flags_are_one_line_errors(capsys):
    for flags, message in ((["--sparse", "hash"], "--sparse 'hash': valid: lsh, kmeans, local"),
                           (["--sink", "-1"], "--sink takes comma-separated integers >= 0"),
                           (["--window", "x"], "--window takes comma-separated integers")):
        assert main(["tune", "--gpu", "cpu", "--dry-run", *flags]) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err and err.count("\n") == 1


def test_merge_keeps_one_entry_per_bucket_whatever_its_spelling():
    from sbbench.autotune.tuner import merge_target

    base = {"seq_len": 256, "head_dim": 16, "n_features": 8, "bucket_size": 16,
            "dtype": "float32"}
    old = {"buckets": [{"shape": {**base, "sparse": "lsh", "sink": 0}, "best": {"a": 1}},
                       {"shape": {**base, "sparse": "kmeans"}, "best": {"a": 2}}]}
    merged = merge_target(old, {}, [{"shape": dict(base), "best": {"a": 3}}])
    assert [b["best"] for b in merged["buckets"]] == [{"a": 2}, {"a": 3}]
