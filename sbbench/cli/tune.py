"""``sbbench tune``: tune implementation settings per shape bucket (parsing only; the
run is ``sbbench.autotune``)."""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

from sbbench.autotune.shapes import DEFAULT_AXES
from sbbench.cli.args import (
    DEFAULT_TUNING,
    GPU_LIST_HELP,
    TUNING_ENV,
    add_command,
    add_executor_arguments,
    add_gpu_argument,
    default_tuning_dir,
    executor_from_args,
    int_at_least,
    int_list,
    list_text,
    name_list,
    nonnegative_float,
    positive_int,
    tuning_hint,
)
from sbbench.core.errors import UserError

_DESCRIPTION = """\
Tune the settings that change speed but never the result, per shape bucket (sequence
length, head dimension, random features, bucket size, dtype, and the sparse part's
bucket kind, sink and window keys), and write the best config with its runner-ups,
times and counts to <out-dir>/<device>.yaml ($SBBENCH_TUNING_DIR when set, else
./sbbench-tuning; other sections of that file, e.g. the budgets `sbbench select` writes,
are kept). Run with SBBENCH_TUNING_DIR=./sbbench-tuning to use it.

On a GPU: the Triton kernels' tile sizes. Each kernel's search space is pruned
statically first (compiled for the device's architecture without running; configs over
the shared-memory or register limits, or that spill, are dropped with the reason), then
a strategy times the rest with sbbench's timing wrapper; a config whose output differs
from the reference beyond the tolerance is rejected with the reason.
On the CPU (--gpu cpu): the torch path's chunk size of the sparse loop (chunk_elements)
and the thread count, for scatterbrain, lsh and performer (and, when asked with
--methods, scatterbrain_local and scatterbrain_centroids), measured on this machine.

Evaluations are cached in a JSON-lines file: an interrupted tune resumes, and running
the same command again measures nothing new (a changed checkout measures again)."""

_EPILOG = f"""\
examples:
  sbbench tune --gpu cpu
      the torch path on this CPU, default shape buckets, into ./{DEFAULT_TUNING}/cpu.yaml
  {TUNING_ENV}=./{DEFAULT_TUNING} python my_model.py
      ... and ScatterbrainAttention.from_tuned reads it
  sbbench tune --gpu cpu --seq-len 2048 --methods scatterbrain --strategy successive_halving
  sbbench tune --gpu cpu --methods scatterbrain --sparse kmeans --sink 4 --window 60
      buckets of k-means clusters plus 4 sink and 60 window keys (what config="tuned"
      picks for a call with sparse="kmeans", sink=4, window=60)
  sbbench tune --gpu cpu --inputs qkv:minilm --seq-len 256,512
      on the shipped MiniLM capture's Q/K/V (72 heads of 32, 512 tokens)
  sbbench tune --gpu h100-sxm --kernels all --strategy random --max-evals 30
      kernel tile sizes on an H100 (must run on one)
  sbbench tune --gpu h100-sxm --dry-run
      list the shape buckets and each kernel's static pruning for sm_90 (no GPU needed)
  sbbench tune --gpu cpu --out-dir tuning_configs
      update the committed file of a source checkout
"""


def _axis_default(name: str) -> str:
    cpu, gpu = (list_text(DEFAULT_AXES[kind][name]) for kind in ("cpu", "gpu"))
    return f"default {cpu}" if cpu == gpu else f"default cpu: {cpu}; gpu: {gpu}"


def register(subparsers) -> None:
    from sbbench.autotune.strategies import STRATEGIES

    parser = add_command(subparsers, "tune", description=_DESCRIPTION, epilog=_EPILOG,
                         help="tune kernel tile sizes (GPU) or the torch path (CPU) per "
                              "shape bucket")
    add_gpu_argument(parser, help=GPU_LIST_HELP)
    shapes = parser.add_argument_group(
        "shape buckets (comma-separated; crossed with each other)")
    shapes.add_argument("--seq-len", metavar="N,..", type=int_list(),
                        help=f"sequence lengths ({_axis_default('seq_len')})")
    shapes.add_argument("--head-dim", metavar="D,..", type=int_list(),
                        help=f"head dimensions ({_axis_default('head_dim')})")
    shapes.add_argument("--features", metavar="F,..", type=int_list(),
                        help=f"random features, even ({_axis_default('features')})")
    shapes.add_argument("--bucket-size", metavar="B,..", type=int_list(),
                        help=f"bucket sizes ({_axis_default('bucket_size')})")
    shapes.add_argument("--dtype", metavar="T,..", type=name_list(),
                        help=f"dtypes ({_axis_default('dtype')})")
    shapes.add_argument("--sparse", metavar="KIND,..", type=name_list(),
                        help="bucket kinds of the sparse part: lsh (hash buckets), kmeans "
                             "(query clusters; scatterbrain, scatterbrain_centroids), "
                             "local (blocks; scatterbrain_local takes only these, and "
                             "gets them for lsh) (default lsh)")
    shapes.add_argument("--sink", metavar="N,..", type=int_list(0),
                        help="first keys every query also attends to, e.g. 0,4 (default 0; "
                             "GPU: a bucket with sink or window > 0 also tunes the fixed "
                             "kernel)")
    shapes.add_argument("--window", metavar="N,..", type=int_list(0),
                        help="nearest keys every query also attends to, e.g. 0,64 (default "
                             "0); buckets with sink + window >= seq_len are skipped")
    shapes.add_argument("--batch", type=positive_int, default=1,
                        help="batch of the tuned calls (1)")
    shapes.add_argument("--heads", type=positive_int,
                        help="heads of the tuned calls (default 4; a capture sets them)")
    shapes.add_argument("--inputs", default="clustered", metavar="KIND",
                        help="the Q/K/V the configs are timed on: clustered (default), "
                             "gaussian, qkv:minilm (the shipped capture) or "
                             "qkv:FILE[#layer=N] (sbbench capture). A capture sets heads, "
                             "head_dim and causal (a --heads/--head-dim that disagrees is an "
                             "error); --seq-len may not exceed its tokens (default: the "
                             "default lengths that fit, else its token count)")
    what = parser.add_argument_group("what to tune")
    what.add_argument("--methods", default=("scatterbrain", "lsh", "performer"),
                      metavar="M,..", type=name_list(),
                      help="CPU: torch-path methods (default: scatterbrain,lsh,performer; "
                           "also scatterbrain_local, scatterbrain_centroids)")
    what.add_argument("--kernels", default=("all",), metavar="K,..", type=name_list(),
                      help="GPU: kernel names, or all (default: all)")
    what.add_argument("--threads", metavar="N,..", type=int_list(),
                      help="CPU: thread counts to try (default: powers of two up to the "
                           "core count, and the core count)")
    what.add_argument("--chunk-elements", metavar="N,..", type=int_list(),
                      help="CPU: chunk_elements to try (default: 2^16 .. 2^22)")
    how = parser.add_argument_group("how")
    how.add_argument("--strategy", choices=tuple(STRATEGIES), default="exhaustive",
                     help="search strategy (default: exhaustive)")
    how.add_argument("--max-evals", type=positive_int, default=20, metavar="N",
                     help="random: configs to measure per bucket (default 20)")
    how.add_argument("--eta", type=int_at_least(2), default=3,
                     help="successive_halving: keep 1/eta per rung (default 3)")
    how.add_argument("--seed", type=int, default=0, help="inputs and random strategy seed")
    how.add_argument("--warmup-ms", type=nonnegative_float, default=25.0,
                     help="warm-up per config (25)")
    how.add_argument("--rep-ms", type=nonnegative_float, default=100.0,
                     help="timing budget per config (100)")
    how.add_argument("--min-samples", type=positive_int, default=5,
                     help="samples per config, at least (5)")
    how.add_argument("--within", type=nonnegative_float, default=3.0, metavar="PCT",
                     help="runner-ups: configs within PCT%% of the best (default 3)")
    out = parser.add_argument_group("input and output")
    out.add_argument("--out-dir", metavar="DIR",
                     help=f"folder of the tuning file (default: ${TUNING_ENV} when set, "
                          f"else ./{DEFAULT_TUNING})")
    out.add_argument("--cache", metavar="PATH",
                     help="tuning cache (default: .sbbench-cache/tune-<device>.jsonl)")
    out.add_argument("--no-cache", action="store_true", help="measure everything again")
    out.add_argument("--simulate", metavar="FILE",
                     help="GPU: replay recorded timings (YAML/JSON/CSV of config -> samples) "
                          "instead of measuring; needs --out-dir")
    out.add_argument("--no-static", action="store_true",
                     help="GPU: skip the ahead-of-time compile (prune with keep() only)")
    out.add_argument("--jobs", type=positive_int, default=os.cpu_count() or 1, metavar="N",
                     help="GPU: static compiles in parallel (default: the core count)")
    out.add_argument("--dry-run", action="store_true",
                     help="list buckets, spaces and static pruning; measure and write nothing")
    out.add_argument("--note", default="", help="a note for the file's metadata")
    add_executor_arguments(parser)
    parser.set_defaults(func=run_tune_command, tune_parser=parser)


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
            words += [flag, list_text(value)]
    return shlex.join(words)


def _progress(line: str) -> None:
    print(f"sbbench tune: {line}", file=sys.stderr, flush=True)


def build_request(args, spec):
    """The flags as the TuneRequest of device ``spec``."""
    from sbbench.autotune.run import TuneRequest
    from sbbench.autotune.shapes import default_cache, shape_buckets, tune_inputs
    from sbbench.autotune.strategies import TuneOptions

    if spec.kind == "cpu" and args.simulate:
        raise UserError("--simulate replays GPU kernel timings; --gpu cpu measures for real")
    if args.simulate and not args.out_dir:
        raise UserError("--simulate needs --out-dir: replayed timings go only to a folder "
                        "you name")
    kind = "cpu" if spec.kind == "cpu" else "gpu"
    # a capture's shape is checked first: a length over its tokens is refused before any work
    inputs = tune_inputs(args.inputs, kind, seq_len=args.seq_len, head_dim=args.head_dim,
                         heads=args.heads)
    for note in inputs.notes:
        _progress(f"note: {note}")
    if inputs.causal and kind == "gpu":
        _progress("note: the capture is causal; each kernel is still timed in its own "
                  "forward (lowrank_causal causal, the others not)")
    shapes = shape_buckets(kind, seq_len=inputs.seq_len, head_dim=inputs.head_dim,
                           features=args.features, bucket_size=args.bucket_size,
                           dtype=args.dtype, sparse=args.sparse, sink=args.sink,
                           window=args.window)
    cache = None if args.no_cache else Path(args.cache or default_cache(spec.name))
    return TuneRequest(
        device=spec, shapes=shapes, methods=args.methods, kernels=args.kernels,
        batch=args.batch, heads=inputs.heads, seed=args.seed, inputs=inputs.kind,
        causal=inputs.causal,
        threads=args.threads, chunk_elements=args.chunk_elements,
        strategy=args.strategy,
        options=TuneOptions(max_evals=args.max_evals, seed=args.seed, eta=args.eta),
        warmup_ms=args.warmup_ms, rep_ms=args.rep_ms, min_samples=args.min_samples,
        within=args.within / 100.0, out_dir=Path(args.out_dir or default_tuning_dir()),
        cache_path=cache, simulate=Path(args.simulate) if args.simulate else None,
        static=not args.no_static, jobs=args.jobs, dry_run=args.dry_run,
        note=args.note, command=command_line(args))


def _wrote(path) -> None:
    _progress(f"wrote {path}")
    hint = tuning_hint(Path(path).parent)
    if hint:
        _progress(hint)


def run_tune_command(args) -> int:
    from sbbench.autotune.fanout import tune_here
    from sbbench.autotune.summary import summary_table
    from sbbench.core.devices import resolve_gpu

    if args.executor == "ray":
        return run_tune_on_ray(args)
    executor_from_args(args)  # refuses Ray-only flags without --executor ray
    # dry runs and simulations measure nothing, so they never need the device to be here
    spec = resolve_gpu(args.gpu, model_only=bool(args.dry_run or args.simulate))
    request = build_request(args, spec)
    report = tune_here(request, _progress)
    if request.dry_run:
        return 0
    if report.outcomes:
        print(summary_table(report, request.within))
    if not report.path:
        _progress("nothing tuned successfully; no file written")
        return 1
    _wrote(report.path)
    return 0


def run_tune_on_ray(args) -> int:
    """Every device of ``--gpu a,b`` tuned at once on a Ray cluster; each device's file is
    written here (the driver), from what its worker measured."""
    from sbbench.autotune.fanout import ray_devices, tune_per_device
    from sbbench.autotune.summary import summary_table

    if args.dry_run or args.simulate:
        raise UserError("--dry-run and --simulate measure nothing: run them without "
                        "--executor ray")
    requests = [build_request(args, spec) for spec in ray_devices(args.gpu)]
    with executor_from_args(args) as executor:
        results = tune_per_device(requests, executor, _progress)
    status = 0
    for result in results:
        if result.error is not None:
            _progress(f"{result.device}: gave up after {result.attempts} run(s): "
                      f"{result.error}")
            status = 1
            continue
        if result.report.outcomes:
            print(f"{result.device} (tuned on {result.host}):")
            print(summary_table(result.report, result.request.within))
        if result.written:
            _wrote(result.report.path)
        else:
            _progress(f"{result.device}: nothing tuned successfully; no file written")
            status = 1
    return status
