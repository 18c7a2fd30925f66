"""How the results store reads and rebuilds tables written by an older sbbench.

A column added to the result part of ``Record`` is added to an old table in place (its
rows read it as NULL, "not measured"). A column added to the key changes the table's
UNIQUE constraint, which SQLite cannot alter: the table is rebuilt (a new table with the
new key, every row copied with the key's defaults, the old one dropped), in the caller's
transaction. Opened read-only, an old table is read through the same defaults.
"""

from __future__ import annotations

import sqlite3

from sbbench.core.record import ADDED_KEY_FIELDS, COLUMNS, KEY_FIELDS
from sbbench.core.types import SPARSE_KINDS_OF


def _sparse_default_sql() -> str:
    """SQL giving a row's default bucket kind from its method (core.record.default_sparse)."""
    cases = " ".join(f"WHEN '{method}' THEN '{kinds[0]}'"
                     for method, kinds in SPARSE_KINDS_OF.items())
    return f"(CASE method {cases} ELSE '' END)"


# What a key column an old table lacks reads as.
KEY_DEFAULTS_SQL = {"sparse": _sparse_default_sql(), "sink": "0", "window": "0"}
assert set(KEY_DEFAULTS_SQL) == set(ADDED_KEY_FIELDS)


def column_sql(name: str, have: set[str]) -> str:
    """An expression for column ``name`` of a table holding the columns ``have``: the
    column itself, its key default, or NULL (a result not measured)."""
    if name in have:
        return name
    return KEY_DEFAULTS_SQL.get(name, "NULL")


def select_list(have: set[str]) -> str:
    """The SELECT list of every Record column, in order, from a table with ``have``."""
    return ", ".join(name if name in have else f"{column_sql(name, have)} AS {name}"
                     for name in COLUMNS)


def key_outdated(have: set[str]) -> bool:
    """Whether a results table with the columns ``have`` lacks part of today's key."""
    return any(name not in have for name in KEY_FIELDS)


def create_sql(table: str, types: dict[str, str]) -> str:
    columns = ", ".join(f"{name} {types[name]}" for name in COLUMNS)
    return (f"CREATE TABLE IF NOT EXISTS {table} (id INTEGER PRIMARY KEY, {columns}, "
            f"UNIQUE ({', '.join(KEY_FIELDS)}))")


def rebuild(conn: sqlite3.Connection, table: str, have: set[str],
            types: dict[str, str]) -> int:
    """Rebuild ``table`` (columns ``have``) with today's columns and key, inside the
    caller's transaction; rows keep their id and values, new key columns get their
    defaults. Returns the number of rows copied."""
    new = f"{table}_rebuild"
    conn.execute(f"DROP TABLE IF EXISTS {new}")
    conn.execute(create_sql(new, types))
    conn.execute(f"INSERT INTO {new} (id, {', '.join(COLUMNS)}) "
                 f"SELECT id, {select_list(have)} FROM {table} ORDER BY id")
    # the old key is a part of the new one and the added parts' defaults follow from it:
    # no two old rows can collide
    copied = conn.execute(f"SELECT COUNT(*) FROM {new}").fetchone()[0]
    conn.execute(f"DROP TABLE {table}")
    conn.execute(f"ALTER TABLE {new} RENAME TO {table}")
    return copied
