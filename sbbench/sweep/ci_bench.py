"""The CI performance benchmark: a short CPU run whose JSON ``sbbench check`` compares
with the committed baseline (``benchmarks/baseline_cpu.json``).

What it measures (about 20 s on 2 quiet cores, 35-50 s on a heavily loaded pair):

- every method (exact, performer, lsh, scatterbrain) at two small shapes on the torch
  backend, through the one run-a-budget path (``sbbench.measure.calls``), with the
  randomness (projections, hash functions) drawn outside the timed closure;
- a calibration kernel of known FLOPs (a float32 matmul) in the same processes: the
  reference of ``sbbench check``'s ratio mode;
- the output error of every method against float64 exact attention, over two seeds.

How the points are sampled, and why, is in ``sbbench.sweep.ci_sampling``. Sampling is
split over ``processes`` fresh interpreters (default 2) and pooled; the baseline uses
more (``--processes 3 --seconds 30``).

``SBBENCH_INJECT_SLOWDOWN=1.3`` (or ``--inject-slowdown 1.3``) makes every attention call
take 1.3x as long: after the call, the closure busy-waits 0.3x of the time the call took,
on the benchmark's own clock, so the slowdown scales with the machine like a real one.
``SBBENCH_INJECT_METHODS=lsh,performer`` limits it to some methods. Only this benchmark
reads them: they show that the check fails on a slowdown.

    sbbench ci-bench --out ci-current.json
    sbbench check --baseline benchmarks/baseline_cpu.json --current ci-current.json
    # the baseline (on a quiet machine of the CI's kind):
    sbbench ci-bench --out benchmarks/baseline_cpu.json --seconds 30 --processes 3
"""

from __future__ import annotations

import json
import os
import platform

from sbbench.core.errors import UserError
from sbbench.core.provenance import code_version, cpu_model_name, now_utc, revision_text
from sbbench.core.record import CALIBRATION, Record
from sbbench.core.types import Budget, Problem
from sbbench.measure.inject import inject_from_env
from sbbench.sweep.ci_sampling import (  # noqa: F401 - re-exported
    BUDGETS,
    CALIBRATION_SIZE,
    INPUT_KIND,
    SEEDS,
    SHAPES,
    TEMPERATURE,
    TIMERS,
    WORKER_TIMEOUT_S,
    Options,
    check_timer,
    inputs,
    loadavg,
    pin_malloc_thresholds,
    sample,
    sample_in_child,
    slowed,
)

FORMAT = "sbbench-ci-bench/1"
TIMED_REGION = ("attention call only (projections and hash functions drawn outside); "
                "sampled interleaved: one sample of every point per round, order rotated")


def accuracy(problem: Problem, budget: Budget, seeds=SEEDS,
             references: dict | None = None) -> tuple[float, float]:
    """Mean and spread (population std) over ``seeds`` of the output's relative error
    against float64 exact attention (``references`` caches the reference per shape and
    seed across budgets)."""
    import torch

    from sbbench.attention import exact_attention
    from sbbench.measure.accuracy import relative_error
    from sbbench.measure.calls import make_call

    references = {} if references is None else references
    errors = []
    with torch.no_grad():
        for seed in seeds:
            q, k, v = inputs(problem, seed)
            out = make_call(budget, q, k, v, generator=torch.Generator().manual_seed(seed),
                            causal=problem.causal)()
            if (problem, seed) not in references:
                references[(problem, seed)] = exact_attention(
                    *(x.double() for x in (q, k, v)), causal=problem.causal)
            errors.append(relative_error(out, references[(problem, seed)]))
    mean = sum(errors) / len(errors)
    std = (sum((e - mean) ** 2 for e in errors) / len(errors)) ** 0.5
    return mean, std


def calibration_config(size: int) -> str:
    return json.dumps({"op": "matmul", "m": size, "n": size, "k": size})


def _records(options: Options, common: dict) -> list[Record]:
    """One row per shape x budget (with its accuracy), then the calibration row, in the
    order ``sample`` returns the points."""
    records: list[Record] = []
    references: dict = {}
    for problem in options.shapes:
        for budget in options.budgets:
            record = Record(method=budget.method, seq_len=problem.seq_len,
                            head_dim=problem.head_dim, batch=problem.batch,
                            heads=problem.heads, dtype=problem.dtype, causal=problem.causal,
                            n_features=budget.n_features, bucket_size=budget.bucket_size,
                            n_hashes=budget.n_hashes, sparse=budget.sparse or "",
                            sink=budget.sink, window=budget.window,
                            timed_region=TIMED_REGION, **common)
            record.error_mean, record.error_std = accuracy(problem, budget,
                                                           references=references)
            record.reference_dtype, record.n_seeds = "float64", len(SEEDS)
            records.append(record)
    n = options.calibration_size
    calibration = Record(method=CALIBRATION, seq_len=0, head_dim=0, batch=0, heads=0,
                         dtype="float32", causal=False, n_features=0, bucket_size=0,
                         n_hashes=0, timed_region=f"torch.mm of two [{n}, {n}] float32 "
                         f"matrices; sampled interleaved with the attention points",
                         **{**common, "kernel_config": calibration_config(n),
                            "inputs": "randn"})
    calibration.flops = 2.0 * n ** 3
    records.append(calibration)
    return records


def _add_timings(records: list[Record], parts: list[dict], timer: str, stamp: str) -> None:
    from sbbench.measure.timing import Timing

    for index, record in enumerate(records):
        samples_ns = [ns for part in parts for ns in part["points"][index]["samples_ns"]]
        timing = Timing.from_samples([ns / 1e6 for ns in samples_ns],
                                     n_warmup=parts[0]["points"][index]["n_warmup"],
                                     timer=timer, l2_flushed=False)
        record.time_samples_ms = list(timing.samples_ms)
        record.time_median_ms, record.time_p20_ms = timing.median_ms, timing.p20_ms
        record.time_p80_ms, record.n_warmup = timing.p80_ms, timing.n_warmup
        record.timer, record.l2_flushed, record.timestamp = timing.timer, False, stamp
        record.telemetry = "unavailable: CPU (no NVML)"
        if record.flops:
            record.achieved_flops_per_s = record.flops / (timing.median_ms / 1e3)
    exact = {(r.seq_len, r.head_dim): r.time_median_ms for r in records if r.method == "exact"}
    for record in records:
        reference = exact.get((record.seq_len, record.head_dim))
        if reference and record.method != CALIBRATION:
            record.speedup_vs_exact = reference / record.time_median_ms


def run(options: Options, *, command: str = "") -> dict:
    """Run the benchmark; returns the result set as a dict ({"meta", "records"}).

    With ``options.processes`` > 0 the sampling runs in that many fresh processes, one
    after the other, each for ``seconds / processes``; their samples are concatenated
    (round by round, so pairing by round still holds). 0: in this process.
    """
    import torch

    check_timer(options)
    revision = revision_text()
    common = dict(device="cpu", backend="torch", kernel_config="",
                  inputs=f"{INPUT_KIND}:t={TEMPERATURE:g}", code_version=code_version(),
                  source="measured", git_revision=revision,
                  versions={"torch": torch.__version__, "python": platform.python_version()})
    load_before = loadavg()
    records = _records(options, common)
    if options.processes > 0:
        parts = [sample_in_child(options, options.seconds / options.processes)
                 for _ in range(options.processes)]
    else:
        parts = [sample(options, options.seconds)]
    stamp = now_utc()
    _add_timings(records, parts, options.timer, stamp)
    state = {"threads": options.threads, "timer": options.timer,
             "processes": max(1, options.processes),
             "rounds_per_process": [part["rounds"] for part in parts],
             "rounds": sum(part["rounds"] for part in parts),
             "sampling_seconds": round(sum(part["seconds"] for part in parts), 3),
             "malloc_thresholds_pinned": all(part["malloc_pinned"] for part in parts),
             "loadavg_before": load_before, "loadavg_after": loadavg(),
             "cpu": cpu_model_name(), "cpu_count": os.cpu_count(),
             "inject_slowdown": options.inject_slowdown}
    for record in records:
        record.device_state = dict(state)
    meta = {"format": FORMAT, "interleaved": True, "shared_machine": True,
            "reference": CALIBRATION, "command": command, "date": stamp,
            "host": platform.node(), "platform": platform.platform(), **state}
    if options.inject_slowdown != 1.0:
        meta["inject_methods"] = list(options.inject_methods) or "all attention methods"
    return {"meta": meta, "records": [r.as_dict() for r in records]}


def options_from_request(*, seconds: float, min_rounds: int, threads: int, timer: str,
                         processes: int, inject_slowdown: float | None,
                         environ=None) -> Options:
    """Options of a run asked for on the command line; the injected slowdown comes from
    ``inject_slowdown`` if given, else from the environment. UserError on bad values."""
    factor, methods = inject_from_env(environ)
    if inject_slowdown is not None:
        factor = inject_slowdown
    if not factor >= 1.0:
        raise UserError(f"--inject-slowdown must be >= 1, got {factor}")
    if seconds < 0 or min_rounds < 2 or threads < 0 or processes < 0:
        raise UserError("--seconds must be >= 0, --min-rounds >= 2, --threads >= 0, "
                        "--processes >= 0")
    options = Options(seconds=seconds, min_rounds=min_rounds, threads=threads, timer=timer,
                      processes=processes, inject_slowdown=factor, inject_methods=methods)
    check_timer(options)
    return options
