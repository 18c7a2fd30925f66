"""End to end on a decoder: a tiny random Gemma 3 (no weights to download), one sliding
and one global layer. Needs transformers (the models extra); skipped without it."""

from __future__ import annotations

import math

import pytest
import torch

transformers = pytest.importorskip("transformers", reason="the models extra is not installed")

from sbbench.core.types import Budget  # noqa: E402
from sbbench.models.e2e import (  # noqa: E402
    e2e_records,
    is_decoder,
    next_token_loss,
    run_e2e,
    token_losses,
)
from sbbench.models.loading import LoadedModel  # noqa: E402

TOKENS = 40


class ByteTokenizer:
    """Enough of a tokenizer for run_e2e: bytes of the text modulo the vocabulary."""

    def __call__(self, text, return_tensors="pt", truncation=False, max_length=None):
        ids = [b % 61 + 2 for b in text.encode()]
        if truncation and max_length:
            ids = ids[:max_length]
        ids = torch.tensor([ids])
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


@pytest.fixture(scope="module")
def toy(make_toy_gemma) -> LoadedModel:
    return make_toy_gemma(tokenizer=ByteTokenizer())


TEXT = "The quick brown fox jumps over the lazy dog, twice over, and again."


def test_next_token_loss_is_the_models_own(toy):
    ids = ByteTokenizer()(TEXT, truncation=True, max_length=TOKENS)["input_ids"]
    with torch.no_grad():
        own = toy.model(input_ids=ids, labels=ids)
        hidden = toy.model.base_model(input_ids=ids).last_hidden_state
    assert is_decoder(toy)
    assert next_token_loss(toy, hidden, ids) == pytest.approx(float(own.loss), rel=1e-5)


def test_token_losses_are_the_per_position_cross_entropy(toy):
    ids = ByteTokenizer()(TEXT, truncation=True, max_length=TOKENS)["input_ids"]
    with torch.no_grad():
        logits = toy.model(input_ids=ids).logits[0, :-1].double()
        hidden = toy.model.base_model(input_ids=ids).last_hidden_state
    own = torch.nn.functional.cross_entropy(logits, ids[0, 1:], reduction="none")
    losses = token_losses(toy, hidden[:, :-1], ids[:, 1:])
    assert losses.shape == (TOKENS - 1,) and losses.dtype == torch.float64
    torch.testing.assert_close(losses, own, rtol=1e-5, atol=1e-6)
    assert float(losses.mean()) == pytest.approx(next_token_loss(toy, hidden, ids), rel=1e-12)
    picked = token_losses(toy, hidden[:, [3, 17]], ids[:, [4, 18]])  # any positions
    torch.testing.assert_close(picked, own[[3, 17]], rtol=1e-5, atol=1e-6)


def test_decoder_rows_replace_only_the_global_layer(toy):
    budgets = [Budget("performer", n_features=8), Budget("lsh", bucket_size=8, n_hashes=1)]
    rows = run_e2e(toy, TEXT, budgets, seed=0, max_tokens=TOKENS)
    assert [r["method"] for r in rows] == ["exact", "performer", "lsh"]
    exact = rows[0]
    assert exact["decoder"] and exact["layers"] == "1"  # layer 0 is the sliding one
    assert exact["causal"] and (exact["heads"], exact["head_dim"]) == (2, 16)
    assert abs(exact["e2e_error"]) < 1e-4 and exact["hidden_rel_error"] < 1e-4
    for row in rows:
        assert row["perplexity"] == pytest.approx(math.exp(row["loss"]))
        assert row["e2e_error"] == pytest.approx(
            math.exp(row["loss"] - row["reference_loss"]) - 1)
    assert any(abs(r["e2e_error"]) > 1e-4 for r in rows[1:])  # approximations change it


def test_key_centroids_run_end_to_end_and_repeat_with_the_seed(toy):
    budget = Budget("scatterbrain_centroids", n_features=3, bucket_size=8, n_hashes=1)
    rows = run_e2e(toy, TEXT, [budget], seed=0, max_tokens=TOKENS)
    again = run_e2e(toy, TEXT, [budget], seed=0, max_tokens=TOKENS)
    assert [r["method"] for r in rows] == ["exact", "scatterbrain_centroids"]
    assert math.isfinite(rows[1]["loss"]) and abs(rows[1]["e2e_error"]) > 1e-6
    assert rows[1]["loss"] == again[1]["loss"]


def test_e2e_rows_become_store_records_select_can_use(toy, tmp_path):
    from sbbench.analyze.selection import select
    from sbbench.sweep.store import Store

    rows = run_e2e(toy, TEXT, [Budget("performer", n_features=8)], seed=0,
                   max_tokens=TOKENS, time_samples=3)
    assert all(len(r["times_ms"]) == 3 for r in rows)
    records = e2e_records(rows, text_sha256="ab" * 32)
    assert records[1].time_samples_ms == rows[1]["times_ms"]
    assert records[1].time_p20_ms <= records[1].time_median_ms <= records[1].time_p80_ms
    assert {r.inputs for r in records} == {"e2e:toy-gemma@abababab"}
    with Store(tmp_path / "e2e.sqlite") as store:
        for record in records:
            store.add(record)
        frame = store.to_dataframe()
    performer_error = records[1].error_p90
    selection = select(frame, device="cpu", targets=(abs(performer_error) + 1.0,))
    assert len(selection.candidates) == 2 and selection.candidates["seq_len"].tolist() == [
        rows[0]["tokens"]] * 2
