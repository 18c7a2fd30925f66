"""``make_qkv`` with the captured kind ``qkv:FILE[#layer=N]``."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from sbbench.attention import exact_attention
from sbbench.core.errors import UserError
from sbbench.core.types import Problem
from sbbench.measure.inputs import (
    KINDS,
    Capture,
    CapturedLayer,
    is_capture_kind,
    load_capture,
    make_qkv,
    save_capture,
)

SHIPPED = (Path(__file__).resolve().parents[2] / "sbbench" / "data" / "captures"
           / "minilm_attention_kernels.safetensors")
FILE_KIND = f"qkv:{SHIPPED}"  # every layer stacked along the heads
KIND = f"{FILE_KIND}#layer=0"


def problem(seq_len=128, **kw) -> Problem:
    return Problem(**{"seq_len": seq_len, "head_dim": 32, "heads": 12, **kw})


def test_synthetic_kinds_are_unchanged():
    assert KINDS == ("gaussian", "clustered")
    assert not is_capture_kind("clustered") and is_capture_kind(KIND)


def test_prefix_shape_dtype_and_batch():
    layer = load_capture(SHIPPED).layer(0)
    q, k, v = make_qkv(problem(100, batch=2, dtype="float32"), seed=0, kind=KIND)
    for t in (q, k, v):
        assert t.shape == (2, 12, 100, 32) and t.dtype == torch.float32
        assert torch.equal(t[0], t[1])  # the one sequence, repeated
    # MiniLM's scale is the default 1/sqrt(d): q comes back unscaled
    torch.testing.assert_close(q[0], layer.q[:, :100].float())
    torch.testing.assert_close(k[0], layer.k[:, :100].float())
    torch.testing.assert_close(v[0], layer.v[:, :100].float())


def test_layer_fragment_and_default_layer():
    capture = load_capture(SHIPPED)
    q3, _, _ = make_qkv(problem(16, dtype="float16"), seed=0, kind=f"{FILE_KIND}#layer=3")
    q0, _, _ = make_qkv(problem(16, dtype="float16"), seed=0, kind=KIND)
    assert torch.equal(q3[0], capture.layer(3).q[:, :16])
    assert torch.equal(q0[0], capture.layer(0).q[:, :16])
    assert not torch.equal(q0, q3)
    # no fragment: every layer, stacked along the heads (6 x 12)
    q_all, _, _ = make_qkv(problem(16, heads=72, dtype="float32"), seed=0, kind=FILE_KIND)
    assert q_all.shape == (1, 72, 16, 32)
    torch.testing.assert_close(q_all[0, 36:48], capture.layer(3).q[:, :16].float())


def test_full_length_matches_the_stored_output():
    q, k, v = make_qkv(problem(512, dtype="float64"), seed=0, kind=f"{FILE_KIND}#layer=2")
    out = load_capture(SHIPPED).layer(2).out.double()
    assert float((exact_attention(q, k, v)[0] - out).norm() / out.norm()) < 2e-3


def test_temperature_multiplies_the_logits():
    base = make_qkv(problem(32, dtype="float64"), seed=0, kind=KIND)
    hot = make_qkv(problem(32, dtype="float64"), seed=0, kind=KIND, temperature=4.0)
    torch.testing.assert_close(hot[0] @ hot[1].transpose(-1, -2),
                               4.0 * base[0] @ base[1].transpose(-1, -2))
    torch.testing.assert_close(hot[2], base[2])


def test_the_model_scale_is_folded_into_q(tmp_path):
    """A capture whose scale is not 1/sqrt(d): default-scale attention on make_qkv's
    tensors equals attention with the model's scale on the stored ones."""
    gen = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(3, 20, 8, generator=gen, dtype=torch.float64) for _ in range(3))
    layer = CapturedLayer(0, q, k, v, None, scale=0.05, causal=True, layer_type="global",
                          window=None, kv_heads=1)
    path = tmp_path / "scaled.safetensors"
    save_capture(path, Capture(meta={"model": "toy", "tokens": 20}, layers={0: layer}))
    stored = load_capture(path).layer(0)
    p = Problem(seq_len=20, head_dim=8, heads=3, dtype="float64", causal=True)
    mq, mk, mv = make_qkv(p, seed=0, kind=f"qkv:{path}")
    expected = exact_attention(*(t.double()[None] for t in (stored.q, stored.k, stored.v)),
                               softmax_scale=0.05, causal=True)
    torch.testing.assert_close(exact_attention(mq, mk, mv, causal=True), expected)
    assert not torch.allclose(mq[0], stored.q.double())
    assert stored.scale == pytest.approx(0.05) and stored.causal
    assert math.isclose(float(mq[0, 0, 0, 0] / stored.q[0, 0, 0].double()),
                        0.05 * math.sqrt(8))


def test_seq_len_beyond_the_capture_is_a_user_error():
    with pytest.raises(UserError, match="exceeds the 512 captured tokens"):
        make_qkv(problem(513), seed=0, kind=KIND)


@pytest.mark.parametrize("heads, head_dim", [(4, 32), (12, 64)])
def test_other_heads_or_head_dim_is_a_user_error(heads, head_dim):
    with pytest.raises(UserError, match="set heads=12 and head_dim=32"):
        make_qkv(Problem(seq_len=64, head_dim=head_dim, heads=heads), seed=0, kind=KIND)


def test_bad_kinds_and_arguments():
    with pytest.raises(UserError, match="no layer 9"):
        make_qkv(problem(), seed=0, kind=f"{FILE_KIND}#layer=9")
    with pytest.raises(UserError, match="does not exist"):
        make_qkv(problem(), seed=0, kind="qkv:/nonexistent/x.safetensors")
    with pytest.raises(ValueError, match="temperature"):
        make_qkv(problem(), seed=0, kind=KIND, temperature=0.0)
    with pytest.raises(ValueError, match="kind must be one of"):
        make_qkv(problem(), seed=0, kind="captured")
