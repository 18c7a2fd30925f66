"""``sbbench report``: turn a results store into <out>/<device>/ (tables, CSV, plots)."""

from __future__ import annotations

import argparse
import shlex
import sys

from sbbench.cli.args import (
    DEFAULT_REPORTS,
    DeprecatedAlias,
    add_command,
    add_out_argument,
    add_store_argument,
    name_list,
)

_EPILOG = f"""\
examples:
  sbbench report                                   report of sbbench-results.sqlite
                                                   into ./{DEFAULT_REPORTS}/<device>/
  sbbench report --store runs/h100.sqlite --out reports/
                                                   regenerate the committed reports
  sbbench report --store all.sqlite --gpu cpu      one device of a shared store

writes, per device: README.md (header with command, date, device and versions; one
table per shape; Pareto fronts; failed points with reasons), results.csv (and
results.parquet if pyarrow is installed), time_vs_seq_len.png, memory_vs_seq_len.png,
pareto/<shape>.png and energy_per_token.png where energy was measured. Rows predicted
by --model-only go to <out>/<device>/modeled/.
"""


def register(subparsers) -> None:
    parser = add_command(
        subparsers, "report",
        help="write markdown tables, CSV and plots from a results store",
        description="Write <out>/<device>/ from a results store.", epilog=_EPILOG)
    add_store_argument(parser)
    add_out_argument(parser, default=DEFAULT_REPORTS,
                     help=f"output folder; one sub-folder per device (default: "
                          f"./{DEFAULT_REPORTS})")
    parser.add_argument("--gpu", action="append", metavar="NAME,..", type=name_list(),
                        help="only these devices (comma-separated or repeated; default: "
                             "every device in the store)")
    # The old spelling: still read, with a note (one name per concept: --gpu).
    parser.add_argument("--device", dest="gpu", action=DeprecatedAlias, new_flag="--gpu",
                        type=name_list(), help=argparse.SUPPRESS)
    parser.set_defaults(func=run_report_command)


def run_report_command(args) -> int:
    from sbbench.analyze.report import write_report

    devices = [name for names in args.gpu or [] for name in names] or None
    words = ["sbbench", "report", "--store", args.store, "--out", args.out]
    if devices:
        words += ["--gpu", ",".join(devices)]
    for path in write_report(args.store, args.out, command=shlex.join(words),
                             devices=devices):
        print(f"sbbench report: wrote {path}/", file=sys.stderr)
    return 0
