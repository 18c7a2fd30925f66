"""Command-line interface: argument parsing only (ARCHITECTURE.md layer 5).

Each command lives in ``sbbench/cli_<name>.py`` with a ``register(subparsers)`` function
that adds its parser and sets ``func``; this module wires them together and turns user
errors into one clear line instead of a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from sbbench import __version__
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
)

_EPILOG = """examples:
  sbbench sweep --gpu cpu --grid quick --report   small CPU sweep + report in reports/cpu/
  sbbench sweep --gpu h100 --grid full            on an H100 (refuses on another device)
  sbbench sweep --gpu a100 --model-only           predict from the cost model, rows marked modeled
  sbbench report --store sbbench-results.sqlite
  sbbench select --gpu cpu                        budgets per error target -> tuning_configs/
  sbbench tune --gpu cpu                          tune the torch path (GPU: kernel tiles)
  sbbench check --baseline A.json --current B.json  regression check (exit 1 on regression)
  sbbench accuracy --out reports/accuracy         accuracy study (error vs attention entropy)
  sbbench devices                                 the GPU profiles sbbench knows
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
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
    args = parser.parse_args(argv)
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
