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
