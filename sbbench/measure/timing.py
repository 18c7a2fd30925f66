"""The one timing wrapper every measurement goes through (layer 2; docs/measurement.md).

:func:`time_fn` times a zero-argument closure (setup stays outside it):

1. a first call (compilation, autotuning, allocator) that is timed apart and not sampled;
2. warm-up calls for a time budget (``warmup_ms``);
3. samples for a time budget (``rep_ms``), at least ``min_samples``, at most
   ``max_samples``. Every sample is kept; the summary is the median with the 20th and
   80th percentiles (linear interpolation, numpy's default).

On a GPU each sample is bracketed by CUDA events, the device is synchronised once after
the last sample, and L2 is flushed before each sample by writing a buffer larger than L2
(outside the events, so the flush is not timed: Triton's ``do_bench`` does the same).
On the CPU each sample is ``time.perf_counter_ns`` around one call, or, with
``cpu_clock="thread_time_ns"``, the CPU time of the calling thread (with one torch thread,
the thread that computes: time the process spends preempted by other jobs is not in it).
With ``reference=`` (CPU only) every round times the call and then a fixed reference
closure (the calibration matmul of ``measure.calibration``), so sample *i* of the two
were taken moments apart: their ratio, paired round by round, is what a regression check
compares, since load that moves between the points of a sweep moves both.

Peak memory (CUDA allocator, child-process RSS) is measured in ``sbbench.measure.memory``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

# Peak memory lives in sbbench.measure.memory; these names stay importable from here.
from sbbench.measure.memory import (  # noqa: F401
    cuda_memory_profile,
    cuda_peak_memory,
    process_peak_rss_bytes,
)

_MIB = 1024 * 1024
# Flush buffer: at least this much, and at least twice the L2 (Triton uses 256 MB).
MIN_FLUSH_BYTES = 256 * _MIB
# CPU sample clocks (nanoseconds): wall clock, or CPU time of the calling thread.
CPU_CLOCKS = {"perf_counter_ns": time.perf_counter_ns, "thread_time_ns": time.thread_time_ns}


@dataclass(frozen=True)
class Timing:
    """Every sample of one timed closure and their summary (all times in ms).

    ``n_warmup`` counts the calls before the first sample (the first call included);
    ``timer`` is "cuda_event" or "perf_counter_ns"; ``l2_flushed`` says whether L2 was
    flushed before each sample; ``first_call_ms`` is the first call alone (it includes
    compilation and autotuning; never part of the samples).
    """

    samples_ms: tuple[float, ...]
    median_ms: float
    p20_ms: float
    p80_ms: float
    n_warmup: int
    timer: str
    l2_flushed: bool
    first_call_ms: float | None = None
    reference_samples_ms: tuple[float, ...] = ()  # the reference, paired with samples_ms

    @property
    def n_samples(self) -> int:
        return len(self.samples_ms)

    @classmethod
    def from_samples(cls, samples_ms, *, n_warmup: int, timer: str, l2_flushed: bool,
                     first_call_ms: float | None = None,
                     reference_samples_ms=()) -> Timing:
        samples = tuple(float(s) for s in samples_ms)
        if not samples:
            raise ValueError("a Timing needs at least one sample")
        reference = tuple(float(s) for s in reference_samples_ms)
        if reference and len(reference) != len(samples):
            raise ValueError("reference samples must pair one to one with the samples")
        return cls(samples, quantile(samples, 0.5), quantile(samples, 0.2),
                   quantile(samples, 0.8), n_warmup, timer, l2_flushed, first_call_ms,
                   reference)


def quantile(values, q: float) -> float:
    """The q-quantile (0 <= q <= 1) with linear interpolation between order statistics
    (numpy's default "linear" method)."""
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"q must be in [0, 1], got {q}")
    ordered = sorted(values)
    if not ordered:
        raise ValueError("quantile of no values")
    position = q * (len(ordered) - 1)
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def time_fn(
    fn: Callable[[], object],
    *,
    device="cpu",
    warmup_ms: float = 25.0,
    rep_ms: float = 100.0,
    min_samples: int = 5,
    max_samples: int = 10_000,
    flush_l2: bool = True,
    clock: Callable[[], int] | None = None,
    cpu_clock: str = "perf_counter_ns",
    reference: Callable[[], object] | None = None,
) -> Timing:
    """Time ``fn()`` (a zero-argument closure; its setup is not timed).

    ``device``: "cpu", "cuda", "cuda:1" or a torch.device: where ``fn`` runs. ``clock``
    (CPU only, nanoseconds; default ``time.perf_counter_ns``) exists for tests.
    ``flush_l2`` matters on GPU only (a CPU has no L2 flush here: it reports False).
    ``cpu_clock``: "perf_counter_ns" (wall clock) or "thread_time_ns" (CPU time of this
    thread; see the module doc). ``reference``: a closure timed right after every sample
    (CPU only), returned as ``reference_samples_ms``.
    """
    if min_samples < 1:
        raise ValueError(f"min_samples must be >= 1, got {min_samples}")
    if max_samples < min_samples:
        raise ValueError(f"max_samples ({max_samples}) must be >= min_samples ({min_samples})")
    if warmup_ms < 0 or rep_ms < 0:
        raise ValueError(f"warmup_ms and rep_ms must be >= 0, got {warmup_ms}, {rep_ms}")
    if cpu_clock not in CPU_CLOCKS:
        raise ValueError(f"cpu_clock must be one of {', '.join(CPU_CLOCKS)}, got {cpu_clock!r}")
    if _is_cuda(device):
        if clock is not None or reference is not None:
            raise ValueError("clock= and reference= are for CPU timing; CUDA samples come "
                             "from CUDA events")
        return _time_cuda(fn, device, warmup_ms, rep_ms, min_samples, max_samples, flush_l2)
    # The budgets run on the wall clock (``clock`` when a test gives one).
    return _time_cpu(fn, warmup_ms, rep_ms, min_samples, max_samples,
                     clock or CPU_CLOCKS[cpu_clock], clock or time.perf_counter_ns,
                     cpu_clock, reference)


def _is_cuda(device) -> bool:
    return str(getattr(device, "type", device)).startswith("cuda")


def _time_cpu(fn, warmup_ms, rep_ms, min_samples, max_samples, clock, wall, timer,
              reference) -> Timing:
    start = clock()
    fn()
    first_ns = clock() - start
    if reference is not None:
        reference()

    n_warmup = 1
    budget_ns = warmup_ms * 1e6
    start = wall()
    while wall() - start < budget_ns:
        fn()
        if reference is not None:
            reference()
        n_warmup += 1

    samples_ns: list[int] = []
    reference_ns: list[int] = []
    budget_ns = rep_ms * 1e6
    start = wall()
    while len(samples_ns) < max_samples and (
        len(samples_ns) < min_samples or wall() - start < budget_ns
    ):
        before = clock()
        fn()
        samples_ns.append(clock() - before)
        if reference is not None:
            before = clock()
            reference()
            reference_ns.append(clock() - before)
    return Timing.from_samples([ns / 1e6 for ns in samples_ns], n_warmup=n_warmup,
                               timer=timer, l2_flushed=False,
                               first_call_ms=first_ns / 1e6,
                               reference_samples_ms=[ns / 1e6 for ns in reference_ns])


def flush_buffer_bytes(l2_bytes: int | None) -> int:
    """Size of the buffer written before each GPU sample: > L2, at least 256 MiB."""
    return max(MIN_FLUSH_BYTES, 2 * (l2_bytes or 0))


def _time_cuda(fn, device, warmup_ms, rep_ms, min_samples, max_samples, flush_l2) -> Timing:
    import torch

    device = torch.device(device)
    if device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    with torch.cuda.device(device):
        cache = None
        if flush_l2:
            l2_bytes = getattr(torch.cuda.get_device_properties(device), "L2_cache_size", 0)
            cache = torch.empty(flush_buffer_bytes(l2_bytes) // 4, dtype=torch.int32,
                                device=device)

        def flush() -> None:
            if cache is not None:
                cache.zero_()

        torch.cuda.synchronize(device)
        first_start = time.perf_counter_ns()
        fn()
        torch.cuda.synchronize(device)
        first_ms = (time.perf_counter_ns() - first_start) / 1e6

        # Estimate one call (with its flush, as the samples will run) to turn the time
        # budgets into call counts: the GPU runs asynchronously, so the host cannot
        # watch the clock per call without synchronising every call.
        n_estimate = 5
        begin = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        begin.record()
        for _ in range(n_estimate):
            flush()
            fn()
        end.record()
        torch.cuda.synchronize(device)
        per_call_ms = max(begin.elapsed_time(end) / n_estimate, 1e-6)

        n_extra_warmup = max(0, math.ceil(warmup_ms / per_call_ms) - n_estimate)
        n_samples = min(max_samples, max(min_samples, math.ceil(rep_ms / per_call_ms)))
        for _ in range(n_extra_warmup):
            fn()

        starts = [torch.cuda.Event(enable_timing=True) for _ in range(n_samples)]
        ends = [torch.cuda.Event(enable_timing=True) for _ in range(n_samples)]
        for start_event, end_event in zip(starts, ends, strict=True):
            flush()  # outside the events: the flush is not timed
            start_event.record()
            fn()
            end_event.record()
        torch.cuda.synchronize(device)  # the one synchronisation of the sampling loop
        samples = [s.elapsed_time(e) for s, e in zip(starts, ends, strict=True)]
    return Timing.from_samples(samples, n_warmup=1 + n_estimate + n_extra_warmup,
                               timer="cuda_event", l2_flushed=flush_l2,
                               first_call_ms=first_ms)


def pin_malloc_thresholds() -> bool:
    """Fix glibc malloc's mmap and trim thresholds (at 1 GiB) in this process.

    By default glibc adapts its mmap threshold as the process frees large blocks, so
    whether a method's temporaries (LSH's sorted and gathered copies) come from reused
    heap or from fresh pages -- a few hundred page faults per call, up to +50% time --
    depends on the history of the process: a persistent, per-process bias of lsh and
    scatterbrain timings. Fixed thresholds make every process reuse its heap. Returns
    False where this is not glibc.
    """
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # from glibc's malloc.h
    return bool(mallopt(m_trim_threshold, 1 << 30)) and bool(mallopt(m_mmap_threshold, 1 << 30))
