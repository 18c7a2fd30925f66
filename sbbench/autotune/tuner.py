"""Tune one target at one shape bucket, and turn the outcome into the tuning file's entry.

The loop for each (target, shape bucket), whatever the target:

1. the search space (declared next to the kernel, or the torch path's tunables);
2. static pruning (``pruning.prune``): configs the device cannot run well are dropped
   before anything runs, each with its reason;
3. the default config measured, as the baseline every speedup is against;
4. a strategy (``strategies.STRATEGIES``) over the kept configs, every evaluation going
   through the tuning cache (resumable) and the case's evaluator (correctness check,
   then the timing wrapper);
5. the entry: best config, runner-ups within a few percent, times, counts and reasons.

A *case* is any object with ``target``, ``shape`` (a ShapeBucket), ``context`` (what
else the measurement depends on; part of the cache key), ``evaluator``, ``space()``,
``default()`` and optionally ``checks()`` (the static pruning checks).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from sbbench.autotune.cache import CachedEvaluator, TuneCache
from sbbench.autotune.pruning import PruneResult, prune
from sbbench.autotune.strategies import (
    STRATEGIES,
    Evaluation,
    Trial,
    TuneOptions,
    TuneResult,
    config_key,
    halving_schedule,
)
from sbbench.measure.timing import quantile
from sbbench.tuned import ShapeBucket

RUNNER_UP_WITHIN = 0.03  # runner-ups: within 3% of the best median
MAX_LISTED = 50  # pruned / rejected configs listed in the file per bucket (all are counted)


@dataclass
class BucketOutcome:
    """Everything one (target, shape bucket) tuning produced."""

    target: str
    shape: object  # ShapeBucket
    result: TuneResult
    pruned: PruneResult
    default_config: dict
    default_eval: Evaluation | None
    measured: int = 0  # evaluations that ran (not from the cache)
    cache_hits: int = 0

    @property
    def best(self) -> Trial | None:
        return self.result.best

    def speedup(self) -> float | None:
        if self.best is None or self.default_eval is None or not self.default_eval.ok:
            return None
        return self.default_eval.median_ms / self.best.median_ms

    def entry(self, within: float = RUNNER_UP_WITHIN) -> dict | None:
        """The bucket's entry in ``kernels.<target>.buckets`` (None if nothing ran ok)."""
        best = self.best
        if best is None:
            return None
        samples = best.evaluation.samples_ms
        entry = {
            "shape": self.shape.as_dict(),
            "best": dict(best.config),
            "time_ms": _round(best.median_ms),
            "p20_ms": _round(quantile(samples, 0.2)),
            "p80_ms": _round(quantile(samples, 0.8)),
            "n_samples": len(samples),
        }
        if self.default_eval is not None and self.default_eval.ok:
            entry["default_time_ms"] = _round(self.default_eval.median_ms)
        entry["runner_ups"] = [{"config": dict(t.config), "time_ms": _round(t.median_ms)}
                               for t in self.result.runner_ups(within)]
        rejected = self.result.rejected()
        entry.update(strategy=self.result.strategy, evaluated=self.result.evaluated,
                     pruned=len(self.pruned.pruned), rejected=len(rejected))
        if self.pruned.pruned:
            entry["pruned_configs"] = [{"config": c, "reason": r}
                                       for c, r in self.pruned.pruned[:MAX_LISTED]]
        if rejected:
            entry["rejected_configs"] = [{"config": dict(t.config),
                                          "reason": t.evaluation.reason}
                                         for t in rejected[:MAX_LISTED]]
        return entry


def _round(value: float) -> float:
    return float(f"{value:.4g}")


def _with_progress(evaluate, report: Callable[[str], None] | None, label: str, total: int):
    if report is None:
        return evaluate
    count = [0]

    def wrapped(config: dict, budget_hint: float) -> Evaluation:
        evaluation = evaluate(config, budget_hint)
        count[0] += 1
        if evaluation.ok:
            what = f"{evaluation.median_ms:.4g} ms ({len(evaluation.samples_ms)} samples)"
        else:
            what = f"rejected: {evaluation.reason}"
        effort = "" if budget_hint >= 1.0 else f" effort {budget_hint:.2f}"
        cached = " [cached]" if evaluation.cached else ""
        report(f"{label} [{count[0]}/{total}]{effort} {config_key(config)}: {what}{cached}")
        return evaluation

    return wrapped


def tune_case(case, *, strategy: str = "exhaustive", options: TuneOptions | None = None,
              cache: TuneCache | None = None, device: str, code_version: str,
              progress: Callable[[str], None] | None = None) -> BucketOutcome:
    """Prune, measure the default, run ``strategy`` over the rest: one BucketOutcome."""
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {', '.join(STRATEGIES)}, got {strategy!r}")
    options = options or TuneOptions()
    checks = case.checks() if hasattr(case, "checks") else []
    pruned = prune(case.space(), checks)
    cached = CachedEvaluator(case.evaluator, cache if cache is not None else TuneCache(None),
                             device=device,
                             target=case.target, shape=case.shape.as_dict(),
                             context=case.context, code_version=code_version)
    label = f"{case.target} {case.shape.label}"
    if progress and pruned.pruned:
        progress(f"{label}: {len(pruned.pruned)} of {len(pruned.pruned) + len(pruned.kept)} "
                 f"configs pruned statically ({pruned.reason_counts()})")
    default = case.default()
    default_eval = _with_progress(cached, progress, f"{label} default", 1)(default, 1.0)
    total = len(pruned.kept)
    if strategy == "random" and options.max_evals:
        total = min(total, options.max_evals)
    elif strategy == "successive_halving" and total:
        total = sum(count for count, _ in halving_schedule(
            total, options.eta, options.final_keep or options.eta, options.min_effort))
    evaluate = _with_progress(cached, progress, label, total)
    result = STRATEGIES[strategy](pruned.kept, evaluate, options)
    if default_eval.ok and (result.best is None
                            or default_eval.median_ms < result.best.median_ms):
        # never tune to something slower than the untuned call
        if not any(config_key(t.config) == config_key(default) for t in result.trials):
            result.trials.append(Trial(dict(default), default_eval))
        result.best = Trial(dict(default), default_eval)
    return BucketOutcome(case.target, case.shape, result, pruned, default, default_eval,
                         measured=cached.measured, cache_hits=cached.hits)


def merge_target(existing: dict | None, default: dict, entries: list[dict]) -> dict:
    """``kernels.<target>`` with ``entries`` replacing the same shapes in ``existing`` and
    the other shapes kept, sorted by shape."""
    buckets = {}  # by bucket: a shape written with its defaults spelled out is the same one
    for entry in [*((existing or {}).get("buckets") or []), *entries]:
        buckets[ShapeBucket(**entry["shape"])] = entry
    order = [buckets[shape] for shape in sorted(buckets, key=lambda b: (
        b.dtype, b.head_dim, b.n_features, b.bucket_size, b.sparse, b.sink, b.window,
        b.seq_len))]
    return {"default": dict(default), "buckets": order}
