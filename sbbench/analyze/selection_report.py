"""The readable table of a budget selection: ``reports/<device>/budgets.md`` (layer 4).

Everything here is text made from a ``selection.Selection``; the selection itself (fronts,
targets, thresholds, the budgets section) is in analyze/selection.py.
"""

from __future__ import annotations

import json
import math

from sbbench.analyze.selection import SHAPE, Selection, _shape_text
from sbbench.analyze.thresholds import _finite
from sbbench.core.format import markdown_table, number, percent
from sbbench.core.types import budget_label as types_budget_label


def budget_label(row) -> str:
    """The budget's label plus its kernel config, if any."""
    get = row.get if isinstance(row, dict) else lambda name: getattr(row, name)
    label = types_budget_label(row)
    parts = [] if label == "-" else [label]
    config = get("kernel_config")
    if config:
        try:
            parts.append(" ".join(f"{k}={v}" for k, v in json.loads(config).items()))
        except (json.JSONDecodeError, AttributeError):
            parts.append(str(config))
    return " ".join(parts) or "-"


def _family_text(row: dict) -> str:
    causal = ", causal" if row.get("causal") else ""
    return f"head_dim {row['head_dim']}, {row['batch']}x{row['heads']}, {row['dtype']}{causal}"


def _why(row) -> str:
    """Why this answer, in words (see budgets_markdown)."""
    best = (f"{row.best_approx} at {percent(row.best_approx_error)}" if row.best_approx
            else "none measured")
    if not row.reachable:
        return f"not reachable (best: {best})"
    if row.method == "exact":
        return (f"exact is faster than {row.best_approx} "
                f"({number(row.best_approx_time_ms)} ms)")
    return "fastest meeting the target"


def _targets_line(selection: Selection, cands) -> str:
    targets = ", ".join(percent(t) for t in selection.targets)
    if len(cands) and all(str(i).startswith("e2e:") for i in cands["inputs"]):
        return (f"- error targets: {targets} end-to-end error of the whole model with its "
                f"attention replaced (sbbench e2e): 1 - cosine of the sentence embeddings "
                f"(encoders) or the perplexity ratio to the model's own - 1 (decoders); 0 "
                f"is the model unchanged. Times are one forward pass of the whole model.")
    return (f"- error targets: {targets} relative Frobenius error of the output against "
            f"exact attention, {selection.error_stat} over the heads (mean over seeds; the "
            f"worst input regime where several were measured). 1.0 is what returning zeros "
            f"scores: an error above 1 is worse than no attention at all.")


def budgets_markdown(selection: Selection, *, device: str, command: str, date: str,
                     store: str, tuning_file: str | None = None) -> str:
    cands = selection.candidates
    versions = sorted({v for text in cands["code_version"] for v in text.split(",")})
    lines = [f"# Budget selection: {device}", "",
             f"- command: `{command}`", f"- date: {date}", f"- device: {device}",
             f"- store: `{store}` ({int(cands['n_rows'].sum())} measured ok rows, "
             f"{len(cands)} shape x budget candidates)",
             f"- code versions: {', '.join(versions)}",
             _targets_line(selection, cands)]
    if tuning_file:
        lines.append(f"- budgets section written to `{tuning_file}`")
    lines += ["", "## Cheapest budget meeting each error target", "",
              "Time is the median; exact attention meets every target (its error is "
              "float32 rounding), so it is the answer where it is the fastest. The last "
              "column says why: the approximation chosen, exact because it is faster than "
              "the best approximation meeting the target, or **not reachable**: no "
              "approximation measured meets the target (with the best one and its error).",
              ""]
    table = []
    for row in selection.choices.itertuples(index=False):
        if not row.met:
            table.append([row.seq_len, row.head_dim, f"{row.batch}x{row.heads}", row.dtype,
                          "yes" if row.causal else "", percent(row.max_error), "(none)", "", "",
                          "", number(row.exact_time_ms), "", _why(row)])
            continue
        speedup = (number(row.exact_time_ms / row.time_ms)
                   if _finite(row.exact_time_ms) else "")
        method = row.method + ("" if row.backend == "torch" else f"/{row.backend}")
        table.append([row.seq_len, row.head_dim, f"{row.batch}x{row.heads}", row.dtype,
                      "yes" if row.causal else "", percent(row.max_error), method,
                      budget_label(row), percent(row.error), number(row.time_ms),
                      number(row.exact_time_ms), speedup, _why(row)])
    lines.append(markdown_table(["seq_len", "head_dim", "b x h", "dtype", "causal",
                                 "max error", "method", "budget", "error", "time ms",
                                 "exact ms", "speedup", "why"], table))
    lines += ["", "## Where exact attention is simply faster", "",
              "Per shape family, along the measured sequence lengths: against every "
              "approximation measured, and against those meeting each target. Ratios are "
              "time(best approximation) / time(exact); > 1 means exact is faster.", ""]
    table = []
    for threshold in selection.thresholds:
        ratios = " ".join(f"{length}:{ratio:.2f}" if math.isfinite(ratio) else f"{length}:-"
                          for length, ratio
                          in zip(threshold.seq_lens, threshold.ratios, strict=True))
        table.append([_family_text(threshold.family), threshold.criterion,
                      threshold.describe(), ratios])
    lines.append(markdown_table(["family", "against", "threshold", "ratio per seq_len"],
                                table))
    lines += ["", "## Pareto fronts", "",
              "Candidates no other candidate beats on error and time (front), and on "
              "error, time, peak memory added by the call and energy where those were "
              "measured for every candidate of the shape (front, all).", ""]
    for key, group in selection.fronts.groupby(SHAPE, sort=False, dropna=False):
        shape = dict(zip(SHAPE, key, strict=True))
        front = group[group["on_front"] | group["on_front_all"]].sort_values("time_ms")
        objectives = group["front_objectives"].iloc[0]
        lines += [f"### {_shape_text(shape)}", "",
                  f"{len(front)} of {len(group)} candidates on a front (all: "
                  f"{objectives.replace('_ms', '').replace('_bytes', '').replace('_j', '')})",
                  ""]
        table = [[row.method + ("" if row.backend == "torch" else f"/{row.backend}"),
                  budget_label(row), percent(row.error), number(row.time_ms),
                  number(row.memory_bytes, scale=1 / 2**20), number(row.energy_j, scale=1e3),
                  "yes" if row.on_front else "", "yes" if row.on_front_all else ""]
                 for row in front.itertuples(index=False)]
        lines.append(markdown_table(["method", "budget", "error", "time ms", "peak +MiB",
                                     "energy mJ", "front", "front, all"], table))
        lines.append("")
    if selection.notes:
        lines += ["## Notes", ""] + [f"- {note}" for note in selection.notes] + [""]
    return "\n".join(lines).rstrip() + "\n"
