"""The plots of a sweep report (layer 4; matplotlib, Agg): time and memory vs sequence
length, energy per token, and one error-vs-time Pareto plot per shape."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from sbbench.analyze.report_tables import (
    FAMILY,
    MAX_PANELS,
    SHAPE,
    pareto_front,
    series_label,
    shape_slug,
    shape_title,
)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _panels(frame: pd.DataFrame):
    """(title, rows) per plot panel: one per head_dim/batch/heads/dtype/causal/inputs."""
    groups = list(frame.groupby(FAMILY, sort=False))[:MAX_PANELS]
    for values, rows in groups:
        head_dim, batch, heads, dtype, causal, inputs = values
        title = (f"d={head_dim}, {batch}x{heads}, {dtype}{', causal' if causal else ''}, "
                 f"{inputs}")
        yield title, rows


# One colour per method; budgets of a method differ by marker (colours stay readable).
METHOD_COLORS = {"exact": "black", "performer": "tab:orange", "lsh": "tab:green",
                 "scatterbrain": "tab:red", "scatterbrain_local": "tab:purple",
                 "scatterbrain_centroids": "tab:brown"}
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">")


def _styles(rows: pd.DataFrame) -> dict[str, dict]:
    """series label -> plot style (colour by method, marker by budget within it)."""
    styles: dict[str, dict] = {}
    seen: dict[str, int] = {}
    for row in rows.itertuples():
        label = series_label(row)
        if label not in styles:
            n = seen.get(row.method, 0)
            seen[row.method] = n + 1
            styles[label] = {"color": METHOD_COLORS.get(row.method, "tab:gray"),
                             "marker": MARKERS[n % len(MARKERS)]}
    return styles


def _figure(plt, n: int):
    cols = min(n, 2)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(8.5 * cols, 4.8 * rows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, list(axes.flat)


def _line_plot(plt, frame: pd.DataFrame, y: str, path: Path, *, ylabel: str, title: str,
               scale: float = 1.0, dashed: str | None = None, per_token: bool = False) -> bool:
    ok = frame[(frame["status"] == "ok") & frame[y].notna()]
    if ok.empty:
        return False
    panels = list(_panels(ok))
    fig, axes = _figure(plt, len(panels))
    for ax, (panel_title, rows) in zip(axes, panels, strict=False):
        styles = _styles(rows)
        labels = pd.Series([series_label(r) for r in rows.itertuples()], index=rows.index)
        for label, line in rows.groupby(labels, sort=False):
            line = line.sort_values("seq_len")
            values = line[y] * scale
            if per_token:
                values = values / (line["batch"] * line["seq_len"])
            ax.plot(line["seq_len"], values, label=label, markersize=5, **styles[label])
            if dashed and line[dashed].notna().any():
                ax.plot(line["seq_len"], line[dashed] * scale, linestyle="--",
                        color=styles[label]["color"], alpha=0.4, linewidth=1)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("sequence length")
        ax.set_ylabel(ylabel)
        ax.set_title(panel_title, fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def write_plots(frame: pd.DataFrame, out: Path) -> dict[str, list[Path]]:
    plt = _pyplot()
    plots: dict[str, list[Path]] = {}
    path = out / "time_vs_seq_len.png"
    if _line_plot(plt, frame, "time_median_ms", path, ylabel="time per call (ms, median)",
                  title="Time vs sequence length"):
        plots["time vs sequence length"] = [path]
    path = out / "memory_vs_seq_len.png"
    column = ("peak_memory_delta_bytes" if frame["peak_memory_delta_bytes"].notna().any()
              else "working_set_bytes")
    if _line_plot(plt, frame, column, path, ylabel="MiB", scale=1 / 2**20,
                  dashed="working_set_bytes" if column != "working_set_bytes" else None,
                  title="Memory vs sequence length\n(solid: measured peak added by the "
                        "call; dashed: modeled working set)"):
        plots["memory vs sequence length"] = [path]
    path = out / "energy_per_token.png"
    if frame["energy_j"].notna().any() and _line_plot(
            plt, frame, "energy_j", path, ylabel="energy per token (mJ)", scale=1e3,
            per_token=True, title="Energy per token (energy per call / batch x seq_len)"):
        plots["energy per token"] = [path]
    pareto = write_pareto_plots(plt, frame, out / "pareto")
    if pareto:
        plots["pareto"] = pareto
    return plots


def write_pareto_plots(plt, frame: pd.DataFrame, out: Path) -> list[Path]:
    paths = []
    for _, rows in frame.groupby(SHAPE, sort=False):
        ok = rows[(rows["status"] == "ok") & rows["time_median_ms"].notna()
                  & rows["error_mean"].notna()]
        if ok.empty:
            continue
        out.mkdir(parents=True, exist_ok=True)
        first = next(rows.itertuples())
        fig, ax = plt.subplots(figsize=(9, 4.8))
        styles = _styles(ok)
        for row in ok.itertuples():
            label = series_label(row)
            ax.scatter(row.time_median_ms, max(row.error_mean, 1e-12), s=30, label=label,
                       **styles[label])
        front = pareto_front(ok)
        ax.step(front["time_median_ms"], front["error_mean"].clip(lower=1e-12), where="post",
                color="gray", linewidth=1, alpha=0.7, label="Pareto front", zorder=0)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("time per call (ms, median)")
        ax.set_ylabel("relative output error (mean over seeds)")
        ax.set_title(shape_title(first), fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
        fig.tight_layout()
        path = out / f"{shape_slug(first)}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths
