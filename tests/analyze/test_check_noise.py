"""`sbbench check` on sweep stores: malformed samples are a one-line user error (exit 2),
and a time change inside the pair's own run-to-run noise is not a regression while a
slowdown above it is."""

from __future__ import annotations

import json
import math
import random
import sqlite3

import pytest

from sbbench.analyze.regress import NOISE_Z, Finding, ResultSet, compare, gate_by_noise
from sbbench.cli.main import main
from sbbench.core.record import Record
from sbbench.sweep.store import Store

METHODS = {"exact": (0, 0, 0), "performer": (64, 0, 0), "lsh": (0, 32, 1),
           "scatterbrain": (64, 32, 1)}


def _record(method, seq_len, samples):
    f, b, h = METHODS[method]
    return Record(device="cpu", method=method, backend="torch", seq_len=seq_len, head_dim=64,
                  batch=1, heads=4, dtype="float32", causal=False, n_features=f,
                  bucket_size=b, n_hashes=h, kernel_config="", inputs="clustered:t=1",
                  code_version="v1", source="measured", time_samples_ms=list(samples),
                  time_median_ms=sorted(samples)[len(samples) // 2], error_mean=0.5)


def _sweep(seed, *, drift=0.0, slow=None, n=12):
    """A sweep store's rows: every point timed n times with 3% noise, and each point's
    whole measurement shifted by up to ``drift`` (log scale) -- the load that moves
    between points measured seconds apart."""
    rng = random.Random(seed)
    rows = []
    for seq_len in (256, 512, 1024):
        for method, base in (("exact", 1.0), ("performer", 2.0), ("lsh", 3.0),
                             ("scatterbrain", 4.0)):
            level = base * seq_len / 256 * (2.718 ** rng.uniform(-drift, drift))
            level *= (slow or {}).get(method, 1.0)
            rows.append(_record(method, seq_len,
                                [level * rng.uniform(0.97, 1.03) for _ in range(n)]))
    return ResultSet(rows, label=f"sweep {seed}")


def _flagged(result):
    return sorted({f.point.split()[0] for f in result.regressions})


def test_load_shifts_between_points_are_not_regressions():
    # 10% load shifts between points of identical code: without the gate most pairs fail
    # the check; with it, few do (the scatter of the pair's own changes is the yardstick).
    pairs = [(_sweep(2 * i, drift=0.1), _sweep(2 * i + 1, drift=0.1)) for i in range(40)]
    ungated = sum(compare(a, b, noise_z=0).ok for a, b in pairs)
    gated = [compare(a, b) for a, b in pairs]
    assert ungated <= 10 and sum(r.ok for r in gated) >= 30
    assert all(r.noise >= 0.05 for r in gated)
    assert "run-to-run noise" in " ".join(f.note for r in gated for f in r.findings)


def test_a_slowdown_above_the_noise_is_caught_and_only_there():
    calm = [compare(_sweep(2 * i, drift=0.03),
                    _sweep(2 * i + 1, drift=0.03, slow={"performer": 1.3})) for i in range(20)]
    assert sum(_flagged(r) == ["performer"] for r in calm) >= 16
    assert all(_flagged(r) in ([], ["performer"]) for r in calm)
    assert all(compare(_sweep(2 * i, drift=0.03), _sweep(2 * i + 1, drift=0.03)).ok
               for i in range(20))


def test_the_gate_keeps_a_regression_of_every_method():
    # Load shifts of 10% between points and performer 1.3x slower: measured against the
    # other methods' points, most pairs catch it (counting performer's own points in the
    # yardstick caught 8 of 40).
    caught = sum("performer" in _flagged(compare(
        _sweep(2 * i, drift=0.1), _sweep(2 * i + 1, drift=0.1, slow={"performer": 1.3})))
        for i in range(40))
    assert caught >= 26
    # Every point 30% slower: the changes agree, the scatter is small, all are flagged.
    result = compare(_sweep(0), _sweep(1, slow={m: 1.3 for m in METHODS if m != "exact"}))
    assert _flagged(result) == ["lsh", "performer", "scatterbrain"]


def test_gate_by_noise_needs_enough_points_and_can_be_off():
    findings = [Finding(f"p{i}", "time", 1.0, 1.5, 1.5, 0.001, "regression") for i in range(3)]
    assert gate_by_noise(findings, 2.0) == (findings, None)
    assert gate_by_noise(findings * 2, 0.0) == (findings * 2, None)


def _store(path, records):
    with Store(path) as store:
        for record in records:
            store.add(record)
    return str(path)


@pytest.mark.parametrize("bad", ["abc", None, True, float("nan"), -1.0, [1.0]])
def test_a_non_numeric_sample_in_json_is_a_one_line_user_error(tmp_path, capsys, bad):
    good = _sweep(0).records
    base = tmp_path / "base.json"
    base.write_text(json.dumps({"records": [r.as_dict() for r in good]}))
    rows = [r.as_dict() for r in good]
    rows[1]["time_samples_ms"][2] = bad
    (tmp_path / "bad.json").write_text(json.dumps({"records": rows}))
    assert main(["check", "--baseline", str(base), "--current",
                 str(tmp_path / "bad.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "time_samples_ms[2]" in err


def test_malformed_fields_and_stores_are_one_line_user_errors(tmp_path, capsys):
    good = _sweep(0).records
    base = _store(tmp_path / "base.sqlite", good)
    rows = [r.as_dict() for r in good]
    rows[0]["time_samples_ms"] = "1,2,3"
    rows[1]["time_median_ms"] = "fast"
    for number, name in ((0, "time_samples_ms"), (1, "time_median_ms")):
        bad = [rows[number]] + [r.as_dict() for r in good[2:]]
        (tmp_path / f"{name}.json").write_text(json.dumps(bad))
        assert main(["check", "--baseline", base, "--current",
                     str(tmp_path / f"{name}.json")]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and name in err
    # a store whose samples column holds text that is not JSON, or JSON that is not numbers
    for text in ("[1.0, oops]", '["a", "b"]'):
        broken = tmp_path / "broken.sqlite"
        broken.unlink(missing_ok=True)
        _store(broken, good)
        with sqlite3.connect(broken) as conn:
            table = conn.execute("SELECT name FROM sqlite_master WHERE type='table' AND "
                                 "sql LIKE '%time_samples_ms%'").fetchone()[0]
            conn.execute(f"UPDATE {table} SET time_samples_ms = ?", (text,))
        assert main(["check", "--baseline", base, "--current", str(broken)]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "broken.sqlite" in err


def test_a_method_does_not_widen_its_own_noise_yardstick():
    # Two methods, four shapes each, performer 1.3x slower: counted with its own points
    # the scatter of the changes is about half the slowdown (bound ~ x1.8, nothing
    # flagged); measured against exact's points only, it is caught.
    def sweep(seed, slow=1.0):
        rng = random.Random(seed)
        return ResultSet([_record(method, seq, [base * seq / 256 * (slow if method ==
                                                                    "performer" else 1.0)
                                                * rng.uniform(0.98, 1.02) for _ in range(12)])
                          for seq in (256, 512, 1024, 2048)
                          for method, base in (("exact", 1.0), ("performer", 2.0))])
    result = compare(sweep(0), sweep(1, slow=1.3), mode="absolute")
    assert _flagged(result) == ["performer"]
    assert result.noise > 0.1  # the scatter over all points: what the old gate used
    assert all(f.group == f.point.split()[0] for f in result.findings if f.metric == "time")


def test_the_help_states_the_default_noise_z(capsys):
    from sbbench.analyze.regress import NOISE_Z

    with pytest.raises(SystemExit):
        main(["check", "--help"])
    assert f"(default {NOISE_Z:g})" in " ".join(capsys.readouterr().out.split())


def _time(method, seq, ratio, verdict):
    return Finding(f"{method} L={seq}", "time", 1.0, ratio, ratio, 0.001, verdict,
                   group=method)


def test_a_method_slowed_on_every_shape_fails_as_a_whole():
    # Other methods scatter by about 8% (log): the per-point bound is x1.32 at z 3.5.
    # performer is x1.25 on all 4 shapes: each point is inside the bound, their mean
    # (bound / sqrt(4) = x1.15) is not.
    rng = random.Random(3)
    others = [_time(m, s, math.exp(rng.choice((-1, 1)) * rng.uniform(0.0, 0.11)), "ok")
              for m in ("exact", "lsh", "scatterbrain") for s in (256, 512, 1024, 2048)]
    slowed = [_time("performer", s, 1.25, "regression") for s in (256, 512, 1024, 2048)]
    gated, noise = gate_by_noise(others + slowed, NOISE_Z)
    assert 1.25 < math.exp(NOISE_Z * noise)  # the single-point bound would let it pass
    assert [f.verdict for f in gated[-4:]] == ["regression"] * 4
    assert "all 4 points of performer moved" in gated[-1].note
    # one shape not significant (or not slowed): no method-wide failure, the points are
    # judged one by one again
    mixed = slowed[:3] + [_time("performer", 2048, 1.25, "ok")]
    gated, _ = gate_by_noise(others + mixed, NOISE_Z)
    assert [f.verdict for f in gated[-4:]] == ["ok"] * 4
    # a single point of a method is never judged "as a whole"
    gated, _ = gate_by_noise(others + slowed[:1], NOISE_Z)
    assert gated[-1].verdict == "ok"
