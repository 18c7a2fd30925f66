"""A scatterbrain_centroids budget in a tuned table: the facade answers lowrank
"centroids", and config="tuned" / from_tuned with lowrank="centroids" run it."""

from __future__ import annotations

import torch

from sbbench import tuned
from sbbench.attention import ScatterbrainAttention, scatterbrain_attention, settings
from sbbench.attention.settings import ConfigRequest
from sbbench.core.types import Budget
from sbbench.tuned.facade import resolve

SEQ, HEAD_DIM = 128, 16


def _write(folder) -> None:
    common = {"seq_len": SEQ, "head_dim": HEAD_DIM, "max_error": 0.05, "bucket_size": 16,
              "n_hashes": 1, "error": 0.04, "exact_time_ms": 10.0}
    tuned.write_section("cpu", "budgets", [
        {**common, "method": "scatterbrain", "n_features": 8, "time_ms": 2.0},
        {**common, "method": "scatterbrain_centroids", "n_features": 5, "sparse": "kmeans",
         "window": 4, "time_ms": 3.0}], folder=folder)


def test_the_table_keeps_the_method_and_the_facade_passes_lowrank(tmp_path, monkeypatch):
    monkeypatch.setattr(settings, "_warned", set())
    monkeypatch.setenv(tuned.ENV_DIR, str(tmp_path))
    _write(tmp_path)
    assert tuned.lookup_budget("cpu", SEQ, HEAD_DIM, 0.05, method="scatterbrain_centroids",
                               folder=tmp_path) == Budget("scatterbrain_centroids", 5, 16, 1,
                                                          sparse="kmeans", window=4)
    ours = resolve(ConfigRequest("cpu", SEQ, HEAD_DIM, 0.05, method="scatterbrain_centroids"))
    assert ours.lowrank == "centroids" and ours.n_features == 5 and ours.sparse == "kmeans"
    plain = resolve(ConfigRequest("cpu", SEQ, HEAD_DIM, 0.05))
    assert plain.lowrank == "performer" and plain.n_features == 8


def test_config_tuned_and_from_tuned_run_the_centroid_budget(tmp_path, monkeypatch):
    monkeypatch.setattr(settings, "_warned", set())
    monkeypatch.setenv(tuned.ENV_DIR, str(tmp_path))
    _write(tmp_path)
    q, k, v = torch.randn(3, 1, 2, SEQ, HEAD_DIM,
                          generator=torch.Generator().manual_seed(0)).unbind(0)
    out = scatterbrain_attention(q, k, v, config="tuned", lowrank="centroids",
                                 generator=torch.Generator().manual_seed(2))
    want = scatterbrain_attention(q, k, v, n_features=5, bucket_size=16, n_hashes=1,
                                  sparse="kmeans", window=4, lowrank="centroids",
                                  generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(out, want, rtol=0, atol=0)
    layer = ScatterbrainAttention.from_tuned("cpu", seq_len=SEQ, head_dim=HEAD_DIM,
                                             num_heads=2, lowrank="centroids")
    assert (layer.lowrank, layer.n_features, layer.sparse, layer.window) == (
        "centroids", 5, "kmeans", 4)
    assert ScatterbrainAttention.from_tuned("cpu", seq_len=SEQ, head_dim=HEAD_DIM,
                                            num_heads=2).lowrank == "performer"
