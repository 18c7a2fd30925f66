"""Shape buckets with the sparse kind, sink and window: old files read unchanged, the new
keys round-trip, lookups prefer a bucket of the call's kind / sink / window."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from sbbench import tuned
from sbbench.attention.settings import ConfigRequest
from sbbench.core.types import Budget, Problem
from sbbench.tuned.facade import resolve
from sbbench.tuned.shape import SHAPE_KEYS, ShapeBucket

SHIPPED = Path(__file__).resolve().parents[2] / "tuning_configs"

OLD_FORMAT = """\
schema_version: 1
device: cpu
kernels:
  torch:scatterbrain:
    default: {chunk_elements: 1048576, num_threads: null}
    buckets:
    - shape: {seq_len: 512, head_dim: 32, n_features: 16, bucket_size: 32, dtype: float32}
      best: {chunk_elements: 65536, num_threads: 1}
      time_ms: 1.0
  torch:performer:
    default: {num_threads: null}
    buckets:
    - shape: {seq_len: 512, head_dim: 32, n_features: 16, bucket_size: 0, dtype: float32}
      best: {num_threads: 2}
      time_ms: 1.0
"""


def entry(chunk, **shape):
    base = {"seq_len": 512, "head_dim": 32, "n_features": 16, "bucket_size": 32,
            "dtype": "float32"}
    return {"shape": {**base, **shape}, "best": {"chunk_elements": chunk, "num_threads": 1},
            "time_ms": 1.0}


def table_with(tmp_path, *buckets):
    data = {"schema_version": 1, "device": "cpu", "kernels": {"torch:scatterbrain": {
        "default": {"chunk_elements": 1 << 20, "num_threads": None},
        "buckets": list(buckets)}}}
    (tmp_path / "cpu.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    return tuned.load("cpu", folder=tmp_path)


def test_old_format_reads_as_the_defaults(tmp_path):
    (tmp_path / "cpu.yaml").write_text(OLD_FORMAT)
    table = tuned.load("cpu", folder=tmp_path)
    sb = table.targets["torch:scatterbrain"].buckets[0].shape
    assert (sb.sparse, sb.sink, sb.window) == ("lsh", 0, 0)
    assert sb == ShapeBucket(512, 32, 16, 32, "float32")
    assert sb.label == "seq_len=512 head_dim=32 n_features=16 bucket_size=32 float32"
    assert set(sb.as_dict()) == set(SHAPE_KEYS)
    perf = table.targets["torch:performer"].buckets[0].shape
    assert perf.sparse == "" and set(perf.as_dict()) == set(SHAPE_KEYS)
    problem = Problem(512, 32)
    assert tuned.lookup_cpu_config(problem, Budget("scatterbrain", 16, 32, 1),
                                   folder=tmp_path) == {"chunk_elements": 65536,
                                                        "num_threads": 1}
    assert tuned.lookup_cpu_config(problem, Budget("performer", 16),
                                   folder=tmp_path) == {"num_threads": 2}


@pytest.mark.parametrize("path", sorted(SHIPPED.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_files_load_and_write_back_unchanged(path):
    raw = yaml.safe_load(path.read_text())
    table = tuned.parse(raw, device=path.stem, source=str(path))
    for target in table.targets.values():
        for bucket in target.buckets:
            assert bucket.shape.as_dict() == bucket.raw["shape"]  # no new keys written
            # keys absent from a shape read as the defaults, present ones as written
            raw_shape = bucket.raw["shape"]
            assert (bucket.shape.sink, bucket.shape.window) == (raw_shape.get("sink", 0),
                                                               raw_shape.get("window", 0))


def test_of_takes_the_budgets_kind_sink_and_window():
    budget = Budget("scatterbrain", 16, 32, 1, sparse="kmeans", sink=4, window=60)
    shape = ShapeBucket.of(Problem(512, 32), budget)
    assert (shape.sparse, shape.sink, shape.window) == ("kmeans", 4, 60)
    assert shape.label == ("seq_len=512 head_dim=32 n_features=16 bucket_size=32 "
                           "sparse=kmeans sink=4 window=60 float32")
    assert shape.as_dict()["sparse"] == "kmeans" and shape.as_dict()["window"] == 60
    local = ShapeBucket.of(Problem(512, 32), Budget("scatterbrain_local", 16, 32, 1))
    assert local.sparse == "local" and "sink" not in local.as_dict()
    assert ShapeBucket.of(Problem(512, 32), Budget("performer", 16)).sparse == ""
    assert ShapeBucket(512, 32, 16, 32, sparse=None) == ShapeBucket(512, 32, 16, 32)
    with pytest.raises(ValueError, match="sparse"):
        ShapeBucket(512, 32, 16, 32, sparse="hash")


def test_new_keys_round_trip_and_are_checked(tmp_path):
    new = entry(4096, sparse="kmeans", sink=4, window=60)
    tuned.write_section("cpu", "kernels", {"torch:scatterbrain": {
        "default": {"chunk_elements": 1 << 20, "num_threads": None},
        "buckets": [entry(65536), new]}}, folder=tmp_path)
    written = yaml.safe_load((tmp_path / "cpu.yaml").read_text())
    shapes = [b["shape"] for b in written["kernels"]["torch:scatterbrain"]["buckets"]]
    assert [set(s) - set(SHAPE_KEYS) for s in shapes] == [set(), {"sparse", "sink", "window"}]
    shapes = [b.shape for b in tuned.load("cpu", folder=tmp_path)
              .targets["torch:scatterbrain"].buckets]
    assert shapes == [ShapeBucket(512, 32, 16, 32),
                      ShapeBucket(512, 32, 16, 32, "float32", "kmeans", 4, 60)]
    for bad, key in (({"sparse": "hash"}, "shape.sparse"), ({"sink": -1}, "shape.sink"),
                     ({"window": 1.5}, "shape.window"), ({"rounds": 2}, "shape.rounds")):
        with pytest.raises(tuned.TuningFileError, match=key.replace(".", r"\.")):
            table_with(tmp_path, entry(4096, **bad))


def test_lookup_prefers_the_calls_kind_sink_and_window(tmp_path):
    table = table_with(tmp_path, entry(1, seq_len=512), entry(2, sparse="kmeans"),
                       entry(3, sparse="kmeans", sink=4, window=60),
                       entry(4, seq_len=2048, sparse="kmeans", sink=4, window=60,
                             dtype="float16"))
    target = "torch:scatterbrain"

    def chunk(**shape):
        return table.lookup(target, ShapeBucket(**{"seq_len": 512, "head_dim": 32,
                                                   "n_features": 16, "bucket_size": 32,
                                                   **shape})).config["chunk_elements"]

    assert chunk() == 1 and chunk(sparse="kmeans") == 2
    assert chunk(sparse="kmeans", sink=4, window=60) == 3
    assert chunk(sparse="kmeans", sink=4, window=64) == 3  # nearest window
    assert chunk(sparse="kmeans", sink=0, window=8) == 2  # nearer to no sink / window
    assert chunk(sink=4, window=60) == 1  # another kind costs more than sink and window
    assert chunk(seq_len=4096, sparse="kmeans") == 2  # the dtype still comes first
    assert chunk(sparse="local") == 1  # no local bucket: the nearest sizes


def test_config_tuned_with_own_sizes_uses_its_own_bucket(tmp_path, monkeypatch):
    monkeypatch.setenv(tuned.ENV_DIR, str(tmp_path))
    table_with(tmp_path, entry(65536), entry(4096, sparse="kmeans", sink=4, window=60))
    request = dict(device="cpu", seq_len=512, head_dim=32, max_error=0.05,
                   n_features=16, bucket_size=32)
    own = resolve(ConfigRequest(**request, sparse="kmeans", sink=4, window=60))
    assert own.impl["chunk_elements"] == 4096 and not own.has_budget
    assert resolve(ConfigRequest(**request, sparse="lsh")).impl["chunk_elements"] == 65536


def test_an_invalid_kind_in_a_tuned_call_fails_with_the_calls_own_message(tmp_path,
                                                                            monkeypatch):
    import torch

    from sbbench.attention import scatterbrain_attention

    monkeypatch.setenv(tuned.ENV_DIR, str(tmp_path))
    table_with(tmp_path, entry(65536))
    q = k = v = torch.randn(1, 1, 64, 8)
    with pytest.raises(ValueError, match=r"^sparse must be one of .* or None"):
        scatterbrain_attention(q, k, v, n_features=4, bucket_size=8, sparse="hash",
                               config="tuned")
