"""``sbbench select``: choose approximation budgets from sweep results."""

from __future__ import annotations

import argparse
import math
import shlex
import sys
from pathlib import Path

from sbbench.cli.args import (
    DEFAULT_REPORTS,
    DEFAULT_TUNING,
    TUNING_ENV,
    add_command,
    add_gpu_argument,
    add_store_argument,
    as_text,
    default_tuning_dir,
    split_list,
    tuning_hint,
)

_DESCRIPTION = """\
From the measured rows of one device in a results store: per shape (seq_len, head_dim,
batch x heads, dtype, causal) the Pareto front of error vs time (and peak memory and
energy where measured); per error target the cheapest method and budget meeting it;
and per shape family the sequence length below which exact attention is simply faster.

Writes the `budgets:` section of <tuning-dir>/<device>.yaml (the tables that
ScatterbrainAttention.from_tuned and lookup_budget read; other sections are kept) and a
readable <report-out>/<device>/budgets.md. The tuning folder is $SBBENCH_TUNING_DIR when
set, else ./sbbench-tuning; run with SBBENCH_TUNING_DIR=./sbbench-tuning to use it."""

_EPILOG = f"""\
examples:
  sbbench sweep --gpu cpu --grid quick && sbbench select --gpu cpu
      budgets into ./{DEFAULT_TUNING}/cpu.yaml, the table into ./{DEFAULT_REPORTS}/cpu/
  {TUNING_ENV}=./{DEFAULT_TUNING} python my_model.py
      ... and ScatterbrainAttention.from_tuned reads them
  sbbench select --gpu h100-sxm --store runs/h100.sqlite --targets 1%,5%
  sbbench select --gpu cpu --dry-run                print the table, write nothing
  sbbench select --gpu cpu --tuning-dir tuning_configs --report-out reports
      update the committed files of a source checkout
"""


def error_targets(text: str) -> tuple[float, ...]:
    """"1%,2%,0.05" -> (0.01, 0.02, 0.05): percentages or fractions, each > 0."""
    try:
        values = tuple(sorted({float(p[:-1]) / 100 if p.endswith("%") else float(p)
                               for p in split_list(text)}))
    except ValueError:
        values = ()
    if not values or any(not (0 < v < math.inf) for v in values):
        raise argparse.ArgumentTypeError(
            f"takes comma-separated error targets > 0, percentages or fractions "
            f"(1%,0.05), got {text!r}")
    return values


def register(subparsers) -> None:
    parser = add_command(subparsers, "select", description=_DESCRIPTION, epilog=_EPILOG,
                         help="choose budgets per error target from sweep results")
    add_gpu_argument(parser, help="device profile whose rows to use (cpu, h100-sxm, ...; "
                                  "auto: the local device; default: auto)")
    add_store_argument(parser)
    parser.add_argument("--targets", default="1%,5%,10%,25%,50%", metavar="LIST",
                        type=as_text(error_targets),
                        help="relative output error targets, percentages or fractions "
                             "(default: 1%%,5%%,10%%,25%%,50%%)")
    parser.add_argument("--error-stat", default="p90", choices=("p50", "p90", "max", "mean"),
                        help="statistic of the per-head errors a budget must keep under "
                             "the target (default: p90, i.e. 90%% of the heads)")
    parser.add_argument("--report-out", default=DEFAULT_REPORTS, metavar="DIR",
                        help=f"the table goes to DIR/<device>/budgets.md (default: "
                             f"./{DEFAULT_REPORTS})")
    parser.add_argument("--tuning-dir", default=None, metavar="DIR",
                        help=f"folder of the tuning files (default: ${TUNING_ENV} when set, "
                             f"else ./{DEFAULT_TUNING})")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the budgets table; write neither file")
    parser.set_defaults(func=run_select_command)


def command_line(args) -> str:
    # the store by file name: a committed table must not name a path of the machine
    words = ["sbbench", "select", "--gpu", args.gpu, "--store", Path(args.store).name,
             "--targets", args.targets]
    if args.error_stat != "p90":
        words += ["--error-stat", args.error_stat]
    if args.report_out != DEFAULT_REPORTS:
        words += ["--report-out", args.report_out]
    if args.tuning_dir:
        words += ["--tuning-dir", args.tuning_dir]
    return shlex.join(words)


def run_select_command(args) -> int:
    from sbbench.analyze.selection import select
    from sbbench.analyze.selection_report import budgets_markdown
    from sbbench.core.devices import resolve_gpu
    from sbbench.core.record import now_utc
    from sbbench.sweep.store import Store

    targets = error_targets(args.targets)
    device = resolve_gpu(args.gpu, model_only=True).name  # selection measures nothing
    with Store(args.store, readonly=True) as store:
        frame = store.to_dataframe()
    selection = select(frame, device=device, targets=targets, error_stat=args.error_stat)
    command, date = command_line(args), now_utc()
    tuning_file = None
    if not args.dry_run:
        from sbbench.tuned import write_section

        metadata = {
            "date": date, "command": command, "store": Path(args.store).name, "device": device,
            "targets": list(targets), "error_stat": args.error_stat,
            "code_versions": sorted({v for text in selection.candidates["code_version"]
                                     for v in text.split(",")}),
            "exact_faster_below": [
                {**{k: (bool(v) if k == "causal" else v) for k, v in t.family.items()},
                 "against": t.criterion, "seq_len": t.exact_faster_below,
                 "crossover": round(t.crossover, 1) if t.crossover is not None else None}
                for t in selection.thresholds],
        }
        tuning_dir = args.tuning_dir or default_tuning_dir()
        tuning_file = str(write_section(device, "budgets", selection.entries,
                                        metadata=metadata, folder=tuning_dir))
    text = budgets_markdown(selection, device=device, command=command, date=date,
                            store=Path(args.store).name, tuning_file=tuning_file)
    if args.dry_run:
        print(text)
        return 0
    out = Path(args.report_out) / device / "budgets.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(f"sbbench select: {len(selection.entries)} budget entries for {device} -> "
          f"{tuning_file}; table -> {out}", file=sys.stderr)
    for note in selection.notes:
        print(f"sbbench select: note: {note}", file=sys.stderr)
    hint = tuning_hint(tuning_dir)
    if hint:
        print(f"sbbench select: {hint}", file=sys.stderr)
    return 0
