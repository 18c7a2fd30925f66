"""Tuning strategies: plain functions ``tune(space, evaluate, options) -> TuneResult``.

``space`` is a list of configs (dicts of int / None); ``evaluate(config, budget_hint)``
measures one config with ``budget_hint`` the share of a full measurement to spend (1.0:
the full warm-up and repetition budget; successive halving asks for less on its first
rungs) and returns an :class:`Evaluation`. A strategy knows nothing of GPUs, timing or
caching (KernelTuner's ``strategies/brute_force.py`` shape), so the same
function tunes a Triton kernel, the torch path, or a recorded table in a test.

- :func:`exhaustive`: every config, full measurement.
- :func:`random`: ``options.max_evals`` configs drawn without replacement with
  ``options.seed``, full measurement.
- :func:`successive_halving`: every config with a small share of the measurement, then
  the best ``1 / eta`` of them with ``eta`` times more, ... until ``options.final_keep``
  remain, which get the full measurement (the winner and its runner-ups are compared on
  full measurements only).
"""

from __future__ import annotations

import json
import math
import random as _random
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

Config = dict
Evaluate = Callable[[Config, float], "Evaluation"]


def config_key(config: Config) -> str:
    """Canonical text of a config (sorted keys): equal configs give equal keys."""
    return json.dumps(config, sort_keys=True)


@dataclass(frozen=True)
class Evaluation:
    """What one measurement of one config gave.

    ``ok`` False: the config failed (did not compile, crashed, ran out of memory, or
    changed the output); ``reason`` says why and there are no samples. ``effort`` is the
    share of a full measurement the samples come from; ``cached`` marks a replay from the
    tuning cache.
    """

    ok: bool
    samples_ms: tuple[float, ...] = ()
    reason: str = ""
    effort: float = 1.0
    cached: bool = False

    def __post_init__(self) -> None:
        if self.ok and not self.samples_ms:
            raise ValueError("an ok Evaluation needs at least one sample")

    @property
    def median_ms(self) -> float | None:
        return statistics.median(self.samples_ms) if self.samples_ms else None

    @classmethod
    def failed(cls, reason: str, effort: float = 1.0) -> Evaluation:
        return cls(False, (), reason, effort)


@dataclass(frozen=True)
class Trial:
    config: Config
    evaluation: Evaluation

    @property
    def median_ms(self) -> float | None:
        return self.evaluation.median_ms


@dataclass(frozen=True)
class TuneOptions:
    """Knobs of the strategies (each uses the ones it needs).

    max_evals: configs ``random`` measures. seed: its draw. eta: successive halving's
    reduction factor per rung; min_effort: the share of a full measurement its first rung
    gets (at least); final_keep: configs measured in full at the end (default ``eta``).
    max_seconds: stop starting new evaluations after this long (None: no limit).
    """

    max_evals: int | None = None
    seed: int = 0
    eta: int = 3
    min_effort: float = 0.1
    final_keep: int | None = None
    max_seconds: float | None = None


@dataclass
class TuneResult:
    """Every trial a strategy ran, in order, and the winner (None if every config failed)."""

    strategy: str
    trials: list[Trial] = field(default_factory=list)
    best: Trial | None = None
    stopped_early: bool = False

    def final_trials(self) -> list[Trial]:
        """The latest ok trial of each config measured at the highest effort, fastest first
        (the set the winner was picked from)."""
        ok = [t for t in self.trials if t.evaluation.ok]
        if not ok:
            return []
        top = max(t.evaluation.effort for t in ok)
        latest: dict[str, Trial] = {}
        for trial in ok:
            if trial.evaluation.effort == top:
                latest[config_key(trial.config)] = trial
        return sorted(latest.values(), key=lambda t: t.median_ms)

    def runner_ups(self, within: float = 0.03) -> list[Trial]:
        """Configs other than the best whose median is within ``within`` (a fraction) of it."""
        if self.best is None:
            return []
        limit = self.best.median_ms * (1.0 + within)
        best_key = config_key(self.best.config)
        return [t for t in self.final_trials()
                if config_key(t.config) != best_key and t.median_ms <= limit]

    def rejected(self) -> list[Trial]:
        """Configs whose last evaluation failed, each once, with the failure."""
        last: dict[str, Trial] = {}
        for trial in self.trials:
            last[config_key(trial.config)] = trial
        return [t for t in last.values() if not t.evaluation.ok]

    @property
    def evaluated(self) -> int:
        """Distinct configs evaluated."""
        return len({config_key(t.config) for t in self.trials})


class _Clock:
    def __init__(self, max_seconds: float | None):
        self.deadline = None if max_seconds is None else time.monotonic() + max_seconds

    def expired(self) -> bool:
        return self.deadline is not None and time.monotonic() >= self.deadline


def _pick_best(result: TuneResult) -> TuneResult:
    final = result.final_trials()
    result.best = final[0] if final else None
    return result


def _run(name: str, configs: Sequence[Config], evaluate: Evaluate, effort: float,
         clock: _Clock, result: TuneResult | None = None) -> TuneResult:
    result = result or TuneResult(name)
    for config in configs:
        if clock.expired():
            result.stopped_early = True
            break
        result.trials.append(Trial(dict(config), evaluate(dict(config), effort)))
    return result


def exhaustive(space: Sequence[Config], evaluate: Evaluate,
               options: TuneOptions | None = None) -> TuneResult:
    """Measure every config in full; the fastest ok one wins."""
    options = options or TuneOptions()
    return _pick_best(_run("exhaustive", space, evaluate, 1.0, _Clock(options.max_seconds)))


def random(space: Sequence[Config], evaluate: Evaluate,
           options: TuneOptions | None = None) -> TuneResult:
    """Measure ``options.max_evals`` configs drawn without replacement (seeded)."""
    options = options or TuneOptions()
    if options.max_evals is None or options.max_evals < 1:
        raise ValueError(f"random needs options.max_evals >= 1, got {options.max_evals}")
    count = min(options.max_evals, len(space))
    chosen = _random.Random(options.seed).sample(list(space), count)
    return _pick_best(_run("random", chosen, evaluate, 1.0, _Clock(options.max_seconds)))


def halving_schedule(n_configs: int, eta: int, final_keep: int, min_effort: float
                     ) -> list[tuple[int, float]]:
    """(configs measured, effort) per rung: ``n`` configs at the lowest effort, the best
    ``ceil(n / eta)`` at ``eta`` times more, ... ending with at most ``final_keep`` at 1.0."""
    if eta < 2:
        raise ValueError(f"eta must be >= 2, got {eta}")
    counts = [n_configs]
    while counts[-1] > final_keep:
        counts.append(max(final_keep, math.ceil(counts[-1] / eta)))
    rungs = len(counts)
    return [(count, max(min_effort, float(eta) ** (i - rungs + 1)) if i < rungs - 1 else 1.0)
            for i, count in enumerate(counts)]


def successive_halving(space: Sequence[Config], evaluate: Evaluate,
                       options: TuneOptions | None = None) -> TuneResult:
    """Cheap measurements of everything, full ones of the few best (see module doc)."""
    options = options or TuneOptions()
    final_keep = options.final_keep or options.eta
    if final_keep < 1:
        raise ValueError(f"final_keep must be >= 1, got {final_keep}")
    clock = _Clock(options.max_seconds)
    result = TuneResult("successive_halving")
    alive = [dict(c) for c in space]
    for count, effort in halving_schedule(len(alive), options.eta, final_keep,
                                          options.min_effort):
        alive = alive[:count]
        start = len(result.trials)
        _run(result.strategy, alive, evaluate, effort, clock, result)
        if result.stopped_early:
            break
        rung = [t for t in result.trials[start:] if t.evaluation.ok]
        alive = [t.config for t in sorted(rung, key=lambda t: t.median_ms)]
        if not alive:
            break
    return _pick_best(result)


STRATEGIES: dict[str, Callable[..., TuneResult]] = {
    "exhaustive": exhaustive,
    "random": random,
    "successive_halving": successive_halving,
}
