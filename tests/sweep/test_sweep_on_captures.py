"""Sweeps on captured attention (the shipped MiniLM capture): the capture sets the shape,
rows name it without a machine's path, and every head's error is kept."""

from __future__ import annotations

import pytest

from sbbench.core.errors import UserError
from sbbench.core.types import Problem
from sbbench.measure.inputs import input_label, make_qkv
from sbbench.sweep.grid import Grid, expand, load_grid
from sbbench.sweep.runner import Settings, run_sweep
from sbbench.sweep.store import Store

MINILM = "qkv:minilm"


def test_the_quick_grid_runs_on_the_shipped_capture():
    grid = load_grid("quick")
    assert grid.input_kind == MINILM
    expansion = expand(grid)
    shapes = {(p.problem.heads, p.problem.head_dim) for p in expansion.points}
    assert shapes == {(72, 32)}  # 6 layers x 12 heads of all-MiniLM-L6-v2
    assert max(p.problem.seq_len for p in expansion.points) <= 512


def test_the_capture_sets_heads_and_head_dim_and_drops_longer_lengths():
    grid = Grid(name="t", seq_len=(64, 512, 4096), head_dim=(64,), heads=(4,),
                n_features=(8,), bucket_size=(16,), n_hashes=(1,), input_kind=f"{MINILM}#layer=3")
    expansion = expand(grid)
    assert {(p.problem.heads, p.problem.head_dim) for p in expansion.points} == {(12, 32)}
    assert {p.problem.seq_len for p in expansion.points} == {64, 512}
    assert any("4096" in note and "captured tokens" in note for note in expansion.dropped)
    too_long = Grid(name="t", seq_len=(4096,), input_kind=MINILM)
    with pytest.raises(UserError, match="--seq-len 512"):
        expand(too_long)


def test_stacked_layers_equal_the_single_layers():
    """qkv:minilm stacks every layer's heads; layer 2's heads sit at 24..35."""
    q_all, k_all, v_all = make_qkv(Problem(seq_len=96, head_dim=32, heads=72), seed=0,
                                   kind=MINILM)
    q2, k2, v2 = make_qkv(Problem(seq_len=96, head_dim=32, heads=12), seed=0,
                          kind=f"{MINILM}#layer=2")
    for stacked, single in ((q_all, q2), (k_all, k2), (v_all, v2)):
        assert stacked[:, 24:36].allclose(single, rtol=1e-6, atol=1e-6)


def test_the_inputs_label_names_the_capture_not_a_path():
    label = input_label(MINILM, 1.0)
    assert label.startswith("qkv:minilm_attention_kernels#layer=all@") and label.endswith(":t=1")
    assert "/" not in label
    assert input_label(f"{MINILM}#layer=4", 2.0).split("@")[0].endswith("#layer=4")
    assert input_label("clustered", 1.0) == "clustered:t=1"


def test_a_sweep_keeps_every_heads_error(tmp_path):
    grid = Grid(name="t", seq_len=(64,), n_features=(8,), bucket_size=(16,), n_hashes=(1,),
                methods=("exact", "performer"), input_kind=f"{MINILM}#layer=0")
    settings = Settings(device="cpu", seeds=(0, 1), warmup_ms=1.0, rep_ms=3.0, min_samples=5,
                        measure_memory=False, git_revision="test", input_kind=grid.input_kind)
    with Store(tmp_path / "r.sqlite") as store:
        run_sweep(expand(grid).points, settings, store, progress=False)
        records = {r.method: r for r in store.records()}
    performer = records["performer"]
    assert len(performer.error_heads) == 12
    assert min(performer.error_heads) <= performer.error_p50 <= performer.error_p90
    assert performer.error_p90 <= performer.error_max == max(performer.error_heads)
    assert performer.inputs.startswith("qkv:minilm_attention_kernels#layer=0@")
    assert records["exact"].error_max < 1e-5


def test_a_causal_capture_makes_causal_points(tmp_path):
    """A decoder's capture is causal: its points are causal whatever the grid says (with
    a note); an encoder capture's points are not."""
    import torch

    from sbbench.measure.capture_file import Capture, CapturedLayer, save_capture

    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 40, 8, generator=gen) for _ in range(3))
    layer = CapturedLayer(0, q, k, v, None, scale=0.25, causal=True, layer_type="global",
                          window=None, kv_heads=1)
    path = tmp_path / "decoder.safetensors"
    save_capture(path, Capture(meta={"model": "toy", "tokens": 40}, layers={0: layer}))
    grid = Grid(name="t", seq_len=(32,), head_dim=(64,), heads=(4,), causal=(False,),
                methods=("exact", "performer"), n_features=(8,), input_kind=f"qkv:{path}")
    expansion = expand(grid)
    assert expansion.points and all(p.problem.causal for p in expansion.points)
    assert any("the capture is causal" in note for note in expansion.dropped)
    encoder = expand(Grid(name="e", seq_len=(32,), causal=(True,), methods=("exact",),
                          input_kind="qkv:minilm#layer=0"))
    assert not any(p.problem.causal for p in encoder.points)
