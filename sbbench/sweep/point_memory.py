"""Peak memory of one sweep point in a forked child (CPU): the child's job, and how its
result lands in the row (layer 3; docs/measurement.md)."""

from __future__ import annotations

from dataclasses import asdict
from typing import TYPE_CHECKING

import torch

from sbbench.core.record import Record
from sbbench.measure.memory import Job, peak_rss_of
from sbbench.sweep.grid import Point

if TYPE_CHECKING:
    from sbbench.sweep.runner import Settings


def add_memory(record: Record, result: dict) -> None:
    record.peak_memory_bytes = result["peak_bytes"]
    record.baseline_memory_bytes = result["baseline_bytes"]
    record.peak_memory_delta_bytes = result["peak_bytes"] - result["baseline_bytes"]
    record.memory_method = result["method"]


def point_memory(point: str, settings: dict) -> dict:
    """Peak RSS of the first call of a point in this (fresh, forked) process: the
    function a memory child runs (``memory_job``). Arguments as JSON-able values."""
    from sbbench.sweep.runner import Settings

    data = dict(settings)
    data["seeds"] = tuple(data["seeds"])
    sweep = Settings(**data)
    if sweep.num_threads:
        torch.set_num_threads(sweep.num_threads)
    from sbbench.sweep.point import prepare

    _, _, _, call = prepare(Point.from_json(point), sweep, sweep.seeds[0])
    with torch.no_grad():
        return peak_rss_of(call)


def memory_job(point: Point, settings: Settings) -> Job:
    """The memory child's job for ``point`` (``MemoryServer.start``)."""
    data = asdict(settings)
    data["num_threads"] = settings.num_threads or torch.get_num_threads()
    return Job("sbbench.sweep.point_memory:point_memory",
               {"point": point.to_json(), "settings": data})
