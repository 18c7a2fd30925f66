"""Command-line interface: argument parsing only (ARCHITECTURE.md layer 5).

Each command lives in ``sbbench/cli_<name>.py`` with a ``register(subparsers)`` function
that adds its parser and sets ``func``; this module wires them together and turns user
errors into one clear line instead of a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from . import __version__
from .errors import UserError

# One module per command, in the order the help lists them.
_COMMAND_MODULES = (
)

_EPILOG = """examples:
  sbbench sweep --grid quick --gpu cpu        small CPU sweep, results in sbbench-results.sqlite
  sbbench report --store sbbench-results.sqlite
  sbbench accuracy --out reports/accuracy     accuracy study (error vs attention entropy)
  sbbench devices                             the GPU profiles sbbench knows
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
        importlib.import_module(f"sbbench.{name}").register(sub)
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
