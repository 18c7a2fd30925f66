"""Autotuning (layer 4): search spaces -> static pruning -> strategies -> tuning_configs/.

- :mod:`.strategies`: ``exhaustive``, ``random``, ``successive_halving`` -- plain
  functions ``tune(space, evaluate, options) -> TuneResult``;
- :mod:`.pruning`: static pruning checks (the kernel's ``keep()``, ahead-of-time
  compilation against the device's shared memory / register limits and spills);
- :mod:`.evaluators`: measured (correctness check, then ``timing.time_fn``) and
  simulated (replays recorded timings) evaluators;
- :mod:`.cache`: the JSON-lines tuning cache that makes tuning resumable;
- :mod:`.tuner`: one (target, shape bucket) tuned end to end, and its file entry;
- :mod:`.cpu` / :mod:`.gpu`: the torch path's tunables and the Triton kernels' tiles;
- :mod:`.run`: a whole ``sbbench tune`` run.
"""

from sbbench.autotune.cache import CachedEvaluator, TuneCache
from sbbench.autotune.evaluators import (
    MeasuredEvaluator,
    SimulatedEvaluator,
    load_recorded,
    output_mismatch,
)
from sbbench.autotune.pruning import PruneResult, keep_check, prune, resource_check, resource_reason
from sbbench.autotune.strategies import (
    STRATEGIES,
    Evaluation,
    Trial,
    TuneOptions,
    TuneResult,
    exhaustive,
    random,
    successive_halving,
)

__all__ = [
    "STRATEGIES",
    "CachedEvaluator",
    "Evaluation",
    "MeasuredEvaluator",
    "PruneResult",
    "SimulatedEvaluator",
    "Trial",
    "TuneCache",
    "TuneOptions",
    "TuneResult",
    "exhaustive",
    "keep_check",
    "load_recorded",
    "output_mismatch",
    "prune",
    "random",
    "resource_check",
    "resource_reason",
    "successive_halving",
]
