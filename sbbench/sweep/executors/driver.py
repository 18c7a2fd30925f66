"""The driver's side of a distributed sweep: which points are out on which task, what
to run again when a worker is lost, and writing each row once (``RayExecutor.run_sweep``
holds one ``RaySweep``)."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from sbbench.core.errors import UserError
from sbbench.core.record import Record
from sbbench.core.types import Budget
from sbbench.sweep.executors.local import ExecutorSummary, Target
from sbbench.sweep.executors.worker import measure_batch, task_options
from sbbench.sweep.grid import Point
from sbbench.sweep.progress import Progress

if TYPE_CHECKING:
    from sbbench.sweep.executors.ray import RayExecutor
    from sbbench.sweep.store import Store


class VersionMismatch(UserError):
    """A worker runs another sbbench code version than the driver."""


def describe_ray_error(err: BaseException) -> str:
    """One line for a failed task: the exception the task raised (RayTaskError), or how
    its worker was lost (WorkerCrashedError, NodeDiedError, ...)."""
    cause = getattr(err, "cause", None)  # RayTaskError: what the task itself raised
    if isinstance(cause, BaseException):
        return "the task raised " + _one_line(cause)
    return "worker lost: " + _one_line(err)


def _one_line(err: BaseException) -> str:
    text = _ANSI.sub("", str(err))
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return f"{type(err).__name__}: {lines[0] if lines else ''}"[:300]


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


@dataclass
class PendingPoint:
    """One point of the sweep still to be written."""

    target: int  # index into the targets
    point: Point
    key: tuple
    replace: bool  # --redo: the row replaces the one in the store
    attempts: int = 0  # lost or refused runs counted against this point
    errors: list[str] = field(default_factory=list)

    @property
    def group(self) -> tuple:
        return (self.target, self.point.problem, self.point.kernel_config)


@dataclass
class RayTask:
    items: list[PendingPoint]
    returned: set[int] = field(default_factory=set)


def mismatch_error(worker: dict, driver_version: str) -> VersionMismatch:
    return VersionMismatch(
        f"worker {worker.get('hostname')} (Ray node {worker.get('ray_node_id', '?')}) runs "
        f"sbbench {worker.get('code_version')}, the driver {driver_version}; install the same "
        f"sbbench on every node (same release and git revision), or pass "
        f"--allow-mixed-versions to keep rows from both (each row records its worker's "
        f"versions)")


def cancel_quietly(ray, waitable) -> None:
    try:
        ray.cancel(waitable)
    except Exception:  # already finished, or its worker is gone: nothing to stop
        pass


class RaySweep:
    """The driver's bookkeeping for one distributed sweep (RayExecutor.run_sweep)."""

    def __init__(self, executor: RayExecutor, ray, targets: list[Target], store: Store,
                 summary: ExecutorSummary, bar: Progress, resources: dict):
        self.executor, self.ray, self.targets, self.store = executor, ray, targets, store
        self.summary, self.bar, self.resources = summary, bar, resources
        self.groups: dict[tuple, list[PendingPoint]] = {}  # in grid order
        self.exact_ms: dict[tuple, float] = {}
        self.held: dict[tuple, list[list[PendingPoint]]] = {}  # chunks waiting for exact's time
        self.running: dict = {}  # ObjectRefGenerator -> RayTask
        self.written: set[tuple] = set()
        self.last_row = time.monotonic()  # the ETA is the mean gap between rows
        self.remote = ray.remote(max_retries=0)(measure_batch)
        self.options = {"allow_mixed_versions": executor.allow_mixed_versions,
                        "measure_cpu": executor.measure_cpu}

    def add(self, item: PendingPoint) -> None:
        self.groups.setdefault(item.group, []).append(item)

    def remember_exact(self, group: tuple, point: Point, record: Record | None) -> None:
        if (record is not None and point.budget.method == "exact" and record.status == "ok"
                and record.time_median_ms):
            self.exact_ms[group] = record.time_median_ms
            for chunk in self.held.pop(group, []):
                self.submit(chunk)

    def run(self) -> None:
        size = self.executor.batch_points
        for group, items in self.groups.items():
            if group not in self.exact_ms:
                self._exact_from_store(group)
            chunks = [items[i:i + size] for i in range(0, len(items), size)]
            self.submit(chunks[0])
            waits = (group not in self.exact_ms
                     and any(i.point.budget.method == "exact" for i in chunks[0]))
            if waits and chunks[1:]:
                self.held[group] = chunks[1:]
            else:
                for chunk in chunks[1:]:
                    self.submit(chunk)
        while self.running:
            ready, _ = self.ray.wait(list(self.running), num_returns=1,
                                     timeout=self.executor.poll_s)
            for generator in ready:
                self._next(generator)

    def _exact_from_store(self, group: tuple) -> None:
        """Exact's time on this shape from an earlier sweep (resumed, or --redo)."""
        from sbbench.sweep.runner import point_key

        target, problem, _ = group
        exact = Point(problem, Budget("exact"), "torch")
        self.remember_exact(group, exact, self.store.get(
            point_key(exact, self.targets[target].settings)))

    def submit(self, items: list[PendingPoint]) -> None:
        target = self.targets[items[0].target]
        generator = self.remote.options(
            **task_options(target.spec, target.settings, self.resources)).remote(
            [item.point.to_json() for item in items], target.settings, target.spec,
            self.exact_ms.get(items[0].group), self.options, self.executor.measure)
        self.running[generator] = RayTask(items)

    def cancel(self) -> None:
        for generator in self.running:
            cancel_quietly(self.ray, generator)
        self.running.clear()

    def _next(self, generator) -> None:
        task = self.running[generator]
        try:
            ref = next(generator)
        except StopIteration:
            self._ended(generator, "the task ended before measuring every point")
            return
        try:
            message = self.ray.get(ref)
        except self.ray.exceptions.RayError as err:
            self._ended(generator, describe_ray_error(err))
            return
        if message["kind"] == "mismatch":
            raise mismatch_error(message["worker"], self.targets[task.items[0].target]
                            .settings.code_version)
        if message["kind"] == "refused":
            self._ended(generator, message["reason"], refused=True)
            return
        task.returned.add(message["index"])
        item = task.items[message["index"]]
        self._write(item, Record.from_dict(message["record"]), message["worker"])
        if len(task.returned) == len(task.items):
            del self.running[generator]
            self._release(item.group)

    def _ended(self, generator, reason: str, *, refused: bool = False) -> None:
        """A task stopped before returning all its points: run the rest again."""
        task = self.running.pop(generator)
        left = [item for i, item in enumerate(task.items) if i not in task.returned]
        if not left:
            return
        self._release(left[0].group)
        if len(left) > 1 and not refused:
            # Which of them was running is unknown (a row yielded just before the loss can
            # be lost with the worker): each runs again alone, no attempt counted.
            for item in left:
                self.summary.retried += 1
                self.submit([item])
            return
        again = []
        for item in left:
            item.attempts += 1
            item.errors.append(reason)
            if item.attempts >= self.executor.max_attempts:
                self._give_up(item)
            else:
                self.summary.retried += 1
                again.append(item)
        if again:
            self.submit(again)

    def _release(self, group: tuple) -> None:
        for chunk in self.held.pop(group, []):
            self.submit(chunk)

    def _give_up(self, item: PendingPoint) -> None:
        from sbbench.sweep.point import base_record

        target = self.targets[item.target]
        record = base_record(item.point, target.settings, "measured")
        record.status = "failed"
        record.reason = (f"gave up after {item.attempts} lost run(s) on Ray workers: "
                         + " | ".join(item.errors))[:1000]
        record.device_state["executor"] = {"name": "ray", "attempts": list(item.errors)}
        self.summary.gave_up += 1
        self._write(item, record, None)

    def _write(self, item: PendingPoint, record: Record, worker: dict | None) -> None:
        if item.key in self.written:  # never twice, whatever the cluster did
            return
        if record.key() != item.key:
            raise RuntimeError(f"a worker returned a row for another key: {record.key()} "
                               f"for {item.key}")
        target = self.targets[item.target]
        exact_ms = self.exact_ms.get(item.group)
        if (record.status == "ok" and record.speedup_vs_exact is None and exact_ms
                and record.time_median_ms):
            record.speedup_vs_exact = exact_ms / record.time_median_ms
        if worker is not None and worker.get("code_version") != target.settings.code_version:
            note = (f"measured by sbbench {worker.get('code_version')} (driver: "
                    f"{target.settings.code_version}; --allow-mixed-versions)")
            record.reason = f"{record.reason}; {note}" if record.reason else note
        if not self.store.add(record, replace=item.replace):
            self.summary.lost_race += 1
        self.written.add(item.key)
        self.summary.measured += 1
        self.summary.statuses[record.status] = self.summary.statuses.get(record.status, 0) + 1
        host = (worker or {}).get("hostname")
        if host:
            self.summary.nodes[host] = self.summary.nodes.get(host, 0) + 1
        self.remember_exact(item.group, item.point, record)
        where = f" @ {host}" if host else ""
        now = time.monotonic()
        self.bar.step(f"{item.point.label()} on {target.spec.name} {record.status}{where}",
                      ran_seconds=now - self.last_row)
        self.last_row = now
