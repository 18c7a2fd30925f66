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

import platform
import re
from pathlib import Path

import pandas as pd

from sbbench.analyze.recommend import recommendations
from sbbench.analyze.report_plots import write_plots
from sbbench.analyze.report_tables import (  # noqa: F401 - re-exported: old import path
    FAMILY,
    METHOD_ORDER,
    SHAPE,
    _sorted,
    pareto_front,
    series_label,
    shape_slug,
    shape_table,
    shape_title,
    write_tables,
)
from sbbench.analyze.results import MATCH_FIELDS
from sbbench.analyze.selection import select
from sbbench.analyze.selection_report import budgets_markdown
from sbbench.core.errors import UserError
from sbbench.core.format import markdown_table
from sbbench.core.provenance import now_utc
from sbbench.core.types import budget_label
from sbbench.sweep.store import Store


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
    n_all = len(frame)
    frame = latest_per_key(frame)
    frame = _sorted(frame.copy())
    frame["budget"] = [budget_label(row) for row in frame.itertuples()]
    write_tables(frame, out)
    plots = write_plots(frame, out)
    budgets = write_budgets(frame, out, device=device, command=command,
                            store_path=store_path) if source == "measured" else None
    text = header(frame, device=device, source=source, command=command, sweeps=sweeps or [],
                  store_path=store_path, older_rows=n_all - len(frame))
    if source == "measured":
        text += "\n" + recommendations(frame, device=device,
                                        store=Path(store_path).name or "STORE")
        if budgets:
            text += (f"\nCheapest budget per error target, Pareto fronts and where exact is "
                     f"faster: [{budgets.name}]({budgets.name}) (regenerated with this "
                     f"report).\n")
    text += markdown_body(frame, plots, out)
    (out / "README.md").write_text(text)


def latest_per_key(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per point: the key without the code version; a point measured by several
    code versions keeps its latest row (by timestamp)."""
    return (frame.sort_values("timestamp", kind="stable")
            .drop_duplicates(list(MATCH_FIELDS), keep="last"))


def write_budgets(frame: pd.DataFrame, out: Path, *, device: str, command: str,
                  store_path: str) -> Path | None:
    """Regenerate ``budgets.md`` from the same rows, so the folder never holds one from
    another run; remove it where no budget can be selected."""
    path = out / "budgets.md"
    try:
        selection = select(frame, device=device)
    except UserError:
        path.unlink(missing_ok=True)
        return None
    path.write_text(budgets_markdown(selection, device=device,
                                     command=public_text(command or "sbbench report"),
                                     date=now_utc(), store=public_path(store_path)))
    return path


_ABSOLUTE = re.compile(r"(?<![\w.])(/[^\s`'\"]+)")


def public_path(path: str) -> str:
    """A path as a report may show it: the file name of an absolute path (a report is
    shared; the layout of the machine that wrote it is not its business)."""
    return Path(path).name if path and Path(path).is_absolute() else path


def public_text(text: str) -> str:
    """``text`` with every absolute path replaced by its file name."""
    return _ABSOLUTE.sub(lambda m: Path(m.group(1)).name or m.group(1), text)


def header(frame: pd.DataFrame, *, device: str, source: str, command: str,
           sweeps: list[dict], store_path: str, older_rows: int = 0) -> str:
    now = now_utc()
    n_versions = frame["code_version"].nunique()
    older = (f"; {older_rows} older row(s) of the same points left out, the latest kept"
             if older_rows else "")
    lines = [f"# sbbench report: {device}" + (" (cost model only)" if source == "modeled"
                                              else ""), ""]
    lines += [f"- report written: {now} by `{public_text(command or 'sbbench report')}`",
              f"- store: `{public_path(store_path)}`" if store_path else "",
              f"- device profile: `{device}`; detected: {_detected(frame)}",
              f"- report host: {platform.node() or '?'} ({platform.platform()})",
              f"- rows: {len(frame)}, one per point ({_counts(frame['status'])}), from "
              f"{n_versions} code version{'s' if n_versions != 1 else ''}{older}",
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
    if source == "modeled":
        lines[1:1] = ["", "**Every number below is predicted by the cost model, not "
                      "measured** (`source=modeled`). A time is the roofline divided by the "
                      "device's published efficiency for the method family where one is "
                      "known (`modeled as`: calibrated), else the roofline itself (`modeled "
                      "as`: roofline); the roofline time is its own column (results.csv), "
                      "and `roofline %` is the efficiency applied. Per method:", "",
                      *model_notes(frame), ""]
    if sweeps:
        lines += ["", "Sweeps that wrote to this store:", ""]
        lines.append(markdown_table(["command", "started", "finished", "outcome"],
                                    [[f"`{public_text(s['command'])}`", s["started"],
                                      s["finished"] or "", s["outcome"]] for s in sweeps]))
    timing = ("Times are the median of every sample with the 20th and 80th percentiles; "
              "errors" if source != "modeled" else "Errors")
    lines += ["", f"{timing} are relative Frobenius errors against exact attention (mean ± "
              "std over seeds); `peak +MiB` is what the call added to the peak (CPU: peak RSS of a "
              "child process running only that point; GPU: allocator peak); `model MiB` is "
              "the cost model's working set. CPU timings depend on machine load: compare "
              "rows from one run.", ""]
    return "\n".join(lines) + "\n"


def model_notes(frame: pd.DataFrame) -> list[str]:
    """One line per distinct note of the modeled rows ("modeled (calibrated on ...)" or
    "modeled (roofline; ...)", with the basis of their speed-up), naming the methods."""
    ok = frame[frame["status"] == "ok"]
    methods: dict[str, list[str]] = {}
    for method, reason in zip(ok["method"], ok["reason"], strict=True):
        names = methods.setdefault(public_text(str(reason)), [])
        if method not in names:
            names.append(method)
    return [f"- {', '.join(names)}: {note}" for note, names in methods.items()]


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
        table = [[shape_title(r), series_label(r), r.status, public_text(r.reason)]
                 for r in bad.itertuples()]
        parts.append(markdown_table(["shape", "method", "status", "reason"], table) + "\n")
    return "\n".join(parts)
