"""Telemetry with pynvml mocked (kernel_tuner's test_nvml_mocked.py is the model): energy
per call, the 1 s window rule, throttle decoding, the null observer, device state."""

from __future__ import annotations

import sys
import types

import pytest

from sbbench.measure import telemetry
from sbbench.measure.telemetry import (
    NullObserver,
    NvmlObserver,
    decode_clock_event_reasons,
    device_state,
    make_observer,
    measure_energy,
    versions,
)


class FakeNvmlError(Exception):
    pass


def fake_nvml(**overrides) -> types.ModuleType:
    """A stand-in for the pynvml module: one H100 whose counters the test controls."""
    nvml = types.ModuleType("pynvml")
    nvml.state = types.SimpleNamespace(energy_mj=1_000_000, power_mw=300_000, temperature=40,
                                       reasons=0, setter_calls=[])
    nvml.NVMLError = FakeNvmlError
    nvml.NVML_CLOCK_SM, nvml.NVML_CLOCK_MEM, nvml.NVML_TEMPERATURE_GPU = 1, 2, 0

    def refuse_uuid(uuid):
        raise FakeNvmlError("Not Found")

    def record_setter(name):
        def setter(*args):
            nvml.state.setter_calls.append(name)
        return setter

    functions = dict(
        nvmlInit=lambda: None,
        nvmlShutdown=lambda: None,
        nvmlDeviceGetCount=lambda: 1,
        nvmlDeviceGetHandleByIndex=lambda index: ("handle", index),
        nvmlDeviceGetHandleByUUID=refuse_uuid,
        nvmlDeviceGetName=lambda handle: "NVIDIA H100 80GB HBM3",
        nvmlDeviceGetUUID=lambda handle: "GPU-0123",
        nvmlDeviceGetTotalEnergyConsumption=lambda handle: nvml.state.energy_mj,
        nvmlDeviceGetPowerUsage=lambda handle: nvml.state.power_mw,
        nvmlDeviceGetClockInfo=lambda handle, kind: {1: 1980, 2: 2619}[kind],
        nvmlDeviceGetMaxClockInfo=lambda handle, kind: {1: 1980, 2: 2619}[kind],
        nvmlDeviceGetTemperature=lambda handle, sensor: nvml.state.temperature,
        nvmlDeviceGetCurrentClocksEventReasons=lambda handle: nvml.state.reasons,
        nvmlDeviceGetEnforcedPowerLimit=lambda handle: 700_000,
        nvmlDeviceGetPersistenceMode=lambda handle: 1,
        nvmlDeviceGetMemoryInfo=lambda handle: types.SimpleNamespace(used=2**30,
                                                                     total=80 * 2**30),
        nvmlSystemGetDriverVersion=lambda: "550.54.15",
        nvmlSystemGetCudaDriverVersion=lambda: 12040,
    )
    # Anything that would change the device: the harness must never call these.
    for name in ("nvmlDeviceSetApplicationsClocks", "nvmlDeviceResetApplicationsClocks",
                 "nvmlDeviceSetGpuLockedClocks", "nvmlDeviceSetPowerManagementLimit",
                 "nvmlDeviceSetPersistenceMode", "nvmlDeviceSetMemoryLockedClocks"):
        functions[name] = record_setter(name)
    functions.update(overrides)
    for name, fn in functions.items():
        setattr(nvml, name, fn)
    return nvml


@pytest.fixture
def nvml(monkeypatch):
    module = fake_nvml()
    monkeypatch.setitem(sys.modules, "pynvml", module)
    yield module
    assert module.state.setter_calls == []  # nothing changed clocks, power or persistence


class FakeClock:
    """Seconds in steps of 1/8 (exact in binary, so 8 steps are exactly 1.0 s)."""

    def __init__(self):
        self.ticks = 0

    def __call__(self) -> float:
        return self.ticks / 8


def workload(nvml_module, clock: FakeClock, energy_mj_per_call: int):
    """A call that takes 1/8 s of the fake clock and adds energy to the fake counter."""
    def fn():
        clock.ticks += 1
        nvml_module.state.energy_mj += energy_mj_per_call
    return fn


def test_energy_is_per_call_over_a_full_window(nvml):
    clock = FakeClock()
    syncs = []
    observer = NvmlObserver(0, interval_s=0.001)
    result = measure_energy(workload(nvml, clock, 250), observer, min_window_s=1.0,
                            sync=lambda: syncs.append(1), clock=clock)
    assert result.n_calls == 8  # 8 calls of 1/8 s fill the 1 s window
    assert result.energy_j == pytest.approx(0.25)  # 8 x 250 mJ / 8 calls
    assert result.window_s == 1.0 and result.window_ok
    assert result.telemetry == "nvml" and result.summary() == "nvml"
    assert len(syncs) == 2  # before the window opens and before it closes
    assert result.avg_power_w == pytest.approx(300.0) and result.max_power_w == 300.0
    assert result.sm_clock_mhz == 1980 and result.mem_clock_mhz == 2619
    assert result.n_samples >= 1


def test_short_windows_are_flagged(nvml):
    clock = FakeClock()
    result = measure_energy(workload(nvml, clock, 100), NvmlObserver(0), min_window_s=0.25,
                            sync=lambda: None, clock=clock)
    assert result.n_calls == 2 and result.window_s == 0.25
    assert not result.window_ok
    assert "short window 0.25 s < 1 s" in result.summary()
    assert result.energy_j == pytest.approx(0.1)  # still reported, but flagged


def test_temperatures_and_throttle_reasons_seen_in_the_window(nvml):
    clock = FakeClock()

    def hot_call():
        clock.ticks += 1
        nvml.state.energy_mj += 10
        nvml.state.temperature = 71
        nvml.state.reasons = 0x4 | 0x40  # sw power cap + hw thermal slowdown

    nvml.state.temperature = 40
    result = measure_energy(hot_call, NvmlObserver(0), sync=lambda: None, clock=clock)
    assert result.temperature_start_c == 40 and result.temperature_end_c == 71
    assert result.throttle_reasons == ("hw_thermal_slowdown", "sw_power_cap")
    assert result.throttled
    assert "throttled: hw_thermal_slowdown,sw_power_cap" in result.summary()


@pytest.mark.parametrize("mask, names", [
    (0x0, ()),
    (0x1, ("gpu_idle",)),
    (0x4 | 0x40, ("hw_thermal_slowdown", "sw_power_cap")),
    (0x8 | 0x20 | 0x80, ("hw_power_brake_slowdown", "hw_slowdown", "sw_thermal_slowdown")),
    (0x2 | 0x10 | 0x100, ("applications_clocks_setting", "display_clock_setting",
                          "sync_boost")),
    (0x1000, ("unknown_0x1000",)),
])
def test_decode_clock_event_reasons(mask, names):
    assert decode_clock_event_reasons(mask) == names


def test_idle_is_not_throttling():
    result = NullObserver("x").stop(1, 1.0)
    result.throttle_reasons = ("gpu_idle",)
    assert not result.throttled


def test_no_energy_counter_gives_none_and_says_why(monkeypatch):
    def unsupported(handle):
        raise FakeNvmlError("Not Supported")

    module = fake_nvml(nvmlDeviceGetTotalEnergyConsumption=unsupported)
    monkeypatch.setitem(sys.modules, "pynvml", module)
    clock = FakeClock()
    result = measure_energy(workload(module, clock, 0), NvmlObserver(0), sync=lambda: None,
                            clock=clock)
    assert result.energy_j is None
    assert result.telemetry == "nvml"
    assert any("no energy counter" in note for note in result.notes)
    assert result.avg_power_w == pytest.approx(300.0)  # power still sampled


def test_a_counter_that_did_not_tick_gives_none(nvml):
    clock = FakeClock()
    result = measure_energy(workload(nvml, clock, 0), NvmlObserver(0), sync=lambda: None,
                            clock=clock)
    assert result.energy_j is None
    assert "energy counter did not advance" in result.notes


def test_the_thread_stops_when_the_call_fails(nvml):
    observer = NvmlObserver(0, interval_s=0.001)

    def broken():
        raise RuntimeError("kernel failed")

    with pytest.raises(RuntimeError):
        measure_energy(broken, observer, sync=lambda: None)
    assert not observer._thread.is_alive()


# ---- the null observer -----------------------------------------------------------------

def test_null_observer_on_cpu_says_why():
    observer = make_observer("cpu")
    assert isinstance(observer, NullObserver)
    result = measure_energy(lambda: None, observer, min_window_s=0.01)
    assert result.telemetry.startswith("unavailable: ")
    assert "cpu" in result.telemetry
    assert result.energy_j is None and result.avg_power_w is None and result.max_power_w is None
    assert result.sm_clock_mhz is None and result.throttle_reasons == ()
    assert result.n_calls >= 1 and not result.window_ok


def test_null_observer_without_a_driver(monkeypatch):
    def no_library():
        raise FakeNvmlError("NVML Shared Library Not Found")

    monkeypatch.setitem(sys.modules, "pynvml", fake_nvml(nvmlInit=no_library))
    observer = make_observer("cuda:0")
    assert isinstance(observer, NullObserver)
    assert observer.reason == "NVML init failed: NVML Shared Library Not Found"


def test_null_observer_without_pynvml(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import pynvml -> ImportError
    observer = make_observer("cuda")
    assert isinstance(observer, NullObserver)
    assert "not installed" in observer.reason


def test_make_observer_finds_the_gpu_by_index_when_uuid_fails(nvml):
    observer = make_observer("cuda:0")
    assert isinstance(observer, NvmlObserver)
    assert observer._handle == ("handle", 0)


# ---- state and versions ----------------------------------------------------------------

def test_device_state_of_the_cpu():
    state = device_state("cpu")
    assert state["kind"] == "cpu"
    assert state["name"] and state["cpu_count"] >= 1 and state["torch_threads"] >= 1


def test_device_state_of_a_gpu_from_nvml(nvml):
    state = device_state("cuda:0")
    assert state["kind"] == "cuda" and state["telemetry"] == "nvml"
    assert state["name"] == "NVIDIA H100 80GB HBM3"
    assert state["uuid"] == "GPU-0123"
    assert state["driver_version"] == "550.54.15" and state["cuda_driver_version"] == "12.4"
    assert state["power_limit_w"] == 700.0 and state["persistence_mode"] is True
    assert state["sm_clock_mhz"] == 1980 and state["temperature_c"] == 40
    assert state["memory_used_bytes"] == 2**30
    assert state["clock_event_reasons"] == []


def test_device_state_without_nvml_says_so(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)
    state = device_state("cuda:0")
    assert state["telemetry"].startswith("unavailable: ")


def test_versions(nvml):
    versions.cache_clear()
    try:
        found = versions()
    finally:
        versions.cache_clear()
    import platform

    import torch

    import sbbench

    assert found["torch"] == torch.__version__
    assert found["sbbench"] == sbbench.__version__
    assert found["python"] == platform.python_version()
    assert found["driver"] == "550.54.15" and found["cuda_driver"] == "12.4"
    assert "triton" in found and "cuda" in found
    revision = found["git_revision"]
    assert revision is None or len(revision.split("+")[0]) == 12


def test_min_window_must_be_positive():
    with pytest.raises(ValueError):
        measure_energy(lambda: None, NullObserver("x"), min_window_s=0)


def test_module_never_imports_pynvml_at_import_time():
    # telemetry must import on machines without nvidia-ml-py: pynvml is loaded lazily
    assert "pynvml" not in telemetry.__dict__
