"""benchmarks/check_reliability.py: how pairs of stores are judged and reported (the
sweeps themselves take minutes and are not run here)."""

from __future__ import annotations

import random

import pytest

from sbbench.core.record import Record
from sbbench.sweep.store import Store

SIZES = {"exact": (0, 0, 0), "performer": (64, 0, 0), "lsh": (0, 32, 1),
         "scatterbrain": (64, 32, 1)}


@pytest.fixture(scope="module")
def bench(benchmark_module):
    return benchmark_module("check_reliability")


def _store(path, seed, slow=1.0):
    rng = random.Random(seed)
    with Store(path) as store:
        for seq_len in (256, 512):
            for method, base in (("exact", 1.0), ("performer", 2.0), ("lsh", 3.0),
                                 ("scatterbrain", 4.0)):
                level = base * seq_len / 256 * (slow if method == "performer" else 1.0)
                samples = [level * rng.uniform(0.98, 1.02) for _ in range(15)]
                f, b, h = SIZES[method]
                store.add(Record(device="cpu", method=method, backend="torch",
                                 seq_len=seq_len, head_dim=64, batch=1, heads=4,
                                 dtype="float32", causal=False, n_features=f, bucket_size=b,
                                 n_hashes=h, kernel_config="", inputs="clustered:t=1",
                                 code_version="v", source="measured",
                                 time_samples_ms=samples,
                                 time_median_ms=sorted(samples)[7], error_mean=0.5))


def test_evaluate_counts_passes_and_catches_and_writes_the_readme(tmp_path, bench):
    runs = tmp_path / "runs"
    runs.mkdir()
    for i, slow in ((0, 1.3), (1, 1.0)):  # pair 2's "injected" sweep was not slowed
        _store(runs / f"{i:02d}-same-base.sqlite", 10 * i)
        _store(runs / f"{i:02d}-same-cur.sqlite", 10 * i + 1)
        _store(runs / f"{i:02d}-inj-base.sqlite", 10 * i + 2)
        _store(runs / f"{i:02d}-inj-cur.sqlite", 10 * i + 3, slow=slow)
    result = bench.evaluate(runs, "performer")
    assert (result["n"], result["passed"], result["caught"]) == (2, 2, 1)
    assert [r[3] for r in result["rows"]] == ["caught", "MISSED"]
    out = tmp_path / "README.md"
    bench.write_readme(out, result, command="python benchmarks/check_reliability.py",
                       rep_ms=60, threads=1, factor=1.3, methods="performer", seconds=60)
    text = out.read_text()
    assert "**2/2 pairs pass**" in text and "**1/2 pairs caught**" in text
    assert "SBBENCH_INJECT_SLOWDOWN=1.3" in text and "device: cpu (" in text
    assert str(tmp_path) not in text
