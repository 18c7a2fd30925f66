"""The tables of a sweep report (layer 4): the per-shape markdown table, the CSV and
Parquet files of every column, the Pareto front, and the labels of shapes and series."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

from sbbench.core.format import markdown_table, number
from sbbench.core.record import COLUMNS, JSON_FIELDS
from sbbench.core.types import METHOD_ORDER

SHAPE = ["seq_len", "head_dim", "batch", "heads", "dtype", "causal"]
FAMILY = ["head_dim", "batch", "heads", "dtype", "causal", "inputs"]  # one plot panel each
MAX_PANELS = 12


def _sorted(frame: pd.DataFrame) -> pd.DataFrame:
    frame["_order"] = frame["method"].map(METHOD_ORDER).fillna(9)
    support = [name for name in ("sparse", "sink", "window") if name in frame]
    frame = frame.sort_values(["dtype", "causal", "batch", "heads", "head_dim", "seq_len",
                               "_order", "backend", "n_features", "bucket_size", "n_hashes",
                               *support], kind="stable")
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
    return number(value, digits, scale=scale)


def _time_cell(row) -> str:
    if _missing(row.time_median_ms):
        return ""
    if _missing(row.time_p20_ms):
        return number(row.time_median_ms)
    return (f"{number(row.time_median_ms)} [{number(row.time_p20_ms)}, "
            f"{number(row.time_p80_ms)}]")


def _error_cell(mean, std) -> str:
    if _missing(mean):
        return ""
    return f"{number(mean)} ± {number(std, 2)}" if not _missing(std) and std else number(mean)


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


# how a modeled row's time was obtained (its timer; the report's header gives the notes)
MODELED_AS = {"modeled": "calibrated", "roofline": "roofline"}


def shape_table(rows: pd.DataFrame) -> str:
    # The sampling noise of a point (a Record field where the sweep records it).
    noise = ([str(n) if n is not None else "" for n in rows["noise"]]
             if "noise" in rows else [""] * len(rows))
    show_noise = any(noise)
    modeled = "source" in rows and bool((rows["source"] == "modeled").all())
    table = []
    for row, row_noise in zip(rows.itertuples(), noise, strict=True):
        time_cells = [_time_cell(row)]
        if modeled:
            time_cells.append(MODELED_AS.get(row.timer, "") if row.status == "ok" else "")
        table.append([
            row.method, row.backend, row.budget, row.status, *time_cells,
            _fmt(row.speedup_vs_exact, digits=3), _error_cell(row.error_mean, row.error_std),
            _error_cell(row.attn_error_mean, row.attn_error_std),
            _fmt(row.peak_memory_delta_bytes, 1 / 2**20), _fmt(row.working_set_bytes, 1 / 2**20),
            _fmt(row.achieved_flops_per_s, 1e-9), _fmt(row.roofline_fraction, 100, 3),
            _fmt(row.energy_j, 1e3),
        ] + ([row_noise] if show_noise else []))
    time_headers = (["modeled ms", "modeled as"] if modeled else ["time ms [p20, p80]"])
    headers = ["method", "backend", "budget", "status", *time_headers, "speedup vs exact",
               "output error", "attn error", "peak +MiB", "model MiB", "GFLOP/s",
               "roofline %", "energy mJ"] + (["noise"] if show_noise else [])
    return markdown_table(headers, table)


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
