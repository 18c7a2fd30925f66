"""Command-line interface: one thin module per command (argument parsing only)."""

from sbbench.cli.main import build_parser, main

__all__ = ["build_parser", "main"]
