"""``sbbench ci-bench``: the short CPU benchmark the CI regression check compares."""

from __future__ import annotations

import json
import shlex
import sys
import time
from pathlib import Path

from sbbench.cli.args import add_command

# Defaults of sbbench.sweep.ci_sampling.Options, repeated so that `sbbench --help` does
# not import torch (a test checks that they agree).
DEFAULT_SECONDS = 8.0
DEFAULT_PROCESSES = 2
DEFAULT_MIN_ROUNDS = 30
DEFAULT_THREADS = 1
TIMER_CHOICES = ("thread_time_ns", "perf_counter_ns")

_DESCRIPTION = """\
Short CPU benchmark for the CI regression check: every method at two small shapes on
the torch backend plus a calibration matmul, sampled interleaved in fresh processes,
with each method's error against float64 exact attention. Writes a JSON result set for
`sbbench check`.

SBBENCH_INJECT_SLOWDOWN=1.3 (or --inject-slowdown 1.3) makes every attention call 1.3x
slower, SBBENCH_INJECT_METHODS=lsh,performer only some methods: they show that the check
fails on a slowdown."""

_EPILOG = """\
examples:
  sbbench ci-bench --out ci-current.json
  sbbench check --baseline benchmarks/baseline_cpu.json --current ci-current.json
  sbbench ci-bench --out benchmarks/baseline_cpu.json --seconds 30 --processes 3
                                                the baseline, on a quiet CI-like machine
"""


def register(subparsers) -> None:
    parser = add_command(subparsers, "ci-bench", description=_DESCRIPTION, epilog=_EPILOG,
                         help="short CPU benchmark for the CI regression check (JSON for check)")
    parser.add_argument("--out", required=True, metavar="PATH", help="result JSON to write")
    parser.add_argument("--seconds", type=float, default=DEFAULT_SECONDS,
                        help=f"time budget of the interleaved sampling rounds, all "
                             f"processes together (default {DEFAULT_SECONDS:g})")
    parser.add_argument("--processes", type=int, default=DEFAULT_PROCESSES,
                        help=f"fresh processes that sample one after the other (default "
                             f"{DEFAULT_PROCESSES}; 0: sample in this process)")
    parser.add_argument("--min-rounds", type=int, default=DEFAULT_MIN_ROUNDS,
                        help=f"rounds per process at least (default {DEFAULT_MIN_ROUNDS})")
    parser.add_argument("--threads", type=int, default=DEFAULT_THREADS,
                        help="torch CPU threads (default 1: steadiest on a shared runner)")
    parser.add_argument("--timer", choices=TIMER_CHOICES, default=TIMER_CHOICES[0],
                        help="thread_time_ns: CPU time of the computing thread, immune to "
                             "preemption by other jobs (default); perf_counter_ns: wall clock")
    parser.add_argument("--inject-slowdown", type=float, default=None, metavar="FACTOR",
                        help="make attention calls FACTOR times slower (default: "
                             "$SBBENCH_INJECT_SLOWDOWN, else 1)")
    parser.set_defaults(func=run_ci_bench_command)


def command_line(args) -> str:
    """The command that reproduces this run, for the result's metadata."""
    parts = ["sbbench", "ci-bench", "--out", str(args.out)]
    for flag in ("seconds", "processes", "min_rounds", "threads", "timer", "inject_slowdown"):
        value = getattr(args, flag)
        if value is not None:
            parts += [f"--{flag.replace('_', '-')}", str(value)]
    return shlex.join(parts)


def run_ci_bench_command(args) -> int:
    from sbbench.sweep.ci_bench import options_from_request, run

    options = options_from_request(seconds=args.seconds, min_rounds=args.min_rounds,
                                   threads=args.threads, timer=args.timer,
                                   processes=args.processes,
                                   inject_slowdown=args.inject_slowdown)
    started = time.perf_counter()
    result = run(options, command=command_line(args))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    meta = result["meta"]
    factor = options.inject_slowdown
    note = f", injected slowdown x{factor:g}" if factor != 1.0 else ""
    print(f"sbbench ci-bench: {len(result['records'])} points, {meta['rounds']} rounds in "
          f"{meta['processes']} process(es), {time.perf_counter() - started:.1f} s "
          f"({meta['threads']} thread(s){note}) -> {out}", file=sys.stderr)
    return 0
