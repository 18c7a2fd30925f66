"""End to end: the model itself with every attention layer replaced by an approximation.

For each budget the model runs once with each layer's attention computed by
``sbbench.measure.calls.call_method`` (randomness drawn per layer, in layer order, from
one generator seeded with ``seed``), and its mean-pooled sentence embedding is compared
with the model's own (cosine similarity; 1 = unchanged). An ``exact`` row runs
``exact_attention`` through the same replacement path: its cosine checks the path
itself. Errors compound through the layers, so this is the quality a user sees, where
the per-call error of the sweep is what a single layer sees.
"""

from __future__ import annotations

import time

import torch

from sbbench.core.errors import UserError
from sbbench.core.types import Budget, budget_label
from sbbench.measure.calls import Randomness, call_method, draw_randomness, split_budget
from sbbench.models.capture import forward, tokenize
from sbbench.models.intercept import AttentionCall, intercepted
from sbbench.models.loading import LoadedModel

APPROX_METHODS = ("performer", "lsh", "scatterbrain", "scatterbrain_local")
COLUMNS = ("method", "budget", "memory_per_query", "tokens", "seed", "cosine",
           "hidden_rel_error", "seconds")


def sentence_embedding(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean over the sequence's tokens, L2-normalised (all-MiniLM-L6-v2's pooling):
    hidden [batch, seq, width], attention_mask [batch, seq] -> [batch, width]."""
    weights = attention_mask.to(hidden.dtype)[..., None]
    pooled = (hidden * weights).sum(1) / weights.sum(1).clamp_min(1.0)
    return torch.nn.functional.normalize(pooled, dim=-1)


def budgets_at(memories: list[int], methods=APPROX_METHODS, *, n_hashes: int = 1,
               lowrank_share: float = 0.5) -> list[Budget]:
    """The Budget of every method at every memory per query (``split_budget``)."""
    out = []
    for memory in memories:
        for method in methods:
            try:
                out.append(split_budget(method, memory, n_hashes=n_hashes,
                                        lowrank_share=lowrank_share))
            except ValueError as err:
                raise UserError(f"budget {memory} for {method}: {err}") from None
    return out


def _replaced(budget: Budget, seed: int, backend: str):
    """The handler running ``budget`` in every layer, randomness drawn per layer."""
    generator = torch.Generator().manual_seed(seed)
    drawn: dict[int, Randomness] = {}

    def handler(call: AttentionCall) -> torch.Tensor:
        if call.window:
            raise UserError(f"layer {call.layer} is a sliding-window layer (window "
                            f"{call.window}); e2e replaces global attention only")
        if call.layer not in drawn:  # the forward pass meets the layers in order
            drawn[call.layer] = draw_randomness(budget, call.q.shape[-1], generator)
        randomness = drawn[call.layer]
        # one unpadded sequence: the model's mask hides nothing, so none is passed
        return call_method(budget, call.q, call.k, call.v, causal=call.causal,
                           softmax_scale=call.scale, backend=backend,
                           projections=randomness.projections, hashes=randomness.hashes)

    return handler


def run_e2e(loaded: LoadedModel, text: str, budgets: list[Budget], *, seed: int = 0,
            max_tokens: int | None = 512, backend: str = "torch") -> list[dict]:
    """One row per budget (an ``exact`` row first): the cosine between the sentence
    embedding with that budget in every layer and the model's own, and the relative
    Frobenius error of the last hidden state."""
    encoded = tokenize(loaded, text, max_tokens)
    mask = encoded["attention_mask"]
    tokens = int(encoded["input_ids"].shape[1])
    reference = forward(loaded, encoded).last_hidden_state
    reference_embedding = sentence_embedding(reference, mask)
    rows = []
    for budget in [Budget("exact"), *budgets]:
        started = time.perf_counter()
        with intercepted(loaded.model, _replaced(budget, seed, backend)):
            hidden = forward(loaded, encoded).last_hidden_state
        embedding = sentence_embedding(hidden, mask)
        cosine = float(torch.nn.functional.cosine_similarity(
            embedding.double(), reference_embedding.double(), dim=-1)[0])
        error = float((hidden - reference).double().norm() / reference.double().norm())
        rows.append({
            "model": loaded.name, "method": budget.method, "budget": budget_label(budget),
            "n_features": budget.n_features, "bucket_size": budget.bucket_size,
            "n_hashes": budget.n_hashes, "memory_per_query": budget.memory_per_query,
            "tokens": tokens, "seed": seed, "cosine": cosine, "hidden_rel_error": error,
            "seconds": time.perf_counter() - started,
        })
    return rows


def format_rows(rows: list[dict]) -> str:
    """The rows as a plain-text table (``COLUMNS``)."""
    from tabulate import tabulate

    def cell(row, name):
        value = row[name]
        if name == "cosine":
            return f"{value:.6f}"
        if name == "hidden_rel_error":
            return f"{value:.3e}"
        if name == "seconds":
            return f"{value:.2f}"
        return str(value)

    return tabulate([[cell(row, name) for name in COLUMNS] for row in rows],
                    headers=list(COLUMNS), tablefmt="simple", disable_numparse=True)
