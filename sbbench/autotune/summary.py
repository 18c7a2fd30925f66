"""The table ``sbbench tune`` prints: one row per (target, shape bucket) tuned."""

from __future__ import annotations

HEADERS = ["target", "seq", "d", "F", "B", "dtype", "best", "ms", "default ms", "speedup",
           "runner-ups", "evaluated", "pruned", "rejected"]


def summary_table(report, within: float) -> str:
    """``report``: a TuneReport; ``within``: the runner-up window as a fraction."""
    from tabulate import tabulate

    rows = []
    for outcome in report.outcomes:
        best = outcome.best
        speedup = outcome.speedup()
        rows.append([
            outcome.target, outcome.shape.seq_len, outcome.shape.head_dim,
            outcome.shape.n_features, outcome.shape.bucket_size, outcome.shape.dtype,
            " ".join(f"{k}={v}" for k, v in best.config.items()) if best else "(all failed)",
            f"{best.median_ms:.4g}" if best else "",
            f"{outcome.default_eval.median_ms:.4g}" if outcome.default_eval
            and outcome.default_eval.ok else "",
            f"{speedup:.2f}" if speedup else "",
            len(outcome.result.runner_ups(within)), outcome.result.evaluated,
            len(outcome.pruned.pruned), len(outcome.result.rejected()),
        ])
    return tabulate(rows, headers=HEADERS)
