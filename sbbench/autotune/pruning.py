"""Static pruning: drop configs that cannot run well on the target before timing any.

A check is a plain callable ``check(config) -> reason | None`` (None keeps the config).
Two kinds are built here:

- :func:`keep_check`: the kernel's own ``keep(config, device_limits)`` predicate, the
  cheap arithmetic filter declared next to the kernel;
- :func:`resource_check`: compile the config for the device's architecture without
  running it (``kernels/static.py``) and compare what the compiler reports -- shared
  memory per block, registers per thread, spills -- with the device profile.

:func:`prune` applies the checks in order and keeps every dropped config with its reason
(the first check that drops it), so the tuning file can say why a config was never timed.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

Check = Callable[[dict], "str | None"]


@dataclass
class PruneResult:
    kept: list[dict] = field(default_factory=list)
    pruned: list[tuple[dict, str]] = field(default_factory=list)

    def reason_counts(self) -> dict[str, int]:
        """How many configs each kind of reason dropped (the text before the first ':')."""
        return dict(Counter(reason.split(":", 1)[0] for _, reason in self.pruned))


def prune(space: Sequence[dict], checks: Sequence[Check]) -> PruneResult:
    """Split ``space`` into kept configs and (config, reason) pairs, in the space's order."""
    result = PruneResult()
    for config in space:
        reason = None
        for check in checks:
            reason = check(dict(config))
            if reason:
                break
        if reason:
            result.pruned.append((dict(config), reason))
        else:
            result.kept.append(dict(config))
    return result


def keep_check(keep: Callable[[dict, object], bool], device_limits, *, name: str = "keep"
               ) -> Check:
    """A check from a kernel's ``keep(config, device_limits)`` predicate."""

    def check(config: dict) -> str | None:
        if keep(config, device_limits):
            return None
        return f"{name}: the kernel's keep() predicate rejects it on this device"

    return check


def _field(usage, name: str, default=None):
    if isinstance(usage, dict):
        return usage.get(name, default)
    return getattr(usage, name, default)


def resource_reason(usage, *, arch: str, smem_per_block_bytes: int | None,
                    max_registers_per_thread: int | None) -> str | None:
    """Why a statically compiled config is unfit (None if it fits).

    ``usage`` has ``ok``, ``reason``, ``shared_bytes``, ``registers`` (per thread) and
    ``spills`` (an object or a dict), as ``kernels.static.compile_config`` reports it;
    the device profile's limits are checked here, and a usage the compiler itself marks
    not ok (a failed compile, or over its own architecture limits) is dropped with its
    reason. The text before the first ':' is the kind of reason (for the counts).
    """
    shared = _field(usage, "shared_bytes")
    if smem_per_block_bytes and shared is not None and shared > smem_per_block_bytes:
        return f"shared memory: {shared} B per block > {smem_per_block_bytes} B on {arch}"
    registers = _field(usage, "registers")
    if max_registers_per_thread and registers is not None and registers > max_registers_per_thread:
        return f"registers: {registers} per thread > {max_registers_per_thread} on {arch}"
    spills = _field(usage, "spills")
    if spills:
        return f"spills: {spills} B per thread spilled to local memory on {arch}"
    if not _field(usage, "ok", True):
        reason = str(_field(usage, "reason", "") or "?")
        kind = ("compile" if "compile" in reason.lower() else
                "registers" if reason.startswith("register") else
                "shared memory" if reason.startswith("shared") else "limits")
        return f"{kind}: {reason} ({arch})"
    return None


def resource_check(compile_config: Callable[[dict], object], *, arch: str,
                   smem_per_block_bytes: int | None,
                   max_registers_per_thread: int | None) -> Check:
    """A check that compiles each config (``compile_config(config) -> usage``) for
    ``arch`` and applies :func:`resource_reason`; a compiler exception drops the config."""

    def check(config: dict) -> str | None:
        try:
            usage = compile_config(config)
        except Exception as err:  # the compiler's failure is the config's verdict
            return f"compile: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
        return resource_reason(usage, arch=arch, smem_per_block_bytes=smem_per_block_bytes,
                               max_registers_per_thread=max_registers_per_thread)

    return check
