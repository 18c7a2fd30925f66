"""The CI performance benchmark: a short CPU run whose JSON ``sbbench check`` compares
with the committed baseline (``benchmarks/baseline_cpu.json``).

What it measures (about 20 s on 2 quiet cores, 35-50 s on a heavily loaded pair):

- every method (exact, performer, lsh, scatterbrain) at two small shapes on the torch
  backend, with the randomness (projections, hash functions) drawn outside the timed
  closure (the sweep's rule, STYLE.md 10);
- a calibration kernel of known FLOPs (a float32 matmul) in the same processes: the
  reference of ``sbbench check``'s ratio mode;
- the output error of every method against float64 exact attention, over two seeds.

How, and why (measured on a shared 2-vCPU VM at load average 4-8):

- Interleaved sampling: after each closure's first call and warm-up, every round takes
  one sample of every point (the order rotates), so sample *i* of two points are close
  in time and the ratio to the calibration kernel is paired round by round.
- Timer: the CPU time of the computing thread (``time.thread_time_ns``, one torch
  thread). Wall-clock medians of the same point moved 2-3x between runs under load (the
  process is preempted mid-call); thread CPU time moved a few percent.
- glibc's malloc thresholds are pinned (:func:`pin_malloc_thresholds`): with its
  adaptive mmap threshold, lsh and scatterbrain paid a few hundred page faults per call
  in some processes and none in others -- a persistent per-process bias of up to 40%.
- Sampling is split over ``processes`` fresh interpreters (default 2) and pooled, which
  averages what per-process bias remains. The baseline uses more (``--processes 3
  --seconds 30``).

``SBBENCH_INJECT_SLOWDOWN=1.3`` (or ``--inject-slowdown 1.3``) makes every attention call
take 1.3x as long: after the call, the closure busy-waits 0.3x of the time the call took,
on the benchmark's own clock, so the slowdown scales with the machine like a real one.
``SBBENCH_INJECT_METHODS=lsh,performer`` limits it to some methods. Only this benchmark
reads them: they show that the check fails on a slowdown (tests/analyze/test_regress.py).

    python -m sbbench.sweep.ci_bench --out ci-current.json
    sbbench check --baseline benchmarks/baseline_cpu.json --current ci-current.json
    # the baseline (on a quiet machine of the CI's kind):
    python -m sbbench.sweep.ci_bench --out benchmarks/baseline_cpu.json --seconds 30 --processes 3
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from sbbench.analyze.regress import CALIBRATION
from sbbench.attention import (
    draw_hashes,
    draw_projections,
    exact_attention,
    lsh_attention,
    performer_attention,
    scatterbrain_attention,
)
from sbbench.core.errors import UserError
from sbbench.core.record import Record, code_version, git_revision, now_utc
from sbbench.core.types import Budget, Problem
from sbbench.measure.accuracy import relative_error
from sbbench.measure.inputs import make_qkv
from sbbench.measure.timing import Timing

FORMAT = "sbbench-ci-bench/1"
INJECT_ENV = "SBBENCH_INJECT_SLOWDOWN"
INJECT_METHODS_ENV = "SBBENCH_INJECT_METHODS"
SHAPES = (Problem(seq_len=256, head_dim=64, batch=1, heads=4),
          Problem(seq_len=512, head_dim=64, batch=1, heads=4))
BUDGETS = (Budget("exact"), Budget("performer", n_features=64),
           Budget("lsh", bucket_size=32, n_hashes=2),
           Budget("scatterbrain", n_features=32, bucket_size=32, n_hashes=1))
WORKER_TIMEOUT_S = 300.0
CALIBRATION_SIZE = 384  # matmul [n, n] @ [n, n]: ~2 ms on one core, like the methods
SEEDS = (0, 1)
INPUT_KIND, TEMPERATURE = "clustered", 1.0
# thread_time_ns: CPU time of this thread (with one torch thread, the thread that
# computes). Time the process spends preempted by other jobs is not in it, which is what
# makes the check usable on a loaded 2-core runner; frequency and cache effects remain,
# and the ratio to the calibration kernel takes out most of the frequency part.
TIMERS = {"thread_time_ns": time.thread_time_ns, "perf_counter_ns": time.perf_counter_ns}
TIMED_REGION = ("attention call only (projections and hash functions drawn outside); "
                "sampled interleaved: one sample of every point per round, order rotated")


@dataclass
class Options:
    seconds: float = 8.0  # time budget of the interleaved rounds, all processes
    min_rounds: int = 30
    max_rounds: int = 2000
    warmup_ms: float = 50.0
    threads: int = 1
    shapes: tuple[Problem, ...] = SHAPES
    budgets: tuple[Budget, ...] = BUDGETS
    calibration_size: int = CALIBRATION_SIZE
    timer: str = "thread_time_ns"  # or "perf_counter_ns" (wall clock)
    processes: int = 2  # fresh processes sampling one after the other; 0: this process
    inject_slowdown: float = 1.0
    inject_methods: tuple[str, ...] = ()  # empty: every attention method


def make_call(problem: Problem, budget: Budget, q, k, v,
              generator: torch.Generator) -> Callable[[], torch.Tensor]:
    """A zero-argument closure running ``budget`` on q, k, v; its randomness is drawn here
    from ``generator`` (projections, then hash functions)."""
    head_dim = problem.head_dim
    if budget.method == "exact":
        return lambda: exact_attention(q, k, v, causal=problem.causal)
    projections = (draw_projections(budget.n_features, head_dim, generator=generator)
                   if budget.n_features else None)
    hashes = (draw_hashes(budget.n_hashes, head_dim, generator=generator)
              if budget.method in ("lsh", "scatterbrain") else None)
    if budget.method == "performer":
        return lambda: performer_attention(q, k, v, n_features=budget.n_features,
                                           causal=problem.causal, projections=projections)
    if budget.method == "lsh":
        return lambda: lsh_attention(q, k, v, bucket_size=budget.bucket_size,
                                     n_hashes=budget.n_hashes, causal=problem.causal,
                                     hashes=hashes)
    if budget.method == "scatterbrain":
        return lambda: scatterbrain_attention(
            q, k, v, n_features=budget.n_features, bucket_size=budget.bucket_size,
            n_hashes=budget.n_hashes, causal=problem.causal, projections=projections,
            hashes=hashes)
    raise ValueError(f"the CI benchmark does not run {budget.method}")


def slowed(fn: Callable[[], object], factor: float,
           clock: Callable[[], int] = time.perf_counter_ns) -> Callable[[], object]:
    """``fn`` made ``factor`` times slower on ``clock``: after each call, busy-wait until
    (factor - 1) times the time the call took has passed (a busy wait, not a sleep:
    sleeps are coarse, take no CPU time, and do not slow down with the machine)."""
    if factor == 1.0:
        return fn

    def run():
        start = clock()
        out = fn()
        until = start + int((clock() - start) * factor)
        while clock() < until:
            pass
        return out

    return run


def _inputs(problem: Problem, seed: int):
    return make_qkv(problem, seed=seed, kind=INPUT_KIND, temperature=TEMPERATURE)


def accuracy(problem: Problem, budget: Budget, seeds=SEEDS,
             references: dict | None = None) -> tuple[float, float]:
    """Mean and spread (population std) over ``seeds`` of the output's relative error
    against float64 exact attention (``references`` caches the reference per shape and
    seed across budgets)."""
    references = {} if references is None else references
    errors = []
    with torch.no_grad():
        for seed in seeds:
            q, k, v = _inputs(problem, seed)
            out = make_call(problem, budget, q, k, v, torch.Generator().manual_seed(seed))()
            if (problem, seed) not in references:
                references[(problem, seed)] = exact_attention(
                    *(x.double() for x in (q, k, v)), causal=problem.causal)
            errors.append(relative_error(out, references[(problem, seed)]))
    mean = sum(errors) / len(errors)
    std = (sum((e - mean) ** 2 for e in errors) / len(errors)) ** 0.5
    return mean, std


def _warm_up(fn: Callable[[], object], warmup_ms: float) -> int:
    fn()  # first call: allocations, thread pool
    calls, start = 1, time.perf_counter_ns()
    while time.perf_counter_ns() - start < warmup_ms * 1e6:
        fn()
        calls += 1
    return calls


def _loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (OSError, AttributeError):
        return None


def pin_malloc_thresholds() -> bool:
    """Fix glibc malloc's mmap and trim thresholds (at 1 GiB) in this process.

    By default glibc adapts its mmap threshold as the process frees large blocks, so
    whether a method's temporaries (LSH's sorted and gathered copies) come from reused
    heap or from fresh pages -- a few hundred page faults per call, up to +50% time --
    depends on the history of the process: a persistent, per-process bias of lsh and
    scatterbrain timings. Fixed thresholds make every process reuse its heap. Returns
    False where this is not glibc.
    """
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # from glibc's malloc.h
    return bool(mallopt(m_trim_threshold, 1 << 30)) and bool(mallopt(m_mmap_threshold, 1 << 30))


def calibration_config(size: int) -> str:
    return json.dumps({"op": "matmul", "m": size, "n": size, "k": size})


def sample(options: Options, seconds: float) -> dict:
    """Warm up every point, then sample them interleaved for ``seconds`` (at least
    ``min_rounds`` rounds), in this process. Returns {"points": [{"samples_ns",
    "n_warmup"}, ...] in the order of ``point_names(options)``, "rounds", "seconds"}."""
    if options.timer not in TIMERS:
        raise UserError(f"timer must be one of {', '.join(TIMERS)}, got {options.timer!r}")
    if options.threads:
        torch.set_num_threads(options.threads)
    pinned = pin_malloc_thresholds()
    clock = TIMERS[options.timer]
    fns: list[Callable[[], object]] = []
    for problem in options.shapes:
        q, k, v = _inputs(problem, SEEDS[0])
        for budget in options.budgets:
            fn = make_call(problem, budget, q, k, v, torch.Generator().manual_seed(SEEDS[0]))
            if not options.inject_methods or budget.method in options.inject_methods:
                fn = slowed(fn, options.inject_slowdown, clock)
            fns.append(fn)
    n = options.calibration_size
    a = torch.randn(n, n, generator=torch.Generator().manual_seed(0))
    b = torch.randn(n, n, generator=torch.Generator().manual_seed(1))
    fns.append(lambda: torch.mm(a, b))
    samples: list[list[int]] = [[] for _ in fns]
    with torch.no_grad():
        warmups = [_warm_up(fn, options.warmup_ms) for fn in fns]
        order = list(range(len(fns)))
        rounds, start = 0, time.perf_counter()
        while rounds < options.max_rounds and (
                rounds < options.min_rounds or time.perf_counter() - start < seconds):
            shift = rounds % len(order)
            for index in order[shift:] + order[:shift]:
                before = clock()
                fns[index]()
                samples[index].append(clock() - before)
            rounds += 1
        elapsed = time.perf_counter() - start
    points = [{"samples_ns": s, "n_warmup": w} for s, w in zip(samples, warmups, strict=True)]
    return {"points": points,
            "rounds": rounds, "seconds": round(elapsed, 3), "malloc_pinned": pinned}


def _options_json(options: Options) -> str:
    data = asdict(options)
    return json.dumps(data)


def _options_from_json(text: str) -> Options:
    data = json.loads(text)
    data["shapes"] = tuple(Problem(**p) for p in data["shapes"])
    data["budgets"] = tuple(Budget(**b) for b in data["budgets"])
    data["inject_methods"] = tuple(data["inject_methods"])
    return Options(**data)


def _sample_in_child(options: Options, seconds: float) -> dict:
    """``sample`` in a fresh interpreter: each process has its own memory layout, and
    with it its own small, persistent bias on some points; several processes average
    it out (pyperf does the same)."""
    command = [sys.executable, "-m", "sbbench.sweep.ci_bench", "--worker", _options_json(options),
               "--seconds", repr(seconds)]
    try:
        done = subprocess.run(command, capture_output=True, text=True,
                              timeout=WORKER_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"benchmark worker ran over {WORKER_TIMEOUT_S:g} s") from None
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-5:]
        raise RuntimeError(f"benchmark worker failed (exit {done.returncode}): "
                           + " | ".join(tail))
    return json.loads(done.stdout)


def run(options: Options, *, command: str = "") -> dict:
    """Run the benchmark; returns the result set as a dict ({"meta", "records"}).

    With ``options.processes`` > 0 the sampling runs in that many fresh processes, one
    after the other, each for ``seconds / processes``; their samples are concatenated
    (round by round, so pairing by round still holds). 0: in this process.
    """
    if options.timer not in TIMERS:
        raise UserError(f"timer must be one of {', '.join(TIMERS)}, got {options.timer!r}")
    revision = git_revision()
    common = dict(device="cpu", backend="torch", kernel_config="",
                  inputs=f"{INPUT_KIND}:t={TEMPERATURE:g}", code_version=code_version(revision),
                  source="measured", git_revision=revision,
                  versions={"torch": torch.__version__, "python": platform.python_version()})
    load_before = _loadavg()
    records: list[Record] = []
    references: dict = {}
    for problem in options.shapes:
        for budget in options.budgets:
            record = Record(method=budget.method, seq_len=problem.seq_len,
                            head_dim=problem.head_dim, batch=problem.batch,
                            heads=problem.heads, dtype=problem.dtype, causal=problem.causal,
                            n_features=budget.n_features, bucket_size=budget.bucket_size,
                            n_hashes=budget.n_hashes, timed_region=TIMED_REGION, **common)
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

    if options.processes > 0:
        parts = [_sample_in_child(options, options.seconds / options.processes)
                 for _ in range(options.processes)]
    else:
        parts = [sample(options, options.seconds)]
    stamp = now_utc()
    for index, record in enumerate(records):
        samples_ns = [ns for part in parts for ns in part["points"][index]["samples_ns"]]
        timing = Timing.from_samples([ns / 1e6 for ns in samples_ns],
                                     n_warmup=parts[0]["points"][index]["n_warmup"],
                                     timer=options.timer, l2_flushed=False)
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
    state = {"threads": options.threads, "timer": options.timer,
             "processes": max(1, options.processes),
             "rounds_per_process": [part["rounds"] for part in parts],
             "rounds": sum(part["rounds"] for part in parts),
             "sampling_seconds": round(sum(part["seconds"] for part in parts), 3),
             "malloc_thresholds_pinned": all(part["malloc_pinned"] for part in parts),
             "loadavg_before": load_before, "loadavg_after": _loadavg(), "cpu": _cpu_name(),
             "cpu_count": os.cpu_count(), "inject_slowdown": options.inject_slowdown}
    for record in records:
        record.device_state = dict(state)
    meta = {"format": FORMAT, "interleaved": True, "shared_machine": True,
            "reference": CALIBRATION, "command": command, "date": stamp,
            "host": platform.node(), "platform": platform.platform(), **state}
    if options.inject_slowdown != 1.0:
        meta["inject_methods"] = list(options.inject_methods) or "all attention methods"
    return {"meta": meta, "records": [r.as_dict() for r in records]}


def _cpu_name() -> str:
    try:
        from sbbench.core.devices import cpu_model_name

        return cpu_model_name()
    except Exception:  # a label only; never fail the benchmark over it
        return platform.processor()


def inject_from_env(environ=None) -> tuple[float, tuple[str, ...]]:
    """The slowdown factor and the methods it applies to, from the environment."""
    environ = os.environ if environ is None else environ
    text = environ.get(INJECT_ENV, "").strip()
    try:
        factor = float(text) if text else 1.0
    except ValueError:
        raise UserError(f"{INJECT_ENV}={text!r} is not a number") from None
    if not factor >= 1.0:
        raise UserError(f"{INJECT_ENV} must be >= 1 (a slowdown), got {text!r}")
    methods = tuple(m.strip() for m in environ.get(INJECT_METHODS_ENV, "").split(",")
                    if m.strip())
    return factor, methods


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m sbbench.sweep.ci_bench",
        description="Short CPU benchmark for the CI regression check (writes JSON for "
                    "`sbbench check`).")
    parser.add_argument("--out", metavar="PATH", help="result JSON to write")
    parser.add_argument("--seconds", type=float, default=Options.seconds,
                        help=f"time budget of the interleaved sampling rounds, all "
                             f"processes together (default {Options.seconds:g})")
    parser.add_argument("--processes", type=int, default=Options.processes,
                        help=f"fresh processes that sample one after the other (default "
                             f"{Options.processes}; 0: sample in this process)")
    parser.add_argument("--min-rounds", type=int, default=Options.min_rounds,
                        help=f"rounds per process at least (default {Options.min_rounds})")
    parser.add_argument("--threads", type=int, default=Options.threads,
                        help="torch CPU threads (default 1: steadiest on a shared runner)")
    parser.add_argument("--timer", choices=tuple(TIMERS), default=Options.timer,
                        help="thread_time_ns: CPU time of the computing thread, immune to "
                             "preemption by other jobs (default); perf_counter_ns: wall clock")
    parser.add_argument("--inject-slowdown", type=float, default=None, metavar="FACTOR",
                        help=f"make attention calls FACTOR times slower (default: "
                             f"${INJECT_ENV}, else 1)")
    parser.add_argument("--worker", metavar="OPTIONS_JSON", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:  # a sampling process started by run(): samples as JSON on stdout
        print(json.dumps(sample(_options_from_json(args.worker), args.seconds)))
        return 0
    if not args.out:
        parser.error("--out is required")
    try:
        factor, methods = inject_from_env()
        if args.inject_slowdown is not None:
            factor = args.inject_slowdown
        if not factor >= 1.0:
            raise UserError(f"--inject-slowdown must be >= 1, got {factor}")
        if args.seconds < 0 or args.min_rounds < 2 or args.threads < 0 or args.processes < 0:
            raise UserError("--seconds must be >= 0, --min-rounds >= 2, --threads >= 0, "
                            "--processes >= 0")
        options = Options(seconds=args.seconds, min_rounds=args.min_rounds,
                          threads=args.threads, timer=args.timer, processes=args.processes,
                          inject_slowdown=factor, inject_methods=methods)
        started = time.perf_counter()
        result = run(options, command=shlex.join(["python", "-m", "sbbench.sweep.ci_bench",
                                                  *(argv if argv is not None
                                                    else sys.argv[1:])]))
    except UserError as err:
        print(f"sbbench.sweep.ci_bench: error: {err}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    meta = result["meta"]
    note = f", injected slowdown x{factor:g}" if factor != 1.0 else ""
    print(f"sbbench.sweep.ci_bench: {len(result['records'])} points, {meta['rounds']} rounds in "
          f"{meta['processes']} process(es), {time.perf_counter() - started:.1f} s "
          f"({meta['threads']} thread(s){note}) -> {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
