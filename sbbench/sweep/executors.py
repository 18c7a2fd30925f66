"""Where sweep points run: here, one after another, or across a Ray cluster.

``LocalExecutor`` is ``runner.run_sweep`` as it always was (the default): one device, this
process, points in grid order.

``RayExecutor`` runs one sweep across a Ray cluster (``pip install 'sbbench[ray]'``), with
Ray doing the scheduling:

- The points of one shape on one device, in chunks of at most ``batch_points``, form one
  Ray task: a streaming generator, so each Record comes back the moment it is measured. A
  GPU task asks for one GPU of the profile's type through Ray's accelerator-type resource
  (``accelerator_type="A100"`` = ``resources={"accelerator_type:A100": 0.001}``); a CPU
  task asks for ``settings.num_threads or 1`` CPUs. A shape's first chunk holds its exact
  point and runs first; the shape's other chunks wait for exact's time (or for that chunk
  to end), so every row gets its speedup, as in a local sweep.
- The driver is the only writer of the store: workers return Records, the driver writes
  each as it arrives (``ray.wait``). Workers need no shared filesystem, and an interrupted
  driver resumes like a local sweep: the keys already in the store are skipped.
- A lost worker (crash, ``os._exit``, OOM kill, preempted node): the rows it had returned
  are kept. The chunk's points not returned yet are run again, each as its own task, and
  a loss counts against a point only when it was the one point left in its task -- the
  point that was running. After ``max_attempts`` such losses the point is recorded as
  failed with the reasons; the rest of the sweep goes on. Ray's own task retries are off
  (``max_retries=0``), so no point runs twice behind the driver's back, and the driver
  writes each key at most once.
- Every worker checks, before measuring, that its device is the requested profile (the
  local sweep's rule, ``devices.resolve_gpu``: a mismatch refuses the chunk, which is
  retried, up to ``max_attempts``), and that it runs the driver's sbbench code version: a
  different one stops the sweep (``VersionMismatch``) unless ``allow_mixed_versions``.
  Every row carries its worker's own versions and device state, plus the worker's host,
  Ray node and code version under ``device_state["worker"]``.

``RayExecutor.run_per_device`` is the same machinery for one call per device (the hook
``sbbench tune`` uses to tune several devices at once).

Ray is imported only when a RayExecutor connects, torch (through the runner) only when
something runs: the CLI imports this module for its flags at no cost.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import os
import re
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from sbbench.core.devices import DeviceSpec, get_device, resolve_gpu
from sbbench.core.errors import UserError
from sbbench.core.record import Record, code_version
from sbbench.core.types import Budget
from sbbench.sweep.grid import Point

if TYPE_CHECKING:  # the runner imports torch: the CLI imports this module without it
    from sbbench.sweep.runner import Progress, Settings, Summary
    from sbbench.sweep.store import Store

# Ray's accelerator type of each GPU profile: what Ray detects from the NVML name on its
# own (ray/_private/accelerators/nvidia_gpu.py: "NVIDIA A100-SXM4-80GB" -> "A100",
# "NVIDIA H100 PCIe" -> "H100", "NVIDIA GeForce RTX 4090" -> "GeForce-RTX-4090").
RAY_ACCELERATOR_TYPES = {
    "a100-40gb": "A100", "a100-80gb": "A100", "h100-sxm": "H100", "h100-pcie": "H100",
    "h200": "H200", "l4": "L4", "l40s": "L40S", "a10g": "A10G", "v100": "V100",
    "rtx4090": "GeForce-RTX-4090",
}
# Ray's coarse types above do not tell the two A100s, or the two H100s, apart. Nodes can
# advertise a finer label by hand (``ray start --resources='{"accelerator_type:A100-80G":
# 1}'``; A100-40G / A100-80G are Ray's own constants); a sweep asks for the fine label
# whenever some node advertises it.
RAY_FINE_ACCELERATOR_TYPES = {
    "a100-40gb": "A100-40G", "a100-80gb": "A100-80G", "h100-sxm": "H100-SXM",
    "h100-pcie": "H100-PCIE",
}
DEFAULT_MAX_ATTEMPTS = 3
DEFAULT_BATCH_POINTS = 8
POLL_S = 1.0


class VersionMismatch(UserError):
    """A worker runs another sbbench code version than the driver."""


@dataclass(frozen=True)
class Target:
    """One device of a sweep: its profile and how its points are measured."""

    spec: DeviceSpec
    settings: Settings


@dataclass
class ExecutorSummary:
    """``runner.Summary`` (same fields, same line) plus what a distributed sweep adds."""

    total: int = 0
    measured: int = 0
    resumed: int = 0  # already in the store: skipped
    lost_race: int = 0  # another sweep wrote the same key first
    statuses: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    retried: int = 0  # runs of a point again after its worker was lost or refused it
    gave_up: int = 0  # points recorded failed after max_attempts lost runs
    nodes: dict[str, int] = field(default_factory=dict)  # rows measured per worker host

    def line(self) -> str:
        from sbbench.sweep.runner import Summary

        text = Summary.line(self)
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
        self.seconds += other.seconds
        for status, count in other.statuses.items():
            self.statuses[status] = self.statuses.get(status, 0) + count


# ---------------------------------------------------------------------------------------
# Targets and CLI helpers
# ---------------------------------------------------------------------------------------

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


def add_executor_arguments(parser: argparse.ArgumentParser) -> None:
    """``--executor``, ``--address`` and the Ray executor's options."""
    group = parser.add_argument_group("where the points run")
    group.add_argument("--executor", choices=("local", "ray"), default="local",
                       help="local: this machine, one point at a time (default); ray: a Ray "
                            "cluster, every device of --gpu at once (pip install "
                            "'sbbench[ray]')")
    group.add_argument("--address", metavar="ADDR", default=None,
                       help="ray: the cluster to join (host:6379, or auto for the one this "
                            "node belongs to); without it a local Ray instance is started")
    group.add_argument("--max-attempts", type=int, default=DEFAULT_MAX_ATTEMPTS, metavar="N",
                       help=f"ray: runs of a point whose worker is lost before it is recorded "
                            f"as failed (default {DEFAULT_MAX_ATTEMPTS})")
    group.add_argument("--batch-points", type=int, default=DEFAULT_BATCH_POINTS, metavar="N",
                       help=f"ray: points of one shape per task (default "
                            f"{DEFAULT_BATCH_POINTS})")
    group.add_argument("--allow-mixed-versions", action="store_true",
                       help="ray: keep rows from workers whose sbbench code version differs "
                            "from the driver's (each row records its worker's versions)")


def executor_words(args) -> list[str]:
    """The executor flags of ``args`` for the canonical command line."""
    if getattr(args, "executor", "local") == "local":
        return []
    words = ["--executor", args.executor]
    if args.address:
        words += ["--address", args.address]
    if args.max_attempts != DEFAULT_MAX_ATTEMPTS:
        words += ["--max-attempts", str(args.max_attempts)]
    if args.batch_points != DEFAULT_BATCH_POINTS:
        words += ["--batch-points", str(args.batch_points)]
    if args.allow_mixed_versions:
        words.append("--allow-mixed-versions")
    return words


def executor_from_args(args) -> LocalExecutor | RayExecutor:
    if getattr(args, "executor", "local") == "local":
        if getattr(args, "address", None):
            raise UserError("--address needs --executor ray")
        return LocalExecutor()
    for name in ("max_attempts", "batch_points"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be >= 1, got "
                            f"{getattr(args, name)}")
    return RayExecutor(args.address, max_attempts=args.max_attempts,
                       batch_points=args.batch_points,
                       allow_mixed_versions=args.allow_mixed_versions)


# ---------------------------------------------------------------------------------------
# Local
# ---------------------------------------------------------------------------------------

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


# ---------------------------------------------------------------------------------------
# What runs on a Ray worker
# ---------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=1)
def _own_code_version() -> str:
    return code_version()


def worker_info() -> dict:
    """Who measured: host, Ray node, process and sbbench code version of this worker."""
    info = {"hostname": socket.gethostname(), "pid": os.getpid(),
            "code_version": _own_code_version()}
    try:
        import ray

        if ray.is_initialized():
            info["ray_node_id"] = ray.get_runtime_context().get_node_id()
    except ImportError:
        pass
    return info


def device_refusal(spec: DeviceSpec) -> str | None:
    """Why this machine must not measure ``spec`` (the local sweep's rule), or None.

    Every machine has a CPU; a GPU profile must be the local device."""
    if spec.kind == "cpu":
        return None
    try:
        resolve_gpu(spec.name)
    except UserError as err:
        return f"{socket.gethostname()} refused: {err}"
    return None


@functools.lru_cache(maxsize=4)
def _measured_cpu(threads: int) -> DeviceSpec:
    from sbbench.core.devices import measure_cpu

    return measure_cpu()


def measure_batch(points_json: list[str], settings: Settings, spec: DeviceSpec,
                  exact_ms: float | None, options: dict,
                  measure: Callable[..., Record] | None = None) -> Iterator[dict]:
    """A Ray task: measure points of one shape on this worker, yielding one message each.

    points_json: ``Point.to_json()`` of each point; exact_ms: exact's median on this shape
    if the driver knows it; options: ``allow_mixed_versions``, ``measure_cpu`` (measure a
    CPU's peaks here; cached per worker process); measure: ``runner.measure_point`` or a
    stand-in with its signature (tests). Yields ``{"kind": "refused" | "mismatch",
    "worker", ...}`` and stops, or ``{"kind": "record", "index", "record", "worker"}`` for
    each point in order.
    """
    import torch

    from sbbench.measure.telemetry import device_state, make_observer
    from sbbench.measure.telemetry import versions as read_versions
    from sbbench.sweep import runner

    worker = worker_info()
    reason = device_refusal(spec)
    if reason:
        yield {"kind": "refused", "reason": reason, "worker": worker}
        return
    if (not options.get("allow_mixed_versions")
            and worker["code_version"] != settings.code_version):
        yield {"kind": "mismatch", "worker": worker}
        return
    measure = measure or runner.measure_point
    if settings.num_threads:
        torch.set_num_threads(settings.num_threads)
    if spec.kind == "cpu" and options.get("measure_cpu"):
        spec = _measured_cpu(torch.get_num_threads())
    observer = make_observer(settings.torch_device) if settings.measure_energy else None
    versions = dict(read_versions())
    state_fn = lambda: device_state(settings.torch_device)  # noqa: E731
    references = runner.References(settings)
    memory_server = (runner.MemoryServer() if settings.measure_memory
                     and settings.torch_device == "cpu" else None)
    try:
        for index, text in enumerate(points_json):
            point = Point.from_json(text)
            record = measure(point, settings, spec, observer, exact_ms=exact_ms,
                             state_fn=state_fn, versions=versions,
                             memory_server=memory_server, references=references)
            if point.budget.method == "exact" and record.status == "ok" \
                    and record.time_median_ms:
                exact_ms = record.time_median_ms
            record.device_state["worker"] = worker
            yield {"kind": "record", "index": index, "record": record.as_dict(),
                   "worker": worker}
    finally:
        if memory_server is not None:
            memory_server.close()


def call_on_device(fn: Callable[[DeviceSpec], object], spec: DeviceSpec,
                   driver_code_version: str, allow_mixed_versions: bool) -> dict:
    """A Ray task: ``fn(spec)`` on this worker after the device and version checks."""
    worker = worker_info()
    reason = device_refusal(spec)
    if reason:
        return {"kind": "refused", "reason": reason, "worker": worker}
    if not allow_mixed_versions and worker["code_version"] != driver_code_version:
        return {"kind": "mismatch", "worker": worker}
    return {"kind": "result", "value": fn(spec), "worker": worker}


# ---------------------------------------------------------------------------------------
# The Ray driver
# ---------------------------------------------------------------------------------------

def _import_ray():
    try:
        import ray
    except ImportError:
        raise UserError("--executor ray needs Ray: pip install 'sbbench[ray]'") from None
    return ray


def task_options(spec: DeviceSpec, settings: Settings,
                 cluster_resources: dict | None = None) -> dict:
    """Ray resources of one task measuring on ``spec``: one GPU of the profile's type, or
    CPUs. ``cluster_resources`` (``ray.cluster_resources()``) picks a fine accelerator
    label (A100-80G) over the coarse one (A100) when some node advertises it."""
    if spec.kind == "cpu":
        return {"num_cpus": settings.num_threads or 1, "num_gpus": 0}
    return {"num_cpus": 1, "num_gpus": 1,
            "accelerator_type": accelerator_type(spec, cluster_resources)}


def accelerator_type(spec: DeviceSpec, cluster_resources: dict | None = None) -> str:
    """The Ray accelerator type a task for GPU profile ``spec`` asks for."""
    fine = RAY_FINE_ACCELERATOR_TYPES.get(spec.name)
    if fine and cluster_resources and f"accelerator_type:{fine}" in cluster_resources:
        return fine
    if spec.name not in RAY_ACCELERATOR_TYPES:
        raise UserError(f"device profile {spec.name} has no Ray accelerator type; add it to "
                        f"sbbench.sweep.executors.RAY_ACCELERATOR_TYPES (known: "
                        f"{', '.join(sorted(RAY_ACCELERATOR_TYPES))})")
    return RAY_ACCELERATOR_TYPES[spec.name]


def _describe_ray_error(err: BaseException) -> str:
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
class _Item:
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
class _Task:
    items: list[_Item]
    returned: set[int] = field(default_factory=set)


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
    ``runner.measure_point`` (tests); measure_cpu: CPU targets measure their peaks on each
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
        from sbbench.sweep.runner import Progress, point_key

        ray = self.connect()
        resources = self.check_cluster([t.spec for t in targets],
                                       [t.settings for t in targets])
        summary = ExecutorSummary(total=len(points) * len(targets))
        redo_keys = (store.done_keys(("failed", "oom")) if redo == "failed"
                     else store.done_keys() if redo == "all" else set())
        bar = Progress(summary.total, stream=stream, enabled=progress)
        sweep = _Sweep(self, ray, targets, store, summary, bar, resources)
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
                sweep.add(_Item(index, point, key, again))
        sweep_id = store.start_sweep(command, ",".join(t.settings.device for t in targets))
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
                        message = {"kind": "failed", "reason": _describe_ray_error(err)}
                    run.worker = message.get("worker", run.worker)
                    if message["kind"] == "result":
                        run.value, run.error = message["value"], None
                    elif message["kind"] == "mismatch":
                        raise _mismatch(message["worker"], sweep.code_version)
                    else:
                        run.error = message["reason"]
                        if run.attempts < self.max_attempts:
                            submit(spec, sweep)
        finally:
            for ref in pending:
                _cancel(ray, ref)
        return runs


def _mismatch(worker: dict, driver_version: str) -> VersionMismatch:
    return VersionMismatch(
        f"worker {worker.get('hostname')} (Ray node {worker.get('ray_node_id', '?')}) runs "
        f"sbbench {worker.get('code_version')}, the driver {driver_version}; install the same "
        f"sbbench on every node (same release and git revision), or pass "
        f"--allow-mixed-versions to keep rows from both (each row records its worker's "
        f"versions)")


def _cancel(ray, waitable) -> None:
    try:
        ray.cancel(waitable)
    except Exception:  # already finished, or its worker is gone: nothing to stop
        pass


class _Sweep:
    """The driver's bookkeeping for one distributed sweep (RayExecutor.run_sweep)."""

    def __init__(self, executor: RayExecutor, ray, targets: list[Target], store: Store,
                 summary: ExecutorSummary, bar: Progress, resources: dict):
        self.executor, self.ray, self.targets, self.store = executor, ray, targets, store
        self.summary, self.bar, self.resources = summary, bar, resources
        self.groups: dict[tuple, list[_Item]] = {}  # in grid order
        self.exact_ms: dict[tuple, float] = {}
        self.held: dict[tuple, list[list[_Item]]] = {}  # chunks waiting for exact's time
        self.running: dict = {}  # ObjectRefGenerator -> _Task
        self.written: set[tuple] = set()
        self.last_row = time.monotonic()  # the ETA is the mean gap between rows
        self.remote = ray.remote(max_retries=0)(measure_batch)
        self.options = {"allow_mixed_versions": executor.allow_mixed_versions,
                        "measure_cpu": executor.measure_cpu}

    def add(self, item: _Item) -> None:
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

    def submit(self, items: list[_Item]) -> None:
        target = self.targets[items[0].target]
        generator = self.remote.options(
            **task_options(target.spec, target.settings, self.resources)).remote(
            [item.point.to_json() for item in items], target.settings, target.spec,
            self.exact_ms.get(items[0].group), self.options, self.executor.measure)
        self.running[generator] = _Task(items)

    def cancel(self) -> None:
        for generator in self.running:
            _cancel(self.ray, generator)
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
            self._ended(generator, _describe_ray_error(err))
            return
        if message["kind"] == "mismatch":
            raise _mismatch(message["worker"], self.targets[task.items[0].target]
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

    def _give_up(self, item: _Item) -> None:
        from sbbench.sweep import runner

        target = self.targets[item.target]
        record = runner.base_record(item.point, target.settings, "measured")
        record.status = "failed"
        record.reason = (f"gave up after {item.attempts} lost run(s) on Ray workers: "
                         + " | ".join(item.errors))[:1000]
        record.device_state["executor"] = {"name": "ray", "attempts": list(item.errors)}
        self.summary.gave_up += 1
        self._write(item, record, None)

    def _write(self, item: _Item, record: Record, worker: dict | None) -> None:
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
