"""Arguments every command shares: the value types, --gpu / --store / --out, the executor
group, and a parser whose errors are one line.

Every value is checked while the command line is parsed, before any work: a bad value
ends in ``sbbench <command>: error: --flag ...`` and exit status 2, never a usage block
or a traceback. Comma lists are parsed in one place (:func:`split_list`).
"""

from __future__ import annotations

import argparse
import math
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path

from sbbench.core.errors import UserError
from sbbench.sweep.executors import (
    DEFAULT_BATCH_POINTS,
    DEFAULT_MAX_ATTEMPTS,
    LocalExecutor,
    RayExecutor,
)

DEFAULT_STORE = "sbbench-results.sqlite"
# Outputs go to the working folder, never into the installed package or the checkout's
# committed reports/ and tuning_configs/ unless the user names those folders.
DEFAULT_REPORTS = "sbbench-reports"
DEFAULT_TUNING = "sbbench-tuning"
TUNING_ENV = "SBBENCH_TUNING_DIR"  # the same name sbbench.tuned reads


class UsageError(Exception):
    """A command line argparse refused; ``main`` prints it as one line, exit 2."""


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors raise :class:`UsageError` (one line, no usage
    block) instead of printing the usage and exiting."""

    def error(self, message: str):
        # argparse says "argument --x: <type's message>"; the types below phrase their
        # messages to follow the flag ("--x must be ...", "--x takes ...").
        match = re.match(r"argument ([^:]+): ((?:must|takes) .*)", message, re.S)
        if match:
            message = f"{match.group(1)} {match.group(2)}"
        raise UsageError(f"{self.prog}: error: {' '.join(message.split())}")


# ---------------------------------------------------------------------------------------
# Value types (argparse ``type=``); each raises ArgumentTypeError with a message that
# reads after the flag's name
# ---------------------------------------------------------------------------------------

def split_list(text: str) -> list[str]:
    """``"1024, 4096"`` -> ``["1024", "4096"]``; an empty list or an empty item (``"1,,2"``,
    ``"1,"``) is an error (ValueError): it is almost always a typo."""
    parts = [part.strip() for part in str(text).split(",")]
    if not any(parts):
        raise ValueError("is empty")
    if not all(parts):
        raise ValueError(f"has an empty item in {text!r}")
    return parts


def _int(text: str) -> int:
    return int(text.strip())


def _finite_float(text: str) -> float:
    value = float(text.strip())
    if not math.isfinite(value):
        raise ValueError(text)
    return value


def int_at_least(minimum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = _int(text)
        except ValueError:
            value = None
        if value is None or value < minimum:
            raise argparse.ArgumentTypeError(
                f"must be an integer >= {minimum}, got {text!r}")
        return value

    parse.__name__ = f"int_at_least_{minimum}"
    return parse


positive_int = int_at_least(1)
nonnegative_int = int_at_least(0)


def finite_float(*, minimum: float = 0.0, inclusive: bool = False) -> Callable[[str], float]:
    """A finite float > ``minimum`` (>= with ``inclusive``): nan and inf are refused."""
    bound = f">= {minimum:g}" if inclusive else f"> {minimum:g}"

    def parse(text: str) -> float:
        try:
            value = _finite_float(text)
        except ValueError:
            value = None
        if value is None or value < minimum or (value == minimum and not inclusive):
            raise argparse.ArgumentTypeError(
                f"must be a finite number {bound}, got {text!r}")
        return value

    parse.__name__ = "finite_float"
    return parse


positive_float = finite_float()
nonnegative_float = finite_float(inclusive=True)


def int_list(minimum: int = 1, *, even: bool = False) -> Callable[[str], tuple[int, ...]]:
    """``"1024,4096"`` -> ``(1024, 4096)``, every item an integer >= ``minimum``."""
    noun = f"integers >= {minimum}" + (", even" if even else "")

    def parse(text: str) -> tuple[int, ...]:
        try:
            values = tuple(_int(part) for part in split_list(text))
        except ValueError:
            values = ()
        if not values or any(v < minimum for v in values) or \
                (even and any(v % 2 for v in values)):
            raise argparse.ArgumentTypeError(
                f"takes comma-separated {noun}, got {text!r}")
        return values

    parse.__name__ = "int_list"
    return parse


def float_list(text: str) -> tuple[float, ...]:
    """``"0.5,2"`` -> ``(0.5, 2.0)``, every item a finite number > 0."""
    try:
        values = tuple(_finite_float(part) for part in split_list(text))
    except ValueError:
        values = ()
    if not values or any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError(
            f"must be comma-separated finite numbers > 0, got {text!r}")
    return values


def name_list(choices: tuple[str, ...] | None = None) -> Callable[[str], tuple[str, ...]]:
    """``"a, b"`` -> ``("a", "b")``; with ``choices``, each item must be one of them."""

    def parse(text: str) -> tuple[str, ...]:
        try:
            names = tuple(split_list(text))
        except ValueError as err:
            raise argparse.ArgumentTypeError(
                f"takes comma-separated names, but {err}") from None
        if choices is not None and any(name not in choices for name in names):
            raise argparse.ArgumentTypeError(
                f"must be a comma-separated subset of {', '.join(choices)}, got {text!r}")
        return tuple(dict.fromkeys(names))

    parse.__name__ = "name_list"
    return parse


def as_text(parse: Callable[[str], object]) -> Callable[[str], str]:
    """Check ``text`` with ``parse`` but keep it as (normalised) text: for flags whose
    lower layer reads text (the sweep's grid overrides), so the recorded command line
    is the one the user typed."""

    def check(text: str) -> str:
        parse(text)
        return ",".join(part.strip() for part in text.split(","))

    check.__name__ = getattr(parse, "__name__", "value")
    return check


def file_path(text: str) -> str:
    """A path that is not a directory (it may not exist yet)."""
    if Path(text).is_dir():
        raise argparse.ArgumentTypeError(f"must be a file, but {text!r} is a directory")
    return text


def list_text(value) -> str:
    """A parsed value as it is written on a command line (lists comma-joined)."""
    if isinstance(value, (tuple, list)):
        return ",".join(list_text(v) for v in value)
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


# ---------------------------------------------------------------------------------------
# Shared arguments
# ---------------------------------------------------------------------------------------

def add_command(subparsers, name: str, *, help: str, description: str,
                epilog: str | None = None) -> argparse.ArgumentParser:
    """The parser of one command; its description and examples keep their line breaks."""
    return subparsers.add_parser(name, help=help, description=description, epilog=epilog,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)


# --gpu of the commands that measure here, or on each device of the list with Ray
GPU_LIST_HELP = ("device profile (see `sbbench devices`): cpu, a100-80gb, h100-sxm, ...; auto "
                 "detects (default: auto); with --executor ray a comma-separated list, e.g. "
                 "a100-80gb,h100-sxm")


def add_gpu_argument(parser, *, help: str, default: str | None = "auto") -> None:
    parser.add_argument("--gpu", default=default, metavar="NAME", help=help)


def add_store_argument(parser, *, help: str | None = None) -> None:
    parser.add_argument("--store", default=DEFAULT_STORE, metavar="PATH", type=file_path,
                        help=help or f"SQLite results store (default: {DEFAULT_STORE})")


def add_out_argument(parser, *, default: str, help: str, flag: str = "--out") -> None:
    parser.add_argument(flag, default=default, metavar="DIR", help=help)


def add_model_arguments(parser, *, models: str) -> None:
    """--model (``models`` says which) and --text, of the commands that run a real model."""
    parser.add_argument("--model", required=True, metavar="NAME_OR_FOLDER", help=models)
    parser.add_argument("--text", required=True, metavar="FILE", help="UTF-8 text to run on")


def default_tuning_dir() -> str:
    """Where ``select`` and ``tune`` write: ``$SBBENCH_TUNING_DIR`` (where tuning files
    are read from) when set, else ./sbbench-tuning."""
    return os.environ.get(TUNING_ENV) or DEFAULT_TUNING


def tuning_hint(folder: str | Path) -> str | None:
    """How to make ``ScatterbrainAttention.from_tuned`` read ``folder`` (None: it does)."""
    current = os.environ.get(TUNING_ENV)
    if current and Path(current).resolve() == Path(folder).resolve():
        return None
    return (f"to use it: {TUNING_ENV}={folder} (it replaces the shipped tuning_configs/ "
            f"for every device)")


class DeprecatedAlias(argparse.Action):
    """A hidden old spelling of a flag: stores like the new one, with a one-line note."""

    def __init__(self, option_strings, dest, new_flag: str, **kwargs):
        self.new_flag = new_flag
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"{parser.prog}: note: {option_string} is deprecated; use {self.new_flag}",
              file=sys.stderr)
        items = list(getattr(namespace, self.dest, None) or [])
        items.append(values)
        setattr(namespace, self.dest, items)


# ---------------------------------------------------------------------------------------
# Executors (local, Ray)
# ---------------------------------------------------------------------------------------

def add_executor_arguments(parser: argparse.ArgumentParser) -> None:
    """``--executor``, ``--address`` and the Ray executor's options."""
    group = parser.add_argument_group("where the points run")
    group.add_argument("--executor", choices=("local", "ray"), default="local",
                       help="local: this machine, one point at a time (default); ray: a Ray "
                            "cluster, every device of --gpu at once (pip install "
                            "'sbbench[ray]')")
    group.add_argument("--address", metavar="ADDR", default=None,
                       help="ray: the cluster to join (host:6379, or auto for the one this "
                            "node belongs to); without it a local Ray instance is started")
    group.add_argument("--max-attempts", type=positive_int, default=DEFAULT_MAX_ATTEMPTS,
                       metavar="N",
                       help=f"ray: runs of a point whose worker is lost before it is recorded "
                            f"as failed (default {DEFAULT_MAX_ATTEMPTS})")
    group.add_argument("--batch-points", type=positive_int, default=DEFAULT_BATCH_POINTS,
                       metavar="N",
                       help=f"ray: points of one shape per task (default "
                            f"{DEFAULT_BATCH_POINTS})")
    group.add_argument("--allow-mixed-versions", action="store_true",
                       help="ray: keep rows from workers whose sbbench code version differs "
                            "from the driver's (each row records its worker's versions)")


def executor_words(args) -> list[str]:
    """The executor flags of ``args`` for the canonical command line."""
    if getattr(args, "executor", "local") == "local":
        return []
    words = ["--executor", args.executor]
    if args.address:
        words += ["--address", args.address]
    if args.max_attempts != DEFAULT_MAX_ATTEMPTS:
        words += ["--max-attempts", str(args.max_attempts)]
    if args.batch_points != DEFAULT_BATCH_POINTS:
        words += ["--batch-points", str(args.batch_points)]
    if args.allow_mixed_versions:
        words.append("--allow-mixed-versions")
    return words


def executor_from_args(args) -> LocalExecutor | RayExecutor:
    if getattr(args, "executor", "local") == "local":
        if getattr(args, "address", None):
            raise UserError("--address needs --executor ray")
        return LocalExecutor()
    for name in ("max_attempts", "batch_points"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be >= 1, got "
                            f"{getattr(args, name)}")
    return RayExecutor(args.address, max_attempts=args.max_attempts,
                       batch_points=args.batch_points,
                       allow_mixed_versions=args.allow_mixed_versions)
