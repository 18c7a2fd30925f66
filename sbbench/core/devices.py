"""The device registry (layer 0): what sbbench knows about each GPU it tunes for.

Profiles live in ``sbbench/data/devices.yaml`` (with the datasheet each figure comes
from); ``sbbench.core.device_table`` checks their schema (an error names the key); this
module loads them once and answers four questions:

- which profiles exist (:func:`list_devices`) and what one says (:func:`get_device`);
- what this machine has (:func:`detect_local`: the name torch / NVML report, matched
  against each profile's ``name_patterns``);
- which profile a sweep should use (:func:`resolve_gpu`: ``"auto"`` detects, a named
  profile must match the local device unless the sweep only models);
- how fast this CPU is (:func:`measure_cpu`: the ``cpu`` profile has no fixed peaks, so
  they are measured on request and the result says so).
"""

from __future__ import annotations

import functools
import os
import time
from dataclasses import dataclass, replace
from importlib import resources

import yaml

from sbbench.core.device_table import (  # noqa: F401 - re-exported
    _MIB,
    KINDS,
    PEAK_DTYPES,
    SOURCES,
    DeviceSpec,
    DeviceTableError,
    parse_table,
)
from sbbench.core.errors import UserError
from sbbench.core.provenance import cpu_model_name  # noqa: F401 - re-exported


@dataclass(frozen=True)
class DetectedDevice:
    """What this machine runs on: ``name`` is the matching profile (None if none does),
    ``reported`` the name torch / NVML / the OS gives, ``kind`` "cuda" or "cpu"."""

    name: str | None
    reported: str
    kind: str
    note: str = ""  # e.g. a GPU NVML sees but torch cannot use

    def describe(self) -> str:
        profile = f"profile {self.name}" if self.name else "no matching profile"
        text = f"{self.kind} device {self.reported!r} ({profile})"
        return f"{text}; {self.note}" if self.note else text


@functools.lru_cache(maxsize=1)
def _table() -> tuple[dict[str, DeviceSpec], dict[str, str]]:
    text = resources.files("sbbench").joinpath("data/devices.yaml").read_text()
    return parse_table(yaml.safe_load(text), "sbbench/data/devices.yaml")


# ---- lookups ---------------------------------------------------------------------------

def list_devices() -> list[str]:
    """Profile names, in the table's order (aliases not included)."""
    return list(_table()[0])


def aliases() -> dict[str, str]:
    """Short names and the profile each resolves to ({"h100": "h100-sxm", ...})."""
    return dict(_table()[1])


def get_device(name: str) -> DeviceSpec:
    """The profile called ``name`` (case-insensitive; aliases resolved).

    Raises UserError listing the valid names when there is none.
    """
    specs, alias_map = _table()
    key = str(name).strip().lower()
    key = alias_map.get(key, key)
    if key not in specs:
        valid = ", ".join(list(specs) + [f"{a} (= {t})" for a, t in alias_map.items()])
        raise UserError(f"unknown device {name!r}; valid devices: {valid}")
    return specs[key]


def match_profile(reported: str) -> str | None:
    """Profile whose name patterns match a reported device name; None if none matches.

    Two profiles matching one name is a bug in the table and raises ValueError.
    """
    hits = [spec.name for spec in _table()[0].values() if spec.matches(reported)]
    if len(hits) > 1:
        raise ValueError(f"device name {reported!r} matches several profiles: "
                         f"{', '.join(hits)}; fix name_patterns in devices.yaml")
    return hits[0] if hits else None


# ---- what this machine has -------------------------------------------------------------

def _nvml_gpu_names() -> list[str]:
    """Names of the GPUs NVML sees (empty without NVML or a driver)."""
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:  # no library, no driver: there is nothing to report
        return []
    try:
        names = []
        for index in range(pynvml.nvmlDeviceGetCount()):
            name = pynvml.nvmlDeviceGetName(pynvml.nvmlDeviceGetHandleByIndex(index))
            names.append(name.decode() if isinstance(name, bytes) else str(name))
        return names
    except Exception:
        return []
    finally:
        try:
            pynvml.nvmlShutdown()
        except Exception:
            pass


def detect_local(index: int | None = None) -> DetectedDevice:
    """The device this process would measure on.

    With CUDA available in torch: the GPU ``index`` (default: the current one), its name
    as torch reports it, matched against the profiles. Without: the CPU (profile "cpu"),
    with a note if NVML sees a GPU that torch cannot use (a CPU-only torch build).
    """
    import torch

    if torch.cuda.is_available():
        device = torch.cuda.current_device() if index is None else index
        reported = torch.cuda.get_device_name(device)
        return DetectedDevice(match_profile(reported), reported, "cuda")
    note = ""
    gpus = _nvml_gpu_names()
    if gpus:
        note = (f"NVML sees {', '.join(map(repr, gpus))} but this torch build cannot use "
                f"CUDA")
    return DetectedDevice("cpu", cpu_model_name(), "cpu", note)


def resolve_gpu(requested: str, *, model_only: bool = False) -> DeviceSpec:
    """The profile a sweep runs with.

    ``"auto"`` detects the local device (an unknown GPU is a UserError: name a profile
    with ``model_only`` to predict it instead). A named profile is returned as is when
    ``model_only`` (nothing is measured), or when it is "cpu" (every machine has one);
    otherwise it must match the local device, or UserError says what was detected.
    """
    if str(requested).strip().lower() == "auto":
        detected = detect_local()
        if detected.name is None:
            raise UserError(
                f"--gpu auto: the local {detected.describe()} is not in the device table "
                f"(valid devices: {', '.join(list_devices())}); add a profile to "
                f"sbbench/data/devices.yaml, or name one with --gpu NAME --model-only")
        return get_device(detected.name)
    spec = get_device(requested)
    if model_only or spec.kind == "cpu":
        return spec
    detected = detect_local()
    if detected.name != spec.name:
        raise UserError(
            f"--gpu {requested} asks for profile {spec.name} ({spec.label}) but this machine "
            f"has a {detected.describe()}; run with --gpu auto to measure what is here, "
            f"or add --model-only to predict {spec.name} from the cost model")
    return spec


# ---- the CPU's peaks, measured ---------------------------------------------------------

def _best_seconds(fn, repeats: int) -> float:
    fn()  # first call: allocation, thread pool start-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def measure_cpu(*, matmul_size: int = 1024, copy_mib: int = 64, repeats: int = 5) -> DeviceSpec:
    """The "cpu" profile with this machine's peaks measured (``source="measured"``).

    float32 / float64 FLOP/s: best of ``repeats`` square matmuls of ``matmul_size``
    (2 n^3 FLOPs each) with torch's current thread count. Bandwidth: best copy of a
    ``copy_mib`` MiB float32 tensor, counted as read + write (2 x its bytes). These are
    achievable figures, not theoretical peaks; tf32 / float16 / bfloat16 stay None.
    Takes about a second.
    """
    import torch

    peaks: dict[str, float | None] = {key: None for key in PEAK_DTYPES}
    for dtype_name, dtype in (("float32", torch.float32), ("float64", torch.float64)):
        a = torch.randn(matmul_size, matmul_size, dtype=dtype)
        b = torch.randn(matmul_size, matmul_size, dtype=dtype)
        out = torch.empty(matmul_size, matmul_size, dtype=dtype)
        seconds = _best_seconds(lambda a=a, b=b, out=out: torch.matmul(a, b, out=out), repeats)
        peaks[dtype_name] = 2.0 * matmul_size ** 3 / seconds
    numel = copy_mib * _MIB // 4
    src = torch.randn(numel)
    dst = torch.empty_like(src)
    seconds = _best_seconds(lambda: dst.copy_(src), repeats)
    bandwidth = 2.0 * src.numel() * src.element_size() / seconds
    mem_bytes = None
    try:
        mem_bytes = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        pass
    return replace(
        get_device("cpu"),
        peak_flops=peaks,
        mem_bandwidth_bytes_per_s=bandwidth,
        mem_bytes=mem_bytes,
        label=f"{cpu_model_name()}, {torch.get_num_threads()} threads (measured)",
        source="measured",
    )
