"""The torch path's tunables measured for real (tiny shapes), and `sbbench tune --gpu cpu`
end to end into a temporary tuning folder."""

from __future__ import annotations

import pytest
import torch
import yaml

from sbbench import tuned
from sbbench.attention.core import CHUNK_ELEMENTS
from sbbench.autotune.torch_path import CpuCase, cpu_space, thread_counts
from sbbench.autotune.tuner import tune_case
from sbbench.cli.main import main
from sbbench.core.types import Budget, Problem
from sbbench.tuned import ShapeBucket

TINY = ShapeBucket(seq_len=200, head_dim=16, n_features=8, bucket_size=16)
FAST = dict(warmup_ms=0.0, rep_ms=1.0, min_samples=3)


def test_spaces():
    assert thread_counts(6) == (1, 2, 4, 6)
    assert thread_counts(1) == (1,)
    assert cpu_space("performer", threads=(1, 2)) == [{"num_threads": 1}, {"num_threads": 2}]
    assert len(cpu_space("lsh", threads=(1, 2))) == 7 * 2  # chunk 2^16 .. 2^22


@pytest.mark.parametrize("method", ["scatterbrain", "lsh", "performer"])
def test_every_config_gives_the_untuned_output(method, single_thread):
    # two threads only where it is cheap: a loaded 2-core machine makes them slow
    threads = (1, 2) if method == "performer" else (1,)
    case = CpuCase(method, TINY, heads=2, chunk_elements=(256, 4096, 1 << 20),
                   threads=threads, **FAST)
    assert case.shape.n_features == (0 if method == "lsh" else 8)
    outcome = tune_case(case, device="cpu", code_version="test")
    assert outcome.result.rejected() == []
    assert outcome.best is not None and outcome.default_eval.ok
    # chunk 256 is below one bucket's temporaries: one bucket at a time, same output
    if method != "performer":
        with torch.inference_mode():
            out = case.call(256)()
        assert torch.equal(out, case.ref_default)


def test_a_config_that_changes_the_output_is_rejected(single_thread):
    case = CpuCase("scatterbrain", TINY, heads=2, chunk_elements=(256, 4096), threads=(1,),
                   **FAST)
    honest = case.build

    def build(config):  # a "tiling bug" in one config: the last query rows are lost
        call = honest(config)
        if config["chunk_elements"] != 256:
            return call

        def broken():
            out = call().clone()
            out[..., -3:, :] = 0
            return out

        return broken

    case.build = build
    outcome = tune_case(case, device="cpu", code_version="test")
    rejected = outcome.result.rejected()
    assert [t.config for t in rejected] == [{"chunk_elements": 256, "num_threads": 1}]
    assert "output differs from the reference" in rejected[0].evaluation.reason
    assert outcome.best.config["chunk_elements"] != 256
    entry = outcome.entry()
    assert entry["rejected"] == 1 and entry["rejected_configs"][0]["config"]["chunk_elements"] \
        == 256


def test_sbbench_tune_cpu_writes_a_valid_file_and_resumes(tmp_path, monkeypatch, capsys,
                                                           single_thread):
    monkeypatch.setenv(tuned.ENV_DIR, str(tmp_path))
    cache = tmp_path / "cache.jsonl"
    argv = ["tune", "--gpu", "cpu", "--seq-len", "128,256", "--head-dim", "16", "--features",
            "8", "--bucket-size", "16", "--heads", "2", "--chunk-elements", "1024,65536",
            "--threads", "1", "--warmup-ms", "0", "--rep-ms", "1", "--min-samples", "3",
            "--cache", str(cache), "--note", "test run"]
    assert main(argv) == 0
    out, err = capsys.readouterr()
    assert "torch:scatterbrain" in out and "speedup" in out
    assert "sbbench tune: wrote" in err and "preparing inputs" in err
    path = tmp_path / "cpu.yaml"
    data = yaml.safe_load(path.read_text())
    assert set(data["kernels"]) == {"torch:scatterbrain", "torch:lsh", "torch:performer"}
    assert len(data["kernels"]["torch:lsh"]["buckets"]) == 2
    meta = data["metadata"]["kernels"]
    assert meta["source"] == "measured" and meta["note"] == "test run"
    assert meta["command"].startswith("sbbench tune --gpu cpu --seq-len 128,256")
    assert "versions" in meta and meta["evaluations"]["measured_now"] > 0
    assert meta["device_state"]["kind"] == "cpu" and "load_average" in meta
    table = tuned.load("cpu")  # validates
    config = tuned.lookup_cpu_config(Problem(256, 16, heads=2),
                                     Budget("lsh", bucket_size=16, n_hashes=1))
    lsh = next(b for b in table.targets["torch:lsh"].buckets if b.shape.seq_len == 256)
    # the untuned default (not in the list) wins when nothing listed beats it
    assert config == lsh.best and config["chunk_elements"] in (1024, 65536, CHUNK_ELEMENTS)

    # a select-written section survives, and a rerun measures nothing new
    tuned.write_section("cpu", "budgets", [{
        "seq_len": 256, "head_dim": 16, "max_error": 0.1, "method": "performer",
        "n_features": 8, "bucket_size": 0, "n_hashes": 0, "error": 0.05, "time_ms": 1.0,
        "exact_time_ms": 2.0}])
    lines = cache.read_text().count("\n")
    assert main(argv) == 0
    _, err = capsys.readouterr()
    assert cache.read_text().count("\n") == lines
    assert "0 measured now" in err and "measured now" in err
    assert ", 1 measured now" not in err and ", 2 measured now" not in err
    assert len(tuned.load("cpu").budgets) == 1
    assert tuned.load("cpu").raw["metadata"]["kernels"]["evaluations"]["measured_now"] == 0


def test_tune_cli_errors_are_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(tuned.ENV_DIR, str(tmp_path))
    assert main(["tune", "--gpu", "cpu", "--seq-len", "1k"]) == 2
    assert "--seq-len takes comma-separated integers" in capsys.readouterr().err
    assert main(["tune", "--gpu", "cpu", "--methods", "exact", "--seq-len", "128"]) == 2
    assert "has no torch-path tunables" in capsys.readouterr().err
    assert main(["tune", "--gpu", "cpu", "--simulate", "x.yaml", "--out-dir", "o"]) == 2
    assert "--simulate replays GPU" in capsys.readouterr().err


def test_tune_refuses_a_gpu_that_is_not_here(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(tuned.ENV_DIR, str(tmp_path))
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert main(["tune", "--gpu", "h100-sxm"]) == 2
    err = capsys.readouterr().err
    assert "h100-sxm" in err and "this machine has a cpu device" in err
    assert not (tmp_path / "h100-sxm.yaml").exists()
