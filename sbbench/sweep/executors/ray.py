"""The Ray executor: a sweep's points as Ray tasks, the driver the only writer of the
store (the package docstring says how points are scheduled, retried and checked)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from sbbench.core.devices import DeviceSpec
from sbbench.core.errors import UserError
from sbbench.core.record import Record
from sbbench.sweep.executors.driver import (
    PendingPoint,
    RaySweep,
    VersionMismatch,
    cancel_quietly,
    describe_ray_error,
    mismatch_error,
)
from sbbench.sweep.executors.local import ExecutorSummary, LocalExecutor, Target
from sbbench.sweep.executors.worker import call_on_device, task_options
from sbbench.sweep.grid import Point
from sbbench.sweep.progress import Progress

if TYPE_CHECKING:
    from sbbench.sweep.runner import Settings
    from sbbench.sweep.store import Store

DEFAULT_MAX_ATTEMPTS = 3
DEFAULT_BATCH_POINTS = 8
POLL_S = 1.0


def _import_ray():
    try:
        import ray
    except ImportError:
        raise UserError("--executor ray needs Ray: pip install 'sbbench[ray]'") from None
    return ray


@dataclass
class DeviceRun:
    """The outcome of ``run_per_device`` for one device."""

    value: object = None
    error: str | None = None  # set when the device gave up
    worker: dict = field(default_factory=dict)
    attempts: int = 0


class RayExecutor:
    """Runs a sweep's points as Ray tasks; the driver writes the store (module doc).

    address: a cluster (``host:6379``, ``auto``); None starts a local Ray instance (with
    ``init_options`` passed to ``ray.init``, e.g. ``num_cpus=2``). An already connected
    Ray (``ray.is_initialized()``) is used as it is. measure: a stand-in for
    ``point.measure_point`` (tests); measure_cpu: CPU targets measure their peaks on each
    worker (off: the profile's as given).
    """

    name = "ray"

    def __init__(self, address: str | None = None, *,
                 max_attempts: int = DEFAULT_MAX_ATTEMPTS,
                 batch_points: int = DEFAULT_BATCH_POINTS,
                 allow_mixed_versions: bool = False, init_options: dict | None = None,
                 measure: Callable[..., Record] | None = None, measure_cpu: bool = True,
                 poll_s: float = POLL_S):
        if max_attempts < 1 or batch_points < 1:
            raise ValueError("max_attempts and batch_points must be >= 1")
        self.address, self.max_attempts, self.batch_points = address, max_attempts, batch_points
        self.allow_mixed_versions = allow_mixed_versions
        self.init_options = dict(init_options or {})
        self.measure, self.measure_cpu, self.poll_s = measure, measure_cpu, poll_s
        self._ray = None
        self._started = False

    # -- connection ---------------------------------------------------------------------

    def connect(self):
        """Ray, connected: to ``address``, to the Ray already initialised, or to a new
        local instance (shut down by ``close``)."""
        if self._ray is not None:
            return self._ray
        ray = _import_ray()
        if not ray.is_initialized():
            options = {"include_dashboard": False, **self.init_options}
            if self.address:
                ray.init(address=self.address, **options)
            else:
                ray.init(**options)
                self._started = True
        self._ray = ray
        return ray

    def close(self) -> None:
        if self._ray is not None and self._started:
            self._ray.shutdown()
        self._ray, self._started = None, False

    def __enter__(self) -> RayExecutor:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def check_cluster(self, specs: list[DeviceSpec], settings: list[Settings]) -> dict:
        """UserError unless the cluster has each target's resources; returns them."""
        resources = self.connect().cluster_resources()
        have = sorted(k.split(":", 1)[1] for k in resources if k.startswith("accelerator_type:"))
        for spec, sweep in zip(specs, settings, strict=True):
            options = task_options(spec, sweep, resources)
            if spec.kind == "cpu":
                if resources.get("CPU", 0) < options["num_cpus"]:
                    raise UserError(f"the Ray cluster has {resources.get('CPU', 0):g} CPUs; "
                                    f"a CPU point asks for {options['num_cpus']}")
            elif f"accelerator_type:{options['accelerator_type']}" not in resources:
                raise UserError(
                    f"no node of the Ray cluster has {spec.name} GPUs (Ray accelerator type "
                    f"{options['accelerator_type']}); the cluster has: "
                    f"{', '.join(have) or 'no GPUs'}")
        return resources

    # -- a sweep -------------------------------------------------------------------------

    def run_sweep(self, points: list[Point], targets: list[Target], store: Store, *,
                  model_only: bool = False, redo: str = "none", progress: bool = True,
                  command: str = "", stream=None) -> ExecutorSummary:
        """Measure every point on every target that is not in ``store`` yet (``redo``:
        as ``runner.run_sweep``). A model-only sweep measures nothing: it runs here."""
        if model_only:
            return LocalExecutor().run_sweep(points, targets, store, model_only=True,
                                             redo=redo, progress=progress, command=command,
                                             stream=stream)
        if redo not in ("none", "failed", "all"):
            raise ValueError(f"redo must be none, failed or all, got {redo!r}")
        from sbbench.sweep.runner import point_key

        ray = self.connect()
        resources = self.check_cluster([t.spec for t in targets],
                                       [t.settings for t in targets])
        summary = ExecutorSummary(total=len(points) * len(targets))
        redo_keys = (store.done_keys(("failed", "oom")) if redo == "failed"
                     else store.done_keys() if redo == "all" else set())
        bar = Progress(summary.total, stream=stream, enabled=progress)
        sweep = RaySweep(self, ray, targets, store, summary, bar, resources)
        sweep_id = store.start_sweep(command, ",".join(t.settings.device for t in targets))
        # The driver claims every point it hands out (released by finish_sweep), so a
        # sweep started beside it on the same store leaves them alone.
        for index, target in enumerate(targets):
            for point in points:
                key = point_key(point, target.settings)
                again = key in redo_keys
                if not again and store.has(key):
                    summary.resumed += 1
                    sweep.remember_exact((index, point.problem, point.kernel_config),
                                         point, store.get(key))
                    bar.step(f"{point.label()} on {target.spec.name} (in store)")
                    continue
                if not store.claim(key, sweep_id):
                    summary.claimed_elsewhere += 1
                    bar.step(f"{point.label()} on {target.spec.name} (being measured by "
                             f"another sweep)")
                    continue
                sweep.add(PendingPoint(index, point, key, again))
        outcome, started = "interrupted", time.monotonic()
        try:
            sweep.run()
            outcome = "done"
        except VersionMismatch:
            outcome = "refused"
            raise
        finally:
            sweep.cancel()
            bar.close()
            summary.seconds = time.monotonic() - started
            store.finish_sweep(sweep_id, outcome)
        return summary

    # -- one call per device (the tune hook) ---------------------------------------------

    def run_per_device(self, fn: Callable[[DeviceSpec], object], specs: list[DeviceSpec], *,
                       cpus: int = 1) -> dict[str, DeviceRun]:
        """``fn(spec)`` for every device at once, each on a worker holding one device of
        that type (CPU profiles: ``cpus`` CPUs), after the device and version checks.

        A lost or refusing worker is retried up to ``max_attempts`` runs; then that device's
        DeviceRun has the error (the others go on). A worker on another code version
        raises VersionMismatch unless ``allow_mixed_versions``. ``fn`` must be picklable
        (a module-level function, or a closure over picklable values).
        """
        from sbbench.sweep.runner import Settings

        ray = self.connect()
        settings = [Settings(device=s.name, num_threads=cpus if s.kind == "cpu" else 0)
                    for s in specs]
        resources = self.check_cluster(specs, settings)
        remote = ray.remote(max_retries=0)(call_on_device)
        runs = {spec.name: DeviceRun() for spec in specs}
        pending = {}

        def submit(spec, sweep):
            ref = remote.options(**task_options(spec, sweep, resources)).remote(
                fn, spec, sweep.code_version, self.allow_mixed_versions)
            pending[ref] = (spec, sweep)

        for spec, sweep in zip(specs, settings, strict=True):
            submit(spec, sweep)
        try:
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1, timeout=self.poll_s)
                for ref in ready:
                    spec, sweep = pending.pop(ref)
                    run = runs[spec.name]
                    run.attempts += 1
                    try:
                        message = ray.get(ref)
                    except ray.exceptions.RayError as err:
                        message = {"kind": "failed", "reason": describe_ray_error(err)}
                    run.worker = message.get("worker", run.worker)
                    if message["kind"] == "result":
                        run.value, run.error = message["value"], None
                    elif message["kind"] == "mismatch":
                        raise mismatch_error(message["worker"], sweep.code_version)
                    else:
                        run.error = message["reason"]
                        if run.attempts < self.max_attempts:
                            submit(spec, sweep)
        finally:
            for ref in pending:
                cancel_quietly(ray, ref)
        return runs

