"""The results store: one SQLite file, WAL mode, one committed transaction per row.

Why SQLite: embedded (no server), crash-safe (a row is on disk when ``add`` returns, and
a killed process loses at most the point it was measuring), readable by any tool, and
safe for several processes at once (WAL lets readers run beside one writer; writers wait
up to ``busy_timeout`` for each other).

The table's columns are the fields of ``records.Record`` in order; the key fields carry a
UNIQUE constraint. What happens when a key is already there is decided explicitly:

- ``add(record)`` (the default): INSERT OR IGNORE -- the first row for a key wins. Two
  sweeps that measure the same point keep one row, and a measured row is never
  overwritten by accident. ``add`` says whether the row went in.
- ``add(record, replace=True)``: INSERT OR REPLACE -- for ``sweep --redo failed|all``,
  which measures a point again on purpose.

A ``sweeps`` table logs each sweep's command line and start/end time for the report.
"""

from __future__ import annotations

import json
import sqlite3
import typing
from collections.abc import Iterable
from dataclasses import fields
from pathlib import Path

from sbbench.core.errors import UserError
from sbbench.core.record import COLUMNS, JSON_FIELDS, KEY_FIELDS, Record, dumps, now_utc

TABLE = "results"
SCHEMA_VERSION = 1
BUSY_TIMEOUT_S = 60.0


def _sql_type(annotation: str) -> str:
    if annotation.startswith(("int", "bool")):
        return "INTEGER"
    if annotation.startswith("float"):
        return "REAL"
    return "TEXT"


_HINTS = typing.get_type_hints(Record)
_TYPES = {f.name: _sql_type(str(f.type)) for f in fields(Record)}
_BOOL_FIELDS = tuple(f.name for f in fields(Record) if str(f.type).startswith("bool"))


class Store:
    """A results store at ``path`` (created if missing). Use as a context manager."""

    def __init__(self, path: str | Path, *, readonly: bool = False):
        self.path = Path(path)
        if readonly and not self.path.is_file():
            raise UserError(f"store {self.path} does not exist")
        if not readonly:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            # isolation_level=None: we issue BEGIN/COMMIT ourselves, one transaction per row.
            self.conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
            self.conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
            if not readonly:
                mode = self.conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                if mode.lower() != "wal":
                    raise UserError(f"store {self.path}: cannot switch to WAL mode (got "
                                    f"{mode}); is it on a network file system?")
                # FULL: a committed row survives power loss too, not only a process crash.
                self.conn.execute("PRAGMA synchronous = FULL")
                self._create()
            else:
                self._check_readable()
        except sqlite3.DatabaseError as err:
            raise UserError(f"store {self.path}: not a usable SQLite results store "
                            f"({err})") from None

    # -- lifecycle --------------------------------------------------------------------

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _create(self) -> None:
        columns = ", ".join(f"{name} {_TYPES[name]}" for name in COLUMNS)
        key = ", ".join(KEY_FIELDS)
        with self._transaction():
            self.conn.execute(f"CREATE TABLE IF NOT EXISTS {TABLE} ("
                              f"id INTEGER PRIMARY KEY, {columns}, UNIQUE ({key}))")
            self.conn.execute("CREATE TABLE IF NOT EXISTS sweeps (id INTEGER PRIMARY KEY, "
                              "command TEXT, device TEXT, started TEXT, finished TEXT, "
                              "outcome TEXT)")
            self.conn.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, "
                              "value TEXT)")
            self.conn.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)",
                              (str(SCHEMA_VERSION),))
            # A store written by an older sbbench gains the new result columns (NULL).
            have = {row[1] for row in self.conn.execute(f"PRAGMA table_info({TABLE})")}
            for name in COLUMNS:
                if name not in have:
                    if name in KEY_FIELDS:
                        raise UserError(f"store {self.path}: its key lacks {name!r}; it was "
                                        f"written by an incompatible sbbench, use a new store")
                    self.conn.execute(f"ALTER TABLE {TABLE} ADD COLUMN {name} {_TYPES[name]}")

    def _check_readable(self) -> None:
        have = {row[1] for row in self.conn.execute(f"PRAGMA table_info({TABLE})")}
        if not have:
            raise UserError(f"store {self.path} has no results table; is it an sbbench store?")

    def _transaction(self):
        store = self

        class _Tx:
            def __enter__(self):
                # IMMEDIATE takes the write lock now, so the busy timeout applies here
                # rather than failing half-way through.
                store.conn.execute("BEGIN IMMEDIATE")

            def __exit__(self, exc_type, *rest):
                store.conn.execute("ROLLBACK" if exc_type else "COMMIT")

        return _Tx()

    # -- rows -------------------------------------------------------------------------

    def add(self, record: Record, *, replace: bool = False) -> bool:
        """Write one row and commit. Returns False if the key was already there (and
        ``replace`` is False: the existing row is kept)."""
        row = record.as_dict()
        values = [dumps(row[name]) if name in JSON_FIELDS else row[name] for name in COLUMNS]
        verb = "INSERT OR REPLACE" if replace else "INSERT OR IGNORE"
        marks = ", ".join("?" for _ in COLUMNS)
        with self._transaction():
            cursor = self.conn.execute(
                f"{verb} INTO {TABLE} ({', '.join(COLUMNS)}) VALUES ({marks})", values)
        return cursor.rowcount == 1

    def has(self, key: tuple) -> bool:
        where = " AND ".join(f"{name} = ?" for name in KEY_FIELDS)
        return self.conn.execute(f"SELECT 1 FROM {TABLE} WHERE {where}",
                                 list(key)).fetchone() is not None

    def get(self, key: tuple) -> Record | None:
        where = " AND ".join(f"{name} = ?" for name in KEY_FIELDS)
        rows = self._select(f"WHERE {where}", list(key))
        return rows[0] if rows else None

    def done_keys(self, statuses: Iterable[str] | None = None) -> set[tuple]:
        """Keys of the rows in the store (optionally only those with these statuses):
        a resumed sweep skips them."""
        sql = f"SELECT {', '.join(KEY_FIELDS)} FROM {TABLE}"
        params: list = []
        if statuses is not None:
            statuses = list(statuses)
            sql += f" WHERE status IN ({', '.join('?' for _ in statuses)})"
            params = statuses
        return {self._key_from_sql(row) for row in self.conn.execute(sql, params)}

    def records(self) -> list[Record]:
        return self._select("ORDER BY id")

    def __len__(self) -> int:
        return self.conn.execute(f"SELECT COUNT(*) FROM {TABLE}").fetchone()[0]

    def to_dataframe(self):
        """All rows as a pandas DataFrame, columns in Record order (JSON fields decoded:
        samples as lists, device_state / versions as dicts)."""
        import pandas as pd

        records = self.records()
        return pd.DataFrame([r.as_dict() for r in records], columns=list(COLUMNS))

    def _select(self, tail: str, params: list | None = None) -> list[Record]:
        cursor = self.conn.execute(f"SELECT {', '.join(COLUMNS)} FROM {TABLE} {tail}",
                                   params or [])
        return [self._record_from_sql(row) for row in cursor]

    @staticmethod
    def _key_from_sql(row) -> tuple:
        values = dict(zip(KEY_FIELDS, row, strict=True))
        for name in _BOOL_FIELDS:
            if name in values and values[name] is not None:
                values[name] = bool(values[name])
        return tuple(values[name] for name in KEY_FIELDS)

    @staticmethod
    def _record_from_sql(row) -> Record:
        values = dict(zip(COLUMNS, row, strict=True))
        for name in JSON_FIELDS:
            text = values[name]
            values[name] = json.loads(text) if text else _HINTS[name]()
        for name in _BOOL_FIELDS:
            if values[name] is not None:
                values[name] = bool(values[name])
        for name in ("reason", "timed_region", "timer", "memory_method", "telemetry",
                     "reference_dtype", "git_revision", "timestamp"):
            if values[name] is None:
                values[name] = ""
        return Record(**values)

    # -- sweep log --------------------------------------------------------------------

    def start_sweep(self, command: str, device: str) -> int:
        with self._transaction():
            cursor = self.conn.execute(
                "INSERT INTO sweeps (command, device, started, outcome) VALUES (?, ?, ?, ?)",
                (command, device, now_utc(), "running"))
        return cursor.lastrowid

    def finish_sweep(self, sweep_id: int, outcome: str) -> None:
        with self._transaction():
            self.conn.execute("UPDATE sweeps SET finished = ?, outcome = ? WHERE id = ?",
                              (now_utc(), outcome, sweep_id))

    def sweeps(self) -> list[dict]:
        names = ("command", "device", "started", "finished", "outcome")
        try:
            cursor = self.conn.execute(f"SELECT {', '.join(names)} FROM sweeps ORDER BY id")
        except sqlite3.OperationalError:  # a store without a sweep log
            return []
        return [dict(zip(names, row, strict=True)) for row in cursor]
