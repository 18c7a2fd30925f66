"""End to end: the model itself with its attention replaced by an approximation.

For each budget the model runs once with each replaced layer's attention computed by
``sbbench.measure.calls.call_method`` (randomness drawn per layer, in layer order, from
one generator seeded with ``seed``). Encoders: every layer is replaced, and the
mean-pooled sentence embedding is compared with the model's own (cosine similarity;
1 = unchanged). Decoders (a model with a language-model head): the global layers are
replaced (sliding-window layers keep the model's own attention), and the next-token loss
over the text is compared with the model's own (perplexity ratio; 1 = unchanged). An
``exact`` row runs ``exact_attention`` through the same replacement path: it checks the
path itself. Errors compound through the layers, so this is the quality a user sees,
where the per-call error of the sweep is what a single layer sees.

Each row's ``e2e_error`` puts both on one scale, 0 = unchanged: 1 - cosine for encoders,
perplexity / the model's own - 1 for decoders (``sbbench select`` targets it when the
rows are stored: ``e2e_records``).
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import replace

import torch

from sbbench.core.errors import UserError
from sbbench.core.provenance import code_version, now_utc
from sbbench.core.record import Record
from sbbench.core.types import SPARSE_KINDS_OF, Budget, budget_label
from sbbench.measure.calls import Randomness, call_method, draw_randomness, split_budget
from sbbench.measure.timing import quantile
from sbbench.models.capture import forward, tokenize
from sbbench.models.intercept import AttentionCall, intercepted
from sbbench.models.loading import LoadedModel

APPROX_METHODS = ("performer", "lsh", "scatterbrain", "scatterbrain_local",
                  "scatterbrain_centroids")
COLUMNS = ("method", "budget", "memory_per_query", "tokens", "seed", "cosine",
           "hidden_rel_error", "seconds")
DECODER_COLUMNS = ("method", "budget", "memory_per_query", "tokens", "seed", "layers",
                   "loss", "perplexity", "e2e_error", "hidden_rel_error", "seconds")
LOSS_CHUNK = 256  # tokens per language-model-head product (its logits are vocab wide)


def sentence_embedding(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean over the sequence's tokens, L2-normalised (all-MiniLM-L6-v2's pooling):
    hidden [batch, seq, width], attention_mask [batch, seq] -> [batch, width]."""
    weights = attention_mask.to(hidden.dtype)[..., None]
    pooled = (hidden * weights).sum(1) / weights.sum(1).clamp_min(1.0)
    return torch.nn.functional.normalize(pooled, dim=-1)


def budgets_at(memories: list[int], methods=APPROX_METHODS, *, n_hashes: int = 1,
               lowrank_share: float = 0.5, sparse: str | None = None, sink: int = 0,
               window: int = 0) -> list[Budget]:
    """The Budget of every method at every memory per query (``split_budget``). With
    ``sink``/``window``, methods with a sparse part spend that much of the memory on the
    first keys / the nearest keys and split the rest; ``sparse`` (e.g. "kmeans") is the
    bucket kind of the methods that can use it (Scatterbrain)."""
    out = []
    for memory in memories:
        for method in methods:
            try:
                budget = split_budget(method, memory, n_hashes=n_hashes,
                                      lowrank_share=lowrank_share)
                if budget.has_sparse and (sink or window or sparse):
                    rest = split_budget(method, memory - sink - window, n_hashes=n_hashes,
                                        lowrank_share=lowrank_share)
                    kind = sparse if sparse in SPARSE_KINDS_OF.get(method, ()) else None
                    budget = replace(rest, sparse=kind, sink=sink, window=window)
                out.append(budget)
            except ValueError as err:
                raise UserError(f"budget {memory} for {method}: {err}") from None
    return out


def is_decoder(loaded: LoadedModel) -> bool:
    """A model with a language-model head (next-token loss), not an encoder."""
    head = getattr(loaded.model, "get_output_embeddings", lambda: None)()
    return head is not None and not getattr(loaded.model.config, "is_encoder_decoder", False)


def _replaced(budget: Budget, seed: int, backend: str, seen: dict):
    """The handler running ``budget`` in every global layer (a sliding-window layer keeps
    the model's own attention), randomness drawn per layer; ``seen`` collects the shape
    of the replaced calls."""
    generator = torch.Generator().manual_seed(seed)
    drawn: dict[int, Randomness] = {}

    def handler(call: AttentionCall) -> torch.Tensor | None:
        if call.window:
            return None  # local attention stays the model's own
        if call.layer not in drawn:  # the forward pass meets the layers in order
            drawn[call.layer] = draw_randomness(budget, call.q.shape[-1], generator)
        randomness = drawn[call.layer]
        seen.setdefault("layers", set()).add(call.layer)
        seen["shape"] = (tuple(call.q.shape), call.causal)
        # one unpadded sequence: the model's mask hides nothing, so none is passed
        return call_method(budget, call.q, call.k, call.v, causal=call.causal,
                           softmax_scale=call.scale, backend=backend, **randomness.options())

    return handler


def token_losses(loaded: LoadedModel, hidden: torch.Tensor,
                 targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of predicting ``targets[0, i]`` from ``hidden[0, i]`` for every i
    (float64, [seq]): the model's head (and its final logit soft-capping) applied to
    ``hidden`` [1, seq, width] in chunks (the logits are vocabulary wide)."""
    head = loaded.model.get_output_embeddings()
    cap = getattr(loaded.model.config, "final_logit_softcapping", None)
    out = []
    with torch.no_grad():
        for start in range(0, hidden.shape[1], LOSS_CHUNK):
            stop = min(start + LOSS_CHUNK, hidden.shape[1])
            logits = head(hidden[:, start:stop]).double()
            if cap:
                logits = torch.tanh(logits / cap) * cap
            out.append(torch.nn.functional.cross_entropy(
                logits.flatten(0, 1), targets[:, start:stop].flatten(), reduction="none"))
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.float64)


def next_token_loss(loaded: LoadedModel, hidden: torch.Tensor, ids: torch.Tensor) -> float:
    """Mean cross-entropy of predicting token t + 1 from position t over the sequence
    (``token_losses`` of ``hidden`` [1, seq, width] against ``ids`` shifted by one)."""
    losses = token_losses(loaded, hidden[:, :-1], ids[:, 1:])
    return float(losses.sum()) / max(losses.numel(), 1)


def run_e2e(loaded: LoadedModel, text: str, budgets: list[Budget], *, seed: int = 0,
            max_tokens: int | None = 512, backend: str = "torch",
            time_samples: int = 1) -> list[dict]:
    """One row per budget (an ``exact`` row first). Encoders: the cosine between the
    sentence embedding with that budget in every layer and the model's own; decoders:
    the next-token loss and perplexity with that budget in every global layer. Both: the
    relative Frobenius error of the last hidden state and ``e2e_error`` (module doc).
    ``time_samples``: forward passes timed per budget (the first gives the outputs; each
    draws the same randomness), kept in ``times_ms``; ``seconds`` is their median."""
    if time_samples < 1:
        raise UserError(f"--time-samples must be >= 1, got {time_samples}")
    encoded = tokenize(loaded, text, max_tokens)
    mask, ids = encoded["attention_mask"], encoded["input_ids"]
    tokens = int(ids.shape[1])
    decoder = is_decoder(loaded)
    if decoder and tokens < 2:
        raise UserError("the text has fewer than 2 tokens: no next token to predict")
    reference = forward(loaded, encoded).last_hidden_state
    reference_embedding = sentence_embedding(reference, mask)
    reference_loss = next_token_loss(loaded, reference, ids) if decoder else None
    rows = []
    for budget in [Budget("exact"), *budgets]:
        times_ms, hidden, seen = [], None, {}
        for _ in range(time_samples):
            started = time.perf_counter()
            with intercepted(loaded.model, _replaced(budget, seed, backend, seen)):
                out = forward(loaded, encoded).last_hidden_state
            times_ms.append((time.perf_counter() - started) * 1e3)
            hidden = out if hidden is None else hidden
        seconds = statistics.median(times_ms) / 1e3
        if not seen:
            raise UserError(f"{loaded.name}: no global attention layer was met; nothing "
                            f"to replace")
        error = float((hidden - reference).double().norm() / reference.double().norm())
        (batch, heads, seq, head_dim), causal = seen["shape"]
        row = {
            "model": loaded.name, "method": budget.method, "budget": budget_label(budget),
            "n_features": budget.n_features, "bucket_size": budget.bucket_size,
            "n_hashes": budget.n_hashes, "sparse": budget.sparse or "", "sink": budget.sink,
            "window": budget.window, "memory_per_query": budget.memory_per_query,
            "tokens": tokens, "seed": seed, "hidden_rel_error": error, "seconds": seconds,
            "times_ms": times_ms,
            "layers": ",".join(str(i) for i in sorted(seen["layers"])), "heads": heads,
            "head_dim": head_dim, "causal": causal, "decoder": decoder,
        }
        if decoder:
            loss = next_token_loss(loaded, hidden, ids)
            row.update(loss=loss, perplexity=math.exp(loss), cosine=None,
                       reference_loss=reference_loss,
                       e2e_error=math.exp(loss - reference_loss) - 1.0)
        else:
            embedding = sentence_embedding(hidden, mask)
            cosine = float(torch.nn.functional.cosine_similarity(
                embedding.double(), reference_embedding.double(), dim=-1)[0])
            row.update(cosine=cosine, e2e_error=1.0 - cosine)
        rows.append(row)
    return rows


def format_rows(rows: list[dict]) -> str:
    """The rows as a plain-text table (``COLUMNS``, or ``DECODER_COLUMNS``)."""
    from tabulate import tabulate

    columns = DECODER_COLUMNS if rows and rows[0].get("decoder") else COLUMNS

    def cell(row, name):
        value = row[name]
        if name == "cosine":
            return f"{value:.6f}"
        if name in ("hidden_rel_error", "e2e_error"):
            return f"{value:.3e}"
        if name in ("loss", "perplexity"):
            return f"{value:.4f}"
        if name == "seconds":
            return f"{value:.2f}"
        return str(value)

    return tabulate([[cell(row, name) for name in columns] for row in rows],
                    headers=list(columns), tablefmt="simple", disable_numparse=True)


E2E_PREFIX = "e2e:"  # the inputs column of end-to-end rows: e2e:<model>@<text sha256[:8]>
TIMED_E2E = ("forward passes of the whole model with the replaced attention (randomness "
             "drawn inside), one per sample (sbbench e2e --time-samples)")


def e2e_records(rows: list[dict], *, text_sha256: str, device: str = "cpu") -> list[Record]:
    """The rows as store records, so ``sbbench select`` can target end-to-end quality:
    the error columns hold ``e2e_error`` (1 - cosine, or the perplexity ratio - 1), the
    time is the model's forward with that budget, the shape is the replaced layers'
    (tokens, heads, head_dim, causal), the inputs ``e2e:<model>@<text hash>``."""
    version = code_version()
    records = []
    for row in rows:
        what = ("perplexity ratio - 1 over the text's next tokens" if row["decoder"]
                else "1 - cosine of the mean-pooled sentence embeddings")
        # stored >= 0 (an error scale): a perplexity that fell by chance, or a cosine a
        # rounding above 1, is "unchanged"; the raw value stays in the reason
        error = max(float(row["e2e_error"]), 0.0)
        samples = [float(t) for t in row.get("times_ms") or [float(row["seconds"]) * 1e3]]
        records.append(Record(
            device=device, method=row["method"], backend="torch", seq_len=row["tokens"],
            head_dim=row["head_dim"], batch=1, heads=row["heads"], dtype="float32",
            causal=bool(row["causal"]), n_features=row["n_features"],
            bucket_size=row["bucket_size"], n_hashes=row["n_hashes"],
            sparse=row.get("sparse", ""), sink=row.get("sink", 0), window=row.get("window", 0),
            kernel_config="",
            inputs=f"{E2E_PREFIX}{row['model']}@{text_sha256[:8]}", code_version=version,
            source="measured",
            reason=(f"end to end ({what}: {float(row['e2e_error']):.4g}); layers "
                    f"{row['layers']} replaced, seed {row['seed']}"),
            timed_region=TIMED_E2E, time_median_ms=quantile(samples, 0.5),
            time_p20_ms=quantile(samples, 0.2), time_p80_ms=quantile(samples, 0.8),
            time_samples_ms=samples, timer="perf_counter_ns",
            error_mean=error, error_p50=error, error_p90=error, error_max=error, n_seeds=1,
            reference_dtype="the model's own forward", timestamp=now_utc()))
    return records
