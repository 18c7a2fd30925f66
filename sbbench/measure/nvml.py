"""NVML access shared by the telemetry observer and the device-state reader.

pynvml is imported lazily (machines without nvidia-ml-py import this module fine); every
helper turns NVML's failures into :class:`TelemetryUnavailable` or None, never a crash.
Nothing here changes clocks, power limits or persistence mode.
"""

from __future__ import annotations

import importlib

# nvmlClocksEventReason* bits (nvml.h; stable values, named as nvidia-ml-py names them).
CLOCK_EVENT_REASONS: dict[int, str] = {
    0x1: "gpu_idle",
    0x2: "applications_clocks_setting",
    0x4: "sw_power_cap",
    0x8: "hw_slowdown",
    0x10: "sync_boost",
    0x20: "sw_thermal_slowdown",
    0x40: "hw_thermal_slowdown",
    0x80: "hw_power_brake_slowdown",
    0x100: "display_clock_setting",
    0x200: "board_limit",  # legacy throttle-reason bits, still reported by some drivers
    0x400: "reliability",
}
# Reasons that mean the clocks were held down while the work ran (the others are idle
# or configuration states): a row that shows one of these ran slower than it could.
THROTTLING = frozenset({"sw_power_cap", "hw_slowdown", "sw_thermal_slowdown",
                        "hw_thermal_slowdown", "hw_power_brake_slowdown", "board_limit",
                        "reliability"})


def decode_clock_event_reasons(mask: int) -> tuple[str, ...]:
    """Bit mask from nvmlDeviceGetCurrentClocksEventReasons -> sorted reason names;
    unknown bits become "unknown_0x..."."""
    names = []
    for bit in range(mask.bit_length()):
        value = 1 << bit
        if mask & value:
            names.append(CLOCK_EVENT_REASONS.get(value, f"unknown_{value:#x}"))
    return tuple(sorted(names))



class TelemetryUnavailable(RuntimeError):
    """NVML cannot observe this device; the message is the reason."""



def load_nvml():
    """The initialised pynvml module, or TelemetryUnavailable saying why not."""
    try:
        nvml = importlib.import_module("pynvml")
    except ImportError:
        raise TelemetryUnavailable("pynvml (nvidia-ml-py) is not installed") from None
    try:
        nvml.nvmlInit()
    except Exception as err:  # NVMLError_LibraryNotFound, DriverNotLoaded, ...
        raise TelemetryUnavailable(f"NVML init failed: {nvml_error_text(err)}") from None
    return nvml


def nvml_error_text(err: Exception) -> str:
    text = str(err) or type(err).__name__
    return text.replace("\n", " ")


def nvml_text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def cuda_uuid(cuda_index: int) -> str | None:
    """NVML-style UUID ("GPU-...") of torch's CUDA device, None if torch cannot say."""
    try:
        import torch

        if not torch.cuda.is_available():
            return None
        uuid = str(torch.cuda.get_device_properties(cuda_index).uuid)
    except Exception:
        return None
    return uuid if uuid.startswith("GPU-") else f"GPU-{uuid}"


def nvml_handle(nvml, cuda_index: int):
    """NVML handle of torch's CUDA device ``cuda_index``: by UUID (CUDA and NVML order
    GPUs differently, and CUDA_VISIBLE_DEVICES renumbers them), else by index."""
    uuid = cuda_uuid(cuda_index)
    if uuid is not None:
        try:
            return nvml.nvmlDeviceGetHandleByUUID(uuid)
        except Exception:
            pass
    try:
        return nvml.nvmlDeviceGetHandleByIndex(cuda_index)
    except Exception as err:
        raise TelemetryUnavailable(f"NVML has no device {cuda_index}: "
                                   f"{nvml_error_text(err)}") from None


def clock_event_reasons(nvml, handle) -> int:
    getter = getattr(nvml, "nvmlDeviceGetCurrentClocksEventReasons", None) or \
        nvml.nvmlDeviceGetCurrentClocksThrottleReasons  # older nvidia-ml-py
    return int(getter(handle))


def cuda_index(device) -> int | None:
    """torch CUDA index of a device spec ("cuda", "cuda:1", torch.device), None for CPU."""
    text = str(device)
    if not text.startswith("cuda"):
        return None
    if ":" in text:
        return int(text.split(":", 1)[1])
    try:
        import torch

        return torch.cuda.current_device() if torch.cuda.is_available() else 0
    except Exception:
        return 0
