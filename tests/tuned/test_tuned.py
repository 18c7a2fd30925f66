"""tuning_configs/*.yaml: schema errors name the key, lookup order (exact -> nearest ->
default), the SBBENCH_TUNING_DIR override, section-preserving writes, budgets."""

from __future__ import annotations

import copy

import pytest
import yaml

from sbbench import tuned
from sbbench.attention.core import CHUNK_ELEMENTS
from sbbench.core.errors import UserError
from sbbench.core.types import Budget, Problem
from sbbench.tuned.schema import ShapeBucket, TuningFileError


def bucket(seq_len, head_dim=64, n_features=64, bucket_size=64, dtype="float32", **best):
    return {"shape": {"seq_len": seq_len, "head_dim": head_dim, "n_features": n_features,
                      "bucket_size": bucket_size, "dtype": dtype},
            "best": best or {"chunk_elements": seq_len * 64, "num_threads": 1},
            "time_ms": 1.5, "runner_ups": [{"config": {"chunk_elements": 1, "num_threads": 2},
                                            "time_ms": 1.52}],
            "pruned": 0, "rejected": 0}


BUDGETS = [
    {"seq_len": 1024, "head_dim": 64, "max_error": 0.05, "method": "scatterbrain",
     "n_features": 32, "bucket_size": 32, "n_hashes": 1, "error": 0.04, "time_ms": 2.0,
     "exact_time_ms": 1.0},
    {"seq_len": 4096, "head_dim": 64, "max_error": 0.05, "method": "scatterbrain",
     "n_features": 64, "bucket_size": 64, "n_hashes": 1, "error": 0.045, "time_ms": 5.0,
     "exact_time_ms": 20.0},
    {"seq_len": 4096, "head_dim": 64, "max_error": 0.10, "method": "performer",
     "n_features": 64, "bucket_size": 0, "n_hashes": 0, "error": 0.09, "time_ms": 3.0,
     "exact_time_ms": 20.0},
]


def document():
    return {
        "schema_version": 1,
        "device": "cpu",
        "kernels": {
            "torch:scatterbrain": {
                "default": {"chunk_elements": CHUNK_ELEMENTS, "num_threads": None},
                "buckets": [bucket(1024), bucket(4096), bucket(4096, dtype="float64")],
            },
        },
        "budgets": copy.deepcopy(BUDGETS),
        "metadata": {"kernels": {"date": "2026-01-01"}, "budgets": {"command": "select"}},
    }


def write(folder, data, device="cpu"):
    path = folder / f"{device}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.fixture
def tuning_dir(tmp_path, monkeypatch):
    monkeypatch.setenv(tuned.ENV_DIR, str(tmp_path))
    return tmp_path


def test_lookup_order_exact_nearest_default(tuning_dir):
    write(tuning_dir, document())
    table = tuned.load("cpu")
    exact = table.lookup("torch:scatterbrain", ShapeBucket(4096, 64, 64, 64, "float32"))
    assert exact.source == "exact" and exact.config["chunk_elements"] == 4096 * 64
    near = table.lookup("torch:scatterbrain", ShapeBucket(2500, 64, 64, 64, "float32"))
    assert near.source == "nearest" and near.shape.seq_len == 4096  # log2 distance
    near = table.lookup("torch:scatterbrain", ShapeBucket(1500, 64, 64, 64, "float32"))
    assert near.shape.seq_len == 1024
    # a bucket of the same dtype is nearer than an exact size match in another dtype
    other = table.lookup("torch:scatterbrain", ShapeBucket(4096, 64, 64, 64, "float16"))
    assert other.source == "nearest" and other.shape.dtype == "float32"
    assert table.lookup("torch:scatterbrain",
                        ShapeBucket(8192, 64, 64, 64, "float64")).shape.dtype == "float64"
    default = table.lookup("torch:lsh", ShapeBucket(4096, 64, 0, 64), {"chunk_elements": 7})
    assert default == tuned.Match({"chunk_elements": 7}, "default")


def test_runtime_lookups(tuning_dir):
    write(tuning_dir, document())
    problem = Problem(4096, 64)
    sb = Budget("scatterbrain", n_features=64, bucket_size=64, n_hashes=1)
    assert tuned.lookup_cpu_config(problem, sb) == {"chunk_elements": 4096 * 64,
                                                    "num_threads": 1}
    # lsh has no tuned bucket in this file: the torch path's defaults
    assert tuned.lookup_cpu_config(problem, Budget("lsh", bucket_size=64, n_hashes=1)) == {
        "num_threads": None, "chunk_elements": CHUNK_ELEMENTS}
    assert tuned.lookup_kernel_config("cpu", problem, "torch:scatterbrain", sb,
                                      default={}) == {"chunk_elements": 4096 * 64,
                                                      "num_threads": 1}
    assert tuned.lookup_kernel_config("cpu", problem, "no_such_kernel", sb,
                                      default={"BLOCK_M": 64}) == {"BLOCK_M": 64}


def test_lookup_budget(tuning_dir):
    write(tuning_dir, document())
    # 4096: the cheapest entry meeting the target
    assert tuned.lookup_budget("cpu", 4096, 64, 0.05) == Budget(
        "scatterbrain", n_features=64, bucket_size=64, n_hashes=1)
    assert tuned.lookup_budget("cpu", 4096, 64, 0.10) == Budget("performer", n_features=64)
    assert tuned.lookup_budget("cpu", 4096, 64, 0.01) is None  # nothing meets 1%
    # 1024: exact attention was faster than any budget there
    assert tuned.lookup_budget("cpu", 1024, 64, 0.05) == Budget("exact")
    assert tuned.lookup_budget("cpu", 1024, 64, 0.05, method="scatterbrain").method == \
        "scatterbrain"
    # nearest measured shape: 3000 is nearer 4096 than 1024 in log2
    assert tuned.lookup_budget("cpu", 3000, 64, 0.10).method == "performer"
    with pytest.raises(ValueError, match="max_error"):
        tuned.lookup_budget("cpu", 4096, 64, 0)


def test_lookup_budget_by_dtype_and_causal(tuning_dir):
    data = document()
    data["budgets"] = [
        {**BUDGETS[1], "dtype": "float32", "causal": False},
        {**BUDGETS[1], "n_features": 128, "time_ms": 4.0, "dtype": "float16", "causal": False},
        {**BUDGETS[1], "n_features": 32, "time_ms": 3.0, "dtype": "float32", "causal": True},
    ]
    write(tuning_dir, data)

    def features(**kwargs):
        return tuned.lookup_budget("cpu", 4096, 64, 0.05, **kwargs).n_features

    assert features() == 32  # no filter: the fastest of all
    assert features(dtype="float32", causal=False) == 64
    assert features(dtype="float16", causal=False) == 128
    assert features(dtype="bfloat16", causal=False) in (64, 128)  # no bf16 entry: any dtype
    assert features(causal=True) == 32


def test_no_file_means_defaults(tuning_dir):
    table = tuned.load("cpu")
    assert table.path is None and table.budgets == []
    assert tuned.lookup_cpu_config(Problem(1024, 64)) == tuned.cpu_default("scatterbrain")
    assert tuned.lookup_budget("cpu", 1024, 64, 0.05) is None


def test_env_override_replaces_the_shipped_folder(tmp_path, monkeypatch):
    monkeypatch.delenv(tuned.ENV_DIR, raising=False)
    shipped = tuned.tuning_dir()
    assert (shipped / "__init__.py").exists()
    monkeypatch.setenv(tuned.ENV_DIR, str(tmp_path))
    assert tuned.tuning_dir() == tmp_path
    data = document()
    data["kernels"]["torch:scatterbrain"]["buckets"][1]["best"] = {"chunk_elements": 12345}
    write(tmp_path, data)
    assert tuned.lookup_cpu_config(Problem(4096, 64)) == {"chunk_elements": 12345}


@pytest.mark.parametrize("edit, key, message", [
    (lambda d: d.update(kernals={}), "kernals", "unknown top-level key"),
    (lambda d: d.update(schema_version=2), "schema_version", "reads version 1"),
    (lambda d: d.update(device="h100-sxm"), "device", "loaded as 'cpu'"),
    (lambda d: d["kernels"]["torch:scatterbrain"]["buckets"][1]["shape"].update(seq_len="4k"),
     "kernels.torch:scatterbrain.buckets[1].shape.seq_len", "must be an int >= 1"),
    (lambda d: d["kernels"]["torch:scatterbrain"]["buckets"][0]["shape"].pop("dtype"),
     "kernels.torch:scatterbrain.buckets[0].shape.dtype", "missing"),
    (lambda d: d["kernels"]["torch:scatterbrain"]["buckets"][0]["shape"].update(
        dtype="fp8"), "kernels.torch:scatterbrain.buckets[0].shape.dtype", "float32"),
    (lambda d: d["kernels"]["torch:scatterbrain"]["buckets"][2].update(time_ms=-1),
     "kernels.torch:scatterbrain.buckets[2].time_ms", "finite number > 0"),
    (lambda d: d["kernels"]["torch:scatterbrain"]["buckets"][0]["best"].update(
        num_threads=2.5), "kernels.torch:scatterbrain.buckets[0].best.num_threads",
     "int or null"),
    (lambda d: d["kernels"]["torch:scatterbrain"]["buckets"][0].update(bset={}),
     "kernels.torch:scatterbrain.buckets[0].bset", "unknown key (valid: shape, best"),
    (lambda d: d["kernels"]["torch:scatterbrain"]["buckets"][0]["runner_ups"][0].pop(
        "time_ms"), "kernels.torch:scatterbrain.buckets[0].runner_ups[0].time_ms", "missing"),
    (lambda d: d["kernels"]["torch:scatterbrain"]["buckets"].append(bucket(1024)),
     "kernels.torch:scatterbrain.buckets[3].shape", "same shape as buckets[0]"),
    (lambda d: d["kernels"].update({"torch:flash": {"default": {}, "buckets": []}}),
     "kernels.torch:flash", "torch:<method>"),
    (lambda d: d["kernels"]["torch:scatterbrain"].pop("default"),
     "kernels.torch:scatterbrain.default", "missing"),
    (lambda d: d["budgets"][1].update(method="flash"), "budgets[1].method",
     "must be one of exact"),
    (lambda d: d["budgets"][0].update(n_features=3), "budgets[0]", "even n_features"),
    (lambda d: d["budgets"][2].pop("exact_time_ms"), "budgets[2].exact_time_ms", "missing"),
    (lambda d: d["budgets"][2].update(eror=0.1), "budgets[2].eror", "unknown key"),
    (lambda d: d["budgets"][2].update(causal="no"), "budgets[2].causal", "true or false"),
    (lambda d: d["metadata"].update(select={}), "metadata.select", "unknown section"),
    (lambda d: d.update(budgets={"a": 1}), "budgets", "must be a list"),
], ids=["top-key", "version", "device", "seq-type", "dtype-missing", "dtype-value",
        "time", "config-value", "bucket-key", "runner-up", "duplicate-shape", "torch-target",
        "default-missing", "budget-method", "budget-invalid", "budget-missing",
        "budget-key", "budget-causal", "metadata", "budgets-type"])
def test_schema_errors_name_the_key(tuning_dir, edit, key, message):
    data = document()
    edit(data)
    path = write(tuning_dir, data)
    with pytest.raises(TuningFileError) as err:
        tuned.load("cpu")
    text = str(err.value)
    assert text.startswith(f"{path}: {key}: ") and message in text, text
    assert isinstance(err.value, UserError)  # the CLI prints it as one line


@pytest.mark.parametrize("target, key, value", [
    ("torch:scatterbrain", "chunk_elements", 0),
    ("torch:scatterbrain", "num_threads", -1),
    ("sparse", "BLOCK_M", 0),
], ids=["chunk-zero", "threads-negative", "tile-zero"])
@pytest.mark.parametrize("where", ["best", "default"])
def test_non_positive_config_values_are_rejected(tuning_dir, target, key, value, where):
    data = document()
    data["kernels"].setdefault(target, {"default": {}, "buckets": [bucket(1024)]})
    entry = data["kernels"][target]
    config = entry["default"] if where == "default" else entry["buckets"][0]["best"]
    config[key] = value
    path = write(tuning_dir, data)
    place = "default" if where == "default" else "buckets[0].best"
    with pytest.raises(TuningFileError) as err:
        tuned.load("cpu")
    assert str(err.value) == (f"{path}: kernels.{target}.{place}.{key}: must be an int or "
                              f"null (a count >= 1), got {value}")


def test_an_empty_file_is_an_error_not_an_empty_table(tuning_dir):
    for text in ("", "# only a comment\n"):
        (tuning_dir / "cpu.yaml").write_text(text)
        with pytest.raises(TuningFileError, match="cpu.yaml: the file is empty") as err:
            tuned.load("cpu")
        assert "\n" not in str(err.value)


def test_env_override_to_a_missing_folder_is_an_error(tmp_path, monkeypatch):
    missing = tmp_path / "no-such-folder"
    monkeypatch.setenv(tuned.ENV_DIR, str(missing))
    with pytest.raises(UserError, match=f"SBBENCH_TUNING_DIR={missing}: no such folder"):
        tuned.load("cpu")
    (tmp_path / "a-file").write_text("")
    monkeypatch.setenv(tuned.ENV_DIR, str(tmp_path / "a-file"))
    with pytest.raises(UserError, match="no such folder"):
        tuned.lookup_budget("cpu", 1024, 64, 0.05)


def test_broken_yaml_is_a_clear_error(tuning_dir):
    (tuning_dir / "cpu.yaml").write_text("kernels: {torch:lsh: [\n")
    with pytest.raises(TuningFileError, match="not valid YAML"):
        tuned.load("cpu")


def test_write_section_keeps_other_sections_and_targets(tuning_dir):
    write(tuning_dir, document())
    new_target = {"torch:lsh": {"default": {"chunk_elements": CHUNK_ELEMENTS},
                                "buckets": [bucket(2048, n_features=0)]}}
    path = tuned.write_section("cpu", "kernels", new_target, metadata={"date": "today"})
    table = tuned.load("cpu")
    assert set(table.targets) == {"torch:scatterbrain", "torch:lsh"}
    assert len(table.budgets) == 3
    assert table.raw["metadata"] == {"kernels": {"date": "today"},
                                     "budgets": {"command": "select"}}
    text = path.read_text()
    assert text.startswith("# sbbench tuning configs for device cpu")
    # select rewriting budgets keeps the kernels
    tuned.write_section("cpu", "budgets", BUDGETS[:1], metadata={"command": "select 2"})
    table = tuned.load("cpu")
    assert len(table.budgets) == 1 and set(table.targets) == {"torch:scatterbrain",
                                                              "torch:lsh"}
    assert table.raw["metadata"]["kernels"] == {"date": "today"}


def test_write_section_refuses_invalid_data_and_broken_files(tuning_dir):
    with pytest.raises(TuningFileError, match=r"budgets\[0\].seq_len"):
        tuned.write_section("cpu", "budgets", [{**BUDGETS[0], "seq_len": 0}])
    assert not (tuning_dir / "cpu.yaml").exists()
    (tuning_dir / "cpu.yaml").write_text("kernels: 3\n")
    with pytest.raises(TuningFileError, match="kernels: must be a mapping"):
        tuned.write_section("cpu", "budgets", BUDGETS)
    assert (tuning_dir / "cpu.yaml").read_text() == "kernels: 3\n"  # left alone
    with pytest.raises(ValueError, match="section"):
        tuned.write_section("cpu", "tiles", {})


def test_device_names_resolve_aliases_and_unknown_devices_fail(tuning_dir):
    data = document()
    data["device"] = "h100-sxm"
    write(tuning_dir, data, device="h100-sxm")
    assert tuned.load("h100").device == "h100-sxm"
    with pytest.raises(UserError, match="unknown device"):
        tuned.load("tpu-v9")


def test_tuned_choice_for_runtime_use(tuning_dir):
    data = document()
    data["kernels"]["sparse"] = {"default": {"BLOCK_P": 32},
                                 "buckets": [bucket(4096, BLOCK_P=64, num_warps=8)]}
    write(tuning_dir, data)
    choice = tuned.tuned_choice("cpu", seq_len=4096, head_dim=64, max_error=0.05)
    assert choice.budget == Budget("scatterbrain", n_features=64, bucket_size=64, n_hashes=1)
    assert choice.cpu_config == {"chunk_elements": 4096 * 64, "num_threads": 1}
    assert choice.kernel_configs == {"sparse": {"BLOCK_P": 64, "num_warps": 8}}
    assert choice.sources == {"sparse": "exact", "cpu": "exact"}
    far = tuned.tuned_choice("cpu", seq_len=16384, head_dim=64, max_error=0.5)
    assert far.budget.method == "performer"  # nearest measured shape: 4096
    assert far.sources == {"sparse": "nearest", "cpu": "default"}  # no torch:performer
    assert far.cpu_config == tuned.cpu_default("performer")
