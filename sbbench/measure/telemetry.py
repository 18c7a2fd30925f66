"""Power and energy of a measured window (layer 2; docs/measurement.md).

Telemetry is an observer (after kernel_tuner's ``observers/nvml.py``) with three hooks:
``start()`` before the measured window, ``sample()`` during it (a thread calls it),
``stop(n_calls, window_s)`` after it, which returns a :class:`TelemetryResult`.

- :class:`NvmlObserver`: energy is the difference of ``nvmlDeviceGetTotalEnergyConsumption``
  (mJ) over the window divided by the number of calls; the counter updates only every
  ~100 ms, so a window shorter than 1 s is flagged (``window_ok=False``). A thread polls
  instant power, SM and memory clocks, temperature and the clock-event (throttle)
  reasons during the window.
- :class:`NullObserver`: CPU, or no NVML. Every number is None and ``telemetry`` says why;
  it never invents a number.

:func:`measure_energy` runs a closure back to back for at least the window and returns
the observer's result. What a row was measured on (:func:`device_state`) lives in
``sbbench.measure.device_state``, the NVML access both share in ``sbbench.measure.nvml``;
both are re-exported here, as are ``versions`` and ``git_revision`` (from
``sbbench.core.provenance``). Nothing here changes clocks, power limits or persistence mode.
"""

from __future__ import annotations

import functools
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
from sbbench.measure.device_state import device_state  # noqa: F401 - re-exported
from sbbench.measure.nvml import (  # noqa: F401 - re-exported
    CLOCK_EVENT_REASONS,
    THROTTLING,
    TelemetryUnavailable,
    clock_event_reasons,
    cuda_index,
    decode_clock_event_reasons,
    load_nvml,
    nvml_error_text,
    nvml_handle,
)

# The energy counter updates about every 100 ms: a window under 1 s is flagged.
MIN_ENERGY_WINDOW_S = 1.0
DEFAULT_POLL_INTERVAL_S = 0.02


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


# ---- NVML ------------------------------------------------------------------------------
class NvmlObserver:
    """Energy counter plus a sampling thread on one GPU (``device_index`` = torch's CUDA
    index). Raises TelemetryUnavailable if NVML cannot observe it."""

    def __init__(self, device_index: int = 0, *, interval_s: float = DEFAULT_POLL_INTERVAL_S):
        self.device_index = device_index
        self.interval_s = interval_s
        self._nvml = load_nvml()
        self._handle = nvml_handle(self._nvml, device_index)
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
            note = f"no energy counter: {nvml_error_text(err)}"
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
            ("reasons", lambda: clock_event_reasons(nvml, handle)),
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


def make_observer(device="cpu", *, interval_s: float = DEFAULT_POLL_INTERVAL_S):
    """NvmlObserver for a CUDA device when NVML can observe it, else a NullObserver
    whose reason says why (a CPU, no pynvml, no driver, ...)."""
    index = cuda_index(device)
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
