"""The results store: round trip, the unique key, resume keys, concurrent writers."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import textwrap

import pytest

from sbbench.core.errors import UserError
from sbbench.core.record import COLUMNS, KEY_FIELDS, Record
from sbbench.sweep.store import Store


def make_record(seq_len: int = 256, method: str = "performer", **results) -> Record:
    base = dict(device="cpu", method=method, backend="torch", seq_len=seq_len, head_dim=64,
                batch=1, heads=4, dtype="float32", causal=False,
                n_features=32 if method == "performer" else 0, bucket_size=0, n_hashes=0,
                kernel_config="", inputs="clustered:t=1", code_version="0.1.0+test",
                source="measured")
    base.update(results)
    return Record(**base)


def test_round_trip_keeps_every_field(tmp_path):
    record = make_record(time_median_ms=1.5, time_p20_ms=1.4, time_p80_ms=1.7,
                         time_samples_ms=[1.4, 1.5, 1.7], l2_flushed=False, error_mean=0.1,
                         device_state={"before": {"name": "cpu"}}, versions={"torch": "2"},
                         peak_memory_bytes=123, causal=True)
    with Store(tmp_path / "r.sqlite") as store:
        assert store.add(record)
        assert store.records() == [record]
        assert store.get(record.key()) == record
        frame = store.to_dataframe()
    assert list(frame.columns) == list(COLUMNS)
    assert frame.loc[0, "time_samples_ms"] == [1.4, 1.5, 1.7]
    assert bool(frame.loc[0, "causal"]) is True


def test_schema_is_the_record_in_order_with_a_unique_key(tmp_path):
    path = tmp_path / "r.sqlite"
    Store(path).close()
    conn = sqlite3.connect(path)
    columns = [row[1] for row in conn.execute("PRAGMA table_info(results)")]
    assert columns == ["id", *COLUMNS]
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    unique = [row for row in conn.execute("PRAGMA index_list(results)") if row[2]]
    (index,) = unique
    key = [row[2] for row in conn.execute(f"PRAGMA index_info('{index[1]}')")]
    assert key == list(KEY_FIELDS)


def test_duplicate_key_first_row_wins_unless_replace(tmp_path):
    with Store(tmp_path / "r.sqlite") as store:
        assert store.add(make_record(time_median_ms=1.0))
        assert not store.add(make_record(time_median_ms=2.0))
        assert len(store) == 1 and store.records()[0].time_median_ms == 1.0
        assert store.add(make_record(time_median_ms=3.0), replace=True)
        assert len(store) == 1 and store.records()[0].time_median_ms == 3.0
        # any key field makes a new row
        assert store.add(make_record(time_median_ms=1.0, code_version="0.2.0+other"))
        assert store.add(make_record(time_median_ms=1.0, source="modeled"))
        assert len(store) == 3


def test_done_keys_for_resume(tmp_path):
    with Store(tmp_path / "r.sqlite") as store:
        ok = make_record(256)
        failed = make_record(512, status="failed", reason="boom")
        store.add(ok)
        store.add(failed)
        assert store.done_keys() == {ok.key(), failed.key()}
        assert store.done_keys(("failed", "oom")) == {failed.key()}
        assert store.has(ok.key()) and not store.has(make_record(1024).key())


def test_rows_survive_a_process_that_dies_without_closing(tmp_path):
    path = tmp_path / "r.sqlite"
    script = textwrap.dedent(f"""
        import os
        from sbbench.sweep.store import Store
        from tests.sweep.test_store import make_record
        store = Store({str(path)!r})
        for n in range(5):
            store.add(make_record(64 * (n + 1)))
        os._exit(1)  # no close, no cleanup: like a kill
    """)
    subprocess.run([sys.executable, "-c", script], check=False, cwd=_root())
    with Store(path) as store:
        assert len(store) == 5


def test_two_concurrent_writers_do_not_corrupt(tmp_path):
    path = tmp_path / "r.sqlite"
    script = textwrap.dedent(f"""
        import sys
        from sbbench.sweep.store import Store
        from tests.sweep.test_store import make_record
        offset = int(sys.argv[1])
        with Store({str(path)!r}) as store:
            for n in range(offset, offset + 60):  # the two ranges overlap on 30 keys
                store.add(make_record(n + 1, time_median_ms=float(offset)))
    """)
    procs = [subprocess.Popen([sys.executable, "-c", script, str(offset)], cwd=_root())
             for offset in (0, 30)]
    assert [proc.wait(timeout=120) for proc in procs] == [0, 0]
    with Store(path) as store:
        assert len(store) == 90
        assert {r.seq_len for r in store.records()} == set(range(1, 91))
        assert store.conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_old_store_gains_new_result_columns(tmp_path):
    path = tmp_path / "old.sqlite"
    keys = ", ".join(f"{name} TEXT" for name in KEY_FIELDS)
    conn = sqlite3.connect(path)
    conn.execute(f"CREATE TABLE results (id INTEGER PRIMARY KEY, {keys}, status TEXT, "
                 f"UNIQUE ({', '.join(KEY_FIELDS)}))")
    conn.commit()
    conn.close()
    with Store(path) as store:
        store.add(make_record())
        assert len(store) == 1


def test_missing_or_foreign_store_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        Store(tmp_path / "nope.sqlite", readonly=True)
    junk = tmp_path / "junk.sqlite"
    junk.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(UserError, match="not a usable SQLite"):
        Store(junk)


def test_sweep_log(tmp_path):
    with Store(tmp_path / "r.sqlite") as store:
        sweep = store.start_sweep("sbbench sweep --gpu cpu", "cpu")
        store.finish_sweep(sweep, "done")
        (logged,) = store.sweeps()
    assert logged["command"] == "sbbench sweep --gpu cpu" and logged["outcome"] == "done"


def _root() -> str:
    from pathlib import Path

    return str(Path(__file__).resolve().parents[2])
