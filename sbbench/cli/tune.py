"""``sbbench tune``: tune implementation settings per shape bucket -> tuning_configs/."""

from __future__ import annotations

import argparse
import itertools
import os
import shlex
import sys
from pathlib import Path

from sbbench.core.errors import UserError

_DESCRIPTION = """\
Tune the settings that change speed but never the result, per shape bucket (sequence
length, head dimension, random features, bucket size, dtype), and write the best config
with its runner-ups, times and counts to tuning_configs/<device>.yaml (other sections of
that file, e.g. the budgets `sbbench select` writes, are kept).

On a GPU: the Triton kernels' tile sizes. Each kernel's search space is pruned
statically first (compiled for the device's architecture without running; configs over
the shared-memory or register limits, or that spill, are dropped with the reason), then
a strategy times the rest with sbbench's timing wrapper; a config whose output differs
from the reference beyond the tolerance is rejected with the reason.
On the CPU (--gpu cpu): the torch path's chunk size of the sparse loop (chunk_elements)
and the thread count, for scatterbrain, lsh and performer, measured on this machine.

Evaluations are cached in a JSON-lines file: an interrupted tune resumes, and running
the same command again measures nothing new (a changed checkout measures again)."""

_EPILOG = """\
examples:
  sbbench tune --gpu cpu
      the torch path on this CPU, default shape buckets, into tuning_configs/cpu.yaml
  sbbench tune --gpu cpu --seq-len 2048 --methods scatterbrain --strategy successive_halving
  sbbench tune --gpu h100-sxm --kernels all --strategy random --max-evals 30
      kernel tile sizes on an H100 (must run on one)
  sbbench tune --gpu h100-sxm --dry-run
      list the shape buckets and each kernel's static pruning for sm_90 (no GPU needed)
  SBBENCH_TUNING_DIR=/tmp/tc sbbench tune --gpu cpu --seq-len 512
      write (and later read) tuning files in /tmp/tc instead of the shipped folder
"""

CPU_DEFAULTS = {"seq_len": "1024,4096", "head_dim": "64", "features": "64",
                "bucket_size": "64", "dtype": "float32"}
GPU_DEFAULTS = {"seq_len": "4096,16384", "head_dim": "64,128", "features": "256",
                "bucket_size": "64", "dtype": "float16"}


def register(subparsers) -> None:
    from sbbench.autotune.strategies import STRATEGIES

    parser = subparsers.add_parser(
        "tune", help="tune kernel tile sizes (GPU) or the torch path (CPU) per shape bucket",
        description=_DESCRIPTION, epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gpu", default="auto", metavar="NAME",
                        help="device profile (see `sbbench devices`): cpu, h100-sxm, ...; "
                             "auto detects (default: auto)")
    shapes = parser.add_argument_group(
        "shape buckets (comma-separated; crossed with each other)")
    shapes.add_argument("--seq-len", metavar="N,..",
                        help=f"sequence lengths (default cpu: {CPU_DEFAULTS['seq_len']}; "
                             f"gpu: {GPU_DEFAULTS['seq_len']})")
    shapes.add_argument("--head-dim", metavar="D,..",
                        help=f"head dimensions (default cpu: {CPU_DEFAULTS['head_dim']}; "
                             f"gpu: {GPU_DEFAULTS['head_dim']})")
    shapes.add_argument("--features", metavar="F,..",
                        help=f"random features, even (default cpu: {CPU_DEFAULTS['features']};"
                             f" gpu: {GPU_DEFAULTS['features']})")
    shapes.add_argument("--bucket-size", metavar="B,..",
                        help=f"bucket sizes (default {CPU_DEFAULTS['bucket_size']})")
    shapes.add_argument("--dtype", metavar="T,..",
                        help=f"dtypes (default cpu: {CPU_DEFAULTS['dtype']}; gpu: "
                             f"{GPU_DEFAULTS['dtype']})")
    shapes.add_argument("--batch", type=int, default=1, help="batch of the tuned calls (1)")
    shapes.add_argument("--heads", type=int, default=4, help="heads of the tuned calls (4)")
    what = parser.add_argument_group("what to tune")
    what.add_argument("--methods", default="scatterbrain,lsh,performer", metavar="M,..",
                      help="CPU: torch-path methods (default: scatterbrain,lsh,performer)")
    what.add_argument("--kernels", default="all", metavar="K,..",
                      help="GPU: kernel names, or all (default: all)")
    what.add_argument("--threads", metavar="N,..",
                      help="CPU: thread counts to try (default: powers of two up to the "
                           "core count, and the core count)")
    what.add_argument("--chunk-elements", metavar="N,..",
                      help="CPU: chunk_elements to try (default: 2^16 .. 2^22)")
    how = parser.add_argument_group("how")
    how.add_argument("--strategy", choices=tuple(STRATEGIES), default="exhaustive",
                     help="search strategy (default: exhaustive)")
    how.add_argument("--max-evals", type=int, default=20, metavar="N",
                     help="random: configs to measure per bucket (default 20)")
    how.add_argument("--eta", type=int, default=3,
                     help="successive_halving: keep 1/eta per rung (default 3)")
    how.add_argument("--seed", type=int, default=0, help="inputs and random strategy seed")
    how.add_argument("--warmup-ms", type=float, default=25.0, help="warm-up per config (25)")
    how.add_argument("--rep-ms", type=float, default=100.0, help="timing budget per config (100)")
    how.add_argument("--min-samples", type=int, default=5, help="samples per config, at least (5)")
    how.add_argument("--within", type=float, default=3.0, metavar="PCT",
                     help="runner-ups: configs within PCT%% of the best (default 3)")
    out = parser.add_argument_group("input and output")
    out.add_argument("--out-dir", metavar="DIR",
                     help="folder of the tuning file (default: $SBBENCH_TUNING_DIR, else the "
                          "shipped tuning_configs/)")
    out.add_argument("--cache", metavar="PATH",
                     help="tuning cache (default: .sbbench-cache/tune-<device>.jsonl)")
    out.add_argument("--no-cache", action="store_true", help="measure everything again")
    out.add_argument("--simulate", metavar="FILE",
                     help="GPU: replay recorded timings (YAML/JSON/CSV of config -> samples) "
                          "instead of measuring; needs --out-dir")
    out.add_argument("--no-static", action="store_true",
                     help="GPU: skip the ahead-of-time compile (prune with keep() only)")
    out.add_argument("--jobs", type=int, default=os.cpu_count() or 1, metavar="N",
                     help="GPU: static compiles in parallel (default: the core count)")
    out.add_argument("--dry-run", action="store_true",
                     help="list buckets, spaces and static pruning; measure and write nothing")
    out.add_argument("--note", default="", help="a note for the file's metadata")
    from sbbench.sweep.executors import add_executor_arguments

    add_executor_arguments(parser)
    parser.set_defaults(func=run_tune_command, tune_parser=parser)


def _ints(flag: str, text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise UserError(f"--{flag} takes comma-separated integers, got {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise UserError(f"--{flag} takes integers >= 1, got {text!r}")
    return values


def shape_buckets(args, gpu: bool) -> list:
    """The shape buckets the flags ask for (defaults per device kind)."""
    from sbbench.core.types import DTYPES
    from sbbench.tuned.table import ShapeBucket

    defaults = GPU_DEFAULTS if gpu else CPU_DEFAULTS

    def axis(name):
        value = getattr(args, name)
        return value if value is not None else defaults[name]

    seq = _ints("seq-len", axis("seq_len"))
    head = _ints("head-dim", axis("head_dim"))
    feats = _ints("features", axis("features"))
    if any(f % 2 for f in feats):
        raise UserError(f"--features must be even, got {axis('features')}")
    buckets = _ints("bucket-size", axis("bucket_size"))
    dtypes = tuple(d.strip() for d in axis("dtype").split(",") if d.strip())
    for dtype in dtypes:
        if dtype not in DTYPES:
            raise UserError(f"--dtype {dtype!r}: valid: {', '.join(DTYPES)}")
    return [ShapeBucket(s, d, f, b, t)
            for t, d, f, b, s in itertools.product(dtypes, head, feats, buckets, seq)]


def command_line(args) -> str:
    """The run as a canonical command (recorded in the file's metadata): the flags that
    differ from their defaults, in the parser's order."""
    parser = args.tune_parser
    words = ["sbbench", "tune"]
    for action in parser._actions:  # argparse has no public list of a parser's options
        if not action.option_strings or action.dest in ("help", "tune_parser", "func"):
            continue
        value = getattr(args, action.dest, None)
        if value == parser.get_default(action.dest) and action.dest != "gpu":
            continue
        flag = action.option_strings[-1]
        if value is True:
            words.append(flag)
        elif value not in (None, False):
            words += [flag, str(value)]
    return shlex.join(words)


def _progress(line: str) -> None:
    print(f"sbbench tune: {line}", file=sys.stderr, flush=True)


def _cpu_list(flag: str, text: str | None) -> tuple[int, ...] | None:
    return _ints(flag, text) if text else None


def build_request(args, spec, shapes):
    """The flags, checked, as a TuneRequest."""
    from sbbench.autotune.run import TuneRequest
    from sbbench.autotune.strategies import TuneOptions

    for name in ("batch", "heads", "max_evals", "min_samples", "jobs"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.eta < 2:
        raise UserError(f"--eta must be >= 2, got {args.eta}")
    if args.within < 0 or args.warmup_ms < 0 or args.rep_ms < 0:
        raise UserError("--within, --warmup-ms and --rep-ms must be >= 0")
    if spec.kind == "cpu" and args.simulate:
        raise UserError("--simulate replays GPU kernel timings; --gpu cpu measures for real")
    if args.simulate and not args.out_dir:
        raise UserError("--simulate needs --out-dir: replayed timings never go to the "
                        "shipped tuning_configs/")
    cache = None if args.no_cache else Path(args.cache or default_cache(spec.name))
    options = TuneOptions(max_evals=args.max_evals, seed=args.seed, eta=args.eta)
    return TuneRequest(
        device=spec, shapes=shapes,
        methods=tuple(m.strip() for m in args.methods.split(",") if m.strip()),
        kernels=tuple(k.strip() for k in args.kernels.split(",") if k.strip()),
        batch=args.batch, heads=args.heads, seed=args.seed,
        threads=_cpu_list("threads", args.threads),
        chunk_elements=_cpu_list("chunk-elements", args.chunk_elements),
        strategy=args.strategy, options=options, warmup_ms=args.warmup_ms,
        rep_ms=args.rep_ms, min_samples=args.min_samples, within=args.within / 100.0,
        out_dir=Path(args.out_dir) if args.out_dir else None, cache_path=cache,
        simulate=Path(args.simulate) if args.simulate else None, static=not args.no_static,
        jobs=args.jobs,
        dry_run=args.dry_run,
        note=args.note, command=command_line(args))


def default_cache(device: str) -> Path:
    return Path(".sbbench-cache") / f"tune-{device}.jsonl"


def summary_table(report, within: float) -> str:
    from tabulate import tabulate

    rows = []
    for outcome in report.outcomes:
        best = outcome.best
        speedup = outcome.speedup()
        rows.append([
            outcome.target, outcome.shape.seq_len, outcome.shape.head_dim,
            outcome.shape.n_features, outcome.shape.bucket_size, outcome.shape.dtype,
            " ".join(f"{k}={v}" for k, v in best.config.items()) if best else "(all failed)",
            f"{best.median_ms:.4g}" if best else "",
            f"{outcome.default_eval.median_ms:.4g}" if outcome.default_eval
            and outcome.default_eval.ok else "",
            f"{speedup:.2f}" if speedup else "",
            len(outcome.result.runner_ups(within)), outcome.result.evaluated,
            len(outcome.pruned.pruned), len(outcome.result.rejected()),
        ])
    return tabulate(rows, headers=["target", "seq", "d", "F", "B", "dtype", "best", "ms",
                                   "default ms", "speedup", "runner-ups", "evaluated",
                                   "pruned", "rejected"])


def run_tune_command(args) -> int:
    from sbbench.autotune.run import tune_cpu, tune_gpu
    from sbbench.core.devices import resolve_gpu

    if args.executor == "ray":
        return run_tune_on_ray(args)

    # dry runs and simulations measure nothing, so they never need the device to be here
    spec = resolve_gpu(args.gpu, model_only=bool(args.dry_run or args.simulate))
    gpu = spec.kind != "cpu"
    request = build_request(args, spec, shape_buckets(args, gpu=gpu))
    report = (tune_gpu if gpu else tune_cpu)(request, _progress)
    if request.dry_run:
        return 0
    if report.outcomes:
        print(summary_table(report, request.within))
    if report.path:
        _progress(f"wrote {report.path}")
    else:
        _progress("nothing tuned successfully; no file written")
        return 1
    return 0


def run_tune_on_ray(args) -> int:
    """Every device of ``--gpu a,b`` tuned at once on a Ray cluster; each device's file is
    written here (the driver), from what its worker measured."""
    import dataclasses

    from sbbench.autotune.run import tune_cpu, tune_gpu, write_report
    from sbbench.sweep.executors import executor_from_args, resolve_targets
    from sbbench.sweep.runner import Settings

    if args.dry_run or args.simulate:
        raise UserError("--dry-run and --simulate measure nothing: run them without "
                        "--executor ray")
    specs = [t.spec for t in resolve_targets(args.gpu, Settings(device=""), remote=True)]
    # The tuning cache stays on the driver's disk: the workers measure afresh.
    requests = {spec.name: dataclasses.replace(
        build_request(args, spec, shape_buckets(args, gpu=spec.kind != "cpu")),
        cache_path=None) for spec in specs}

    def tune_here(spec):  # runs on the worker holding one device of this type
        tune = tune_cpu if spec.kind == "cpu" else tune_gpu
        return tune(requests[spec.name], _progress, write=False)

    with executor_from_args(args) as executor:
        runs = executor.run_per_device(tune_here, specs)
    status = 0
    for spec in specs:
        run = runs[spec.name]
        if run.error is not None:
            _progress(f"{spec.name}: gave up after {run.attempts} run(s): {run.error}")
            status = 1
            continue
        report = run.value
        if report.outcomes:
            print(f"{spec.name} (tuned on {run.worker.get('hostname')}):")
            print(summary_table(report, requests[spec.name].within))
        if write_report(requests[spec.name], report):
            _progress(f"wrote {report.path}")
        else:
            _progress(f"{spec.name}: nothing tuned successfully; no file written")
            status = 1
    return status
