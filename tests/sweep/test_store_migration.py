"""Stores of schema 4 (key without sparse, sink, window) read and rebuilt."""

from __future__ import annotations

import sqlite3

from sbbench.core.record import ADDED_KEY_FIELDS, COLUMNS, KEY_FIELDS, Record
from sbbench.sweep.store import SCHEMA_VERSION, Store

OLD_KEY = [name for name in KEY_FIELDS if name not in ADDED_KEY_FIELDS]
OLD_COLUMNS = [name for name in COLUMNS if name not in ADDED_KEY_FIELDS]
# method -> (n_features, bucket_size, n_hashes) of the rows the old store holds
OLD_ROWS = {"exact": (0, 0, 0), "performer": (32, 0, 0), "lsh": (0, 32, 2),
            "scatterbrain": (32, 32, 1), "scatterbrain_local": (32, 32, 1)}


def schema_4_store(path) -> None:
    """A store laid out as sbbench wrote it at schema 4, written by hand."""
    conn = sqlite3.connect(path)
    conn.execute(f"CREATE TABLE results (id INTEGER PRIMARY KEY, {', '.join(OLD_COLUMNS)}, "
                 f"UNIQUE ({', '.join(OLD_KEY)}))")
    conn.execute("CREATE TABLE sweeps (id INTEGER PRIMARY KEY, command TEXT, device TEXT, "
                 "started TEXT, finished TEXT, outcome TEXT, pid INTEGER, host TEXT)")
    conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT)")
    conn.execute("CREATE TABLE claims (key TEXT PRIMARY KEY, pid INTEGER, host TEXT, "
                 "sweep_id INTEGER, claimed REAL)")
    conn.execute("INSERT INTO meta VALUES ('schema_version', '4')")
    for number, (method, (f, b, h)) in enumerate(OLD_ROWS.items()):
        row = dict(device="cpu", method=method, backend="torch", seq_len=256, head_dim=64,
                   batch=1, heads=4, dtype="float32", causal=0, n_features=f, bucket_size=b,
                   n_hashes=h, kernel_config="", inputs="clustered:t=1",
                   code_version="0.1.0+old", source="measured", status="ok",
                   time_median_ms=1.0 + number, error_mean=0.1 * number,
                   time_samples_ms="[1.0, 2.0]", error_heads="[]", device_state="{}",
                   versions="{}", reference_samples_ms="[]")
        conn.execute(f"INSERT INTO results ({', '.join(row)}) VALUES "
                     f"({', '.join('?' for _ in row)})", list(row.values()))
    conn.commit()
    conn.close()


def new_record(sparse: str, **key) -> Record:
    values = dict(device="cpu", method="scatterbrain", backend="torch", seq_len=256,
                  head_dim=64, batch=1, heads=4, dtype="float32", causal=False,
                  n_features=32, bucket_size=32, n_hashes=1, sparse=sparse,
                  kernel_config="", inputs="clustered:t=1", code_version="0.1.0+old",
                  source="measured", time_median_ms=9.0)
    values.update(key)
    return Record(**values)


def check_old_rows(records: list[Record]) -> None:
    by_method = {r.method: r for r in records if r.time_median_ms != 9.0}
    assert set(by_method) == set(OLD_ROWS)
    assert {m: r.sparse for m, r in by_method.items()} == {
        "exact": "", "performer": "", "lsh": "lsh", "scatterbrain": "lsh",
        "scatterbrain_local": "local"}
    for number, method in enumerate(OLD_ROWS):
        row = by_method[method]
        assert (row.sink, row.window) == (0, 0)
        assert row.time_median_ms == 1.0 + number and row.time_samples_ms == [1.0, 2.0]
        assert (row.n_features, row.bucket_size, row.n_hashes) == OLD_ROWS[method]


def test_a_schema_4_store_read_only_reads_the_key_defaults_and_is_left_as_it_is(tmp_path):
    path = tmp_path / "v4.sqlite"
    schema_4_store(path)
    before = path.read_bytes()
    with Store(path, readonly=True) as store:
        check_old_rows(store.records())
        assert store.has(new_record("lsh").key())
        assert not store.has(new_record("kmeans").key())
        assert store.get(new_record("lsh").key()).time_median_ms == 4.0
        assert new_record("lsh").key() in store.done_keys(["ok"])
        assert len(store.to_dataframe()) == len(OLD_ROWS)
    assert path.read_bytes() == before


def test_a_schema_4_store_is_rebuilt_with_the_new_key_and_keeps_its_rows(tmp_path):
    path = tmp_path / "v4.sqlite"
    schema_4_store(path)
    with Store(path) as store:
        assert store.schema_version() == SCHEMA_VERSION == 5
        records = store.records()
        check_old_rows(records)
        assert [r.method for r in records] == list(OLD_ROWS)  # ids and order kept
        assert not store.add(new_record("lsh"))  # the old row is this key
        assert store.add(new_record("kmeans"))
        assert store.add(new_record("kmeans", sink=4, window=64))
        assert store.add(new_record("lsh", window=64))
        assert len(store) == len(OLD_ROWS) + 3
    conn = sqlite3.connect(path)
    columns = [row[1] for row in conn.execute("PRAGMA table_info(results)")]
    tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
    conn.close()
    assert columns == ["id", *COLUMNS]
    assert "results_rebuild" not in tables
    with Store(path, readonly=True) as store:  # and once more, nothing left to migrate
        kinds = sorted((r.sparse, r.sink, r.window) for r in store.records()
                       if r.method == "scatterbrain")
    assert kinds == [("kmeans", 0, 0), ("kmeans", 4, 64), ("lsh", 0, 0), ("lsh", 0, 64)]


def test_a_failed_rebuild_leaves_the_old_store_as_it_was(tmp_path, monkeypatch):
    from sbbench.sweep import store_schema

    path = tmp_path / "v4.sqlite"
    schema_4_store(path)
    real = store_schema.create_sql

    def broken(table, types):
        if table.endswith("_rebuild"):
            return real(table, types).replace("UNIQUE (", "UNIQUE (no_such_column, ")
        return real(table, types)

    monkeypatch.setattr(store_schema, "create_sql", broken)
    try:
        Store(path)
    except Exception:  # noqa: BLE001 - any failure; the point is what is left on disk
        pass
    monkeypatch.undo()
    with Store(path, readonly=True) as store:
        assert store.schema_version() == 4
        check_old_rows(store.records())


def test_a_json_result_set_of_an_older_sbbench_reads_the_key_defaults(tmp_path):
    import json

    from sbbench.analyze.results import load_result_set

    row = {name: value for name, value in new_record("lsh").as_dict().items()
           if name not in ADDED_KEY_FIELDS}
    path = tmp_path / "old.json"
    path.write_text(json.dumps({"meta": {}, "records": [row]}))
    (record,) = load_result_set(path).records
    assert (record.sparse, record.sink, record.window) == ("lsh", 0, 0)
    assert record.key() == new_record("lsh").key()


def test_an_old_store_takes_scatterbrain_centroids_rows_without_a_schema_change(tmp_path):
    """The method is a new value of the method key column: a schema-4 store is rebuilt
    as before, then holds it next to scatterbrain with the same budget."""
    path = tmp_path / "v4.sqlite"
    schema_4_store(path)
    with Store(path) as store:
        assert store.add(new_record("kmeans", method="scatterbrain_centroids"))
        assert store.add(new_record("kmeans"))
    with Store(path, readonly=True) as store:
        check_old_rows(store.records())
        rows = [r for r in store.records() if r.time_median_ms == 9.0]
        frame = store.to_dataframe()
    assert sorted(r.method for r in rows) == ["scatterbrain", "scatterbrain_centroids"]
    assert "scatterbrain_centroids" in set(frame["method"])
