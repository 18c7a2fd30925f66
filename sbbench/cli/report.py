"""``sbbench report``: turn a results store into reports/<device>/ (tables, CSV, plots)."""

from __future__ import annotations

import argparse
import shlex
import sys

from sbbench.cli.sweep import DEFAULT_STORE

_EPILOG = """\
examples:
  sbbench report                                   report of sbbench-results.sqlite
  sbbench report --store runs/h100.sqlite --out reports/
  sbbench report --store all.sqlite --device cpu   one device of a shared store

writes, per device: README.md (header with command, date, device and versions; one
table per shape; Pareto fronts; failed points with reasons), results.csv (and
results.parquet if pyarrow is installed), time_vs_seq_len.png, memory_vs_seq_len.png,
pareto/<shape>.png and energy_per_token.png where energy was measured. Rows predicted
by --model-only go to reports/<device>/modeled/.
"""


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "report", help="write markdown tables, CSV and plots from a results store",
        description="Write reports/<device>/ from a results store.", epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", default=DEFAULT_STORE, metavar="PATH",
                        help=f"SQLite results store (default: {DEFAULT_STORE})")
    parser.add_argument("--out", default="reports", metavar="DIR",
                        help="output folder; one sub-folder per device (default: reports)")
    parser.add_argument("--device", action="append", metavar="NAME",
                        help="only this device (repeatable; default: every device)")
    parser.set_defaults(func=run_report_command)


def run_report_command(args) -> int:
    from sbbench.analyze.report import write_report

    words = ["sbbench", "report", "--store", args.store, "--out", args.out]
    for device in args.device or []:
        words += ["--device", device]
    for path in write_report(args.store, args.out, command=shlex.join(words),
                             devices=args.device):
        print(f"sbbench report: wrote {path}/", file=sys.stderr)
    return 0
