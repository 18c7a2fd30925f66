"""Sampling for the CI benchmark (``sbbench.sweep.ci_bench``): every point warmed up, then
sampled interleaved, in this process or in a fresh interpreter.

How, and why (measured on a shared 2-vCPU VM at load average 4-8):

- Interleaved sampling: after each closure's first call and warm-up, every round takes
  one sample of every point (the order rotates), so sample *i* of two points are close
  in time and the ratio to the calibration kernel is paired round by round.
- Timer: the CPU time of the computing thread (``time.thread_time_ns``, one torch
  thread). Wall-clock medians of the same point moved 2-3x between runs under load (the
  process is preempted mid-call); thread CPU time moved a few percent.
- glibc's malloc thresholds are pinned (:func:`pin_malloc_thresholds`): with its
  adaptive mmap threshold, lsh and scatterbrain paid a few hundred page faults per call
  in some processes and none in others -- a persistent per-process bias of up to 40%.
- Sampling can run in fresh interpreters (:func:`sample_in_child`; the benchmark uses
  two by default) whose samples are pooled, which averages what per-process bias remains.

``python -m sbbench.sweep.ci_sampling OPTIONS_JSON SECONDS`` is the child's entry: it
prints :func:`sample`'s result as JSON on stdout.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

from sbbench.core.errors import UserError
from sbbench.core.types import Budget, Problem
from sbbench.measure.calibration import CALIBRATION_SIZE, calibration_call
from sbbench.measure.inject import slowed
from sbbench.measure.timing import pin_malloc_thresholds

SHAPES = (Problem(seq_len=256, head_dim=64, batch=1, heads=4),
          Problem(seq_len=512, head_dim=64, batch=1, heads=4))
BUDGETS = (Budget("exact"), Budget("performer", n_features=64),
           Budget("lsh", bucket_size=32, n_hashes=2),
           Budget("scatterbrain", n_features=32, bucket_size=32, n_hashes=1))
SEEDS = (0, 1)
INPUT_KIND, TEMPERATURE = "clustered", 1.0
WORKER_TIMEOUT_S = 300.0
# thread_time_ns: CPU time of this thread (with one torch thread, the thread that
# computes). Time the process spends preempted by other jobs is not in it, which is what
# makes the check usable on a loaded 2-core runner; frequency and cache effects remain,
# and the ratio to the calibration kernel takes out most of the frequency part.
TIMERS = {"thread_time_ns": time.thread_time_ns, "perf_counter_ns": time.perf_counter_ns}


@dataclass
class Options:
    seconds: float = 8.0  # time budget of the interleaved rounds, all processes
    min_rounds: int = 30
    max_rounds: int = 2000
    warmup_ms: float = 50.0
    threads: int = 1
    shapes: tuple[Problem, ...] = SHAPES
    budgets: tuple[Budget, ...] = BUDGETS
    calibration_size: int = CALIBRATION_SIZE
    timer: str = "thread_time_ns"  # or "perf_counter_ns" (wall clock)
    processes: int = 2  # fresh processes sampling one after the other; 0: this process
    inject_slowdown: float = 1.0
    inject_methods: tuple[str, ...] = ()  # empty: every attention method


def check_timer(options: Options) -> None:
    if options.timer not in TIMERS:
        raise UserError(f"timer must be one of {', '.join(TIMERS)}, got {options.timer!r}")


def options_json(options: Options) -> str:
    return json.dumps(asdict(options))


def options_from_json(text: str) -> Options:
    data = json.loads(text)
    data["shapes"] = tuple(Problem(**p) for p in data["shapes"])
    data["budgets"] = tuple(Budget(**b) for b in data["budgets"])
    data["inject_methods"] = tuple(data["inject_methods"])
    return Options(**data)


def inputs(problem: Problem, seed: int):
    """The benchmark's q, k, v of ``problem`` for ``seed``."""
    from sbbench.measure.inputs import make_qkv

    return make_qkv(problem, seed=seed, kind=INPUT_KIND, temperature=TEMPERATURE)


def loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (OSError, AttributeError):
        return None


def _warm_up(fn: Callable[[], object], warmup_ms: float) -> int:
    fn()  # first call: allocations, thread pool
    calls, start = 1, time.perf_counter_ns()
    while time.perf_counter_ns() - start < warmup_ms * 1e6:
        fn()
        calls += 1
    return calls


def sample(options: Options, seconds: float) -> dict:
    """Warm up every point, then sample them interleaved for ``seconds`` (at least
    ``min_rounds`` rounds), in this process. Returns {"points": [{"samples_ns",
    "n_warmup"}, ...] (shapes x budgets, then the calibration matmul), "rounds",
    "seconds", "malloc_pinned"}."""
    import torch

    from sbbench.measure.calls import make_call

    check_timer(options)
    if options.threads:
        torch.set_num_threads(options.threads)
    pinned = pin_malloc_thresholds()
    clock = TIMERS[options.timer]
    fns: list[Callable[[], object]] = []
    for problem in options.shapes:
        q, k, v = inputs(problem, SEEDS[0])
        for budget in options.budgets:
            fn = make_call(budget, q, k, v, generator=torch.Generator().manual_seed(SEEDS[0]),
                           causal=problem.causal, inject=False)
            if not options.inject_methods or budget.method in options.inject_methods:
                fn = slowed(fn, options.inject_slowdown, clock)
            fns.append(fn)
    fns.append(calibration_call(options.calibration_size))
    samples: list[list[int]] = [[] for _ in fns]
    with torch.no_grad():
        warmups = [_warm_up(fn, options.warmup_ms) for fn in fns]
        order = list(range(len(fns)))
        rounds, start = 0, time.perf_counter()
        while rounds < options.max_rounds and (
                rounds < options.min_rounds or time.perf_counter() - start < seconds):
            shift = rounds % len(order)
            for index in order[shift:] + order[:shift]:
                before = clock()
                fns[index]()
                samples[index].append(clock() - before)
            rounds += 1
        elapsed = time.perf_counter() - start
    points = [{"samples_ns": s, "n_warmup": w} for s, w in zip(samples, warmups, strict=True)]
    return {"points": points,
            "rounds": rounds, "seconds": round(elapsed, 3), "malloc_pinned": pinned}


def sample_in_child(options: Options, seconds: float) -> dict:
    """``sample`` in a fresh interpreter: each process has its own memory layout, and
    with it its own small, persistent bias on some points; several processes average
    it out (pyperf does the same)."""
    command = [sys.executable, "-m", "sbbench.sweep.ci_sampling", options_json(options),
               repr(seconds)]
    try:
        done = subprocess.run(command, capture_output=True, text=True,
                              timeout=WORKER_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"benchmark worker ran over {WORKER_TIMEOUT_S:g} s") from None
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-5:]
        raise RuntimeError(f"benchmark worker failed (exit {done.returncode}): "
                           + " | ".join(tail))
    return json.loads(done.stdout)


if __name__ == "__main__":  # the child process of sample_in_child
    print(json.dumps(sample(options_from_json(sys.argv[1]), float(sys.argv[2]))))
