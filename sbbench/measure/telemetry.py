"""Power, energy and device state (layer 2; MEASUREMENT.md "Energy and power").

Telemetry is an observer (STYLE.md 9, after kernel_tuner's ``observers/nvml.py``) with
three hooks: ``start()`` before the measured window, ``sample()`` during it (a thread
calls it), ``stop(n_calls, window_s)`` after it, which returns a :class:`TelemetryResult`.

- :class:`NvmlObserver`: energy is the difference of ``nvmlDeviceGetTotalEnergyConsumption``
  (mJ) over the window divided by the number of calls; the counter updates only every
  ~100 ms, so a window shorter than 1 s is flagged (``window_ok=False``). A thread polls
  instant power, SM and memory clocks, temperature and the clock-event (throttle)
  reasons during the window.
- :class:`NullObserver`: CPU, or no NVML. Every number is None and ``telemetry`` says why;
  it never invents a number.

:func:`measure_energy` runs a closure back to back for at least the window and returns
the observer's result. :func:`device_state` and :func:`versions` record what a row was
measured on. Nothing here changes clocks, power limits or persistence mode.
"""

from __future__ import annotations

import functools
import importlib
import os
import platform
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from sbbench.core.provenance import (  # noqa: F401 - re-exported
    cuda_version_text,
    git_revision,
    package_version,
    versions,
)

# The energy counter updates about every 100 ms: a window under 1 s is flagged.
MIN_ENERGY_WINDOW_S = 1.0
DEFAULT_POLL_INTERVAL_S = 0.02

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


@dataclass
class TelemetryResult:
    """What an observer saw over one window of back-to-back calls.

    ``energy_j`` is per call; ``telemetry`` is "nvml" or "unavailable: <reason>";
    ``window_ok`` is False for windows shorter than MIN_ENERGY_WINDOW_S (the energy
    is then coarse). ``notes`` lists partial failures (e.g. no energy counter).
    """

    energy_j: float | None
    avg_power_w: float | None
    max_power_w: float | None
    sm_clock_mhz: float | None
    mem_clock_mhz: float | None
    temperature_start_c: float | None
    temperature_end_c: float | None
    throttle_reasons: tuple[str, ...]
    window_s: float
    window_ok: bool
    telemetry: str
    n_calls: int = 0
    n_samples: int = 0
    notes: tuple[str, ...] = ()

    @property
    def throttled(self) -> bool:
        return bool(THROTTLING.intersection(self.throttle_reasons))

    def summary(self) -> str:
        """One line for a row's telemetry column: the source plus any warnings."""
        parts = [self.telemetry]
        if not self.window_ok:
            parts.append(f"short window {self.window_s:.2f} s < {MIN_ENERGY_WINDOW_S:g} s")
        if self.throttled:
            parts.append("throttled: " + ",".join(sorted(THROTTLING.intersection(
                self.throttle_reasons))))
        parts.extend(self.notes)
        return "; ".join(parts)


class TelemetryUnavailable(RuntimeError):
    """NVML cannot observe this device; the message is the reason."""


# ---- NVML ------------------------------------------------------------------------------

def _load_nvml():
    """The initialised pynvml module, or TelemetryUnavailable saying why not."""
    try:
        nvml = importlib.import_module("pynvml")
    except ImportError:
        raise TelemetryUnavailable("pynvml (nvidia-ml-py) is not installed") from None
    try:
        nvml.nvmlInit()
    except Exception as err:  # NVMLError_LibraryNotFound, DriverNotLoaded, ...
        raise TelemetryUnavailable(f"NVML init failed: {_nvml_error_text(err)}") from None
    return nvml


def _nvml_error_text(err: Exception) -> str:
    text = str(err) or type(err).__name__
    return text.replace("\n", " ")


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _cuda_uuid(cuda_index: int) -> str | None:
    """NVML-style UUID ("GPU-...") of torch's CUDA device, None if torch cannot say."""
    try:
        import torch

        if not torch.cuda.is_available():
            return None
        uuid = str(torch.cuda.get_device_properties(cuda_index).uuid)
    except Exception:
        return None
    return uuid if uuid.startswith("GPU-") else f"GPU-{uuid}"


def _nvml_handle(nvml, cuda_index: int):
    """NVML handle of torch's CUDA device ``cuda_index``: by UUID (CUDA and NVML order
    GPUs differently, and CUDA_VISIBLE_DEVICES renumbers them), else by index."""
    uuid = _cuda_uuid(cuda_index)
    if uuid is not None:
        try:
            return nvml.nvmlDeviceGetHandleByUUID(uuid)
        except Exception:
            pass
    try:
        return nvml.nvmlDeviceGetHandleByIndex(cuda_index)
    except Exception as err:
        raise TelemetryUnavailable(f"NVML has no device {cuda_index}: "
                                   f"{_nvml_error_text(err)}") from None


def _clock_event_reasons(nvml, handle) -> int:
    getter = getattr(nvml, "nvmlDeviceGetCurrentClocksEventReasons", None) or \
        nvml.nvmlDeviceGetCurrentClocksThrottleReasons  # older nvidia-ml-py
    return int(getter(handle))


class NvmlObserver:
    """Energy counter plus a sampling thread on one GPU (``device_index`` = torch's CUDA
    index). Raises TelemetryUnavailable if NVML cannot observe it."""

    def __init__(self, device_index: int = 0, *, interval_s: float = DEFAULT_POLL_INTERVAL_S):
        self.device_index = device_index
        self.interval_s = interval_s
        self._nvml = _load_nvml()
        self._handle = _nvml_handle(self._nvml, device_index)
        self._clock_sm = getattr(self._nvml, "NVML_CLOCK_SM", 1)
        self._clock_mem = getattr(self._nvml, "NVML_CLOCK_MEM", 2)
        self._temp_gpu = getattr(self._nvml, "NVML_TEMPERATURE_GPU", 0)
        self._reset()

    @property
    def default_sync(self) -> Callable[[], None] | None:
        """torch.cuda.synchronize on this device: measure_energy's default ``sync``."""
        try:
            import torch

            if torch.cuda.is_available():
                return functools.partial(torch.cuda.synchronize, self.device_index)
        except ImportError:
            pass
        return None

    def _reset(self) -> None:
        self._power_w: list[float] = []
        self._sm_mhz: list[float] = []
        self._mem_mhz: list[float] = []
        self._reasons = 0
        self._notes: list[str] = []
        self._energy_start_mj: int | None = None
        self._temperature_start: float | None = None
        self._stop_event = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def _read_energy_mj(self) -> int | None:
        try:
            return int(self._nvml.nvmlDeviceGetTotalEnergyConsumption(self._handle))
        except Exception as err:  # pre-Volta GPUs, some virtualised ones
            note = f"no energy counter: {_nvml_error_text(err)}"
            if note not in self._notes:
                self._notes.append(note)
            return None

    def _read_temperature(self) -> float | None:
        try:
            return float(self._nvml.nvmlDeviceGetTemperature(self._handle, self._temp_gpu))
        except Exception:
            return None

    def start(self) -> None:
        """Read the energy counter and temperature, start the sampling thread."""
        self._reset()
        self._temperature_start = self._read_temperature()
        self._energy_start_mj = self._read_energy_mj()
        self._thread = threading.Thread(target=self._poll, name="sbbench-nvml", daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        while not self._stop_event.is_set():
            self.sample()
            self._stop_event.wait(self.interval_s)

    def sample(self) -> None:
        """One reading of power, clocks and clock-event reasons (the thread calls it)."""
        nvml, handle = self._nvml, self._handle
        readings = {}
        for key, read in (
            ("power", lambda: nvml.nvmlDeviceGetPowerUsage(handle) / 1000.0),  # mW -> W
            ("sm", lambda: nvml.nvmlDeviceGetClockInfo(handle, self._clock_sm)),
            ("mem", lambda: nvml.nvmlDeviceGetClockInfo(handle, self._clock_mem)),
            ("reasons", lambda: _clock_event_reasons(nvml, handle)),
        ):
            try:
                readings[key] = read()
            except Exception:
                readings[key] = None
        with self._lock:
            if readings["power"] is not None:
                self._power_w.append(float(readings["power"]))
            if readings["sm"] is not None:
                self._sm_mhz.append(float(readings["sm"]))
            if readings["mem"] is not None:
                self._mem_mhz.append(float(readings["mem"]))
            if readings["reasons"] is not None:
                self._reasons |= int(readings["reasons"])

    def stop(self, n_calls: int, window_s: float) -> TelemetryResult:
        """Stop the thread, read the counter again -> the window's result."""
        if self._thread is not None:
            self._stop_event.set()
            self._thread.join()
        self.sample()  # at least one sample, even for a window shorter than the interval
        energy_end = self._read_energy_mj()
        energy_j = None
        if self._energy_start_mj is not None and energy_end is not None and n_calls > 0:
            delta_mj = energy_end - self._energy_start_mj
            if delta_mj > 0:  # 0: the counter did not tick in the window; < 0: it wrapped
                energy_j = delta_mj / 1000.0 / n_calls
            else:
                self._notes.append("energy counter did not advance")
        with self._lock:
            power, sm, mem = list(self._power_w), list(self._sm_mhz), list(self._mem_mhz)
            reasons = self._reasons
        return TelemetryResult(
            energy_j=energy_j,
            avg_power_w=statistics.fmean(power) if power else None,
            max_power_w=max(power) if power else None,
            sm_clock_mhz=statistics.median(sm) if sm else None,
            mem_clock_mhz=statistics.median(mem) if mem else None,
            temperature_start_c=self._temperature_start,
            temperature_end_c=self._read_temperature(),
            throttle_reasons=decode_clock_event_reasons(reasons),
            window_s=window_s,
            window_ok=window_s >= MIN_ENERGY_WINDOW_S,
            telemetry="nvml",
            n_calls=n_calls,
            n_samples=len(power),
            notes=tuple(self._notes),
        )


class NullObserver:
    """Observes nothing and says why: every number None, ``telemetry="unavailable: ..."``."""

    default_sync = None

    def __init__(self, reason: str):
        self.reason = reason

    def start(self) -> None:
        pass

    def sample(self) -> None:
        pass

    def stop(self, n_calls: int, window_s: float) -> TelemetryResult:
        return TelemetryResult(
            energy_j=None, avg_power_w=None, max_power_w=None, sm_clock_mhz=None,
            mem_clock_mhz=None, temperature_start_c=None, temperature_end_c=None,
            throttle_reasons=(), window_s=window_s,
            window_ok=window_s >= MIN_ENERGY_WINDOW_S,
            telemetry=f"unavailable: {self.reason}", n_calls=n_calls,
        )


def _cuda_index(device) -> int | None:
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


def make_observer(device="cpu", *, interval_s: float = DEFAULT_POLL_INTERVAL_S):
    """NvmlObserver for a CUDA device when NVML can observe it, else a NullObserver
    whose reason says why (a CPU, no pynvml, no driver, ...)."""
    index = _cuda_index(device)
    if index is None:
        return NullObserver(f"{device} device: NVML observes NVIDIA GPUs only")
    try:
        return NvmlObserver(index, interval_s=interval_s)
    except TelemetryUnavailable as err:
        return NullObserver(str(err))


def measure_energy(
    fn: Callable[[], object],
    observer,
    *,
    min_window_s: float = MIN_ENERGY_WINDOW_S,
    sync: Callable[[], object] | None = None,
    clock: Callable[[], float] = time.perf_counter,
) -> TelemetryResult:
    """Run ``fn()`` back to back for at least ``min_window_s`` under ``observer``.

    ``sync`` (default: the observer's ``default_sync``, torch.cuda.synchronize for an
    NvmlObserver) runs before the window opens and before it closes, so queued GPU work
    falls inside the window. The result's energy is per call; a window shorter than
    MIN_ENERGY_WINDOW_S is flagged. ``clock`` (seconds) exists for tests.
    """
    if min_window_s <= 0:
        raise ValueError(f"min_window_s must be > 0, got {min_window_s}")
    sync = sync if sync is not None else getattr(observer, "default_sync", None)
    if sync is not None:
        sync()
    observer.start()
    n_calls = 0
    start = clock()
    try:
        while True:
            fn()
            n_calls += 1
            if clock() - start >= min_window_s:
                break
        if sync is not None:
            sync()
    finally:
        window_s = clock() - start
        result = observer.stop(n_calls, window_s)
    return result


# ---- device state and versions ---------------------------------------------------------

def _cpu_state() -> dict:
    import torch

    from sbbench.core.devices import cpu_model_name

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
        nvml = _load_nvml()
        handle = _nvml_handle(nvml, index)
    except TelemetryUnavailable as err:
        return {"telemetry": f"unavailable: {err}"}
    clock_sm = getattr(nvml, "NVML_CLOCK_SM", 1)
    clock_mem = getattr(nvml, "NVML_CLOCK_MEM", 2)
    readers = {
        "name": lambda: _text(nvml.nvmlDeviceGetName(handle)),
        "uuid": lambda: _text(nvml.nvmlDeviceGetUUID(handle)),
        "driver_version": lambda: _text(nvml.nvmlSystemGetDriverVersion()),
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
            _clock_event_reasons(nvml, handle))),
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
    index = _cuda_index(device)
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
