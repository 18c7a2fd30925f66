"""Text formatting shared by every report: tables and numbers (layer 0).

One table writer (markdown for files, plain columns for the terminal) and one way to
print a number, a percentage, a time, a byte count and an energy, so that every report
and command writes the same value the same way. A missing value (None, NaN) prints as
``missing`` ("" unless asked otherwise), never as "nan".
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def is_missing(value) -> bool:
    """None, NaN, or something that is not a number."""
    if value is None:
        return True
    try:
        return math.isnan(float(value))
    except (TypeError, ValueError):
        return True


def number(value, digits: int = 3, *, scale: float = 1.0, missing: str = "") -> str:
    """``value * scale`` to ``digits`` significant digits ("0.0123", "1.23e+04", "inf")."""
    if is_missing(value):
        return missing
    return f"{float(value) * scale:.{digits}g}"


def percent(value, digits: int = 3, *, missing: str = "") -> str:
    """A fraction as a percentage: 0.05 -> "5%"."""
    if is_missing(value):
        return missing
    return f"{float(value) * 100:.{digits}g}%"


def time_ms(value, digits: int = 4, *, missing: str = "") -> str:
    """Milliseconds with the unit: "1.234 ms"."""
    return missing if is_missing(value) else f"{number(value, digits)} ms"


def mebibytes(value, digits: int = 4, *, missing: str = "") -> str:
    """A byte count in MiB with the unit: "12.5 MiB"."""
    return missing if is_missing(value) else f"{number(value, digits, scale=1 / 2**20)} MiB"


def millijoules(value, digits: int = 4, *, missing: str = "") -> str:
    """Joules in mJ with the unit: "3.2 mJ"."""
    return missing if is_missing(value) else f"{number(value, digits, scale=1e3)} mJ"


def _table(headers: Sequence[str], rows: Sequence[Sequence], fmt: str,
           align: Sequence[str] | None) -> str:
    from tabulate import tabulate

    options = {"colalign": tuple(align)} if align else {}
    return tabulate([list(row) for row in rows], headers=list(headers), tablefmt=fmt,
                    disable_numparse=True, **options)


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence],
                   align: Sequence[str] | None = None) -> str:
    """A GitHub markdown table; cells are printed as given (format numbers first; None
    prints as an empty cell).
    ``align``: "left" / "right" / "center" per column (default: left)."""
    return _table(headers, rows, "github", align)


def text_table(headers: Sequence[str], rows: Sequence[Sequence],
               align: Sequence[str] | None = None) -> str:
    """The same table as plain aligned columns, for a terminal."""
    return _table(headers, rows, "simple", align)
