"""``sbbench select``: choose approximation budgets from sweep results."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from sbbench.cli.sweep import DEFAULT_STORE

_DESCRIPTION = """\
From the measured rows of one device in a results store: per shape (seq_len, head_dim,
batch x heads, dtype, causal) the Pareto front of error vs time (and peak memory and
energy where measured); per error target the cheapest method and budget meeting it;
and per shape family the sequence length below which exact attention is simply faster.

Writes the `budgets:` section of tuning_configs/<device>.yaml (the tables that
ScatterbrainAttention.from_tuned and lookup_budget read; other sections are kept) and a
readable reports/<device>/budgets.md."""

_EPILOG = """\
examples:
  sbbench sweep --gpu cpu --grid quick && sbbench select --gpu cpu
  sbbench select --gpu h100-sxm --store runs/h100.sqlite --targets 1%,5%
  sbbench select --gpu cpu --dry-run                print the table, write nothing
  SBBENCH_TUNING_DIR=/tmp/tuned sbbench select --gpu cpu    write elsewhere
"""


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "select", help="choose budgets per error target from sweep results",
        description=_DESCRIPTION, epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gpu", default="auto", metavar="NAME",
                        help="device profile whose rows to use (cpu, h100-sxm, ...; auto: "
                             "the local device; default: auto)")
    parser.add_argument("--store", default=DEFAULT_STORE, metavar="PATH",
                        help=f"SQLite results store (default: {DEFAULT_STORE})")
    parser.add_argument("--targets", default="1%,2%,5%,10%", metavar="LIST",
                        help="relative output error targets, percentages or fractions "
                             "(default: 1%%,2%%,5%%,10%%)")
    parser.add_argument("--report-out", default="reports", metavar="DIR",
                        help="the table goes to DIR/<device>/budgets.md (default: reports)")
    parser.add_argument("--tuning-dir", default=None, metavar="DIR",
                        help="folder of the tuning files (default: $SBBENCH_TUNING_DIR, "
                             "else the shipped tuning_configs/)")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the budgets table; write neither file")
    parser.set_defaults(func=run_select_command)


def command_line(args) -> str:
    words = ["sbbench", "select", "--gpu", args.gpu, "--store", args.store,
             "--targets", args.targets]
    if args.report_out != "reports":
        words += ["--report-out", args.report_out]
    if args.tuning_dir:
        words += ["--tuning-dir", args.tuning_dir]
    return shlex.join(words)


def run_select_command(args) -> int:
    from sbbench.analyze.selection import budgets_markdown, parse_targets, select
    from sbbench.core.devices import resolve_gpu
    from sbbench.core.record import now_utc
    from sbbench.sweep.store import Store

    targets = parse_targets(args.targets)
    device = resolve_gpu(args.gpu, model_only=True).name  # selection measures nothing
    with Store(args.store, readonly=True) as store:
        frame = store.to_dataframe()
    selection = select(frame, device=device, targets=targets)
    command, date = command_line(args), now_utc()
    tuning_file = None
    if not args.dry_run:
        from sbbench.tuned.table import write_section

        metadata = {
            "date": date, "command": command, "store": str(args.store), "device": device,
            "targets": list(targets),
            "code_versions": sorted({v for text in selection.candidates["code_version"]
                                     for v in text.split(",")}),
            "exact_faster_below": [
                {**{k: (bool(v) if k == "causal" else v) for k, v in t.family.items()},
                 "against": t.criterion, "seq_len": t.exact_faster_below,
                 "crossover": round(t.crossover, 1) if t.crossover is not None else None}
                for t in selection.thresholds],
        }
        tuning_file = str(write_section(device, "budgets", selection.entries,
                                        metadata=metadata, folder=args.tuning_dir))
    text = budgets_markdown(selection, device=device, command=command, date=date,
                            store=str(args.store), tuning_file=tuning_file)
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
    return 0
