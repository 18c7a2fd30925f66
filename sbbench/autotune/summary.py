"""The table ``sbbench tune`` prints: one row per (target, shape bucket) tuned (a
"support" column with the bucket kind, sink and window where a bucket has other than the
defaults)."""

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
    supports = [_support(outcome.shape) for outcome in report.outcomes]
    if not any(supports):  # the default kind, no sink or window: the table as before
        return tabulate(rows, headers=HEADERS)
    at = HEADERS.index("dtype")
    for row, support in zip(rows, supports, strict=True):
        row.insert(at, support or "-")
    return tabulate(rows, headers=[*HEADERS[:at], "support", *HEADERS[at:]])


def _support(shape) -> str:
    """The bucket kind, sink and window where they are not the defaults ("" if none)."""
    extras = shape.extras()
    words = [extras["sparse"]] if extras["sparse"] else []
    words += [f"{name}={extras[name]}" for name in ("sink", "window") if extras[name]]
    return " ".join(words)
