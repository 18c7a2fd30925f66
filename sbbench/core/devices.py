"""The device registry (layer 0): what sbbench knows about each GPU it tunes for.

Profiles live in ``sbbench/data/devices.yaml`` (with the datasheet each figure comes
from); this module loads them once, checks the schema (an error names the key), and
answers four questions:

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
import re
import time
from dataclasses import dataclass, field, replace
from importlib import resources

import yaml

from sbbench.core.errors import UserError
from sbbench.core.provenance import cpu_model_name  # noqa: F401 - re-exported

PEAK_DTYPES = ("float32", "tf32", "float16", "bfloat16")
KINDS = ("cuda", "cpu")
SOURCES = ("datasheet", "measured", "none")

_KIB = 1024
_MIB = 1024 * 1024
_GIB = 1024 ** 3


@dataclass(frozen=True)
class DeviceSpec:
    """One device profile, in base units (bytes, FLOP/s, bytes/s).

    ``peak_flops`` maps "float32" (non-tensor FMA), "tf32", "float16", "bfloat16" (tensor
    cores, float32 accumulation, dense) and, for measured CPUs, "float64" to FLOP/s; a
    value is None where the device has no such path or the figure is unknown. Fields the
    CPU profile does not have (arch, SMs, shared memory ...) are None.
    ``source`` says where the peaks come from: "datasheet", "measured" or "none".
    """

    name: str
    kind: str  # "cuda" | "cpu"
    arch: str | None  # "sm_90"; None for the CPU
    sm_count: int | None
    smem_per_block_bytes: int | None  # opt-in maximum of one thread block
    smem_per_sm_bytes: int | None
    registers_per_sm: int | None
    max_registers_per_thread: int | None
    l2_bytes: int | None
    peak_flops: dict[str, float | None] = field(hash=False)
    mem_bandwidth_bytes_per_s: float | None
    mem_bytes: int | None
    name_patterns: tuple[str, ...]
    label: str = ""
    source: str = "datasheet"

    def peak(self, key: str) -> float | None:
        """Peak FLOP/s of one precision key ("float32", "tf32", ...), None if unknown."""
        return self.peak_flops.get(key)

    def matches(self, reported: str) -> bool:
        """Whether ``reported`` (a torch / NVML device name) is this profile's device."""
        return any(re.search(p, reported, re.IGNORECASE) for p in self.name_patterns)


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


# ---- loading and schema ----------------------------------------------------------------

_FIELDS = {  # every field of a profile in the YAML, and the type it must have
    "kind": "str",
    "label": "str",
    "arch": "str",
    "sm_count": "int",
    "smem_per_block_kib": "int",
    "smem_per_sm_kib": "int",
    "registers_per_sm": "int",
    "max_registers_per_thread": "int",
    "l2_mib": "number",
    "peak_tflops": "mapping",
    "mem_bandwidth_gb_s": "number",
    "mem_gib": "number",
    "name_patterns": "list",
}
_CPU_NULLABLE = {"arch", "sm_count", "smem_per_block_kib", "smem_per_sm_kib",
                 "registers_per_sm", "max_registers_per_thread", "l2_mib",
                 "mem_bandwidth_gb_s", "mem_gib"}
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]*$")


class DeviceTableError(ValueError):
    """The device YAML does not follow the schema; the message names the key."""


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_value(where: str, kind: str, value, nullable: bool) -> None:
    if value is None:
        if not nullable:
            raise DeviceTableError(f"{where}: must not be null")
        return
    ok = {
        "str": isinstance(value, str) and value != "",
        "int": isinstance(value, int) and not isinstance(value, bool) and value > 0,
        "number": _is_number(value) and value > 0,
        "mapping": isinstance(value, dict),
        "list": isinstance(value, list),
    }[kind]
    if not ok:
        expected = {"str": "a non-empty string", "int": "a positive integer",
                    "number": "a positive number", "mapping": "a mapping",
                    "list": "a list"}[kind]
        raise DeviceTableError(f"{where}: expected {expected}, got {value!r}")


def _parse_entry(name: str, entry, source: str) -> DeviceSpec:
    where = f"{source}: devices.{name}"
    if not _NAME_RE.match(name):
        raise DeviceTableError(f"{where}: profile names are lower-case letters, digits "
                               f"and '-'")
    if not isinstance(entry, dict):
        raise DeviceTableError(f"{where}: expected a mapping of fields, got {entry!r}")
    unknown = sorted(set(entry) - set(_FIELDS))
    if unknown:
        raise DeviceTableError(f"{where}.{unknown[0]}: unknown field (valid: "
                               f"{', '.join(_FIELDS)})")
    missing = [key for key in _FIELDS if key not in entry]
    if missing:
        raise DeviceTableError(f"{where}.{missing[0]}: missing field")
    kind = entry["kind"]
    if kind not in KINDS:
        raise DeviceTableError(f"{where}.kind: must be one of {', '.join(KINDS)}, "
                               f"got {kind!r}")
    for key, type_name in _FIELDS.items():
        nullable = kind == "cpu" and key in _CPU_NULLABLE
        _check_value(f"{where}.{key}", type_name, entry[key], nullable)
    if kind == "cuda" and not re.match(r"^sm_\d{2,3}a?$", entry["arch"]):
        raise DeviceTableError(f"{where}.arch: expected sm_XX, got {entry['arch']!r}")

    peaks = entry["peak_tflops"]
    if sorted(peaks) != sorted(PEAK_DTYPES):
        raise DeviceTableError(f"{where}.peak_tflops: needs exactly the keys "
                               f"{', '.join(PEAK_DTYPES)}, got {', '.join(map(str, peaks))}")
    for key in PEAK_DTYPES:
        value = peaks[key]
        if value is not None and not (_is_number(value) and value > 0):
            raise DeviceTableError(f"{where}.peak_tflops.{key}: expected a positive number "
                                   f"or null, got {value!r}")
    if kind == "cuda" and peaks["float32"] is None:
        raise DeviceTableError(f"{where}.peak_tflops.float32: a GPU needs its float32 peak")

    patterns = entry["name_patterns"]
    for i, pattern in enumerate(patterns):
        if not isinstance(pattern, str) or not pattern:
            raise DeviceTableError(f"{where}.name_patterns[{i}]: expected a regular "
                                   f"expression string, got {pattern!r}")
        try:
            re.compile(pattern)
        except re.error as err:
            raise DeviceTableError(f"{where}.name_patterns[{i}]: invalid regular "
                                   f"expression {pattern!r}: {err}") from None
    if kind == "cuda" and not patterns:
        raise DeviceTableError(f"{where}.name_patterns: a GPU needs at least one pattern")

    def scaled(key, unit, cast=int):
        value = entry[key]
        return None if value is None else cast(round(value * unit))

    has_peaks = any(v is not None for v in peaks.values())
    return DeviceSpec(
        name=name,
        kind=kind,
        arch=entry["arch"],
        sm_count=entry["sm_count"],
        smem_per_block_bytes=scaled("smem_per_block_kib", _KIB),
        smem_per_sm_bytes=scaled("smem_per_sm_kib", _KIB),
        registers_per_sm=entry["registers_per_sm"],
        max_registers_per_thread=entry["max_registers_per_thread"],
        l2_bytes=scaled("l2_mib", _MIB),
        peak_flops={k: (None if v is None else float(round(v * 1e12))) for k, v in peaks.items()},
        mem_bandwidth_bytes_per_s=scaled("mem_bandwidth_gb_s", 1e9, float),
        mem_bytes=scaled("mem_gib", _GIB),
        name_patterns=tuple(patterns),
        label=entry["label"],
        source="datasheet" if has_peaks else "none",
    )


def parse_table(data, source: str = "devices.yaml") -> tuple[dict[str, DeviceSpec],
                                                             dict[str, str]]:
    """Validate a loaded device table -> (profiles by name, aliases). Raises
    DeviceTableError naming the offending key."""
    if not isinstance(data, dict):
        raise DeviceTableError(f"{source}: expected a mapping with 'devices' and 'aliases'")
    unknown = sorted(set(data) - {"devices", "aliases"})
    if unknown:
        raise DeviceTableError(f"{source}: {unknown[0]}: unknown top-level key "
                               f"(valid: devices, aliases)")
    entries = data.get("devices")
    if not isinstance(entries, dict) or not entries:
        raise DeviceTableError(f"{source}: devices: expected a non-empty mapping")
    specs = {name: _parse_entry(str(name), entry, source) for name, entry in entries.items()}
    aliases = data.get("aliases") or {}
    if not isinstance(aliases, dict):
        raise DeviceTableError(f"{source}: aliases: expected a mapping")
    for alias, target in aliases.items():
        if alias in specs:
            raise DeviceTableError(f"{source}: aliases.{alias}: shadows a profile name")
        if target not in specs:
            raise DeviceTableError(f"{source}: aliases.{alias}: unknown profile {target!r}")
    return specs, dict(aliases)


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
