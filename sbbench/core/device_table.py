"""The device table's schema (layer 0): ``sbbench/data/devices.yaml`` parsed into
:class:`DeviceSpec` profiles, every field checked (an error names the key).

Lookups and detection of the local device live in ``sbbench.core.devices``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

PEAK_DTYPES = ("float32", "tf32", "float16", "bfloat16")
# method families a device can carry a measured efficiency for (costmodel.method_family)
FAMILIES = ("exact", "lowrank", "sparse", "scatterbrain")
KINDS = ("cuda", "cpu")
SOURCES = ("datasheet", "measured", "none")

_KIB = 1024
_MIB = 1024 * 1024
_GIB = 1024 ** 3


@dataclass(frozen=True)
class Efficiency:
    """Achieved fraction of the roofline for one method family on one device, from
    published measurements: ``factor`` = measured FLOP/s / peak FLOP/s (a geometric mean
    when several measurements are cited); ``calibrated_on`` says which (source and
    shape), ``measured_tflops`` the cited figures."""

    factor: float
    calibrated_on: str
    measured_tflops: tuple[float, ...]


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
    efficiency: dict[str, Efficiency] = field(default_factory=dict, hash=False)

    def peak(self, key: str) -> float | None:
        """Peak FLOP/s of one precision key ("float32", "tf32", ...), None if unknown."""
        return self.peak_flops.get(key)

    def matches(self, reported: str) -> bool:
        """Whether ``reported`` (a torch / NVML device name) is this profile's device."""
        return any(re.search(p, reported, re.IGNORECASE) for p in self.name_patterns)


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
_OPTIONAL = {"efficiency"}
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
    unknown = sorted(set(entry) - set(_FIELDS) - _OPTIONAL)
    if unknown:
        raise DeviceTableError(f"{where}.{unknown[0]}: unknown field (valid: "
                               f"{', '.join([*_FIELDS, *_OPTIONAL])})")
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

    efficiency = _parse_efficiency(where, entry.get("efficiency"), peaks)

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
        efficiency=efficiency,
    )


def _parse_efficiency(where: str, value, peaks: dict) -> dict[str, Efficiency]:
    """efficiency: {family: {peak: dtype key, measured_tflops: [..], calibrated_on: text}}
    -> Efficiency per family, factor = geometric mean of the figures / the peak."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise DeviceTableError(f"{where}.efficiency: expected a mapping of method families")
    out = {}
    for family, item in value.items():
        at = f"{where}.efficiency.{family}"
        if family not in FAMILIES:
            raise DeviceTableError(f"{at}: unknown method family (valid: "
                                   f"{', '.join(FAMILIES)})")
        if not isinstance(item, dict) or set(item) != {"peak", "measured_tflops",
                                                       "calibrated_on"}:
            raise DeviceTableError(f"{at}: needs exactly peak, measured_tflops, "
                                   f"calibrated_on")
        peak = peaks.get(item["peak"]) if isinstance(item["peak"], str) else None
        if not peak:
            raise DeviceTableError(f"{at}.peak: must name a known peak_tflops entry, got "
                                   f"{item['peak']!r}")
        figures = item["measured_tflops"]
        if not isinstance(figures, list) or not figures or not all(
                _is_number(f) and 0 < f <= peak for f in figures):
            raise DeviceTableError(f"{at}.measured_tflops: expected a list of TFLOP/s "
                                   f"figures between 0 and the peak ({peak})")
        _check_value(f"{at}.calibrated_on", "str", item["calibrated_on"], False)
        geo = 1.0
        for f in figures:
            geo *= f
        geo **= 1.0 / len(figures)
        out[family] = Efficiency(geo / peak, item["calibrated_on"].strip(),
                                 tuple(float(f) for f in figures))
    return out


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
