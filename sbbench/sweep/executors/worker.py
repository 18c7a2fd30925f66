"""What runs on a Ray worker: the checks before measuring (device, code version), the
task that measures a batch of points, and the Ray resources a task asks for."""

from __future__ import annotations

import functools
import os
import socket
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from sbbench.core.devices import DeviceSpec, resolve_gpu
from sbbench.core.errors import UserError
from sbbench.core.provenance import code_version
from sbbench.core.record import Record
from sbbench.measure.timing import pin_malloc_thresholds
from sbbench.sweep.grid import Point

if TYPE_CHECKING:
    from sbbench.sweep.runner import Settings

# Ray's accelerator type of each GPU profile: what Ray detects from the NVML name on its
# own (ray/_private/accelerators/nvidia_gpu.py: "NVIDIA A100-SXM4-80GB" -> "A100",
# "NVIDIA H100 PCIe" -> "H100", "NVIDIA GeForce RTX 4090" -> "GeForce-RTX-4090").
RAY_ACCELERATOR_TYPES = {
    "a100-40gb": "A100", "a100-80gb": "A100", "h100-sxm": "H100", "h100-pcie": "H100",
    "h200": "H200", "l4": "L4", "l40s": "L40S", "a10g": "A10G", "v100": "V100",
    "rtx4090": "GeForce-RTX-4090",
}
# Ray's coarse types above do not tell the two A100s, or the two H100s, apart. Nodes can
# advertise a finer label by hand (``ray start --resources='{"accelerator_type:A100-80G":
# 1}'``; A100-40G / A100-80G are Ray's own constants); a sweep asks for the fine label
# whenever some node advertises it.
RAY_FINE_ACCELERATOR_TYPES = {
    "a100-40gb": "A100-40G", "a100-80gb": "A100-80G", "h100-sxm": "H100-SXM",
    "h100-pcie": "H100-PCIE",
}


@functools.lru_cache(maxsize=1)
def _own_code_version() -> str:
    return code_version()


def worker_info() -> dict:
    """Who measured: host, Ray node, process and sbbench code version of this worker."""
    info = {"hostname": socket.gethostname(), "pid": os.getpid(),
            "code_version": _own_code_version()}
    try:
        import ray

        if ray.is_initialized():
            info["ray_node_id"] = ray.get_runtime_context().get_node_id()
    except ImportError:
        pass
    return info


def device_refusal(spec: DeviceSpec) -> str | None:
    """Why this machine must not measure ``spec`` (the local sweep's rule), or None.

    Every machine has a CPU; a GPU profile must be the local device."""
    if spec.kind == "cpu":
        return None
    try:
        resolve_gpu(spec.name)
    except UserError as err:
        return f"{socket.gethostname()} refused: {err}"
    return None


@functools.lru_cache(maxsize=4)
def _measured_cpu(threads: int) -> DeviceSpec:
    from sbbench.core.devices import measure_cpu

    return measure_cpu()


def measure_batch(points_json: list[str], settings: Settings, spec: DeviceSpec,
                  exact_ms: float | None, options: dict,
                  measure: Callable[..., Record] | None = None) -> Iterator[dict]:
    """A Ray task: measure points of one shape on this worker, yielding one message each.

    points_json: ``Point.to_json()`` of each point; exact_ms: exact's median on this shape
    if the driver knows it; options: ``allow_mixed_versions``, ``measure_cpu`` (measure a
    CPU's peaks here; cached per worker process); measure: ``point.measure_point`` or a
    stand-in with its signature (tests). Yields ``{"kind": "refused" | "mismatch",
    "worker", ...}`` and stops, or ``{"kind": "record", "index", "record", "worker"}`` for
    each point in order.
    """
    import torch

    from sbbench.measure.memory import MemoryServer
    from sbbench.measure.telemetry import device_state, make_observer
    from sbbench.measure.telemetry import versions as read_versions
    from sbbench.sweep import point as sweep_point

    worker = worker_info()
    reason = device_refusal(spec)
    if reason:
        yield {"kind": "refused", "reason": reason, "worker": worker}
        return
    if (not options.get("allow_mixed_versions")
            and worker["code_version"] != settings.code_version):
        yield {"kind": "mismatch", "worker": worker}
        return
    measure = measure or sweep_point.measure_point
    if settings.num_threads:
        torch.set_num_threads(settings.num_threads)
    if settings.torch_device == "cpu":
        pin_malloc_thresholds()  # no per-process malloc bias (measure.timing)
    if spec.kind == "cpu" and options.get("measure_cpu"):
        spec = _measured_cpu(torch.get_num_threads())
    observer = make_observer(settings.torch_device) if settings.measure_energy else None
    versions = dict(read_versions())
    state_fn = lambda: device_state(settings.torch_device)  # noqa: E731
    references = sweep_point.References(settings)
    memory_server = (MemoryServer() if settings.measure_memory
                     and settings.torch_device == "cpu" else None)
    try:
        for index, text in enumerate(points_json):
            point = Point.from_json(text)
            record = measure(point, settings, spec, observer, exact_ms=exact_ms,
                             state_fn=state_fn, versions=versions,
                             memory_server=memory_server, references=references)
            if point.budget.method == "exact" and record.status == "ok" \
                    and record.time_median_ms:
                exact_ms = record.time_median_ms
            record.device_state["worker"] = worker
            yield {"kind": "record", "index": index, "record": record.as_dict(),
                   "worker": worker}
    finally:
        if memory_server is not None:
            memory_server.close()


def call_on_device(fn: Callable[[DeviceSpec], object], spec: DeviceSpec,
                   driver_code_version: str, allow_mixed_versions: bool) -> dict:
    """A Ray task: ``fn(spec)`` on this worker after the device and version checks."""
    worker = worker_info()
    reason = device_refusal(spec)
    if reason:
        return {"kind": "refused", "reason": reason, "worker": worker}
    if not allow_mixed_versions and worker["code_version"] != driver_code_version:
        return {"kind": "mismatch", "worker": worker}
    return {"kind": "result", "value": fn(spec), "worker": worker}

def task_options(spec: DeviceSpec, settings: Settings,
                 cluster_resources: dict | None = None) -> dict:
    """Ray resources of one task measuring on ``spec``: one GPU of the profile's type, or
    CPUs. ``cluster_resources`` (``ray.cluster_resources()``) picks a fine accelerator
    label (A100-80G) over the coarse one (A100) when some node advertises it."""
    if spec.kind == "cpu":
        return {"num_cpus": settings.num_threads or 1, "num_gpus": 0}
    return {"num_cpus": 1, "num_gpus": 1,
            "accelerator_type": accelerator_type(spec, cluster_resources)}


def accelerator_type(spec: DeviceSpec, cluster_resources: dict | None = None) -> str:
    """The Ray accelerator type a task for GPU profile ``spec`` asks for."""
    fine = RAY_FINE_ACCELERATOR_TYPES.get(spec.name)
    if fine and cluster_resources and f"accelerator_type:{fine}" in cluster_resources:
        return fine
    if spec.name not in RAY_ACCELERATOR_TYPES:
        raise UserError(f"device profile {spec.name} has no Ray accelerator type; add it to "
                        f"sbbench.sweep.executors.RAY_ACCELERATOR_TYPES (known: "
                        f"{', '.join(sorted(RAY_ACCELERATOR_TYPES))})")
    return RAY_ACCELERATOR_TYPES[spec.name]
