"""``sbbench sweep``: measure a grid of points on one device into a results store."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

from sbbench.cli.args import (
    DEFAULT_REPORTS,
    DEFAULT_STORE,
    GPU_LIST_HELP,
    add_command,
    add_executor_arguments,
    add_gpu_argument,
    add_store_argument,
    as_text,
    executor_from_args,
    executor_words,
    file_path,
    int_list,
    name_list,
    nonnegative_int,
    positive_float,
    positive_int,
)
from sbbench.core.errors import UserError
from sbbench.core.types import budget_label
from sbbench.sweep.grid import OVERRIDE_FLAGS, apply_overrides, expand, load_grid, shipped_grids

__all__ = ["DEFAULT_STORE", "register", "run_sweep_command"]

# How each axis flag's text is checked before the grid reads it (the grid owns the
# meaning: valid methods, dtypes, even features, ...).
_AXIS_TYPES = {
    "seq-len": int_list(), "head-dim": int_list(), "batch": int_list(), "heads": int_list(),
    "features": int_list(0), "bucket-size": int_list(), "hashes": int_list(),
    "sparse": name_list(), "sink": int_list(0), "window": int_list(0),
    "seeds": positive_int, "temperature": positive_float, "warmup-ms": positive_float,
    "rep-ms": positive_float, "dtype": name_list(), "causal": name_list(),
    "methods": name_list(), "backends": name_list(), "inputs": name_list(),
}

DEFAULT_TIME_PROCESSES = 4  # CPU; 4: identical sweeps pass and 1.3x is caught (reports/check/)

_DESCRIPTION = """\
Sweep sequence length, head dimension, methods and approximation budgets (random
features, bucket size, hash rounds, bucket kind, sink and window keys) on one device.
Every point is checked against exact attention first (output error over seeds), then
timed (median, p20/p80, all samples), with its peak memory, energy where NVML is
available, and modeled FLOPs/bytes/roofline.
Each row is committed as it is measured: an interrupted sweep keeps its rows, and
running the same command again skips the points already in the store."""

_EPILOG = """\
examples:
  sbbench sweep --gpu cpu --grid quick
      the small CPU grid (a few minutes on 2 cores), into sbbench-results.sqlite
  sbbench sweep --gpu cpu --grid quick --report
      ... and write sbbench-reports/cpu/ afterwards
  sbbench sweep --gpu h100-sxm --grid full --seq-len 1024,4096 --features 64,128
      the full grid on an H100, with two axes overridden
  sbbench sweep --gpu a100-80gb --grid full --model-only
      predict every point from the cost model (rows marked source=modeled)
  sbbench sweep --gpu cpu --grid quick --dry-run
      list the points and their modeled cost; measure nothing
  sbbench sweep --gpu cpu --grid quick --time-processes 0
      time in this process only (faster; times carry this process's bias, see
      reports/check/)
  sbbench sweep --gpu cpu --grid my_grid.yaml --redo failed
      a grid file of your own; run failed/oom points again
  sbbench sweep --executor ray --address auto --gpu a100-80gb,h100-sxm --grid full
      one sweep across a Ray cluster, every listed GPU type at once, into one store

grid axes (YAML keys; a flag replaces the grid's list):
  seq_len head_dim batch heads dtype causal methods backends n_features bucket_size
  n_hashes sparse sink window seeds input_kind temperature warmup_ms rep_ms
  (their flags: --features, --hashes, --inputs; the old YAML keys features, hashes and
   inputs are still read, with a deprecation note)
"""


def register(subparsers) -> None:
    parser = add_command(subparsers, "sweep", description=_DESCRIPTION, epilog=_EPILOG,
                         help="measure a grid of methods and budgets on one device")
    add_gpu_argument(parser, help=GPU_LIST_HELP)
    parser.add_argument("--grid", default="quick", metavar="NAME|FILE", type=file_path,
                        help=f"a shipped grid ({', '.join(shipped_grids())}) or a YAML "
                             f"file (default: quick)")
    add_store_argument(parser)
    axes = parser.add_argument_group("axis overrides (comma-separated; replace the grid's)")
    helps = {
        "seq-len": "sequence lengths, e.g. 1024,4096", "head-dim": "head dimensions",
        "batch": "batch sizes", "heads": "head counts",
        "dtype": "float32, float16, bfloat16, float64", "causal": "true,false",
        "methods": "exact, performer, lsh, scatterbrain, scatterbrain_local, "
                   "scatterbrain_centroids (key centroids as the low-rank part; torch only)",
        "backends": "torch, triton",
        "features": "random features (even), or for scatterbrain_centroids key centroids "
                    "(any count >= 1), e.g. 64,128",
        "bucket-size": "LSH bucket / local block sizes, e.g. 32,64",
        "hashes": "hash rounds, e.g. 1,2",
        "sparse": "bucket kinds of scatterbrain: lsh (SMYRF hashes), kmeans (query clusters)",
        "sink": "first keys every query attends to, e.g. 0,4",
        "window": "nearest keys every query attends to, e.g. 0,64",
        "seeds": "number of seeds for accuracy",
        "inputs": "input kind: qkv:minilm, qkv:FILE[#layer=N] (captured) or gaussian, clustered",
        "temperature": "softmax temperature of the inputs",
        "warmup-ms": "warm-up time budget per point", "rep-ms": "timing budget per point",
    }
    for flag in OVERRIDE_FLAGS:
        axes.add_argument(f"--{flag}", metavar="V", default=None, help=helps[flag],
                          type=as_text(_AXIS_TYPES[flag]))
    run = parser.add_argument_group("what to do")
    run.add_argument("--dry-run", action="store_true",
                     help="list the points with their modeled cost and exit")
    run.add_argument("--model-only", action="store_true",
                     help="predict every point from the cost model (no measurement; "
                          "works for a device that is not here); rows: source=modeled")
    run.add_argument("--redo", choices=("none", "failed", "all"), default="none",
                     help="measure points already in the store again: failed (failed/oom "
                          "rows) or all; rows are replaced (default: none, resume)")
    run.add_argument("--no-memory", action="store_true",
                     help="skip the peak-memory measurement (CPU: one child process per point)")
    run.add_argument("--no-energy", action="store_true",
                     help="skip the >= 1 s energy window per point (GPU with NVML)")
    run.add_argument("--threads", type=nonnegative_int, default=0, metavar="N",
                     help="torch CPU threads (default: torch's choice)")
    run.add_argument("--time-processes", type=nonnegative_int, default=None, metavar="N",
                     help="CPU: time every shape again in N fresh processes, its points "
                          "interleaved, and pool the samples (steadier times for `sbbench "
                          f"check`; default {DEFAULT_TIME_PROCESSES}, 0 = only this process)")
    run.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    run.add_argument("--report", action="store_true",
                     help="write the report of the store after the sweep")
    run.add_argument("--report-out", default=DEFAULT_REPORTS, metavar="DIR",
                     help=f"where --report writes, one folder per device (default: "
                          f"./{DEFAULT_REPORTS})")
    add_executor_arguments(parser)
    parser.set_defaults(func=run_sweep_command)


def command_line(args) -> str:
    """The sweep as a canonical command (recorded in the store and the report)."""
    words = ["sbbench", "sweep", "--gpu", args.gpu, "--grid", args.grid, "--store", args.store]
    for flag in OVERRIDE_FLAGS:
        value = getattr(args, flag.replace("-", "_"))
        if value is not None:
            words += [f"--{flag}", value]
    for name in ("dry_run", "model_only", "no_memory", "no_energy"):
        if getattr(args, name):
            words.append("--" + name.replace("_", "-"))
    if args.threads:
        words += ["--threads", str(args.threads)]
    if args.time_processes is not None:
        words += ["--time-processes", str(args.time_processes)]
    if args.redo != "none":
        words += ["--redo", args.redo]
    words += executor_words(args)
    return shlex.join(words)


def run_sweep_command(args) -> int:
    from sbbench.sweep.executors import resolve_targets
    from sbbench.sweep.runner import Settings
    from sbbench.sweep.store import Store

    grid = load_grid(args.grid)
    grid = apply_overrides(grid, {flag: getattr(args, flag.replace("-", "_"))
                                  for flag in OVERRIDE_FLAGS})
    expansion = expand(grid)
    if not expansion.points:
        raise UserError(f"grid {grid.name} has no points after overrides"
                        + (f" ({'; '.join(expansion.dropped)})" if expansion.dropped else ""))
    executor = executor_from_args(args)
    template = Settings(
        device="", seeds=grid.seeds, input_kind=grid.input_kind, temperature=grid.temperature,
        warmup_ms=grid.warmup_ms, rep_ms=grid.rep_ms,
        measure_memory=not args.no_memory, measure_energy=not args.no_energy,
        num_threads=args.threads,
        time_processes=(DEFAULT_TIME_PROCESSES if args.time_processes is None
                        else args.time_processes))
    # A dry run measures nothing, so it never needs the device to be here. Locally the
    # device must be this machine's (the cpu profile's peaks are measured here); on Ray
    # each worker checks its own device and measures its own CPU.
    targets = resolve_targets(args.gpu, template, remote=args.executor == "ray",
                              model_only=args.model_only or args.dry_run)
    if args.model_only and any(target.spec.kind == "cpu" for target in targets):
        raise UserError("--model-only predicts a GPU from its cost model; there is nothing "
                        "to model on a CPU: drop --model-only to measure it, or name a GPU "
                        "profile (see `sbbench devices`)")
    command = command_line(args)
    if args.dry_run:
        print("\n\n".join(dry_run_text(expansion, target.settings, target.spec,
                                        Path(args.store), args.model_only)
                           for target in targets))
        return 0
    names = ", ".join(target.spec.name for target in targets)
    print(f"sbbench sweep: {len(expansion.points)} points of grid {grid.name} on {names}"
          f" -> {args.store}" + (" (model only)" if args.model_only else "")
          + (f" via {executor.name}" if executor.name != "local" else ""), file=sys.stderr)
    for note in expansion.dropped:
        print(f"sbbench sweep: note: {note}", file=sys.stderr)
    with Store(args.store) as store, executor:
        summary = executor.run_sweep(expansion.points, targets, store,
                                     model_only=args.model_only, redo=args.redo,
                                     progress=not args.no_progress, command=command)
    print(f"sbbench sweep: {summary.line()}", file=sys.stderr)
    if args.report:
        from sbbench.analyze.report import write_report

        for path in write_report(args.store, args.report_out, command=command,
                                 devices=[target.spec.name for target in targets]):
            print(f"sbbench sweep: report written to {path}/", file=sys.stderr)
    return 0


def dry_run_text(expansion, settings, spec, store_path: Path, model_only: bool) -> str:
    from tabulate import tabulate

    from sbbench.measure import costmodel
    from sbbench.sweep import guards
    from sbbench.sweep.runner import estimate_seconds, point_key
    from sbbench.sweep.store import Store

    done: set = set()
    claimed: set = set()
    if store_path.is_file():
        with Store(store_path, readonly=True) as store:
            done, claimed = store.done_keys(), store.claimed_elsewhere()
    source = "modeled" if model_only else "measured"
    table, todo = [], []
    for number, point in enumerate(expansion.points, 1):
        p, b = point.problem, point.budget
        roofline = costmodel.roofline_time_s(p, b, spec)
        in_store = point_key(point, settings, source) in done
        if not in_store:
            todo.append(point)
        table.append([
            number, b.method, point.backend, budget_label(b), p.seq_len, p.head_dim,
            f"{p.batch}x{p.heads}", p.dtype, "yes" if p.causal else "",
            f"{costmodel.flops(p, b) / 1e9:.3g}", f"{costmodel.bytes_moved(p, b) / 2**20:.3g}",
            f"{costmodel.working_set_bytes(p, b) / 2**20:.3g}",
            f"{roofline * 1e3:.3g}" if roofline is not None else "",
            "yes" if in_store else ""])
    headers = ["#", "method", "backend", "budget", "seq_len", "head_dim", "b x h", "dtype",
               "causal", "GFLOP", "MiB moved", "working set MiB", f"roofline ms ({spec.name})",
               "in store"]
    lines = [tabulate(table, headers=headers, tablefmt="simple", disable_numparse=True), ""]
    lines.append(f"{len(expansion.points)} points, {len(expansion.points) - len(todo)} already "
                 f"in {store_path}; {len(todo)} to run")
    for note in expansion.dropped:
        lines.append(f"note: {note}")
    held = sum(point_key(point, settings, source) in claimed for point in todo)
    if held:
        lines.append(f"note: {held} of them are being measured by another sweep on this "
                     f"store now: this one will leave them to it")
    capacity = guards.device_memory_bytes(settings.torch_device,
                                          getattr(spec, "mem_bytes", None))
    too_big = sum(guards.fit_refusal(point, capacity) is not None for point in todo)
    if too_big and not model_only:
        lines.append(f"note: {too_big} point(s) cannot fit in this device's memory (cost "
                     f"model's working set): recorded as oom without running")
    refused = sum(guards.kernel_refusal(point, spec) is not None for point in expansion.points)
    if refused:
        lines.append(f"note: the Triton kernels refuse {refused} triton point(s) on "
                     f"{spec.arch}: recorded as skipped, not run")
    if not model_only and todo:
        lines.append(f"rough time to measure: ~{estimate_seconds(todo, settings) / 60:.1f} min "
                     f"(time budgets and seeds only; large sizes take longer)")
    return "\n".join(lines)

