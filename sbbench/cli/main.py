"""Command-line interface: argument parsing only (the top layer).

Each command lives in ``sbbench/cli/<name>.py`` with a ``register(subparsers)`` function
that adds its parser and sets ``func``; the arguments they share are in
``sbbench/cli/args.py``. This module wires them together and turns user errors (a flag
argparse refuses, or a ``UserError`` from below) into one clear line and exit status 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from sbbench import __version__
from sbbench.cli.args import DEFAULT_REPORTS, DEFAULT_TUNING, Parser, UsageError
from sbbench.core.errors import UserError

# One module per command, in the order the help lists them.
_COMMAND_MODULES = (
    "sweep",
    "report",
    "accuracy",
    "tune",
    "select",
    "check",
    "devices",
    "ci_bench",
    "capture",
    "e2e",
)

_EPILOG = f"""examples:
  sbbench sweep --gpu cpu --grid quick --report   small CPU sweep + report in {DEFAULT_REPORTS}/cpu/
  sbbench sweep --gpu h100 --grid full            on an H100 (refuses on another device)
  sbbench sweep --gpu a100 --model-only           predict from the cost model, rows marked modeled
  sbbench report --store sbbench-results.sqlite
  sbbench select --gpu cpu                        budgets per error target -> {DEFAULT_TUNING}/
  sbbench tune --gpu cpu                          tune the torch path (GPU: kernel tiles)
  sbbench check --baseline A.json --current B.json  regression check (exit 1 on regression)
  sbbench accuracy --out /tmp/accuracy            accuracy study (error vs attention entropy)
  sbbench devices                                 the GPU profiles sbbench knows
"""


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="sbbench",
        description="Benchmark and autotune Scatterbrain attention (sparse LSH + low-rank "
                    "Performer) against exact attention.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"sbbench {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _COMMAND_MODULES:
        importlib.import_module(f"sbbench.cli.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args, extra = parser.parse_known_args(argv)
        if extra:  # said by the command's parser, not the top-level one
            prog = f"sbbench {args.command}" if getattr(args, "command", None) else "sbbench"
            raise UsageError(f"{prog}: error: unrecognized arguments: {' '.join(extra)}")
    except UsageError as err:
        print(err, file=sys.stderr)
        return 2
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        result = args.func(args)
    except UserError as err:
        print(f"sbbench {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"sbbench {args.command}: interrupted; results written so far are kept",
              file=sys.stderr)
        return 130
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
