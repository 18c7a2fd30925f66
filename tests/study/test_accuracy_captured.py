"""The accuracy study on captured Q/K/V (``sbbench accuracy --inputs qkv:...``)."""

from __future__ import annotations

import pytest

from sbbench.cli.main import main
from sbbench.measure.inputs import capture_shape
from sbbench.study.report import FILES

SHIPPED = "qkv:minilm"


def test_study_runs_on_the_shipped_capture_with_its_shape(tmp_path, capsys):
    heads, head_dim, tokens, causal = capture_shape(SHIPPED)
    assert not causal
    out = tmp_path / "acc"
    code = main(["accuracy", "--inputs", SHIPPED, "--seq-len", "48", "--budget", "8",
                 "--seeds", "1", "--no-oracles", "--no-split-sweep", "--out", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "qkv:minilm" in printed and "T=1" in printed
    report = (out / FILES["report"]).read_text()
    # the capture's own shape, its provenance label, and no synthetic recipe
    assert f"{heads} heads, seq 48, head_dim {head_dim}" in report
    assert "qkv:minilm_attention_kernels#layer=all@" in report
    assert "--inputs qkv:minilm" in report and "`clustered`:" not in report
    raw = (out / FILES["raw"]).read_text().splitlines()
    assert len(raw) == 1 + 3  # performer, lsh, scatterbrain at one seed and temperature


@pytest.mark.parametrize("argv, match", [
    (["--inputs", "clustered"], "takes a capture"),
    (["--inputs", SHIPPED, "--kinds", "gaussian"], "exclude each other"),
    (["--inputs", SHIPPED, "--heads", "3"], "--heads 3: the capture"),
    (["--inputs", SHIPPED, "--seq-len", "100000"], "tokens"),
    (["--inputs", "qkv:/nonexistent/capture.safetensors"], "--inputs"),
])
def test_bad_captured_inputs_are_one_line_errors(argv, match, tmp_path, capsys):
    code = main(["accuracy", *argv, "--out", str(tmp_path / "x")])
    err = capsys.readouterr().err
    assert code == 2 and match in err and "Traceback" not in err
