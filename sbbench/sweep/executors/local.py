"""The local executor: ``runner.run_sweep`` on each target in turn, in this process; and
the devices of a sweep as targets (``resolve_targets``)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from sbbench.core.devices import DeviceSpec, get_device, resolve_gpu
from sbbench.core.errors import UserError
from sbbench.sweep.grid import Point
from sbbench.sweep.progress import Summary

if TYPE_CHECKING:  # the runner imports torch: the CLI imports this package without it
    from sbbench.sweep.runner import Settings
    from sbbench.sweep.store import Store


@dataclass(frozen=True)
class Target:
    """One device of a sweep: its profile and how its points are measured."""

    spec: DeviceSpec
    settings: Settings


@dataclass
class ExecutorSummary(Summary):
    """``progress.Summary`` (same fields, same line) plus what a distributed sweep adds."""

    retried: int = 0  # runs of a point again after its worker was lost or refused it
    gave_up: int = 0  # points recorded failed after max_attempts lost runs
    nodes: dict[str, int] = field(default_factory=dict)  # rows measured per worker host

    def line(self) -> str:
        text = super().line()
        if self.nodes:
            text += "; rows by host: " + ", ".join(f"{h} {n}" for h, n in
                                                   sorted(self.nodes.items()))
        if self.retried or self.gave_up:
            text += (f"; {self.retried} run(s) again after a lost worker, {self.gave_up} "
                     f"point(s) given up")
        return text

    def add(self, other: Summary) -> None:
        """Fold the summary of one device's sweep into this one."""
        self.total += other.total
        self.measured += other.measured
        self.resumed += other.resumed
        self.lost_race += other.lost_race
        self.claimed_elsewhere += other.claimed_elsewhere
        self.seconds += other.seconds
        for status, count in other.statuses.items():
            self.statuses[status] = self.statuses.get(status, 0) + count


def resolve_targets(gpu: str, settings: Settings, *, remote: bool,
                    model_only: bool = False) -> list[Target]:
    """The devices of ``--gpu a100,h100`` as Targets; ``settings`` is the template whose
    ``device`` / ``torch_device`` each target replaces.

    Local (``remote=False``): ``devices.resolve_gpu``'s rules (the device must be here
    unless ``model_only``), one device unless ``model_only``, and the CPU's peaks measured
    here. Remote: named profiles only (``auto`` would detect the driver's machine), checked
    on each worker instead; a CPU target's peaks are measured on its worker.
    """
    names = [name.strip() for name in str(gpu).split(",") if name.strip()]
    if not names:
        raise UserError("--gpu needs at least one device name")
    if remote and any(name.lower() == "auto" for name in names):
        raise UserError("--gpu auto detects the driver's machine; with --executor ray name "
                        "the profiles to measure, e.g. --gpu a100-80gb,h100-sxm")
    distinct: list[str] = []  # profile names (aliases resolved), and "auto"
    for name in names:
        name = "auto" if name.lower() == "auto" else get_device(name).name
        if name not in distinct:
            distinct.append(name)
    if not remote and not model_only and len(distinct) > 1:
        raise UserError(f"--gpu {gpu}: a local sweep measures the one device it runs on; "
                        f"several devices need --executor ray (or --model-only)")
    specs = [get_device(name) if remote else resolve_gpu(name, model_only=model_only)
             for name in distinct]
    targets = []
    for spec in specs:
        if spec.kind == "cpu" and not remote and not model_only:
            import torch

            from sbbench.core.devices import measure_cpu

            if settings.num_threads:
                torch.set_num_threads(settings.num_threads)
            spec = measure_cpu()
        targets.append(Target(spec, dataclasses.replace(
            settings, device=spec.name, torch_device="cuda" if spec.kind == "cuda" else "cpu")))
    return targets


class LocalExecutor:
    """``runner.run_sweep`` on each target in turn, in this process."""

    name = "local"

    def run_sweep(self, points: list[Point], targets: list[Target], store: Store, *,
                  model_only: bool = False, redo: str = "none", progress: bool = True,
                  command: str = "", stream=None) -> ExecutorSummary:
        from sbbench.sweep import runner

        summary = ExecutorSummary()
        for target in targets:
            summary.add(runner.run_sweep(points, target.settings, store, spec=target.spec,
                                         model_only=model_only, redo=redo,
                                         progress=progress, command=command, stream=stream))
        return summary

    def close(self) -> None:
        pass

    def __enter__(self) -> LocalExecutor:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
