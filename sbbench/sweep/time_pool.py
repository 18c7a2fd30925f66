"""CPU sweeps: the time samples of a shape's points taken again in fresh processes,
interleaved, and pooled with the sweep's own (``Settings.time_processes``).

Why (measured with ``benchmarks/check_reliability.py``, reports/check/): on a shared
2-core machine the time of a memory-bound method relative to the calibration kernel
moves 5-10% from one process to the next (a per-process bias: memory layout, what the
other core runs at the time), while the samples of one process agree within a few
percent. Samples of a single process cannot see that bias, so two sweeps of identical
code looked different and a real 1.3x slowdown hid inside the scatter. Pooling the
samples of several independent processes averages the bias (as ``sbbench ci-bench`` and
pyperf do), and sampling the points of a shape round by round (the order rotating)
spreads each point over the same stretch of time.

A pool keeps ``processes`` worker interpreters (``python -m sbbench.sweep.time_pool``)
for the whole sweep, one job per shape: each worker builds the shape's calls from the
same seeded inputs as the sweep, warms each up, then takes rounds of one sample of every
point, each sample followed by one sample of the calibration kernel (the pairing
``sbbench check`` divides by), for ``rep_ms`` per point. Workers run one after the other,
never beside each other (they would slow each other down).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import asdict

from sbbench.core.types import Budget, Problem
from sbbench.sweep.grid import Point

WORKER_TIMEOUT_S = 600.0
WORKER_START_S = 4.0  # a worker's interpreter and imports, roughly (for --dry-run)


def settings_json(settings) -> dict:
    """What a worker needs of the sweep's Settings to build and time the same calls."""
    return {"torch_device": settings.torch_device, "seeds": list(settings.seeds),
            "input_kind": settings.input_kind, "temperature": settings.temperature,
            "warmup_ms": settings.warmup_ms, "rep_ms": settings.rep_ms,
            "min_samples": settings.min_samples, "num_threads": settings.num_threads,
            "cpu_clock": settings.cpu_clock, "device": settings.device,
            "paired_reference": settings.paired_reference}


def point_json(point: Point) -> dict:
    return {"problem": asdict(point.problem), "budget": asdict(point.budget),
            "backend": point.backend, "kernel_config": point.kernel_config}


def point_from_json(data: dict) -> Point:
    return Point(Problem(**data["problem"]), Budget(**data["budget"]), data["backend"],
                 data["kernel_config"])


def sample_points(points: list[Point], settings) -> list[dict]:
    """Time ``points`` (one shape) interleaved in this process: per point
    {"samples_ms", "reference_samples_ms"} or {"error": text}."""
    import torch

    from sbbench.measure.calibration import calibration_call, sweep_cpu_clock
    from sbbench.measure.memory import describe
    from sbbench.measure.timing import CPU_CLOCKS
    from sbbench.sweep import point as sweep_point

    clock = CPU_CLOCKS[sweep_cpu_clock(settings.cpu_clock, torch.get_num_threads())]
    reference = calibration_call() if settings.paired_reference else None
    seed = settings.seeds[0]
    fns, results = [], []
    inputs = None
    with torch.no_grad():
        for point in points:
            try:
                if inputs is None:
                    inputs = sweep_point.inputs_for(point.problem, settings, seed)
                *_, call = sweep_point.prepare(point, settings, seed, inputs=inputs)
                fn = lambda call=call: call()  # noqa: E731
                fn()  # the first call: allocations, thread pool
                start = time.perf_counter_ns()
                while time.perf_counter_ns() - start < settings.warmup_ms * 1e6:
                    fn()
                    if reference is not None:
                        reference()
                fns.append(fn)
                results.append({"samples_ms": [], "reference_samples_ms": []})
            except Exception as err:  # the point failed here: say so, time the others
                fns.append(None)
                results.append({"error": describe(err)})
        live = [i for i, fn in enumerate(fns) if fn is not None]
        budget_ns = settings.rep_ms * 1e6 * len(live)
        rounds, start = 0, time.perf_counter_ns()
        while live and (rounds < settings.min_samples
                        or time.perf_counter_ns() - start < budget_ns):
            shift = rounds % len(live)
            for index in live[shift:] + live[:shift]:
                before = clock()
                fns[index]()
                results[index]["samples_ms"].append((clock() - before) / 1e6)
                if reference is not None:
                    before = clock()
                    reference()
                    results[index]["reference_samples_ms"].append((clock() - before) / 1e6)
            rounds += 1
    return results


def add_process_samples(record, per_process: list[dict]) -> None:
    """Pool the workers' samples (``TimingPool.time``'s results for this point) into
    ``record``'s own: samples, median, p20/p80 and the spread flag over all of them;
    ``device_state["timing_processes"]`` says how many processes gave how many samples
    (the sweep's own first) and why a worker gave none."""
    from sbbench.measure.timing import quantile
    from sbbench.sweep.guards import SPREAD_LIMIT, add_flag

    counts, errors = [len(record.time_samples_ms)], []
    samples, references = list(record.time_samples_ms), list(record.reference_samples_ms)
    for result in per_process:
        if "error" in result:
            errors.append(result["error"][:200])
            continue
        if bool(references) != bool(result["reference_samples_ms"]):
            errors.append("unpaired samples")  # cannot happen with one Settings; be safe
            continue
        samples += result["samples_ms"]
        references += result["reference_samples_ms"]
        counts.append(len(result["samples_ms"]))
    record.time_samples_ms, record.reference_samples_ms = samples, references
    record.time_median_ms = quantile(samples, 0.5)
    record.time_p20_ms, record.time_p80_ms = quantile(samples, 0.2), quantile(samples, 0.8)
    flags = [f for f in record.noise.split(",") if f and f != "spread"]
    record.noise = ",".join(flags)
    if record.time_p80_ms / record.time_p20_ms > SPREAD_LIMIT:
        record.noise = add_flag(record.noise, "spread")
    record.device_state["timing_processes"] = {"samples": counts, "errors": errors}


class TimingPool:
    """``processes`` worker interpreters, started on first use, kept for the sweep."""

    def __init__(self, processes: int):
        if processes < 1:
            raise ValueError(f"a timing pool needs processes >= 1, got {processes}")
        self.processes = processes
        self._workers: list[subprocess.Popen | None] = [None] * processes

    def time(self, points: list[Point], settings) -> list[list[dict]]:
        """Each worker's :func:`sample_points` result for ``points``, one worker after
        the other; a worker that fails gives {"error": ...} for every point."""
        options = settings_json(settings)
        # at least min_samples over all processes, at least 2 in each: a slow point (one
        # call > rep_ms) costs each worker a few calls, not min_samples
        options["min_samples"] = max(2, -(-settings.min_samples // (self.processes + 1)))
        job = json.dumps({"points": [point_json(p) for p in points],
                          "settings": options}) + "\n"
        return [self._ask(i, job, len(points)) for i in range(self.processes)]

    def _ask(self, index: int, job: str, n_points: int) -> list[dict]:
        import select

        worker = self._workers[index]
        if worker is None or worker.poll() is not None:
            worker = self._workers[index] = subprocess.Popen(
                [sys.executable, "-m", "sbbench.sweep.time_pool"], stdin=subprocess.PIPE,
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, bufsize=1)
        try:
            worker.stdin.write(job)
            worker.stdin.flush()
            ready, _, _ = select.select([worker.stdout], [], [], WORKER_TIMEOUT_S)
            line = worker.stdout.readline() if ready else ""
        except (BrokenPipeError, OSError):
            line = ""
        if not line:
            self._stop(index)
            return [{"error": "timing worker gave no answer"}] * n_points
        return json.loads(line)

    def _stop(self, index: int) -> None:
        worker, self._workers[index] = self._workers[index], None
        if worker is None:
            return
        if worker.poll() is None:
            try:
                worker.stdin.close()
            except OSError:
                pass
            try:
                worker.wait(10)
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait()
        worker.stdout.close()

    def close(self) -> None:
        for index in range(self.processes):
            self._stop(index)

    def __enter__(self) -> TimingPool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def serve(stdin=None, stdout=None) -> int:
    """A worker's loop: one JSON job per line in, one JSON list per line out; ends when
    its input ends (the sweep closed it or died) or its output is gone."""
    from types import SimpleNamespace

    import torch

    from sbbench.measure.timing import pin_malloc_thresholds

    stdin = stdin if stdin is not None else sys.stdin
    if stdout is None:  # answers on a private copy of stdout; stray prints go to stderr
        stdout = os.fdopen(os.dup(1), "w")
        os.dup2(2, 1)
    pin_malloc_thresholds()  # as the sweep does (measure.timing)
    threads_set = False
    try:
        for line in stdin:
            if not line.strip():
                continue
            job = json.loads(line)
            settings = SimpleNamespace(**job["settings"])
            settings.seeds = tuple(settings.seeds)
            if settings.num_threads and not threads_set:
                torch.set_num_threads(settings.num_threads)
                threads_set = True
            points = [point_from_json(p) for p in job["points"]]
            stdout.write(json.dumps(sample_points(points, settings)) + "\n")
            stdout.flush()
    except (KeyboardInterrupt, BrokenPipeError, ConnectionResetError):
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(serve())
