"""The state of the device a row was measured on (read-only).

GPU: what torch and NVML say (name, UUID, driver, clocks, power, temperature, memory,
clock-event reasons); CPU: model, cores, torch threads.
"""

from __future__ import annotations

import os
import platform

from sbbench.core.provenance import cpu_model_name, cuda_version_text
from sbbench.measure.nvml import (
    TelemetryUnavailable,
    clock_event_reasons,
    cuda_index,
    decode_clock_event_reasons,
    load_nvml,
    nvml_handle,
    nvml_text,
)


def _cpu_state() -> dict:
    import torch

    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = os.cpu_count()
    return {
        "kind": "cpu",
        "name": cpu_model_name(),
        "cpu_count": os.cpu_count(),
        "usable_cores": usable,
        "torch_threads": torch.get_num_threads(),
        "machine": platform.machine(),
    }


def _nvml_state(index: int) -> dict:
    """Everything NVML says about device ``index``; missing readings are left out."""
    try:
        nvml = load_nvml()
        handle = nvml_handle(nvml, index)
    except TelemetryUnavailable as err:
        return {"telemetry": f"unavailable: {err}"}
    clock_sm = getattr(nvml, "NVML_CLOCK_SM", 1)
    clock_mem = getattr(nvml, "NVML_CLOCK_MEM", 2)
    readers = {
        "name": lambda: nvml_text(nvml.nvmlDeviceGetName(handle)),
        "uuid": lambda: nvml_text(nvml.nvmlDeviceGetUUID(handle)),
        "driver_version": lambda: nvml_text(nvml.nvmlSystemGetDriverVersion()),
        "cuda_driver_version": lambda: cuda_version_text(
            nvml.nvmlSystemGetCudaDriverVersion()),
        "sm_clock_mhz": lambda: nvml.nvmlDeviceGetClockInfo(handle, clock_sm),
        "mem_clock_mhz": lambda: nvml.nvmlDeviceGetClockInfo(handle, clock_mem),
        "max_sm_clock_mhz": lambda: nvml.nvmlDeviceGetMaxClockInfo(handle, clock_sm),
        "max_mem_clock_mhz": lambda: nvml.nvmlDeviceGetMaxClockInfo(handle, clock_mem),
        "power_limit_w": lambda: nvml.nvmlDeviceGetEnforcedPowerLimit(handle) / 1000.0,
        "power_w": lambda: nvml.nvmlDeviceGetPowerUsage(handle) / 1000.0,
        "temperature_c": lambda: nvml.nvmlDeviceGetTemperature(
            handle, getattr(nvml, "NVML_TEMPERATURE_GPU", 0)),
        "persistence_mode": lambda: bool(nvml.nvmlDeviceGetPersistenceMode(handle)),
        "memory_used_bytes": lambda: int(nvml.nvmlDeviceGetMemoryInfo(handle).used),
        "memory_total_bytes": lambda: int(nvml.nvmlDeviceGetMemoryInfo(handle).total),
        "clock_event_reasons": lambda: list(decode_clock_event_reasons(
            clock_event_reasons(nvml, handle))),
    }
    state = {"telemetry": "nvml"}
    for key, read in readers.items():
        try:
            state[key] = read()
        except Exception:  # not supported on this GPU / driver: leave it out
            pass
    return state


def device_state(device="cpu") -> dict:
    """The state to record next to a row.

    GPU: name, UUID, driver and CUDA versions, current and max clocks, power limit and
    draw, temperature, persistence mode, NVML memory used, clock-event reasons (from NVML
    where available), compute capability and torch's view. CPU: model, cores, torch
    threads. Read-only: nothing here changes the device.
    """
    index = cuda_index(device)
    if index is None:
        return _cpu_state()
    import torch

    state: dict = {"kind": "cuda", "cuda_index": index}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(index)
        state.update(name=props.name, compute_capability=f"{props.major}.{props.minor}",
                     sm_count=props.multi_processor_count,
                     torch_total_memory_bytes=props.total_memory,
                     cuda_runtime_version=torch.version.cuda)
    for key, value in _nvml_state(index).items():
        state.setdefault(key, value)  # torch's name wins; NVML adds the rest
    return state
