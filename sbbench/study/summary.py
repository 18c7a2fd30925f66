"""Summaries of an accuracy study's raw rows (layer 4): mean and spread per configuration,
Scatterbrain against the better baseline per regime, and the best split of the budget.
"""

from __future__ import annotations

import pandas as pd

from sbbench.study.accuracy import BASELINES, METHODS
from sbbench.study.oracle import ORACLES
from sbbench.study.supports import SUPPORTS

CONFIG_KEYS = ["kind", "temperature", "method", "n_features", "bucket_size", "n_hashes",
               "memory_per_query"]


def summarise(raw: pd.DataFrame) -> pd.DataFrame:
    """Mean over seeds (and std of the errors) per kind x temperature x method config."""
    grouped = raw.groupby(CONFIG_KEYS, sort=False, dropna=False)
    summary = grouped.agg(
        entropy=("entropy", "mean"),
        lowrank_share=("lowrank_share", "first"),
        attn_error=("attn_error", "mean"),
        attn_error_std=("attn_error", "std"),
        unnorm_error=("unnorm_error", "mean"),
        output_error=("output_error", "mean"),
        output_error_std=("output_error", "std"),
        mass_captured=("mass_captured", "mean"),
        mass_topk=("mass_topk", "mean"),
        seeds=("seed", "nunique"),
        detail=("detail", lambda d: "; ".join(sorted({x for x in d if x}))),
    ).reset_index()
    return summary


def _pivot(frame: pd.DataFrame, value: str) -> pd.DataFrame:
    return frame.pivot_table(index=["kind", "temperature"], columns="method", values=value,
                             sort=False, dropna=False)


def regime_ratios(raw: pd.DataFrame, summary: pd.DataFrame) -> pd.DataFrame:
    """Per kind x temperature: each method's mean error, the better baseline, and
    ``ratio = scatterbrain / better baseline`` (attention matrix; < 1 = Scatterbrain wins),
    its min and max over seeds, the same ratio for the output and the unnormalised
    estimate, the oracle ratios, and, for each support row the run has (``SUPPORTS``),
    its mean error and ``<row>_ratio``, its error / the better baseline's."""
    main = summary[summary["method"].isin(METHODS)]
    attn, outp, unnorm = (_pivot(main, c) for c in ("attn_error", "output_error",
                                                    "unnorm_error"))
    table = pd.DataFrame(index=attn.index)
    # the support rows left out: their count would move the mean's last bit
    table["entropy"] = summary[~summary["method"].isin(SUPPORTS)].groupby(
        ["kind", "temperature"], sort=False)["entropy"].mean()
    for method in METHODS:
        table[method] = attn[method]
    table["best_baseline"] = attn[list(BASELINES)].idxmin(axis=1)
    table["ratio"] = attn["scatterbrain"] / attn[list(BASELINES)].min(axis=1)
    per_seed = raw[raw["method"].isin(METHODS)].pivot_table(
        index=["kind", "temperature", "seed"], columns="method", values="attn_error")
    seed_ratio = (per_seed["scatterbrain"] / per_seed[list(BASELINES)].min(axis=1))
    seed_ratio = seed_ratio.groupby(level=["kind", "temperature"])
    table["ratio_min"] = seed_ratio.min()
    table["ratio_max"] = seed_ratio.max()
    table["output_ratio"] = outp["scatterbrain"] / outp[list(BASELINES)].min(axis=1)
    table["unnorm_ratio"] = unnorm["scatterbrain"] / unnorm[list(BASELINES)].min(axis=1)
    lsh = main[main["method"] == "lsh"].set_index(["kind", "temperature"])
    table["lsh_mass"] = lsh["mass_captured"]
    table["lsh_topk_mass"] = lsh["mass_topk"]
    oracle = summary[summary["method"].isin(ORACLES)]
    if len(oracle):
        o_attn = _pivot(oracle, "attn_error")
        for name in ORACLES:
            table[name] = o_attn[name]
        table["oracle_ratio"] = (o_attn["oracle_sparse_lowrank"]
                                 / o_attn[["oracle_topk", "oracle_svd"]].min(axis=1))
        table["headroom"] = attn["scatterbrain"] / o_attn["oracle_sparse_lowrank"]
    supports = summary[summary["method"].isin(SUPPORTS)]
    if len(supports):
        s_attn = _pivot(supports, "attn_error")
        for name in SUPPORTS:
            if name in s_attn:
                table[name] = s_attn[name]
                table[f"{name}_ratio"] = s_attn[name] / attn[list(BASELINES)].min(axis=1)
    return table.reset_index()


def best_splits(ratios: pd.DataFrame, summary: pd.DataFrame,
                sweep: pd.DataFrame) -> pd.DataFrame:
    """Per regime of the sweep: the Scatterbrain split with the lowest attention error and
    its ratio to the better baseline, the baselines now including LSH at every hash-round
    count of the sweep (so a 2-round Scatterbrain meets a 2-round LSH)."""
    columns = ["kind", "temperature", "entropy", "default_ratio", "best_n_features",
               "best_bucket_size", "best_n_hashes", "best_lowrank_share", "best_attn_error",
               "best_baseline", "best_baseline_error", "best_ratio", "best_output_ratio",
               "best_mass_captured", "best_mass_topk"]
    rows = []
    if not len(sweep):
        return pd.DataFrame(columns=columns)
    for (kind, temperature), part in sweep.groupby(["kind", "temperature"], sort=False):
        regime = ratios[(ratios["kind"] == kind) & (ratios["temperature"] == temperature)]
        main = summary[(summary["kind"] == kind) & (summary["temperature"] == temperature)]
        candidates = pd.concat([main[main["method"].isin(BASELINES)],
                                part[part["method"] == "lsh"]], ignore_index=True)
        label = candidates.apply(
            lambda r: r["method"] if r["method"] == "performer"
            else f"lsh {int(r['bucket_size'])}x{int(r['n_hashes'])}", axis=1)
        best_base = candidates["attn_error"].idxmin()
        sb = part[part["method"] == "scatterbrain"]
        best = sb.loc[sb["attn_error"].idxmin()]
        rows.append({
            "kind": kind, "temperature": temperature,
            "entropy": float(regime["entropy"].iloc[0]),
            "default_ratio": float(regime["ratio"].iloc[0]),
            "best_n_features": int(best["n_features"]),
            "best_bucket_size": int(best["bucket_size"]),
            "best_n_hashes": int(best["n_hashes"]),
            "best_lowrank_share": float(best["lowrank_share"]),
            "best_attn_error": float(best["attn_error"]),
            "best_baseline": label[best_base],
            "best_baseline_error": float(candidates.loc[best_base, "attn_error"]),
            "best_ratio": float(best["attn_error"] / candidates["attn_error"].min()),
            "best_output_ratio": float(best["output_error"]
                                       / candidates["output_error"].min()),
            "best_mass_captured": float(best["mass_captured"]),
            "best_mass_topk": float(best["mass_topk"]),
        })
    return pd.DataFrame(rows, columns=columns)
