"""Where a tune run happens: here (:func:`tune_here`), or every device of a list at once
on a Ray cluster (:func:`tune_per_device`), each device's file written by the driver."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from sbbench.autotune.run import (
    Progress,
    TuneReport,
    TuneRequest,
    tune_cpu,
    tune_gpu,
    write_report,
)


def tune_here(request: TuneRequest, progress: Progress | None = None, *,
              write: bool = True) -> TuneReport:
    """The torch path on a CPU profile, the kernels' tiles on a GPU one."""
    tune = tune_cpu if request.device.kind == "cpu" else tune_gpu
    return tune(request, progress, write=write)


def ray_devices(gpu: str) -> list:
    """The profiles of ``--gpu a,b`` for a Ray run (named ones only: each worker checks
    that it holds its device)."""
    from sbbench.sweep.executors import resolve_targets
    from sbbench.sweep.runner import Settings

    return [target.spec for target in resolve_targets(gpu, Settings(device=""), remote=True)]


@dataclass
class DeviceTuning:
    """One device's part of a fan-out: its report, or why it has none."""

    device: str
    request: TuneRequest
    report: TuneReport | None = None
    host: str | None = None  # the worker that measured
    error: str | None = None  # the worker gave up
    attempts: int = 0

    @property
    def written(self) -> bool:
        return self.report is not None and self.report.path is not None


def tune_per_device(requests: list[TuneRequest], executor,
                    progress: Progress | None = None) -> list[DeviceTuning]:
    """Tune each request's device on a worker holding one device of that type (through
    ``executor.run_per_device``) and write each file here. The tuning cache stays on the
    driver's disk, so the workers measure afresh."""
    requests = [dataclasses.replace(request, cache_path=None) for request in requests]
    by_name = {request.device.name: request for request in requests}

    def tune_on_worker(spec):
        return tune_here(by_name[spec.name], progress, write=False)

    runs = executor.run_per_device(tune_on_worker, [r.device for r in requests])
    results = []
    for request in requests:
        run = runs[request.device.name]
        result = DeviceTuning(request.device.name, request, attempts=run.attempts)
        if run.error is not None:
            result.error = str(run.error)
        else:
            result.report = run.value
            result.host = (run.worker or {}).get("hostname")
            write_report(request, result.report)
        results.append(result)
    return results
