"""`sbbench tune --inputs`: synthetic kinds and captured Q/K/V (the shipped MiniLM
capture); the capture sets heads, head_dim and causal, longer lengths are refused before
any work, and the inputs are recorded in the tuning file and the cache key."""

from __future__ import annotations

import pytest
import torch
import yaml

from sbbench import tuned
from sbbench.autotune.shapes import inputs_identity, tune_inputs
from sbbench.autotune.torch_path import CpuCase
from sbbench.cli.main import build_parser, main
from sbbench.core.errors import UserError
from sbbench.measure.capture_file import Capture, CapturedLayer, save_capture
from sbbench.tuned import ShapeBucket

LAYER0 = "qkv:minilm#layer=0"  # 12 heads of 32, 512 tokens, not causal


def _request(argv):
    from sbbench.cli.tune import build_request
    from sbbench.core.devices import resolve_gpu

    args = build_parser().parse_args(["tune", "--gpu", "cpu", *argv])
    return build_request(args, resolve_gpu("cpu"))


def test_the_default_is_clustered_and_unchanged():
    request = _request(["--seq-len", "128"])
    assert (request.inputs, request.heads, request.causal) == ("clustered", 4, False)
    assert {s.head_dim for s in request.shapes} == {64}
    assert "--inputs" not in request.command and "--heads" not in request.command
    request = _request(["--inputs", "gaussian", "--heads", "3", "--head-dim", "16"])
    assert (request.inputs, request.heads) == ("gaussian", 3)
    assert {s.seq_len for s in request.shapes} == {1024, 4096}
    assert "--inputs gaussian" in request.command


def test_a_capture_sets_the_shape():
    request = _request(["--inputs", LAYER0, "--seq-len", "128,512"])
    assert (request.inputs, request.heads, request.causal) == (LAYER0, 12, False)
    assert {(s.seq_len, s.head_dim) for s in request.shapes} == {(128, 32), (512, 32)}
    # flags that agree with the capture are accepted
    assert _request(["--inputs", "qkv:minilm", "--heads", "72", "--head-dim", "32"]).heads == 72
    # without --seq-len: the default lengths (1024, 4096) are longer, so the token count
    fitted = tune_inputs("qkv:minilm", "cpu")
    assert fitted.seq_len == (512,) and "captured tokens" in fitted.notes[0]


@pytest.mark.parametrize("argv, message", [
    (["--inputs", LAYER0, "--seq-len", "256,1024"],
     "--seq-len 1024: qkv:minilm#layer=0 holds 512 tokens; use --seq-len 512 or less"),
    (["--inputs", LAYER0, "--heads", "4"], "--heads 4: qkv:minilm#layer=0 has 12 heads"),
    (["--inputs", "qkv:minilm", "--head-dim", "32,64"], "--head-dim 32,64: qkv:minilm has "
                                                         "head_dim 32"),
    (["--inputs", "uniform"], "--inputs 'uniform': valid: gaussian, clustered, qkv:minilm"),
    (["--inputs", "qkv:minilm#layer=9"], "has no layer 9"),
    (["--inputs", "qkv:missing.safetensors"], "capture file missing.safetensors does not "
                                              "exist"),
])
def test_refusals_are_one_line_before_any_work(argv, message, tmp_path, monkeypatch,
                                               capsys):
    monkeypatch.setenv(tuned.ENV_DIR, str(tmp_path))
    cache = tmp_path / "cache.jsonl"
    assert main(["tune", "--gpu", "cpu", "--cache", str(cache), *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err
    assert not cache.exists() and not (tmp_path / "cpu.yaml").exists()


def test_a_tune_on_the_capture_records_its_inputs(tmp_path, monkeypatch, capsys,
                                                  single_thread):
    monkeypatch.setenv(tuned.ENV_DIR, str(tmp_path))
    cache = tmp_path / "cache.jsonl"
    common = ["tune", "--gpu", "cpu", "--seq-len", "64", "--features", "8",
              "--bucket-size", "16", "--methods", "performer,lsh", "--threads", "1",
              "--chunk-elements", "65536", "--warmup-ms", "0", "--rep-ms", "1",
              "--min-samples", "3", "--cache", str(cache)]
    assert main([*common, "--inputs", LAYER0]) == 0
    capsys.readouterr()
    data = yaml.safe_load((tmp_path / "cpu.yaml").read_text())
    meta = data["metadata"]["kernels"]
    first_counts = meta["evaluations"]
    assert first_counts["measured_now"] > 0
    label = meta["inputs"]["kind"]
    assert label.startswith("qkv:minilm_attention_kernels#layer=0@") and "/" not in label
    assert meta["inputs"]["model"] == "minilm"
    assert (meta["inputs"]["heads"], meta["inputs"]["causal"]) == (12, False)
    assert "--inputs 'qkv:minilm#layer=0'" in meta["command"]
    for target in ("torch:performer", "torch:lsh"):
        (bucket,) = data["kernels"][target]["buckets"]
        assert bucket["inputs"] == label and bucket["shape"]["head_dim"] == 32
    tuned.load("cpu")  # the file validates with the per-bucket inputs

    # the same command measures nothing new; other inputs of the same shape measure again
    assert main([*common, "--inputs", LAYER0]) == 0
    assert tuned.load("cpu").raw["metadata"]["kernels"]["evaluations"]["measured_now"] == 0
    assert main([*common, "--inputs", "clustered", "--heads", "12", "--head-dim", "32"]) == 0
    capsys.readouterr()
    data = yaml.safe_load((tmp_path / "cpu.yaml").read_text())
    assert data["metadata"]["kernels"]["evaluations"] == first_counts  # as on a new cache
    assert data["metadata"]["kernels"]["inputs"]["kind"] == "clustered"
    assert data["kernels"]["torch:lsh"]["buckets"][0]["inputs"] == "clustered"


def test_a_causal_capture_tunes_causal_calls(tmp_path, single_thread):
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 48, 8, generator=gen) for _ in range(3))
    layer = CapturedLayer(0, q, k, v, None, scale=0.25, causal=True, layer_type="global",
                          window=None, kv_heads=1)
    path = tmp_path / "toy.safetensors"
    save_capture(path, Capture(meta={"model": "toy", "tokens": 48, "date": "d"},
                               layers={0: layer}))
    kind = f"qkv:{path}"
    fitted = tune_inputs(kind, "cpu", seq_len=(32,))
    assert (fitted.heads, fitted.head_dim, fitted.causal) == (2, (8,), True)
    with pytest.raises(UserError, match="holds 48 tokens"):
        tune_inputs(kind, "cpu", seq_len=(64,))
    assert inputs_identity(kind) == {"kind": "qkv:toy#layer=all@", "model": "toy",
                                     "captured": "d"}
    case = CpuCase("performer", ShapeBucket(32, 8, 8, 0), heads=2, inputs=kind,
                   causal=True, threads=(1,), warmup_ms=0, rep_ms=0, min_samples=1)
    assert case.context["causal"] is True and case.problem.causal
    # causal: the first query sees only the first key, so its output is that key's value
    first = case.v[..., 0, :].double()
    assert torch.allclose(case.ref64[..., 0, :], first, atol=1e-3)
    assert not torch.allclose(case.ref64[..., 1, :], first, atol=1e-3)
    assert case.check(case.build({"num_threads": 1})()) is None


def test_gpu_cases_time_the_kernels_on_the_capture():
    from sbbench.autotune.triton_tiles import gpu_cases
    from sbbench.cli.tune import build_request
    from sbbench.core.devices import get_device

    pytest.importorskip("triton")
    args = build_parser().parse_args(["tune", "--gpu", "h100-sxm", "--inputs", LAYER0,
                                      "--seq-len", "256", "--kernels", "sparse",
                                      "--no-static", "--dry-run"])
    request = build_request(args, get_device("h100-sxm"))
    assert {(s.seq_len, s.head_dim) for s in request.shapes} == {(256, 32)}
    (case,), _ = gpu_cases(request)
    assert (case.heads, case.inputs) == (12, LAYER0)
    assert case.context["inputs"] == inputs_identity(LAYER0)
