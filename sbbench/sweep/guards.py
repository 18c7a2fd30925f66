"""Checks around one measurement: will the point fit in the device's memory at all, do
the Triton kernels take it on the device, and was its timing disturbed (``Record.noise``).

A point whose modeled working set (``costmodel.working_set_bytes``: inputs, output and the
method's intermediates) exceeds the device's memory is recorded as "oom" without being
run: a grid with a huge ``seq_len`` must not take the machine down trying to allocate it.
The model is a lower bound of what the torch path holds, so only points that cannot fit
are refused; the ones near the limit are still tried (and may still run out of memory).
"""

from __future__ import annotations

import functools
import os

from sbbench.core.types import CENTROID_METHODS
from sbbench.measure import costmodel
from sbbench.sweep.grid import Point

GIB = 1 << 30
# p80 / p20 above this: the samples disagree too much for the median to mean much
SPREAD_LIMIT = 1.5


@functools.lru_cache(maxsize=8)
def device_memory_bytes(torch_device: str, profile_bytes: int | None = None) -> int | None:
    """Memory of the device a sweep measures on: total RAM (``/proc/meminfo``) for the
    CPU, the GPU's total memory for CUDA (the profile's figure when given). None when
    unknown."""
    if torch_device == "cpu":
        try:
            with open("/proc/meminfo", encoding="utf-8") as meminfo:
                for line in meminfo:
                    if line.startswith("MemTotal:"):
                        return int(line.split()[1]) * 1024
        except (OSError, ValueError, IndexError):
            pass
        return profile_bytes
    if profile_bytes:
        return profile_bytes
    try:
        import torch

        return int(torch.cuda.get_device_properties(torch_device).total_memory)
    except Exception:
        return None


def fit_refusal(point: Point, capacity_bytes: int | None) -> str | None:
    """Why ``point`` cannot fit in ``capacity_bytes`` of memory, or None."""
    if not capacity_bytes:
        return None
    needs = costmodel.working_set_bytes(point.problem, point.budget)
    if needs <= capacity_bytes:
        return None
    return (f"does not fit: needs {_gib(needs)} GiB, device has {_gib(capacity_bytes)} GiB "
            f"(modeled working set; not attempted)")


def kernel_refusal(point: Point, spec) -> str | None:
    """Why the Triton kernels refuse a triton ``point`` on the device of profile ``spec``
    (``sbbench.kernels.forward_refusal``: dtype and head size, bucket range, a tile
    config that keep() leaves on the device's architecture), or None. The launch would
    refuse it in the same words; the sweep records it as skipped instead, before
    allocating anything. None for torch points, and where the profile has no GPU
    architecture or triton is not installed (``point.skip_reason`` says why then). Key
    centroids (scatterbrain_centroids) never run there: refused on every device."""
    arch = getattr(spec, "arch", None)
    budget, problem = point.budget, point.problem
    if point.backend == "triton" and budget.method in CENTROID_METHODS:
        return (f"{budget.method} runs on the torch backend only (the Triton kernels "
                f"compute Performer features, not key centroids)")
    if point.backend != "triton" or budget.method == "exact" or not arch:
        return None
    try:
        import torch

        from sbbench.kernels import forward_refusal, limits_for
    except ImportError:
        return None
    limits = limits_for(int("".join(ch for ch in arch if ch.isdigit())))
    reason = forward_refusal(getattr(torch, problem.dtype), problem.head_dim,
                             n_features=budget.n_features, bucket_size=budget.bucket_size,
                             n_hashes=budget.n_hashes, sparse=budget.sparse,
                             causal=problem.causal, limits=limits,
                             sink=budget.sink or 0, window=budget.window or 0)
    return f"the Triton kernels refuse it on {arch}: {reason}" if reason else None


def _gib(n: float) -> str:
    return f"{n / GIB:,.1f}" if n >= GIB / 10 else f"{n / GIB:.2g}"


def noise_flags(p20_ms: float | None, p80_ms: float | None, torch_device: str) -> list[str]:
    """Flags of a timing taken under doubtful conditions: "spread" (p80/p20 above
    SPREAD_LIMIT), "load=<1-min load average>" (above the CPU count, on a CPU run)."""
    flags = []
    if p20_ms and p80_ms and p80_ms / p20_ms > SPREAD_LIMIT:
        flags.append("spread")
    if torch_device == "cpu":
        try:
            load = os.getloadavg()[0]
        except OSError:
            load = None
        if load is not None and load > (os.cpu_count() or 1):
            flags.append(f"load={load:.2f}")
    return flags


def add_flag(noise: str, flag: str) -> str:
    """``noise`` (comma-separated) with ``flag`` added once."""
    flags = [f for f in noise.split(",") if f]
    return ",".join(flags + [flag]) if flag not in flags else noise
