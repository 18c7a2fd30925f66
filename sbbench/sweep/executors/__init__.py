"""Where sweep points run: here, one after another, or across a Ray cluster.

``LocalExecutor`` (``local.py``) is ``runner.run_sweep`` as it always was (the
default): one device, this process, points in grid order.

``RayExecutor`` (``ray.py``; what a worker runs is in ``worker.py``) runs one sweep across a
Ray cluster (``pip install 'sbbench[ray]'``), with Ray doing the scheduling:

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

from sbbench.sweep.executors.driver import RaySweep, VersionMismatch
from sbbench.sweep.executors.local import (
    ExecutorSummary,
    LocalExecutor,
    Target,
    resolve_targets,
)
from sbbench.sweep.executors.ray import (
    DEFAULT_BATCH_POINTS,
    DEFAULT_MAX_ATTEMPTS,
    POLL_S,
    DeviceRun,
    RayExecutor,
)
from sbbench.sweep.executors.worker import (
    RAY_ACCELERATOR_TYPES,
    RAY_FINE_ACCELERATOR_TYPES,
    accelerator_type,
    call_on_device,
    device_refusal,
    measure_batch,
    task_options,
    worker_info,
)

__all__ = [
    "DEFAULT_BATCH_POINTS", "DEFAULT_MAX_ATTEMPTS", "POLL_S", "RAY_ACCELERATOR_TYPES",
    "RAY_FINE_ACCELERATOR_TYPES", "DeviceRun", "ExecutorSummary", "LocalExecutor",
    "RayExecutor", "RaySweep", "Target", "VersionMismatch", "accelerator_type", "call_on_device",
    "device_refusal", "measure_batch", "resolve_targets", "task_options", "worker_info",
]


# --- moved to sbbench.cli.args ------------------------------------------------------------
# The command-line helpers below belong to the CLI layer; they stay here until the CLI
# imports them from there.

import argparse  # noqa: E402  # moved to sbbench.cli.args

from sbbench.core.errors import UserError  # noqa: E402  # moved to sbbench.cli.args


# moved to sbbench.cli.args
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


# moved to sbbench.cli.args
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


# moved to sbbench.cli.args
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

