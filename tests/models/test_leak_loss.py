"""benchmarks/leak_loss.py: the sampled positions, the prefix cut, and (on a tiny random
Gemma 3, where transformers is installed) that exact attention's whole-text and
leak-free losses agree while a whole-sequence k-means budget's need not."""

from __future__ import annotations

import pytest
import torch

from sbbench.core.errors import UserError
from sbbench.core.types import Budget


@pytest.fixture(scope="module")
def bench(benchmark_module):
    return benchmark_module("leak_loss")


def test_positions_are_spread_seeded_and_predict_a_token(bench):
    positions = bench.sample_positions(1024, 32, start=128, seed=0)
    assert len(positions) == 32 and positions == sorted(set(positions))
    assert positions[0] >= 128 and positions[-1] <= 1022  # t + 1 exists
    assert positions[0] < 128 + 28 and positions[-1] > 1022 - 28  # one per stratum
    assert bench.sample_positions(1024, 32, start=128, seed=0) == positions
    assert bench.sample_positions(1024, 32, start=128, seed=1) != positions
    assert bench.sample_positions(10, 9, start=0) == list(range(9))  # every position
    with pytest.raises(UserError):
        bench.sample_positions(10, 10, start=0)


def test_prefix_keeps_tokens_up_to_t_only(bench):
    ids = torch.arange(10)[None]
    cut = bench.prefix({"input_ids": ids, "attention_mask": torch.ones_like(ids)}, 4)
    assert cut["input_ids"].tolist() == [[0, 1, 2, 3, 4]]
    assert cut["attention_mask"].shape == (1, 5)


def test_paired_difference(bench):
    mean, sem, largest = bench.paired([1.0, 2.0, 4.0], [1.0, 1.0, 1.0])
    assert mean == pytest.approx(4 / 3) and largest == 3.0
    assert sem == pytest.approx(torch.tensor([0.0, 1.0, 3.0]).std().item() / 3 ** 0.5)


def test_exact_is_leak_free_and_kmeans_is_not(bench, make_toy_gemma):
    toy = make_toy_gemma(max_positions=256)
    ids = torch.randint(2, 64, (1, 96), generator=torch.Generator().manual_seed(1))
    encoded = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    positions = bench.sample_positions(96, 6, start=16)
    exact = Budget("exact")
    full = bench.full_losses(toy, encoded, positions, exact)
    with torch.no_grad():  # the model's own losses at those positions
        logits = toy.model(input_ids=ids).logits[0].double()
    own = torch.nn.functional.cross_entropy(logits[positions], ids[0, [t + 1 for t in positions]],
                                            reduction="none")
    torch.testing.assert_close(torch.tensor(full, dtype=torch.float64), own, rtol=1e-4,
                               atol=1e-5)
    for extra in (0, 1):
        cut = bench.prefix_losses(toy, encoded, positions, exact, extra=extra)
        assert cut == pytest.approx(full, abs=1e-4)
    kmeans = Budget("scatterbrain", n_features=0, bucket_size=8, n_hashes=1, sparse="kmeans",
                    sink=1, window=4)
    full = bench.full_losses(toy, encoded, positions, kmeans)
    free = bench.prefix_losses(toy, encoded, positions, kmeans)
    assert max(abs(a - b) for a, b in zip(full, free, strict=True)) > 1e-4
