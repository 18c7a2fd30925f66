"""The sweep loop: measure (or predict) every point of a grid into the store.

``run_sweep`` runs the points in grid order (one shape at a time, exact first, so the
other methods of a shape get their speedup), one ``Record`` per point (``sweep.point``),
each committed as soon as it is measured: an interrupted sweep keeps its rows, and a
rerun with the same arguments skips the keys already in the store.

``Settings`` is how every point of one sweep is measured; ``point_key`` is the store key a
point gets under them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from sbbench.core.provenance import code_version, revision_text
from sbbench.core.record import Record
from sbbench.core.types import Budget
from sbbench.measure.inputs import input_label
from sbbench.measure.memory import MemoryServer
from sbbench.measure.telemetry import device_state, make_observer
from sbbench.measure.telemetry import versions as read_versions
from sbbench.measure.timing import pin_malloc_thresholds
from sbbench.sweep import point as sweep_point
from sbbench.sweep.grid import Point
from sbbench.sweep.guards import add_flag
from sbbench.sweep.point_model import model_point
from sbbench.sweep.progress import Progress, Summary
from sbbench.sweep.store import Store
from sbbench.sweep.time_pool import WORKER_START_S, TimingPool, add_process_samples


@dataclass(frozen=True)
class Settings:
    """How every point of one sweep is measured (sweep-wide, not part of a point)."""

    device: str  # device profile name: the ``device`` column
    torch_device: str = "cpu"  # "cpu" | "cuda"
    seeds: tuple[int, ...] = (0, 1)
    input_kind: str = "clustered"
    temperature: float = 1.0
    warmup_ms: float = 25.0
    rep_ms: float = 100.0
    min_samples: int = 5
    measure_memory: bool = True
    measure_energy: bool = True
    num_threads: int = 0  # torch threads (0: leave torch's default)
    cpu_clock: str = "auto"  # CPU samples: auto | perf_counter_ns | thread_time_ns
    paired_reference: bool = True  # CPU: time the calibration kernel after each sample
    time_processes: int = 0  # CPU: also time each shape in this many fresh processes
    git_revision: str = field(default_factory=revision_text)  # provenance, not the key
    code_version: str = field(default_factory=code_version)  # the key's code part

    @property
    def inputs_label(self) -> str:
        return input_label(self.input_kind, self.temperature)


def point_key(point: Point, settings: Settings, source: str = "measured") -> tuple:
    return sweep_point.base_record(point, settings, source).key()


def run_sweep(points: list[Point], settings: Settings, store: Store, *, spec=None,
              model_only: bool = False, redo: str = "none", progress: bool = True,
              command: str = "", stream=None,
              memory_server: MemoryServer | None = None) -> Summary:
    """Measure (or, with ``model_only``, predict) every point not yet in ``store``.

    redo: "none" skips every key in the store; "failed" runs failed/oom rows again;
    "all" runs everything again (rows replaced). memory_server: reuse a running one
    (else the sweep starts its own and stops it at the end).

    Each point is claimed in the store while it is measured: a point another live sweep
    has claimed is left to it (``Summary.claimed_elsewhere``), and a row measured while
    another sweep was measuring on the same store is flagged "concurrent" in ``noise``.
    """
    if redo not in ("none", "failed", "all"):
        raise ValueError(f"redo must be none, failed or all, got {redo!r}")
    source = "modeled" if model_only else "measured"
    summary = Summary(total=len(points))
    redo_keys = (store.done_keys(("failed", "oom")) if redo == "failed"
                 else store.done_keys() if redo == "all" else set())
    observer, state_fn, versions = None, None, {}
    if not model_only:
        if settings.num_threads:
            torch.set_num_threads(settings.num_threads)
        if settings.torch_device == "cpu":
            pin_malloc_thresholds()  # no per-process malloc bias (measure.timing)
        observer = make_observer(settings.torch_device) if settings.measure_energy else None
        versions = dict(read_versions())
        state_fn = lambda: device_state(settings.torch_device)  # noqa: E731
    exact_ms: dict[tuple, float] = {}
    bar = Progress(len(points), stream=stream, enabled=progress)
    sweep_id = store.start_sweep(command, settings.device)
    outcome = "interrupted"
    started = time.monotonic()
    own_server = memory_server is None
    memory_server = MemoryServer() if own_server else memory_server
    references = sweep_point.References(settings)
    pool = (TimingPool(settings.time_processes) if settings.time_processes > 0
            and settings.torch_device == "cpu" and not model_only else None)
    pending: list[tuple[tuple, Point, Record, bool]] = []  # measured, awaiting the pool

    def flush(pooled: bool) -> None:
        """Pool the pending rows' samples with the workers' (``pooled``), then write them."""
        if pooled and pending:
            results = pool.time([p for _, p, _, _ in pending], settings)
            for i, (_, point, record, _) in enumerate(pending):
                add_process_samples(record, [result[i] for result in results])
                _remember_exact(exact_ms, point, record)  # exact comes first in a shape
            for _, point, record, _ in pending:
                sweep_point.add_rates(record, exact_ms.get(_shape(point)))
        while pending:
            key, point, record, again = pending.pop(0)
            try:
                if not store.add(record, replace=again):
                    summary.lost_race += 1
            finally:
                store.release(key)
            _remember_exact(exact_ms, point, record)

    try:
        for point in points:
            if pending and _shape(point) != _shape(pending[0][1]):
                flush(pooled=True)
            key = point_key(point, settings, source)
            again = key in redo_keys
            if store.has(key) and not again:  # re-read: another sweep may have written it
                summary.resumed += 1
                _remember_exact(exact_ms, point, store.get(key))
                bar.step(f"{point.label()} (in store)")
                continue
            if not store.claim(key, sweep_id):  # another sweep is measuring it now
                summary.claimed_elsewhere += 1
                bar.step(f"{point.label()} (being measured by another sweep)")
                continue
            held = False
            try:
                if store.has(key) and not again:  # it finished between has() and claim()
                    summary.resumed += 1
                    _remember_exact(exact_ms, point, store.get(key))
                    bar.step(f"{point.label()} (in store)")
                    continue
                t0 = time.monotonic()
                if model_only:  # exact's modeled time comes from the model, same kind
                    record = model_point(point, settings, spec)
                else:
                    reference = exact_ms.get(_shape(point)) or _exact_from_store(
                        store, point, settings, source)
                    others = store.others_claiming()
                    record = sweep_point.measure_point(
                        point, settings, spec, observer, exact_ms=reference,
                        state_fn=state_fn, versions=versions, memory_server=memory_server,
                        references=references)
                    if record.status == "ok" and (others or store.others_claiming()):
                        record.noise = add_flag(record.noise, "concurrent")
                if pool is not None and record.status == "ok" and record.time_samples_ms:
                    pending.append((key, point, record, again))  # written after the pool
                    held = True
                elif not store.add(record, replace=again):
                    summary.lost_race += 1
            finally:
                if not held:
                    store.release(key)
            if not held:
                _remember_exact(exact_ms, point, record)
            summary.measured += 1
            summary.statuses[record.status] = summary.statuses.get(record.status, 0) + 1
            bar.step(f"{point.label()} {record.status}", ran_seconds=time.monotonic() - t0)
        flush(pooled=True)
        outcome = "done"
    finally:
        flush(pooled=False)  # interrupted: the rows measured so far, as they are
        if pool is not None:
            pool.close()
        if own_server:
            memory_server.close()
        bar.close()
        summary.seconds = time.monotonic() - started
        store.finish_sweep(sweep_id, outcome)
    return summary


def _shape(point: Point) -> tuple:
    return (point.problem, point.kernel_config)


def _remember_exact(table: dict, point: Point, record: Record | None) -> None:
    if (record is not None and point.budget.method == "exact" and record.status == "ok"
            and record.time_median_ms):
        table[_shape(point)] = record.time_median_ms


def _exact_from_store(store: Store, point: Point, settings: Settings,
                      source: str) -> float | None:
    """The exact time of this shape from an earlier sweep (resumed or exact-less grid)."""
    exact = Point(point.problem, Budget("exact"), "torch")
    record = store.get(point_key(exact, settings, source))
    if record is not None and record.status == "ok" and record.time_median_ms:
        return record.time_median_ms
    return None


def estimate_seconds(points: list[Point], settings: Settings) -> float:
    """A rough wall-clock estimate of measuring ``points`` (for --dry-run)."""
    processes = settings.time_processes if settings.torch_device == "cpu" else 0
    per_point = ((1 + processes) * (settings.warmup_ms + settings.rep_ms) / 1e3
                 + 0.2 * len(settings.seeds))
    if settings.measure_energy and settings.torch_device != "cpu":
        per_point += 1.0
    return per_point * len(points) + WORKER_START_S * processes

