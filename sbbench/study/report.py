"""Write an accuracy-study run to a folder: CSV, markdown tables, a plot and a report.

Every number written comes from the run's DataFrames; every sentence of the report that
states a number is generated from them, so the folder can be regenerated and never
disagrees with itself.
"""

from __future__ import annotations

import json
import platform
from dataclasses import asdict
from pathlib import Path

import pandas as pd
import torch

from sbbench.core.provenance import machine, now_utc, revision_text
from sbbench.measure.inputs import CLUSTER_NOISE
from sbbench.study.accuracy import StudyConfig, StudyResult
from sbbench.study.findings import (
    _kind_findings,
    _limit_findings,
    _split_findings,
    _summary_lines,
    _temps,
)
from sbbench.study.oracle import POWER_ITERATIONS, SPLIT_SHARES
from sbbench.study.summary import best_splits, regime_ratios, summarise
from sbbench.study.supports import support_label
from sbbench.study.tables import (  # noqa: F401 - re-exported: the old import path
    LABELS,
    STYLE,
    plot,
    ratios_table,
    splits_table,
    summary_table,
)

FILES = {
    "raw": "accuracy_raw.csv",
    "summary": "accuracy.csv",
    "ratios": "ratios.csv",
    "sweep": "splits_sweep.csv",
    "splits": "splits.csv",
    "markdown": "accuracy.md",
    "plot": "accuracy.png",
    "report": "README.md",
    "meta": "run.json",
}


def machine_info() -> dict:
    """CPU model, core count, torch / Python versions and the git revision, as strings
    (from ``sbbench.core.provenance``, the one provenance reader)."""
    host = machine()
    return {
        "cpu": host["cpu"],
        "logical_cpus": str(host["cores"]),
        "torch": str(host["torch"]),
        "torch_threads": str(torch.get_num_threads()),
        "python": str(host["python"]),
        "platform": platform.platform(),
        "sbbench": str(host["sbbench"]),
        "git": revision_text(),
    }


def _synthetic_lines(config) -> list[str]:
    """The set-up lines of the synthetic input kinds the study ran (none on captures)."""
    kinds = [kind for kind in config.kinds if not kind.startswith("qkv:")]
    lines = []
    if "gaussian" in kinds:
        lines.append("  - `gaussian`: x_q, x_k, v i.i.d. N(0, 1).")
    if "clustered" in kinds:
        lines.append(
            f"  - `clustered`: {config.n_clusters} centres c ~ N(0, I) per head; each position "
            f"draws one cluster z (shared by its query and key); x = sqrt(1 - s) c_z + "
            f"sqrt(s) e with fresh e ~ N(0, I) for query and key, s = {CLUSTER_NOISE}; "
            "v ~ N(0, 1).")
    if kinds:
        lines.append(
            "  - Synthetic kinds: q = sqrt(T) x_q, k = sqrt(T) x_k, so the logits tau q.k "
            "(tau = 1/sqrt(head_dim)) are T times those at T = 1 (for gaussian, T is their "
            "standard deviation). Small T: near-uniform rows; large T: near one-hot.")
    return lines


def _capture_lines(config) -> list[str]:
    """The set-up line of each captured input kind (none for synthetic studies)."""
    from sbbench.measure.capture_file import capture_kind, capture_label, load_capture_cached

    lines = []
    for kind in config.kinds:
        if not kind.startswith("qkv:"):
            continue
        path, layer = capture_kind(kind)
        meta = load_capture_cached(path).meta
        lines.append(
            f"  - `{kind}` ({capture_label(kind)}): Q/K/V captured from the real model "
            f"{meta.get('model', '?')} where it computes attention "
            f"({'all layers, stacked as heads' if layer is None else f'layer {layer}'}), "
            f"first {config.seq_len} tokens of the capture's text; the model's softmax scale "
            "is folded into q, so T = 1 are the model's own logits. The inputs are the same "
            "for every seed: seeds vary only the methods' random features and hashes.")
    return lines


def _support_setup(config) -> str:
    """The set-up sentence of the support rows (or why the run has none)."""
    budgets = config.support_budgets()
    if not config.supports:
        return " The support rows (k-means, key centroids) were switched off."
    text = ""
    if budgets:
        text = (" Better supports at the same budget: one k-means clustering of the "
                "queries whose clusters each take the keys their centroid scores highest, "
                "plus the first keys (sink) and a centred window, exact on that support (the "
                "centroid row estimates the other keys by their key k-means centroid): "
                + "; ".join(f"{LABELS[name]}: {support_label(b)}"
                            for name, b in budgets.items()) + ".")
    if config.skipped_supports():
        text += f" {config.skipped_supports().capitalize()}."
    return text


def report_text(result: StudyResult, *, command: str, machine: dict, date: str) -> str:
    config = result.config
    budgets = config.main_budgets()
    sb = budgets[-1]
    timings = ", ".join(f"{k.removesuffix('_s')} {v:.0f} s" for k, v in result.timings.items())
    out = [
        "# Accuracy study: Scatterbrain vs Performer and LSH across attention regimes",
        "",
        "Generated by `sbbench accuracy`. Every number here comes from the run whose per-seed "
        f"rows are in `{FILES['raw']}`; the sentences stating numbers are generated from "
        "those rows.",
        "",
        f"- Command: `{command}`",
        f"- Date: {date} (wall time {result.elapsed_s:.0f} s: {timings})",
        f"- Machine: {machine['cpu']}, {machine['logical_cpus']} logical CPUs, "
        f"{machine['platform']}; torch {machine['torch']} ({machine['torch_threads']} "
        f"threads), Python {machine['python']}; sbbench {machine['sbbench']}, git "
        f"{machine['git']}",
        "",
        "## Summary",
        "",
        *[f"- {line}" for line in _summary_lines(result)],
        "",
        "## Set-up",
        "",
        f"- Inputs: `sbbench.measure.inputs.make_qkv`, batch {config.batch}, {config.heads} heads, "
        f"seq {config.seq_len}, head_dim {config.head_dim}, {config.dtype}; seeds "
        f"{_temps(config.seeds)}; temperatures T = {_temps(config.temperatures)}.",
        *_synthetic_lines(config),
        *_capture_lines(config),
        f"- Budget: {config.budget} attention memory per query (1/"
        f"{config.seq_len / config.budget:g} of seq). Performer "
        f"{budgets[0].n_features} features; LSH bucket {budgets[1].bucket_size} x "
        f"{budgets[1].n_hashes} round(s); Scatterbrain {sb.n_features} features + bucket "
        f"{sb.bucket_size} x {sb.n_hashes}.{_support_setup(config)} Oracles of the exact "
        f"normalised matrix: top-k "
        f"per row (k = {config.budget}), truncated SVD (rank {config.budget // 2}; "
        f"randomized with {POWER_ITERATIONS} power iterations above 256 rows), and "
        f"sparse + low-rank by alternating projection with k + 2 r = {config.budget}, "
        f"best per head over low-rank shares {_temps((0, *SPLIT_SHARES, 1))}.",
        "- Methods run on the torch backend in the inputs' dtype, their random features "
        "and hashes drawn from a generator seeded per input seed. Reference: exact "
        "softmax attention in float64 on the same inputs.",
        "- Errors: relative Frobenius error per head, averaged over heads, then mean (and "
        "std) over seeds: of the normalised attention matrix ('attention error', the "
        "headline), of the unnormalised estimate of exp(tau q k^T), and of the output. "
        "Oracle output error uses the approximate matrix times v, not renormalised. "
        "'Bucket mass': mean share of a row's exact attention mass on the pairs the hash "
        "buckets select ('-' for the k-means supports: not hash buckets); 'top-k mass': "
        "the most any set of that many pairs could hold.",
        "- ratio = Scatterbrain's attention error / the better baseline's (< 1: "
        "Scatterbrain wins), from the seed means; min-max: the same ratio per seed.",
        "",
        "## Results per regime",
        "",
        ratios_table(result),
        "",
        f"![error vs entropy]({FILES['plot']})",
        "",
        "Plot: one tick per temperature, labelled with its mean row entropy; ticks are "
        "spaced by the distance to uniform attention, log(seq) - entropy, on a log scale, "
        "so that near-uniform settings do not pile up (entropy still grows to the right).",
        "",
        "## Findings",
        "",
    ]
    for kind in dict.fromkeys(result.ratios["kind"]):
        out.append(f"**{kind}**")
        out.append("")
        out += [f"- {line}" for line in _kind_findings(result, kind)]
        out.append("")
    out += ["## Where Scatterbrain loses: the best split of the same budget", ""]
    if len(result.splits):
        out += [
            f"Swept in every regime with ratio > 1: low-rank shares "
            f"{_temps(config.split_shares)} x hash rounds {_temps(config.split_hashes)} "
            f"(the budget stays {config.budget}); the better baseline now also includes "
            "LSH at each of those round counts.",
            "",
            splits_table(result),
            "",
        ]
        out += [f"- {line}" for line in _split_findings(result)]
    elif not config.split_sweep:
        out.append("The split sweep was switched off for this run.")
    else:
        out.append("Scatterbrain did not lose in any regime: no sweep was needed.")
    out += ["", "## What limits it", ""]
    out += [f"- {line}" for line in _limit_findings(result)]
    out += [
        "",
        "## Files",
        "",
        f"- `{FILES['markdown']}`: these tables and the full per-method table.",
        f"- `{FILES['summary']}`: mean and std over seeds per regime and method; "
        f"`{FILES['raw']}`: every seed; `{FILES['ratios']}`: the regime table; "
        f"`{FILES['sweep']}` / `{FILES['splits']}`: the split sweep and its best splits.",
        f"- `{FILES['plot']}`: error vs entropy; `{FILES['meta']}`: the configuration, "
        "command, date and machine of this run.",
        "",
    ]
    return "\n".join(out)


def write_outputs(result: StudyResult, out_dir: str | Path, *, command: str,
                  date: str | None = None, machine: dict | None = None) -> dict:
    """Write every file of ``FILES`` into ``out_dir`` (created); returns {key: path}.

    ``date`` and ``machine`` default to now and this machine (given when re-rendering a
    stored run with :func:`load_result`, or taken when the run started)."""
    date = date or now_utc()
    machine = machine or machine_info()  # before writing: the files may be tracked ones
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {key: out / name for key, name in FILES.items()}
    result.raw.to_csv(paths["raw"], index=False)
    result.summary.to_csv(paths["summary"], index=False)
    result.ratios.to_csv(paths["ratios"], index=False)
    result.sweep.to_csv(paths["sweep"], index=False)
    result.splits.to_csv(paths["splits"], index=False)
    paths["meta"].write_text(json.dumps({
        "command": command, "date": date, "machine": machine,
        "config": asdict(result.config), "elapsed_s": result.elapsed_s,
        "timings": result.timings,
    }, indent=2))
    markdown = ["# Accuracy study tables", "", f"Command: `{command}` ({date})", "",
                "## Per regime", "", ratios_table(result), "",
                "## Per method (mean ± std over seeds)", "", summary_table(result), ""]
    if len(result.splits):
        markdown += ["## Best split where Scatterbrain loses", "", splits_table(result), ""]
    paths["markdown"].write_text("\n".join(markdown))
    plot(result, paths["plot"])
    paths["report"].write_text(report_text(result, command=command, machine=machine,
                                           date=date))
    return paths


def load_result(out_dir: str | Path) -> tuple[StudyResult, dict]:
    """Rebuild a stored run from its folder (per-seed CSV, sweep CSV and run.json):
    (result, meta with command, date, machine), e.g. to render it again."""
    out = Path(out_dir)
    meta = json.loads((out / FILES["meta"]).read_text())
    config = StudyConfig(**{k: tuple(v) if isinstance(v, list) else v
                            for k, v in meta["config"].items()})
    # an empty "detail" reads back as NaN: keep it text
    raw = pd.read_csv(out / FILES["raw"], dtype={"detail": str}, keep_default_na=False)
    sweep = pd.read_csv(out / FILES["sweep"], dtype={"detail": str}, keep_default_na=False)
    for frame in (raw, sweep):
        for column in frame.columns.drop(["detail", "kind", "method"], errors="ignore"):
            frame[column] = pd.to_numeric(frame[column].replace("", float("nan")))
    summary = summarise(raw)
    ratios = regime_ratios(raw, summary)
    splits = best_splits(ratios, summary, sweep)
    result = StudyResult(config, raw, summary, ratios, sweep, splits,
                         elapsed_s=meta["elapsed_s"], timings=meta["timings"])
    return result, meta
