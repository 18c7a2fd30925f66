"""Runtime use of the tuned tables: ScatterbrainAttention.from_tuned and config="tuned"."""

import warnings

import pytest
import torch

from sbbench import tuned
from sbbench.attention import (
    ScatterbrainAttention,
    exact_attention,
    scatterbrain_attention,
    settings,
)


def _entry(seq_len, method, n_features, bucket_size, error, time_ms, max_error=0.05):
    return {"seq_len": seq_len, "head_dim": 32, "max_error": max_error, "method": method,
            "n_features": n_features, "bucket_size": bucket_size,
            "n_hashes": 1 if bucket_size else 0, "error": error, "time_ms": time_ms,
            "exact_time_ms": 10.0}


@pytest.fixture
def table_dir(tmp_path, monkeypatch):
    """A cpu table (in a temp folder named by SBBENCH_TUNING_DIR) with two budgets; the
    once-only warnings start afresh."""
    monkeypatch.setattr(settings, "_warned", set())
    monkeypatch.setenv(tuned.ENV_DIR, str(tmp_path))
    tuned.write_section("cpu", "budgets", [
        _entry(256, "scatterbrain", 16, 32, error=0.03, time_ms=1.0),
        _entry(4096, "scatterbrain", 64, 64, error=0.04, time_ms=5.0),
    ])
    return tmp_path


def test_from_tuned_takes_the_budget_of_the_nearest_shape(table_dir):
    layer = ScatterbrainAttention.from_tuned("cpu", seq_len=300, head_dim=32, num_heads=2)
    assert (layer.n_features, layer.bucket_size, layer.n_hashes) == (16, 32, 1)
    assert layer.embed_dim == 64 and layer.head_dim == 32
    out = layer(torch.randn(1, 300, 64))
    assert out.shape == (1, 300, 64) and torch.isfinite(out).all()
    big = ScatterbrainAttention.from_tuned("cpu", seq_len=4096, head_dim=32, num_heads=2)
    assert (big.n_features, big.bucket_size) == (64, 64)


def test_from_tuned_runs_exact_where_nothing_meets_the_target(table_dir):
    with pytest.warns(UserWarning) as record:
        layer = ScatterbrainAttention.from_tuned("cpu", seq_len=300, head_dim=32,
                                                 num_heads=2, max_error=0.01)
    message = str(record[0].message)
    assert "max_error=0.01" in message and "exact attention" in message
    # the best measured at the nearest shape, and its budget
    assert "error 0.03 with f=16 bucket=32 hashes=1" in message
    assert layer.exact and "exact=True" in repr(layer)
    x = torch.randn(2, 300, 64)
    batch, seq = x.shape[:2]
    q, k, v = layer.qkv(x).view(batch, seq, 3, 2, 32).permute(2, 0, 3, 1, 4).unbind(0)
    want = layer.out(exact_attention(q, k, v).transpose(1, 2).reshape(batch, seq, 64))
    torch.testing.assert_close(layer(x), want)


def test_from_tuned_without_a_table_for_the_device_runs_exact(table_dir):
    with pytest.warns(UserWarning, match="no tuning table for device h100-sxm"):
        layer = ScatterbrainAttention.from_tuned("h100", seq_len=512, head_dim=32,
                                                 num_heads=2, max_error=0.05)
    assert layer.exact
    assert layer(torch.randn(1, 64, 64)).shape == (1, 64, 64)


def test_config_tuned_runs_exact_and_warns_once(table_dir):
    q, k, v = (torch.randn(1, 2, 250, 32) for _ in range(3))
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")  # our own once-only logic, not the filter's
        outs = [scatterbrain_attention(q, k, v, config="tuned", max_error=0.01)
                for _ in range(3)]
    assert len(record) == 1, [str(w.message) for w in record]
    message = str(record[0].message)
    assert "max_error=0.01" in message and "running exact attention" in message
    assert "error 0.03 with f=16 bucket=32 hashes=1" in message
    for out in outs:
        torch.testing.assert_close(out, exact_attention(q, k, v))
    out, weights = scatterbrain_attention(q, k, v, config="tuned", max_error=0.01,
                                          return_weights=True, causal=True)
    want, want_weights = exact_attention(q, k, v, causal=True, return_weights=True)
    torch.testing.assert_close(out, want)
    torch.testing.assert_close(weights, want_weights)


def test_config_tuned_still_rejects_an_invalid_target(table_dir):
    q = k = v = torch.randn(1, 1, 20, 8)
    with pytest.raises(ValueError, match="max_error"):
        scatterbrain_attention(q, k, v, config="tuned", max_error=0)
    with pytest.raises(ValueError, match="max_error"):
        ScatterbrainAttention.from_tuned("cpu", seq_len=20, head_dim=8, max_error=-1)


def test_config_tuned_picks_the_budget_and_matches_the_explicit_call(table_dir):
    q, k, v = (torch.randn(1, 2, 250, 32) for _ in range(3))
    tuned_out = scatterbrain_attention(q, k, v, config="tuned",
                                       generator=torch.Generator().manual_seed(3))
    explicit = scatterbrain_attention(q, k, v, n_features=16, bucket_size=32,
                                      generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(tuned_out, explicit, rtol=0, atol=0)


def test_config_validation():
    q = k = v = torch.randn(1, 1, 20, 8)
    with pytest.raises(ValueError, match="n_features and bucket_size are required"):
        scatterbrain_attention(q, k, v)
    with pytest.raises(ValueError, match="config must be"):
        scatterbrain_attention(q, k, v, n_features=4, bucket_size=4, config="fast")
    with pytest.raises(ValueError, match="config keys"):
        scatterbrain_attention(q, k, v, n_features=4, bucket_size=4, config={"tiles": 1})


def test_chunk_elements_from_config_does_not_change_the_result():
    q, k, v = (torch.randn(1, 2, 130, 16) for _ in range(3))
    outs = [scatterbrain_attention(q, k, v, n_features=8, bucket_size=16, n_hashes=2,
                                   generator=torch.Generator().manual_seed(0),
                                   config={"chunk_elements": ce})
            for ce in (1, 4096, None)]
    for out in outs[1:]:
        torch.testing.assert_close(out, outs[0], rtol=1e-6, atol=1e-6)


def test_config_tuned_applies_the_tuned_threads_for_the_call_only(table_dir, monkeypatch):
    import sbbench.attention.scatterbrain as entry

    tuned.write_section("cpu", "kernels", {"torch:scatterbrain": {
        "default": {"chunk_elements": 1 << 20, "num_threads": None},
        "buckets": [{"shape": {"seq_len": 256, "head_dim": 32, "n_features": 16,
                               "bucket_size": 32, "dtype": "float32"},
                     "best": {"chunk_elements": 4096, "num_threads": 1}, "time_ms": 1.0}]}})
    seen = []
    real_attend = entry.attend

    def spy(*args, **kwargs):
        seen.append((torch.get_num_threads(), kwargs["chunk_elements"]))
        return real_attend(*args, **kwargs)

    monkeypatch.setattr(entry, "attend", spy)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        q, k, v = (torch.randn(1, 2, 250, 32) for _ in range(3))
        scatterbrain_attention(q, k, v, config="tuned")
        assert seen == [(1, 4096)]
        assert torch.get_num_threads() == 2  # restored
        layer = ScatterbrainAttention.from_tuned("cpu", seq_len=250, head_dim=32, num_heads=2)
        assert layer.config["num_threads"] == 1
        layer(torch.randn(1, 250, 64))
        assert seen[-1] == (1, 4096) and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_config_num_threads_must_be_positive():
    q = k = v = torch.randn(1, 1, 20, 8)
    with pytest.raises(ValueError, match="num_threads must be an int >= 1"):
        scatterbrain_attention(q, k, v, n_features=4, bucket_size=4,
                               config={"num_threads": 0})
