"""Turn a results store into ``reports/<device>/``: markdown tables, CSV, plots.

For each device in the store (measured rows; cost-model rows, if any, go to
``reports/<device>/modeled/`` so they are never mixed with measurements):

- ``README.md``: a header (the command, date, device, versions, the sweeps that wrote the
  rows), one table per shape, the Pareto front of error vs time per shape, and every
  failed or skipped point with its reason;
- ``results.csv`` (and ``results.parquet`` when pyarrow is installed): every column of
  ``records.Record``;
- plots (matplotlib, Agg): ``time_vs_seq_len.png`` (log-log, one line per method and
  budget), ``pareto/<shape>.png`` (error vs time, front drawn), ``memory_vs_seq_len.png``
  (measured peak added by the call, and the modeled working set), and
  ``energy_per_token.png`` where energy was measured.
"""

from __future__ import annotations

import json
import math
import platform
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
from tabulate import tabulate

from sbbench.core.errors import UserError
from sbbench.core.record import COLUMNS, JSON_FIELDS
from sbbench.core.types import budget_label
from sbbench.sweep.store import Store

SHAPE = ["seq_len", "head_dim", "batch", "heads", "dtype", "causal"]
FAMILY = ["head_dim", "batch", "heads", "dtype", "causal", "inputs"]  # one plot panel each
METHOD_ORDER = {"exact": 0, "performer": 1, "lsh": 2, "scatterbrain": 3,
                "scatterbrain_local": 4}
MAX_PANELS = 12


def write_report(store_path: str | Path, out_dir: str | Path = "reports", *,
                 command: str = "", devices: list[str] | None = None) -> list[Path]:
    """Write the report of every device in the store (or only ``devices``); returns the
    directories written."""
    with Store(store_path, readonly=True) as store:
        frame = store.to_dataframe()
        sweeps = store.sweeps()
    if frame.empty:
        raise UserError(f"store {store_path} has no results yet; run `sbbench sweep` first")
    present = sorted(frame["device"].unique())
    if devices:
        missing = [d for d in devices if d not in present]
        if missing:
            raise UserError(f"store {store_path} has no rows for device {missing[0]!r}; "
                            f"it has: {', '.join(present)}")
        present = devices
    written = []
    for device in present:
        rows = frame[frame["device"] == device]
        device_sweeps = [s for s in sweeps if s.get("device") == device]
        for source, sub in (("measured", ""), ("modeled", "modeled")):
            part = rows[rows["source"] == source]
            if part.empty:
                continue
            target = Path(out_dir) / device / sub if sub else Path(out_dir) / device
            write_device_report(part, target, device=device, source=source,
                                command=command, sweeps=device_sweeps,
                                store_path=str(store_path))
            written.append(target)
    return written


def write_device_report(frame: pd.DataFrame, out: Path, *, device: str, source: str,
                        command: str = "", sweeps: list[dict] | None = None,
                        store_path: str = "") -> None:
    out.mkdir(parents=True, exist_ok=True)
    frame = _sorted(frame.copy())
    frame["budget"] = [budget_label(row) for row in frame.itertuples()]
    write_tables(frame, out)
    plots = write_plots(frame, out)
    text = header(frame, device=device, source=source, command=command, sweeps=sweeps or [],
                  store_path=store_path)
    text += markdown_body(frame, plots, out)
    (out / "README.md").write_text(text)


# ---------------------------------------------------------------------------------------
# Tables
# ---------------------------------------------------------------------------------------

def _sorted(frame: pd.DataFrame) -> pd.DataFrame:
    frame["_order"] = frame["method"].map(METHOD_ORDER).fillna(9)
    frame = frame.sort_values(["dtype", "causal", "batch", "heads", "head_dim", "seq_len",
                               "_order", "backend", "n_features", "bucket_size", "n_hashes"])
    return frame.drop(columns="_order").reset_index(drop=True)


def series_label(row) -> str:
    budget = row.budget if row.budget != "-" else ""
    backend = "" if row.backend == "torch" else f" [{row.backend}]"
    return f"{row.method}{backend} {budget}".strip()


def write_tables(frame: pd.DataFrame, out: Path) -> None:
    flat = frame[list(COLUMNS)].copy()
    for name in JSON_FIELDS:
        flat[name] = [json.dumps(value, sort_keys=True) for value in flat[name]]
    flat.to_csv(out / "results.csv", index=False)
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        return
    flat.to_parquet(out / "results.parquet", index=False)


def _fmt(value, scale: float = 1.0, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return f"{value * scale:.{digits}g}"


def _time_cell(row) -> str:
    if _missing(row.time_median_ms):
        return ""
    if _missing(row.time_p20_ms):
        return f"{row.time_median_ms:.3g}"
    return f"{row.time_median_ms:.3g} [{row.time_p20_ms:.3g}, {row.time_p80_ms:.3g}]"


def _error_cell(mean, std) -> str:
    if _missing(mean):
        return ""
    return f"{mean:.3g} ± {std:.2g}" if not _missing(std) and std else f"{mean:.3g}"


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def shape_table(rows: pd.DataFrame) -> str:
    table = []
    for row in rows.itertuples():
        table.append([
            row.method, row.backend, row.budget, row.status, _time_cell(row),
            _fmt(row.speedup_vs_exact, digits=3), _error_cell(row.error_mean, row.error_std),
            _error_cell(row.attn_error_mean, row.attn_error_std),
            _fmt(row.peak_memory_delta_bytes, 1 / 2**20), _fmt(row.working_set_bytes, 1 / 2**20),
            _fmt(row.achieved_flops_per_s, 1e-9), _fmt(row.roofline_fraction, 100, 3),
            _fmt(row.energy_j, 1e3),
        ])
    headers = ["method", "backend", "budget", "status", "time ms [p20, p80]", "speedup vs exact",
               "output error", "attn error", "peak +MiB", "model MiB", "GFLOP/s",
               "roofline %", "energy mJ"]
    return tabulate(table, headers=headers, tablefmt="github", disable_numparse=True)


def pareto_front(rows: pd.DataFrame) -> pd.DataFrame:
    """Rows not dominated in (time, error): no other row is at least as fast and at least
    as accurate, and strictly better in one."""
    ok = rows[(rows["status"] == "ok") & rows["time_median_ms"].notna()
              & rows["error_mean"].notna()]
    ok = ok.sort_values(["time_median_ms", "error_mean"])
    keep, best_error = [], math.inf
    for index, row in ok.iterrows():
        if row["error_mean"] < best_error:
            keep.append(index)
            best_error = row["error_mean"]
    return ok.loc[keep]


def shape_title(row) -> str:
    causal = ", causal" if row.causal else ""
    return (f"seq_len {row.seq_len}, head_dim {row.head_dim}, batch {row.batch} x heads "
            f"{row.heads}, {row.dtype}{causal}")


def shape_slug(row) -> str:
    causal = "_causal" if row.causal else ""
    return (f"seq{row.seq_len}_d{row.head_dim}_b{row.batch}x{row.heads}_{row.dtype}"
            f"{causal}")


def header(frame: pd.DataFrame, *, device: str, source: str, command: str,
           sweeps: list[dict], store_path: str) -> str:
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    lines = [f"# sbbench report: {device}" + (" (cost model only)" if source == "modeled"
                                              else ""), ""]
    if source == "modeled":
        lines += ["**Every number below is predicted by the cost model (roofline), not "
                  "measured** (`source=modeled`).", ""]
    lines += [f"- report written: {now} by `{command or 'sbbench report'}`",
              f"- store: `{store_path}`" if store_path else "",
              f"- device profile: `{device}`; detected: {_detected(frame)}",
              f"- report host: {platform.node() or '?'} ({platform.platform()})",
              f"- rows: {len(frame)} ({_counts(frame['status'])})",
              f"- code versions: {', '.join(sorted(frame['code_version'].unique()))}",
              f"- inputs: {', '.join(sorted(frame['inputs'].unique()))}"]
    versions = _versions(frame)
    if versions:
        lines.append("- versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()))
    stamps = frame["timestamp"][frame["timestamp"] != ""]
    if len(stamps):
        lines.append(f"- measured: {stamps.min()} .. {stamps.max()}")
    timed = frame["timed_region"][frame["timed_region"] != ""].unique()
    for region in timed:
        lines.append(f"- timed region: {region}")
    lines = [line for line in lines if line]
    if sweeps:
        lines += ["", "Sweeps that wrote to this store:", ""]
        lines.append(tabulate([[f"`{s['command']}`", s["started"], s["finished"] or "",
                                s["outcome"]] for s in sweeps],
                              headers=["command", "started", "finished", "outcome"],
                              tablefmt="github", disable_numparse=True))
    lines += ["", "Times are the median of every sample with the 20th and 80th percentiles; "
              "errors are relative Frobenius errors against exact attention (mean ± std over "
              "seeds); `peak +MiB` is what the call added to the peak (CPU: peak RSS of a "
              "child process running only that point; GPU: allocator peak); `model MiB` is "
              "the cost model's working set. CPU timings depend on machine load: compare "
              "rows from one run.", ""]
    return "\n".join(lines) + "\n"


def _detected(frame: pd.DataFrame) -> str:
    for state in frame["device_state"]:
        if isinstance(state, dict):
            before = state.get("before", state)
            if isinstance(before, dict):
                name = before.get("name") or before.get("device_name") or before.get("model")
                if name:
                    return str(name)
    return "(not recorded)"


def _versions(frame: pd.DataFrame) -> dict:
    merged: dict = {}
    for versions in frame["versions"]:
        if isinstance(versions, dict):
            for key, value in versions.items():
                seen = merged.setdefault(key, [])
                if str(value) not in seen:
                    seen.append(str(value))
    return {key: " / ".join(values) for key, values in sorted(merged.items())}


def _counts(series: pd.Series) -> str:
    return ", ".join(f"{n} {status}" for status, n in series.value_counts().items())


def markdown_body(frame: pd.DataFrame, plots: dict[str, list[Path]], out: Path) -> str:
    parts = []
    if plots:
        parts.append("## Plots\n")
        for title, paths in plots.items():
            if title == "pareto":
                continue
            for path in paths:
                parts.append(f"![{title}]({path.relative_to(out).as_posix()})\n")
    parts.append("## Results per shape\n")
    pareto_paths = {p.stem: p for p in plots.get("pareto", [])}
    for _, rows in frame.groupby(SHAPE, sort=False):
        first = next(rows.itertuples())
        parts.append(f"### {shape_title(first)}\n")
        parts.append(shape_table(rows) + "\n")
        front = pareto_front(rows)
        if len(front):
            labels = [f"{series_label(r)} ({r.time_median_ms:.3g} ms, error "
                      f"{r.error_mean:.3g})" for r in front.itertuples()]
            parts.append("Pareto front (error vs time): " + "; ".join(labels) + "\n")
        slug = shape_slug(first)
        if slug in pareto_paths:
            parts.append(f"![pareto {slug}]({pareto_paths[slug].relative_to(out).as_posix()})\n")
    bad = frame[frame["status"] != "ok"]
    if len(bad):
        parts.append("## Failed and skipped points\n")
        table = [[shape_title(r), series_label(r), r.status, r.reason]
                 for r in bad.itertuples()]
        parts.append(tabulate(table, headers=["shape", "method", "status", "reason"],
                              tablefmt="github", disable_numparse=True) + "\n")
    return "\n".join(parts)


# ---------------------------------------------------------------------------------------
# Plots
# ---------------------------------------------------------------------------------------

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
                 "scatterbrain": "tab:red", "scatterbrain_local": "tab:purple"}
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
