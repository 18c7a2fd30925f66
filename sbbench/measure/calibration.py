"""The calibration kernel: a float32 matmul of fixed size, timed beside the methods so a
regression check can compare times *relative to it* (layer 2; docs/measurement.md).

A uniformly slower or busier machine slows the calibration kernel too, so the ratio of
a method's time to it moves much less than either time. The CI benchmark samples it once
per round with every point; a CPU sweep samples it right after every sample of every
point (``timing.time_fn(reference=...)``), so each point carries its own pairing.
"""

from __future__ import annotations

from collections.abc import Callable

CALIBRATION_SIZE = 384  # matmul [n, n] @ [n, n]: ~2 ms on one core, like the methods


def calibration_call(size: int = CALIBRATION_SIZE) -> Callable[[], object]:
    """A closure computing ``a @ b`` for fixed [size, size] float32 a, b (seeds 0 and 1)."""
    import torch

    if size < 1:
        raise ValueError(f"calibration size must be >= 1, got {size}")
    a = torch.randn(size, size, generator=torch.Generator().manual_seed(0))
    b = torch.randn(size, size, generator=torch.Generator().manual_seed(1))
    return lambda: torch.mm(a, b)


def sweep_cpu_clock(requested: str, torch_threads: int) -> str:
    """The CPU sample clock of a sweep: "thread_time_ns" under ``auto`` when torch computes
    on one thread (then the calling thread's CPU time is the call's, without the time the
    process spent preempted by other jobs), else the wall clock "perf_counter_ns"
    (several threads: the calling thread's CPU time would miss the others' work)."""
    if requested == "auto":
        return "thread_time_ns" if torch_threads == 1 else "perf_counter_ns"
    if requested not in ("perf_counter_ns", "thread_time_ns"):
        raise ValueError(f"cpu clock must be auto, perf_counter_ns or thread_time_ns, "
                         f"got {requested!r}")
    return requested
