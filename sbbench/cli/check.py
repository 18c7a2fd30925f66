"""``sbbench check``: compare a current result set with a baseline; exit 1 on regression."""

from __future__ import annotations

import argparse
import sys

from sbbench.cli.args import (
    add_command,
    file_path,
    finite_float,
    nonnegative_float,
    positive_float,
    split_list,
)

_DESCRIPTION = """\
Compare a current result set with a baseline on the same points (the result key without
the code version). A time regression is flagged only when the median grew by more than
the factor AND a one-sided Mann-Whitney U test on the samples is significant (p < alpha).
Accuracy drift (the output error against exact attention) is flagged when the error
moved by more than its factor and by more than --error-atol; a larger error fails the
check. A point that failed now, or vanished, fails it too.

On CPU and CI result sets, times are compared as ratios measured in the same run: each
sample divided by the calibration kernel's sample taken right after it (CPU sweeps
record one per sample), or by the calibration kernel's paired round by round (the CI
benchmark), or by exact attention's at the same shape; so a uniformly slower or busier
machine is not a regression. A time change must also exceed the pair's own run-to-run
noise, the scatter of the changes of the other methods' points (--noise-z). For sweeps
on a shared CPU, sweep with --threads 1: samples are then the computing thread's CPU
time. Result sets:
an SQLite results store or a JSON file written by `sbbench ci-bench`.

exit status: 0 no regression, 1 regression, 2 usage error."""

_EPILOG = """\
examples:
  sbbench ci-bench --out ci-current.json
  sbbench check --baseline benchmarks/baseline_cpu.json --current ci-current.json
  sbbench check --baseline benchmarks/baseline_cpu.json --current ci-1.json --current ci-2.json
      a regression must show in both runs
  sbbench check --baseline old.sqlite --current new.sqlite
  sbbench check --baseline old.sqlite --current new.sqlite --mode absolute
      absolute times (a quiet GPU machine)
  sbbench check --baseline old.sqlite --current new.sqlite --metric-factor time=1.05
      flag time changes above 5% (other metrics keep --factor)
"""


def metric_factors(text: str) -> dict[str, float]:
    """"time=1.1,error=1.2" -> {"time": 1.1, "error": 1.2}."""
    from sbbench.analyze.regress import METRICS

    factors = {}
    try:
        for part in split_list(text):
            name, sep, value = part.partition("=")
            factors[name.strip()] = float(value) if sep else float("nan")
    except ValueError:
        factors = {}
    if not factors or any(name not in METRICS or not 1 < value < float("inf")
                          for name, value in factors.items()):
        raise argparse.ArgumentTypeError(
            f"takes comma-separated METRIC=FACTOR with METRIC one of {', '.join(METRICS)} "
            f"and FACTOR a number > 1, got {text!r}")
    return factors


def register(subparsers) -> None:
    parser = add_command(subparsers, "check", description=_DESCRIPTION, epilog=_EPILOG,
                         help="performance regression check of a result set against a baseline")
    parser.add_argument("--baseline", required=True, metavar="PATH", type=file_path,
                        help="baseline result set (JSON or SQLite store)")
    parser.add_argument("--current", required=True, metavar="PATH", action="append",
                        type=file_path,
                        help="current result set (JSON or SQLite store); repeat it for "
                             "confirmation runs: a regression must then fail in every one")
    parser.add_argument("--factor", type=finite_float(minimum=1.0), default=1.10,
                        metavar="F",
                        help="smallest change that counts, for every metric (default 1.10)")
    parser.add_argument("--metric-factor", default=None, metavar="M=F,...",
                        type=metric_factors,
                        help="per-metric factors overriding --factor: time, error, memory, "
                             "energy (e.g. time=1.1,error=1.2)")
    parser.add_argument("--alpha", type=positive_float, default=0.01,
                        help="significance level of the one-sided Mann-Whitney U test "
                             "(default 0.01)")
    parser.add_argument("--mode", choices=("auto", "ratio", "absolute"), default="auto",
                        help="compare times as ratios to a reference measured in the same "
                             "run, or as absolute times; auto: ratio for CPU/CI sets "
                             "(default: auto)")
    parser.add_argument("--reference", choices=("auto", "paired", "calibration", "exact"),
                        default="auto",
                        help="ratio mode's reference; auto: paired (the calibration kernel "
                             "sampled after each sample) where every row has it, else the "
                             "calibration row where both sets have one, else exact attention "
                             "at the same shape")
    parser.add_argument("--noise-z", type=nonnegative_float, default=None, metavar="Z",
                        help="a time change must exceed Z times the pair's run-to-run noise "
                             "(robust scatter of the other methods' changes); 0 turns "
                             "this off (default 3.5)")
    parser.add_argument("--error-atol", type=nonnegative_float, default=None, metavar="E",
                        help="changes of the relative output error below this are noise "
                             "(default 1e-4)")
    parser.add_argument("--allow-missing", action="store_true",
                        help="a baseline point missing from the current set is not a failure")
    parser.add_argument("--only-changes", action="store_true",
                        help="print only the rows that are not ok")
    parser.set_defaults(func=run_check_command)


def run_check_command(args) -> int:
    from sbbench.analyze.regress import (
        ERROR_ATOL,
        METRICS,
        NOISE_Z,
        compare,
        confirm,
        format_table,
        load_result_set,
        summary_line,
    )

    factors = {**dict.fromkeys(METRICS, args.factor), **(args.metric_factor or {})}
    error_atol = ERROR_ATOL if args.error_atol is None else args.error_atol
    noise_z = NOISE_Z if args.noise_z is None else args.noise_z
    baseline = load_result_set(args.baseline)
    currents = [load_result_set(path) for path in args.current]
    result = confirm([compare(baseline, current, factors=factors, alpha=args.alpha,
                              mode=args.mode, reference=args.reference,
                              error_atol=error_atol, allow_missing=args.allow_missing,
                              noise_z=noise_z)
                      for current in currents])
    for results in (baseline, *currents):
        if results.meta.get("dropped_fields"):
            print(f"sbbench check: note: {results.label}: columns this sbbench does not "
                  f"know were ignored: {', '.join(results.meta['dropped_fields'])}",
                  file=sys.stderr)
        injected = results.meta.get("inject_slowdown")
        if injected not in (None, 1, 1.0):
            print(f"sbbench check: note: {results.label} was run with an injected slowdown "
                  f"x{injected:g}", file=sys.stderr)
    print(f"sbbench check: baseline {args.baseline}, current {', '.join(args.current)}")
    print(format_table(result, show_all=not args.only_changes))
    print(summary_line(result))
    return 0 if result.ok else 1
