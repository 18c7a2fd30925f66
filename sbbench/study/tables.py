"""Tables and the plot of an accuracy-study run (layer 4): markdown tables of the regime,
per-method and best-split frames, and the error-vs-entropy figure."""

from __future__ import annotations

import math
from pathlib import Path

from sbbench.core.format import markdown_table, number
from sbbench.study.accuracy import METHODS, StudyResult
from sbbench.study.oracle import ORACLES
from sbbench.study.supports import SUPPORTS

LABELS = {
    "performer": "performer (low-rank)",
    "lsh": "lsh (sparse)",
    "scatterbrain": "scatterbrain (sparse + low-rank)",
    "scatterbrain_kmeans": "scatterbrain k-means + sink + window (no low-rank)",
    "scatterbrain_centroids": "scatterbrain key centroids + k-means + sink + window",
    "oracle_svd": "oracle: truncated SVD",
    "oracle_topk": "oracle: top-k",
    "oracle_sparse_lowrank": "oracle: sparse + low-rank",
}
STYLE = {  # method -> (colour, marker, linestyle)
    "performer": ("tab:blue", "o", "-"),
    "lsh": ("tab:orange", "s", "-"),
    "scatterbrain": ("tab:green", "^", "-"),
    "scatterbrain_kmeans": ("tab:red", "v", "-"),
    "scatterbrain_centroids": ("tab:purple", "D", "-"),
    "oracle_svd": ("tab:blue", None, "--"),
    "oracle_topk": ("tab:orange", None, "--"),
    "oracle_sparse_lowrank": ("tab:green", None, "--"),
}


SUPPORT_HEADERS = {  # the ratios table's column of each support row: error (ratio)
    "scatterbrain_kmeans": "SB k-means+sink+window (ratio)",
    "scatterbrain_centroids": "SB centroids+k-means (ratio)",
}


def _fmt(x, digits: int = 3) -> str:
    """A study number: "-" where missing, "inf" where infinite."""
    return number(x, digits, missing="-")


def _config_label(row) -> str:
    if row["method"] == "performer":
        return f"{int(row['n_features'])} features"
    if row["method"] == "lsh":
        return f"bucket {int(row['bucket_size'])} x {int(row['n_hashes'])}"
    if row["method"] == "scatterbrain":
        return (f"{int(row['n_features'])} features + bucket {int(row['bucket_size'])} x "
                f"{int(row['n_hashes'])}")
    return row["detail"]


def ratios_table(result: StudyResult) -> str:
    has_oracle = "oracle_ratio" in result.ratios
    supports = supports_in(result.ratios)
    rows = []
    for _, r in result.ratios.iterrows():
        row = [r["kind"], _fmt(r["temperature"]), f"{r['entropy']:.2f}",
               _fmt(r["performer"]), _fmt(r["lsh"]), _fmt(r["scatterbrain"]),
               *(f"{_fmt(r[name])} ({r[f'{name}_ratio']:.2f})" for name in supports),
               r["best_baseline"],
               f"**{r['ratio']:.2f}** ({r['ratio_min']:.2f}-{r['ratio_max']:.2f})",
               f"{r['output_ratio']:.2f}", _fmt(r["unnorm_ratio"]),
               f"{r['lsh_mass']:.2f} / {r['lsh_topk_mass']:.2f}"]
        if has_oracle:
            row += [_fmt(r["oracle_topk"]), _fmt(r["oracle_svd"]),
                    _fmt(r["oracle_sparse_lowrank"]), f"{r['oracle_ratio']:.2f}",
                    _fmt(r["headroom"])]
        rows.append(row)
    headers = ["kind", "T", "entropy (nats)", "performer", "lsh", "scatterbrain",
               *(SUPPORT_HEADERS[name] for name in supports), "better baseline",
               "ratio (seeds min-max)", "output ratio", "unnorm. ratio", "LSH mass / top-k mass"]
    if has_oracle:
        headers += ["oracle top-k", "oracle SVD", "oracle S+L", "oracle S+L / better part",
                    "SB / oracle S+L"]
    return markdown_table(headers, rows)


def summary_table(result: StudyResult) -> str:
    rows = []
    for _, r in result.summary.iterrows():
        rows.append([r["kind"], _fmt(r["temperature"]), f"{r['entropy']:.2f}", r["method"],
                     _config_label(r),
                     f"{_fmt(r['attn_error'])} ± {_fmt(r['attn_error_std'], 2)}",
                     _fmt(r["unnorm_error"]),
                     f"{_fmt(r['output_error'])} ± {_fmt(r['output_error_std'], 2)}",
                     _fmt(r["mass_captured"]), _fmt(r["mass_topk"])])
    headers = ["kind", "T", "entropy", "method", "configuration", "attention error",
               "unnorm. error", "output error", "bucket mass", "top-k mass"]
    return markdown_table(headers, rows)


def splits_table(result: StudyResult) -> str:
    rows = []
    for _, r in result.splits.iterrows():
        rows.append([r["kind"], _fmt(r["temperature"]), f"{r['entropy']:.2f}",
                     f"{r['default_ratio']:.2f}",
                     f"{r['best_n_features']} features + bucket {r['best_bucket_size']} x "
                     f"{r['best_n_hashes']}",
                     _fmt(r["best_attn_error"]),
                     f"{r['best_baseline']} ({_fmt(r['best_baseline_error'])})",
                     f"**{r['best_ratio']:.2f}**", f"{r['best_output_ratio']:.2f}",
                     f"{r['best_mass_captured']:.2f} / {r['best_mass_topk']:.2f}"])
    headers = ["kind", "T", "entropy", "default ratio", "best split", "its error",
               "better baseline (error)", "best ratio", "output ratio",
               "bucket mass / top-k mass"]
    return markdown_table(headers, rows)


def supports_in(frame) -> list[str]:
    """The support rows (``SUPPORTS``) a ratios frame has, in order."""
    return [name for name in SUPPORTS if f"{name}_ratio" in frame]


# ---------------------------------------------------------------- plot


def plot(result: StudyResult, path: Path) -> None:
    """Error vs mean row entropy, one line per method (oracles dashed), one column per
    data kind; top row attention-matrix error, bottom row output error; log y.

    The x axis is spaced by the distance to uniform attention, ``log(seq) - entropy``, on
    a log scale (reversed, so entropy still grows to the right): near-uniform settings
    differ by hundredths of a nat and would pile up on a linear entropy axis. Each tick
    is one setting, labelled with its entropy and temperature."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FixedLocator, NullLocator

    config = result.config
    uniform = math.log(config.seq_len)
    kinds = list(dict.fromkeys(result.summary["kind"]))
    fig, axes = plt.subplots(2, len(kinds), figsize=(6.4 * len(kinds), 8.6), squeeze=False)
    methods = [m for m in (*METHODS, *SUPPORTS, *ORACLES)
               if m in set(result.summary["method"])]
    for col, kind in enumerate(kinds):
        part = result.summary[result.summary["kind"] == kind]
        settings = part.groupby("temperature")["entropy"].mean().sort_index()
        for row, (metric, label) in enumerate((("attn_error", "attention-matrix error"),
                                               ("output_error", "output error"))):
            ax = axes[row][col]
            for method in methods:
                line = part[part["method"] == method].sort_values("entropy")
                colour, marker, style = STYLE[method]
                std = line.get(f"{metric}_std")
                ax.errorbar((uniform - line["entropy"]).clip(lower=1e-6), line[metric],
                            yerr=None if method in ORACLES or std is None else std,
                            color=colour, marker=marker, linestyle=style, capsize=3,
                            linewidth=2.2 if method == "scatterbrain" else 1.4,
                            markersize=5, label=LABELS[method])
            ax.set_xscale("log")
            ax.set_yscale("log")
            ticks = (uniform - settings.to_numpy()).clip(1e-6)
            ax.xaxis.set_major_locator(FixedLocator(ticks))
            ax.xaxis.set_minor_locator(NullLocator())
            ax.set_xticklabels([f"{h:.2f}\nT={t:g}" for t, h in settings.items()],
                               fontsize=8)
            ax.set_xlim(ticks.max() * 1.4, ticks.min() / 1.4)  # reversed: uniform right
            ax.grid(True, which="both", alpha=0.25)
            ax.set_ylabel(f"relative Frobenius {label}")
            ax.set_title(f"{kind} inputs: {label}", fontsize=10)
            ax.set_xlabel(f"mean row entropy (nats; uniform = {uniform:.2f}) and "
                          "temperature", fontsize=9)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=3, fontsize=9, frameon=False)
    legend_rows = math.ceil(len(methods) / 3)
    fig.suptitle(
        f"Error vs attention entropy at {config.budget} memory per query "
        f"(seq {config.seq_len}, head_dim {config.head_dim}, {config.heads} heads, "
        f"{len(config.seeds)} seeds; bars: std over seeds; oracles dashed)", fontsize=11)
    fig.tight_layout(rect=(0, 0.03 * legend_rows, 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)
