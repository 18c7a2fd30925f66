"""The accuracy study: the paper's regime experiment (docs/algorithm.md section 7).

Sweep the softmax temperature of seeded synthetic inputs from near-uniform to near one-hot
attention, and measure, at one attention-memory budget per query, how far Performer (all
low-rank), LSH (all sparse) and Scatterbrain (split) are from exact attention (float64):
relative Frobenius error of the normalised attention matrix, of the unnormalised estimate
of ``exp(tau q k^T)`` and of the output, per head, averaged over heads, over several
seeds. Next to them: the better supports at the same budget (Scatterbrain with query
k-means clusters + sink + window and no low-rank part, and with key centroids in place
of part of that support), oracles at the same budget (what the budget allows), the share of
attention mass the hash buckets catch against top-k with the same count, the ratio
Scatterbrain / better baseline per regime, and, where Scatterbrain loses, a sweep of the
split of the same budget between features and buckets (and hash rounds).

Every approximation runs on the torch backend in the problem's dtype with its randomness
drawn explicitly (projections, then hashes) from a generator seeded per input seed, so a
row is reproducible from its seed alone.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import pandas as pd
import torch

from sbbench.attention import exact_attention
from sbbench.core.types import DTYPES, Budget, Problem
from sbbench.measure.accuracy import (
    cumulative_mass,
    mass_captured,
    mean_slice_error,
    row_entropy,
    selected_pairs,
)
from sbbench.measure.calls import call_method, draw_randomness, split_budget
from sbbench.measure.inputs import KINDS, is_capture_kind, make_qkv
from sbbench.study.oracle import oracle_approximations
from sbbench.study.supports import SUPPORT_MIN_BUDGET, SUPPORTS, support_budget, support_label

BASELINES = ("performer", "lsh")
METHODS = (*BASELINES, "scatterbrain")
MAX_SEQ_LEN = 4096  # the study builds dense [heads, seq, seq] float64 matrices
METHOD_SEED_OFFSET = 1_000_003  # method randomness of input seed s: generator seed s + this

# Columns of the per-seed table (one row per kind x temperature x seed x method/config).
RAW_COLUMNS = (
    "kind", "temperature", "seed", "entropy", "method", "n_features", "bucket_size",
    "n_hashes", "memory_per_query", "lowrank_share", "attn_error", "unnorm_error",
    "output_error", "mass_captured", "mass_topk", "detail",
)


@dataclass(frozen=True)
class StudyConfig:
    """What the study runs. ``budget`` is the attention memory per query
    (``n_features + bucket_size * n_hashes``) every method and oracle gets."""

    seq_len: int = 1024
    head_dim: int = 64
    heads: int = 4
    batch: int = 1
    budget: int = 64
    n_hashes: int = 1
    lowrank_share: float = 0.5
    seeds: tuple[int, ...] = (0, 1, 2)
    temperatures: tuple[float, ...] = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
    kinds: tuple[str, ...] = KINDS
    n_clusters: int = 8
    dtype: str = "float32"
    oracles: bool = True
    split_sweep: bool = True
    split_shares: tuple[float, ...] = (0.125, 0.25, 0.5, 0.75, 0.875)
    split_hashes: tuple[int, ...] = (1, 2)
    supports: bool = True

    def __post_init__(self) -> None:
        for name in ("seq_len", "head_dim", "heads", "batch", "budget", "n_hashes",
                     "n_clusters"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        if self.seq_len > MAX_SEQ_LEN:
            raise ValueError(f"seq_len must be <= {MAX_SEQ_LEN} (the study builds dense "
                             f"seq x seq matrices), got {self.seq_len}")
        if not 4 <= self.budget < self.seq_len:
            raise ValueError(f"budget (memory per query) must be in [4, seq_len), got "
                             f"{self.budget} for seq_len {self.seq_len}")
        if self.budget < 2 * self.n_hashes + 2:
            raise ValueError(f"budget {self.budget} is too small for {self.n_hashes} hash "
                             f"rounds plus features (needs >= {2 * self.n_hashes + 2})")
        if not 0.0 < self.lowrank_share < 1.0:
            raise ValueError(f"lowrank_share must be in (0, 1), got {self.lowrank_share}")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds) or any(
                isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in self.seeds):
            raise ValueError(f"seeds must be distinct ints >= 0, got {self.seeds!r}")
        if not self.temperatures or any(
                not (isinstance(t, (int, float)) and math.isfinite(t) and t > 0)
                for t in self.temperatures):
            raise ValueError(f"temperatures must be finite numbers > 0, got "
                             f"{self.temperatures!r}")
        if not self.kinds or any(kind not in KINDS and not is_capture_kind(kind)
                                 for kind in self.kinds):
            raise ValueError(f"kinds must be among {', '.join(KINDS)} or a capture "
                             f"(qkv:FILE[#layer=N]), got {self.kinds!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if any(not 0.0 < s < 1.0 for s in self.split_shares):
            raise ValueError(f"split_shares must be in (0, 1), got {self.split_shares!r}")
        if any(isinstance(h, bool) or not isinstance(h, int) or h < 1
               for h in self.split_hashes):
            raise ValueError(f"split_hashes must be ints >= 1, got {self.split_hashes!r}")

    @property
    def problem(self) -> Problem:
        return Problem(self.seq_len, self.head_dim, batch=self.batch, heads=self.heads,
                       dtype=self.dtype)

    def main_budgets(self) -> list[Budget]:
        """Performer, LSH and Scatterbrain at ``budget`` (the headline comparison)."""
        return [split_budget(method, self.budget, n_hashes=self.n_hashes,
                             lowrank_share=self.lowrank_share) for method in METHODS]

    def sweep_budgets(self) -> list[Budget]:
        """Scatterbrain at every split of ``budget`` (features vs buckets x hash rounds)
        that fits, and LSH at each hash-round count the main comparison has not run, for
        the regimes where it loses."""
        budgets = [split_budget("lsh", self.budget, n_hashes=h) for h in self.split_hashes
                   if h != self.n_hashes]
        for n_hashes in self.split_hashes:
            for share in self.split_shares:
                try:
                    b = split_budget("scatterbrain", self.budget, n_hashes=n_hashes,
                                     lowrank_share=share)
                except ValueError:
                    continue
                if b.memory_per_query <= self.budget and b.n_features < self.budget:
                    budgets.append(b)
        return list(dict.fromkeys(budgets))  # drop duplicate splits, keep order

    def support_budgets(self) -> dict[str, Budget]:
        """The support rows (``SUPPORTS``) that fit ``budget``, by row name; none when
        ``supports`` is off."""
        if not self.supports:
            return {}
        built = {name: support_budget(name, self.budget) for name in SUPPORTS}
        return {name: b for name, b in built.items() if b is not None}

    def skipped_supports(self) -> str:
        """One line saying which support rows ``budget`` is too small for ("" if none)."""
        if not self.supports:
            return ""
        skipped = [name for name in SUPPORTS if name not in self.support_budgets()]
        if not skipped:
            return ""
        return (f"budget {self.budget} is too small for the rows "
                + ", ".join(f"{name} (needs >= {SUPPORT_MIN_BUDGET[name]})"
                            for name in skipped) + ": skipped")




QUICK = StudyConfig(seq_len=128, head_dim=32, heads=2, budget=16, seeds=(0, 1),
                    temperatures=(0.25, 1.0, 4.0), split_shares=(0.25, 0.5, 0.75))


@dataclass
class StudyResult:
    """Tables of one study run (pandas DataFrames; column meanings in the report)."""

    config: StudyConfig
    raw: pd.DataFrame  # per seed: main methods and oracles
    summary: pd.DataFrame  # mean (and std) over seeds per kind x temperature x method
    ratios: pd.DataFrame  # per regime: Scatterbrain / better baseline, oracle ratios
    sweep: pd.DataFrame  # split sweep (mean over seeds), regimes where Scatterbrain loses
    splits: pd.DataFrame  # per losing regime: the best split and its ratio
    elapsed_s: float = 0.0
    timings: dict = field(default_factory=dict)


# ---------------------------------------------------------------- one evaluation


@dataclass(frozen=True)
class Reference:
    """Exact attention of one input, in float64."""

    weights: torch.Tensor  # [b, h, seq, seq] normalised
    unnormalized: torch.Tensor  # [b, h, seq, seq] exp(tau q k^T)
    out: torch.Tensor  # [b, h, seq, head_dim]
    cumulative: torch.Tensor  # [b, h, seq, seq] mass of each row's top-c entries at c - 1
    entropy: float

    @classmethod
    def of(cls, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> Reference:
        q64, k64, v64 = (t.to(torch.float64) for t in (q, k, v))
        out, weights = exact_attention(q64, k64, v64, return_weights=True)
        scale = 1.0 / math.sqrt(q.shape[-1])
        unnormalized = torch.exp(scale * (q64 @ k64.mT))
        return cls(weights, unnormalized, out, cumulative_mass(weights), row_entropy(weights))


def method_generator(seed: int) -> torch.Generator:
    """The generator of the methods' randomness for input seed ``seed`` (offset, so that
    it never shares a stream with the inputs of the same seed)."""
    return torch.Generator(device="cpu").manual_seed(seed + METHOD_SEED_OFFSET)


def run_budget(budget: Budget, q, k, v, projections, hashes, return_weights,
               centroid_seed: int | None = None):
    """One approximate method with explicit randomness (torch backend) -> (out, weights)."""
    if budget.method not in ("performer", "lsh", "scatterbrain", "scatterbrain_centroids"):
        raise ValueError(f"the accuracy study runs performer, lsh, scatterbrain and "
                         f"scatterbrain_centroids, got {budget.method!r}")
    return call_method(budget, q, k, v, backend="torch", projections=projections,
                       hashes=hashes, centroid_seed=centroid_seed,
                       return_weights=return_weights)


def evaluate_budget(budget: Budget, q, k, v, ref: Reference, seed: int, *,
                    unnormalized: bool = True, name: str | None = None) -> dict:
    """Errors of one method at one budget on one input (and the mass its hash buckets
    catch; NaN for other supports). ``name``: the row's method name instead of the
    budget's (the support rows), its configuration then in "detail"."""
    drawn = draw_randomness(budget, q.shape[-1], method_generator(seed))
    projections, hashes = drawn.projections, drawn.hashes
    centroid_seed = drawn.centroid_seed
    out, weights = run_budget(budget, q, k, v, projections, hashes, True, centroid_seed)
    row = {
        "method": name or budget.method, "n_features": budget.n_features,
        "bucket_size": budget.bucket_size, "n_hashes": budget.n_hashes,
        "memory_per_query": budget.memory_per_query,
        "lowrank_share": budget.n_features / budget.memory_per_query,
        "attn_error": mean_slice_error(weights, ref.weights),
        "unnorm_error": math.nan,
        "output_error": mean_slice_error(out, ref.out),
        "mass_captured": math.nan, "mass_topk": math.nan,
        "detail": support_label(budget) if name else "",
    }
    del weights
    if unnormalized:
        _, estimate = run_budget(budget, q, k, v, projections, hashes, "unnormalized",
                                 centroid_seed)
        row["unnorm_error"] = mean_slice_error(estimate, ref.unnormalized)
        del estimate
    if hashes is not None and budget.sparse == "lsh" and not (budget.sink or budget.window):
        selected = selected_pairs(q, k, hashes, budget.bucket_size)
        row["mass_captured"], row["mass_topk"] = mass_captured(
            ref.weights, selected, cumulative=ref.cumulative)
    return row


def evaluate_oracles(ref: Reference, v: torch.Tensor, budget: int) -> list[dict]:
    """The three oracles of the normalised attention matrix at ``budget`` per row.

    Their output error uses the approximate matrix as it is (not renormalised); they have
    no unnormalised estimate."""
    rows = []
    v64 = v.to(torch.float64)
    for name, (approx, detail) in oracle_approximations(ref.weights, budget).items():
        rows.append({
            "method": name, "n_features": 0, "bucket_size": 0, "n_hashes": 0,
            "memory_per_query": budget, "lowrank_share": math.nan,
            "attn_error": mean_slice_error(approx, ref.weights),
            "unnorm_error": math.nan,
            "output_error": mean_slice_error(approx.to(torch.float64) @ v64, ref.out),
            "mass_captured": math.nan, "mass_topk": math.nan, "detail": detail,
        })
    return rows


# ---------------------------------------------------------------- the study


def run_study(config: StudyConfig, progress: Callable[[str], None] | None = None
              ) -> StudyResult:
    """Run the whole study; ``progress`` receives one line per step (the CLI prints it)."""
    say = progress or (lambda message: None)
    started = time.perf_counter()
    timings = {"methods_s": 0.0, "supports_s": 0.0, "oracles_s": 0.0, "sweep_s": 0.0}
    settings = [(kind, t, s) for kind in config.kinds for t in config.temperatures
                for s in config.seeds]
    if config.skipped_supports():
        say(config.skipped_supports())
    supports = config.support_budgets()
    rows = []
    for index, (kind, temperature, seed) in enumerate(settings, 1):
        t0 = time.perf_counter()
        q, k, v = make_qkv(config.problem, seed=seed, kind=kind, temperature=temperature,
                           n_clusters=config.n_clusters)
        ref = Reference.of(q, k, v)
        base = {"kind": kind, "temperature": float(temperature), "seed": seed,
                "entropy": ref.entropy}
        for budget in config.main_budgets():
            rows.append({**base, **evaluate_budget(budget, q, k, v, ref, seed)})
        t1 = time.perf_counter()
        timings["methods_s"] += t1 - t0
        for name, budget in supports.items():
            rows.append({**base, **evaluate_budget(budget, q, k, v, ref, seed, name=name)})
        timings["supports_s"] += time.perf_counter() - t1
        t1 = time.perf_counter()
        if config.oracles:
            rows.extend({**base, **row} for row in evaluate_oracles(ref, v, config.budget))
        timings["oracles_s"] += time.perf_counter() - t1
        say(f"[{index}/{len(settings)}] {kind} temperature {temperature:g} seed {seed}: "
            f"entropy {ref.entropy:.2f} nats ({time.perf_counter() - t0:.1f} s)")
    from sbbench.study.summary import best_splits, regime_ratios, summarise

    raw = pd.DataFrame(rows, columns=list(RAW_COLUMNS))
    summary = summarise(raw)
    ratios = regime_ratios(raw, summary)

    t0 = time.perf_counter()
    sweep = pd.DataFrame(columns=list(RAW_COLUMNS))
    losing = ratios[ratios["ratio"] > 1.0][["kind", "temperature"]]
    if config.split_sweep and len(losing):
        sweep = run_split_sweep(config, list(losing.itertuples(index=False, name=None)), say)
    timings["sweep_s"] = time.perf_counter() - t0
    sweep_summary = summarise(sweep) if len(sweep) else sweep
    splits = best_splits(ratios, summary, sweep_summary)
    return StudyResult(config, raw, summary, ratios, sweep_summary, splits,
                       elapsed_s=time.perf_counter() - started, timings=timings)


def run_split_sweep(config: StudyConfig, regimes: list[tuple[str, float]],
                    say: Callable[[str], None]) -> pd.DataFrame:
    """Every split of the budget (``config.sweep_budgets()``) in each of ``regimes``."""
    budgets = config.sweep_budgets()
    rows = []
    for index, (kind, temperature) in enumerate(regimes, 1):
        t0 = time.perf_counter()
        for seed in config.seeds:
            q, k, v = make_qkv(config.problem, seed=seed, kind=kind, temperature=temperature,
                               n_clusters=config.n_clusters)
            ref = Reference.of(q, k, v)
            base = {"kind": kind, "temperature": float(temperature), "seed": seed,
                    "entropy": ref.entropy}
            for budget in budgets:
                rows.append({**base, **evaluate_budget(budget, q, k, v, ref, seed,
                                                       unnormalized=False)})
        say(f"[split sweep {index}/{len(regimes)}] {kind} temperature {temperature:g}: "
            f"{len(budgets)} configurations x {len(config.seeds)} seeds "
            f"({time.perf_counter() - t0:.1f} s)")
    return pd.DataFrame(rows, columns=list(RAW_COLUMNS))


# ---------------------------------------------------------------- tables


def with_overrides(config: StudyConfig, **changes) -> StudyConfig:
    """``config`` with the given fields replaced (validated again)."""
    return replace(config, **{k: v for k, v in changes.items() if v is not None})
