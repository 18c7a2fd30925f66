"""What to use at each shape of a sweep (layer 4): the opening of a sweep report.

Per shape: the fastest approximation whose output error is within the target, if it is
faster than exact attention; otherwise exact attention, with the reason. The error is the
relative Frobenius error of the output against exact attention: 0 is exact, 1.0 is what
returning zeros scores, above 1 is worse than returning nothing.
"""

from __future__ import annotations

import pandas as pd

from sbbench.analyze.report_tables import SHAPE, series_label, shape_title
from sbbench.core.format import number

DEFAULT_TARGET = 0.1
# the report answers these targets, per shape: tight, usable, rough
REPORT_TARGETS = (0.1, 0.25, 0.5)

ERROR_SCALE = (
    "Error: the relative Frobenius error of the output, ||out - exact|| / ||exact||, "
    "against exact attention on the same inputs (mean over seeds; where per-head errors "
    "were kept, the 90th percentile over the heads, so 9 heads in 10 do at least this "
    "well). 0 is exact; 0.1 means "
    "the output is off by 10% of its norm; 1.0 is what returning all zeros scores, so an "
    "error above 1 is worse than returning nothing.")


def _usable(rows: pd.DataFrame) -> pd.DataFrame:
    return rows[(rows["status"] == "ok") & rows["time_median_ms"].notna()]


def _with_head_statistic(rows: pd.DataFrame) -> pd.DataFrame:
    """``error_mean`` replaced by the p90 over heads where the row has it."""
    if "error_p90" not in rows:
        return rows
    p90 = pd.to_numeric(rows["error_p90"], errors="coerce")
    return rows.assign(error_mean=p90.where(p90.notna(), rows["error_mean"]))


def _approximations(ok: pd.DataFrame) -> pd.DataFrame:
    """The usable rows (with the head statistic) of methods other than exact, with an error."""
    return ok[(ok["method"] != "exact") & ok["error_mean"].notna()]


def recommend(rows: pd.DataFrame, target: float = DEFAULT_TARGET) -> str:
    """One sentence for the rows of one shape: which method and budget to use, and why."""
    ok = _with_head_statistic(_usable(rows))
    exact = ok[ok["method"] == "exact"]
    approx = _approximations(ok)
    exact_ms = float(exact["time_median_ms"].min()) if len(exact) else None
    meeting = approx[approx["error_mean"] <= target].sort_values("time_median_ms")
    if meeting.empty:
        if approx.empty:
            return ("exact: no approximation was measured at this shape"
                    if exact_ms is not None else "nothing was measured ok at this shape")
        best = approx.sort_values("error_mean").iloc[0]
        return (f"exact: no approximation reached error <= {target:g}; best was "
                f"{best['method']} at budget {best['budget']} (error "
                f"{number(best['error_mean'])}, {number(best['time_median_ms'])} ms)")
    best = meeting.iloc[0]
    label = series_label(best)
    if exact_ms is not None and exact_ms <= best["time_median_ms"]:
        return (f"exact ({number(exact_ms)} ms): the fastest approximation with error <= "
                f"{target:g}, {label} (error {number(best['error_mean'])}), is slower "
                f"({number(best['time_median_ms'])} ms)")
    speed = ("" if exact_ms is None else
             f", {number(exact_ms / best['time_median_ms'])}x faster than exact "
             f"({number(exact_ms)} ms)")
    return (f"{label}: the fastest with error <= {target:g} (error "
            f"{number(best['error_mean'])}, {number(best['time_median_ms'])} ms{speed})")


def _unreached(rows: pd.DataFrame, target: float) -> bool:
    approx = _approximations(_with_head_statistic(_usable(rows)))
    return not (approx["error_mean"] <= target).any()


def _has_better_supports(frame: pd.DataFrame) -> bool:
    """Whether any row uses k-means clusters or sink / window keys."""
    used = (frame["sparse"].eq("kmeans") if "sparse" in frame
            else pd.Series(False, index=frame.index))
    for column in ("sink", "window"):
        if column in frame:
            used |= pd.to_numeric(frame[column], errors="coerce").fillna(0).gt(0)
    return bool(used.any())


def next_step(frame: pd.DataFrame, targets=REPORT_TARGETS, *, device: str = "DEVICE",
              store: str = "STORE") -> str:
    """What to measure next where a target was not reached and the store holds only hash
    buckets (SMYRF) and local blocks: the better sparse supports ("" otherwise)."""
    if isinstance(targets, (int, float)):
        targets = (targets,)
    unreached = any(_unreached(rows, target) for _, rows in frame.groupby(SHAPE, sort=False)
                    for target in targets)
    if not unreached or _has_better_supports(frame):
        return ""
    return (f"Not reached here is not the last word: this store holds only hash-bucket "
            f"(SMYRF) and local-block supports, which catch little of a real head's "
            f"attention. Scatterbrain's k-means query clusters with sink and window keys "
            f"find much more of it, and key centroids (scatterbrain_centroids) estimate "
            f"the rest better than random features (reports/supports in the sbbench "
            f"repository). Measure "
            f"them into the same store, then report again: `sbbench sweep --gpu {device} "
            f"--grid supports --store {store} --report` (with the same `--inputs` as your "
            f"sweep if it was not the shipped capture).\n")


def recommendations(frame: pd.DataFrame, targets=REPORT_TARGETS, *, device: str = "DEVICE",
                    store: str = "STORE") -> str:
    """The report's opening section: per shape, one line per error target, the error
    scale, and what to measure next (:func:`next_step`)."""
    if isinstance(targets, (int, float)):
        targets = (targets,)
    lines = ["## Recommendation", "",
             f"Per shape and error target ({', '.join(f'{t:g}' for t in targets)}), the "
             f"fastest approximation whose error is within the target, where it beats exact "
             f"attention; otherwise exact attention, and why. Times are medians from this "
             f"store; on a shared CPU they move with the load.", ""]
    for _, rows in frame.groupby(SHAPE, sort=False):
        first = next(rows.itertuples())
        lines.append(f"- **{shape_title(first)}**")
        for target in targets:
            lines.append(f"  - error <= {target:g}: {recommend(rows, target)}")
    lines += ["", ERROR_SCALE, ""]
    hint = next_step(frame, targets, device=device, store=store)
    return "\n".join(lines) + "\n" + (f"\n{hint}" if hint else "")
