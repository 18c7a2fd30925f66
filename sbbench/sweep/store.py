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

A ``sweeps`` table logs each sweep's command line, process and start/end time for the
report; a sweep still "running" whose process is gone is shown as "interrupted". A
``claims`` table holds the points being measured (key, pid, host, time), so two sweeps on
one store never measure the same point at once: a claim of a dead process, or one older
than ``CLAIM_TIMEOUT_S``, is taken over.

Schema versions: a store written by an older sbbench is brought up to date when it is
opened for writing (new columns and tables added; existing rows untouched; a store whose
key lacks a newer key field is rebuilt in one transaction, its rows copied with that
field's default: ``store_schema``). Opened read-only it is not written: the result
columns it lacks read as "not measured", the key fields as their defaults. A store of a
newer sbbench, or a SQLite file that is not an sbbench store, is refused and left as it
is.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import time
import typing
from collections.abc import Iterable
from dataclasses import fields
from pathlib import Path

from sbbench.core.errors import UserError
from sbbench.core.record import (
    ADDED_KEY_FIELDS,
    COLUMNS,
    JSON_FIELDS,
    KEY_FIELDS,
    Record,
    dumps,
    now_utc,
)
from sbbench.sweep import store_schema

TABLE = "results"
# 2: the noise column, the claims table, pid and host in the sweep log.
# 3: per-head errors (error_heads, error_p50, error_p90, error_max).
# 4: reference_samples_ms (the calibration kernel paired with every time sample).
# 5: sparse, sink, window in the key (the table is rebuilt: a new UNIQUE constraint).
SCHEMA_VERSION = 5
BUSY_TIMEOUT_S = 60.0
CLAIM_TIMEOUT_S = 3600.0  # a claim this old is taken over, whoever holds it
_SWEEP_COLUMNS = {"command": "TEXT", "device": "TEXT", "started": "TEXT",
                  "finished": "TEXT", "outcome": "TEXT", "pid": "INTEGER", "host": "TEXT"}


def _sql_type(annotation: str) -> str:
    if annotation.startswith(("int", "bool")):
        return "INTEGER"
    if annotation.startswith("float"):
        return "REAL"
    return "TEXT"


_HINTS = typing.get_type_hints(Record)
_TYPES = {f.name: _sql_type(str(f.type)) for f in fields(Record)}
_BOOL_FIELDS = tuple(f.name for f in fields(Record) if str(f.type).startswith("bool"))
_TEXT_DEFAULTS = tuple(f.name for f in fields(Record) if isinstance(f.default, str))


def pid_alive(pid: int | None) -> bool:
    """Whether process ``pid`` exists on this machine (False for None)."""
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


class Store:
    """A results store at ``path`` (created if missing). Use as a context manager."""

    def __init__(self, path: str | Path, *, readonly: bool = False):
        self.path = Path(path)
        if readonly and not self.path.is_file():
            raise UserError(f"store {self.path} does not exist")
        if not readonly:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self.readonly = readonly
        self.host, self.pid = socket.gethostname(), os.getpid()
        try:
            # isolation_level=None: we issue BEGIN/COMMIT ourselves, one transaction per row.
            self.conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
            self.conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
            fresh = self._check_schema()  # before anything is written
            if not readonly:
                mode = self._switch_to_wal()
                if mode.lower() != "wal":
                    raise UserError(f"store {self.path}: cannot switch to WAL mode (got "
                                    f"{mode}); is it on a network file system?")
                # FULL: a committed row survives power loss too, not only a process crash.
                self.conn.execute("PRAGMA synchronous = FULL")
                self._create_or_migrate(fresh)
            self._have = self._columns(TABLE)
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

    def _switch_to_wal(self) -> str:
        """``PRAGMA journal_mode = WAL``, retried (up to about the busy timeout) while
        another process holds a new store's write lock: SQLite then answers "database is
        locked" at once, without its busy handler (two sweeps started into one store)."""
        waited, pause = 0.0, 0.01
        while True:
            try:
                return self.conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            except sqlite3.OperationalError as err:
                if "locked" not in str(err) or waited >= BUSY_TIMEOUT_S:
                    raise
            time.sleep(pause)
            waited, pause = waited + pause, min(pause * 2, 0.5)

    def _columns(self, table: str) -> set[str]:
        return {row[1] for row in self.conn.execute(f"PRAGMA table_info({table})")}

    def _check_schema(self) -> bool:
        """UserError unless this is an sbbench store this sbbench can read (or an empty
        file: returns True). Reads only."""
        tables = {row[0] for row in self.conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table'")}
        if not tables:
            if self.readonly:
                raise UserError(f"store {self.path} is empty; is it an sbbench store?")
            return True
        version = None
        if "meta" in tables:
            row = self.conn.execute(
                "SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            version = int(row[0]) if row and str(row[0]).isdigit() else None
        if version is None and not (TABLE in tables and {"device", "method", "code_version"}
                                    <= self._columns(TABLE)):
            raise UserError(f"{self.path} is a SQLite file but not an sbbench results store "
                            f"(tables: {', '.join(sorted(tables))}); give another --store path")
        if version is not None and version > SCHEMA_VERSION:
            raise UserError(f"store {self.path} was written by a newer sbbench (schema "
                            f"{version}; this one knows up to {SCHEMA_VERSION}); upgrade "
                            f"sbbench to use it")
        missing = [name for name in KEY_FIELDS if TABLE in tables
                   and name not in self._columns(TABLE) and name not in ADDED_KEY_FIELDS]
        if missing:
            raise UserError(f"store {self.path}: its key lacks {missing[0]!r}; it was written "
                            f"by an incompatible sbbench, use a new store")
        return False

    def _create_or_migrate(self, fresh: bool) -> None:
        """Create the tables, or bring an older store up to date (new columns NULL; a
        table with an older key rebuilt, the new key fields at their defaults)."""
        sweep_columns = ", ".join(f"{n} {t}" for n, t in _SWEEP_COLUMNS.items())
        with self._transaction():
            have = self._columns(TABLE)  # read inside the lock: another process may migrate
            if have and store_schema.key_outdated(have):
                store_schema.rebuild(self.conn, TABLE, have, _TYPES)
            self.conn.execute(store_schema.create_sql(TABLE, _TYPES))
            self.conn.execute(f"CREATE TABLE IF NOT EXISTS sweeps (id INTEGER PRIMARY KEY, "
                              f"{sweep_columns})")
            self.conn.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, "
                              "value TEXT)")
            self.conn.execute("CREATE TABLE IF NOT EXISTS claims (key TEXT PRIMARY KEY, "
                              "pid INTEGER, host TEXT, sweep_id INTEGER, claimed REAL)")
            if not fresh:
                for table, wanted in ((TABLE, _TYPES), ("sweeps", _SWEEP_COLUMNS)):
                    have = self._columns(table)
                    for name, sql_type in wanted.items():
                        if name not in have:
                            self.conn.execute(
                                f"ALTER TABLE {table} ADD COLUMN {name} {sql_type}")
            self.conn.execute("INSERT OR REPLACE INTO meta VALUES ('schema_version', ?)",
                              (str(SCHEMA_VERSION),))

    def schema_version(self) -> int | None:
        try:
            row = self.conn.execute(
                "SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        except sqlite3.OperationalError:
            return None
        return int(row[0]) if row else None

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

    def _key_where(self) -> str:
        # a read-only older store lacks the newer key fields: compare their defaults
        return " AND ".join(f"{store_schema.column_sql(name, self._have)} = ?"
                            for name in KEY_FIELDS)

    def has(self, key: tuple) -> bool:
        return self.conn.execute(f"SELECT 1 FROM {TABLE} WHERE {self._key_where()}",
                                 list(key)).fetchone() is not None

    def get(self, key: tuple) -> Record | None:
        rows = self._select(f"WHERE {self._key_where()}", list(key))
        return rows[0] if rows else None

    def done_keys(self, statuses: Iterable[str] | None = None) -> set[tuple]:
        """Keys of the rows in the store (optionally only those with these statuses):
        a resumed sweep skips them."""
        names = ", ".join(store_schema.column_sql(name, self._have) for name in KEY_FIELDS)
        sql = f"SELECT {names} FROM {TABLE}"
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
        # A read-only older store lacks some columns: results read as NULL, key fields
        # as their defaults.
        cursor = self.conn.execute(
            f"SELECT {store_schema.select_list(self._have)} FROM {TABLE} {tail}",
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
        for name in _TEXT_DEFAULTS:
            if values[name] is None:
                values[name] = ""
        return Record(**values)

    # -- sweep log --------------------------------------------------------------------

    def start_sweep(self, command: str, device: str) -> int:
        with self._transaction():
            cursor = self.conn.execute(
                "INSERT INTO sweeps (command, device, started, outcome, pid, host) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (command, device, now_utc(), "running", self.pid, self.host))
        return cursor.lastrowid

    def finish_sweep(self, sweep_id: int, outcome: str) -> None:
        with self._transaction():
            self.conn.execute("UPDATE sweeps SET finished = ?, outcome = ? WHERE id = ?",
                              (now_utc(), outcome, sweep_id))
            self.conn.execute("DELETE FROM claims WHERE pid = ? AND host = ?",
                              (self.pid, self.host))

    def sweeps(self) -> list[dict]:
        """The sweep log, oldest first. A "running" sweep whose process is gone (same
        host) reads as "interrupted"."""
        names = ("command", "device", "started", "finished", "outcome")
        extra = [n if n in self._columns("sweeps") else f"NULL AS {n}" for n in ("pid", "host")]
        try:
            cursor = self.conn.execute(
                f"SELECT {', '.join(names + tuple(extra))} FROM sweeps ORDER BY id")
        except sqlite3.OperationalError:  # a store without a sweep log
            return []
        log = []
        for row in cursor:
            entry = dict(zip(names, row[:len(names)], strict=True))
            pid, host = row[len(names):]
            if (entry["outcome"] == "running" and pid and host == self.host
                    and not pid_alive(pid)):
                entry["outcome"] = "interrupted"
            log.append(entry)
        return log

    # -- claims: which sweep is measuring which point -------------------------------------

    def claim(self, key: tuple, sweep_id: int | None = None, *,
              timeout_s: float = CLAIM_TIMEOUT_S) -> bool:
        """Claim ``key`` for this process; False if another live sweep holds it. A claim
        of a dead process (same host) or older than ``timeout_s`` is taken over."""
        text, now = dumps(list(key)), time.time()
        with self._transaction():
            row = self.conn.execute("SELECT pid, host, claimed FROM claims WHERE key = ?",
                                    (text,)).fetchone()
            if row is not None:
                pid, host, claimed = row
                ours = (pid, host) == (self.pid, self.host)
                dead = host == self.host and not pid_alive(pid)
                if not (ours or dead or now - (claimed or 0) > timeout_s):
                    return False
            self.conn.execute("INSERT OR REPLACE INTO claims VALUES (?, ?, ?, ?, ?)",
                              (text, self.pid, self.host, sweep_id, now))
        return True

    def claimed_elsewhere(self, *, timeout_s: float = CLAIM_TIMEOUT_S) -> set[tuple]:
        """The keys other live sweeps hold claims on now (reads only)."""
        if "claims" not in self._tables():
            return set()
        now, held = time.time(), set()
        for text, pid, host, claimed in self.conn.execute(
                "SELECT key, pid, host, claimed FROM claims"):
            ours = (pid, host) == (self.pid, self.host)
            dead = host == self.host and not pid_alive(pid)
            if not (ours or dead or now - (claimed or 0) > timeout_s):
                held.add(tuple(json.loads(text)))
        return held

    def release(self, key: tuple) -> None:
        with self._transaction():
            self.conn.execute("DELETE FROM claims WHERE key = ? AND pid = ? AND host = ?",
                              (dumps(list(key)), self.pid, self.host))

    def others_claiming(self, *, timeout_s: float = CLAIM_TIMEOUT_S) -> int:
        """Live claims of other processes: other sweeps measuring on this store now."""
        if self.readonly and "claims" not in self._tables():
            return 0
        count, now = 0, time.time()
        for pid, host, claimed in self.conn.execute("SELECT pid, host, claimed FROM claims"):
            if (pid, host) == (self.pid, self.host) or now - (claimed or 0) > timeout_s:
                continue
            if host != self.host or pid_alive(pid):
                count += 1
        return count

    def _tables(self) -> set[str]:
        return {row[0] for row in self.conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table'")}
