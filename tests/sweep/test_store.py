"""The results store: round trip, the unique key, resume keys, concurrent writers."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import textwrap

import pytest

from sbbench.core.errors import UserError
from sbbench.core.record import COLUMNS, KEY_FIELDS, Record
from sbbench.sweep.store import SCHEMA_VERSION, Store


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
        from sbbench.sweep.store import SCHEMA_VERSION, Store
        from tests.sweep.test_store import make_record
        store = Store({str(path)!r})
        for n in range(5):
            store.add(make_record(64 * (n + 1)))
        os._exit(1)  # no close, no cleanup: like a kill
    """)
    subprocess.run([sys.executable, "-c", script], check=False, cwd=_root())
    with Store(path) as store:
        assert len(store) == 5


def test_opening_a_new_store_waits_while_another_process_holds_its_write_lock(tmp_path):
    # SQLite answers the switch to WAL with "database is locked" at once, without its busy
    # handler, while another connection holds the write lock of a new store (two sweeps
    # started into one new store); the store retries instead of failing
    import threading
    import time

    path = tmp_path / "r.sqlite"
    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")
    release = threading.Timer(0.3, lambda: other.execute("COMMIT"))
    release.start()
    start = time.monotonic()
    try:
        with Store(path) as store:
            assert store.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
            assert len(store) == 0
    finally:
        release.join()
        other.close()
    assert time.monotonic() - start >= 0.25  # it waited for the other's commit


def test_two_concurrent_writers_do_not_corrupt(tmp_path):
    path = tmp_path / "r.sqlite"
    script = textwrap.dedent(f"""
        import sys
        from sbbench.sweep.store import SCHEMA_VERSION, Store
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


def _version_1_store(path) -> None:
    """A store as sbbench wrote it before the noise column, claims and the sweep's pid."""
    with Store(path) as store:
        store.add(make_record(time_median_ms=2.0))
    conn = sqlite3.connect(path)
    conn.execute("ALTER TABLE results DROP COLUMN noise")
    conn.execute("DROP TABLE claims")
    conn.execute("ALTER TABLE sweeps DROP COLUMN pid")
    conn.execute("ALTER TABLE sweeps DROP COLUMN host")
    conn.execute("INSERT INTO sweeps (command, outcome) VALUES ('old sweep', 'done')")
    conn.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")
    conn.commit()
    conn.execute("PRAGMA journal_mode = DELETE")
    conn.close()


def test_an_older_store_is_migrated_when_opened_for_writing(tmp_path):
    path = tmp_path / "v1.sqlite"
    _version_1_store(path)
    with Store(path) as store:
        assert store.schema_version() == SCHEMA_VERSION
        (old,) = store.records()
        assert old.time_median_ms == 2.0 and old.noise == ""
        assert store.add(make_record(512, noise="spread"))
        assert store.claim(make_record(1024).key())
        assert [s["outcome"] for s in store.sweeps()] == ["done"]
    with Store(path, readonly=True) as store:
        assert [r.noise for r in store.records()] == ["", "spread"]


def test_an_older_store_read_only_is_read_in_memory_and_left_as_it_is(tmp_path):
    path = tmp_path / "v1.sqlite"
    _version_1_store(path)
    before = path.read_bytes()
    with Store(path, readonly=True) as store:
        (old,) = store.records()
        assert old.noise == "" and old.time_median_ms == 2.0
        assert store.sweeps()[0]["outcome"] == "done" and store.others_claiming() == 0
    assert path.read_bytes() == before
    conn = sqlite3.connect(path)
    assert "noise" not in {row[1] for row in conn.execute("PRAGMA table_info(results)")}
    conn.close()


def test_a_store_of_a_newer_sbbench_is_refused(tmp_path):
    path = tmp_path / "new.sqlite"
    with Store(path) as store:
        store.add(make_record())
        store.conn.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'",
                           (str(SCHEMA_VERSION + 1),))
    for readonly in (False, True):
        with pytest.raises(UserError, match="newer sbbench") as info:
            Store(path, readonly=readonly)
        assert "\n" not in str(info.value)


def test_a_foreign_sqlite_file_is_refused_and_not_modified(tmp_path):
    path = tmp_path / "other.sqlite"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE people (name TEXT)")
    conn.execute("INSERT INTO people VALUES ('ada')")
    conn.commit()
    conn.close()
    before = path.read_bytes()
    for readonly in (False, True):
        with pytest.raises(UserError, match="not an sbbench results store") as info:
            Store(path, readonly=readonly)
        assert "people" in str(info.value) and "\n" not in str(info.value)
    assert path.read_bytes() == before
    assert not (tmp_path / "other.sqlite-wal").exists()
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    assert [row[0] for row in conn.execute("SELECT name FROM sqlite_master")] == ["people"]
    conn.close()


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_claims_keep_two_sweeps_off_one_point(tmp_path):
    path = tmp_path / "r.sqlite"
    key, other = make_record(256).key(), make_record(512).key()
    with Store(path) as mine, Store(path) as theirs:
        theirs.pid = _dead_pid() + 1_000_000  # not a pid of this machine: alive elsewhere
        theirs.host = "another-host"
        assert theirs.claim(key)
        assert not mine.claim(key) and mine.others_claiming() == 1
        assert mine.claim(other)
        assert mine.claim(key, timeout_s=0.0)  # an old claim is taken over
        assert not theirs.claim(key)
        mine.release(key)
        assert theirs.claim(key)
        theirs.release(key)
        # a claim of a dead process on this host is taken over at once
        theirs.host, theirs.pid = mine.host, _dead_pid()
        assert theirs.claim(other) is False  # mine, alive
        assert theirs.claim(make_record(2048).key())
        assert mine.claim(make_record(2048).key())
        assert mine.others_claiming() == 0  # the dead pid's claims do not count


def test_a_running_sweep_whose_process_died_reads_interrupted(tmp_path):
    path = tmp_path / "r.sqlite"
    with Store(path) as store:
        alive = store.start_sweep("sbbench sweep (this process)", "cpu")
        store.pid = _dead_pid()
        store.start_sweep("sbbench sweep (killed)", "cpu")
        store.pid = os.getpid()
        assert [s["outcome"] for s in store.sweeps()] == ["running", "interrupted"]
        store.finish_sweep(alive, "done")
        assert [s["outcome"] for s in store.sweeps()] == ["done", "interrupted"]


def _root() -> str:
    from pathlib import Path

    return str(Path(__file__).resolve().parents[2])
