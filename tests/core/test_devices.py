"""The device registry: profiles, schema checks, name matching, detection, resolution."""

from __future__ import annotations

import copy
from importlib import resources

import pytest
import torch
import yaml

from sbbench.cli.main import main
from sbbench.core import devices
from sbbench.core.devices import DeviceTableError, get_device, parse_table, resolve_gpu
from sbbench.core.errors import UserError

REQUIRED = ("a100-40gb", "a100-80gb", "h100-sxm", "h100-pcie", "h200", "l4", "l40s", "a10g",
            "v100", "rtx4090", "cpu")


def raw_table() -> dict:
    text = resources.files("sbbench").joinpath("data/devices.yaml").read_text()
    return yaml.safe_load(text)


def test_registry_has_every_required_profile():
    assert set(REQUIRED) <= set(devices.list_devices())
    assert devices.aliases() == {"a100": "a100-80gb", "h100": "h100-sxm"}


@pytest.mark.parametrize("name, expected", [
    ("a100", "a100-80gb"), ("h100", "h100-sxm"), ("H100", "h100-sxm"),
    (" h200 ", "h200"), ("A100-40GB", "a100-40gb"),
])
def test_get_device_resolves_aliases_and_case(name, expected):
    assert get_device(name).name == expected


def test_unknown_device_lists_the_valid_names():
    with pytest.raises(UserError) as err:
        get_device("b200")
    message = str(err.value)
    assert "'b200'" in message
    for name in REQUIRED:
        assert name in message
    assert "h100 (= h100-sxm)" in message


@pytest.mark.parametrize("name", [n for n in REQUIRED if n != "cpu"])
def test_gpu_profiles_are_complete_and_consistent(name):
    spec = get_device(name)
    assert spec.kind == "cuda" and spec.source == "datasheet"
    assert spec.arch.startswith("sm_")
    for field in ("sm_count", "smem_per_block_bytes", "smem_per_sm_bytes", "registers_per_sm",
                  "max_registers_per_thread", "l2_bytes", "mem_bandwidth_bytes_per_s",
                  "mem_bytes"):
        assert getattr(spec, field) > 0, field
    assert spec.smem_per_block_bytes <= spec.smem_per_sm_bytes
    assert set(spec.peak_flops) == set(devices.PEAK_DTYPES)
    for key in ("tf32", "float16", "bfloat16"):  # tensor cores never slower than FP32 FMA
        if spec.peak(key) is not None:
            assert spec.peak(key) >= spec.peak("float32")
    assert spec.name_patterns


def test_units_are_converted_to_base_units():
    h100 = get_device("h100-sxm")
    assert h100.smem_per_sm_bytes == 228 * 1024
    assert h100.smem_per_block_bytes == 227 * 1024
    assert h100.l2_bytes == 50 * 1024 * 1024
    assert h100.mem_bytes == 80 * 1024 ** 3
    assert h100.mem_bandwidth_bytes_per_s == 3.35e12
    assert h100.peak("bfloat16") == 989.4e12
    assert get_device("v100").peak("bfloat16") is None  # no bf16 tensor cores on Volta


def test_cpu_profile_has_no_fixed_peaks():
    cpu = get_device("cpu")
    assert cpu.kind == "cpu" and cpu.source == "none"
    assert all(value is None for value in cpu.peak_flops.values())
    assert cpu.mem_bandwidth_bytes_per_s is None and cpu.arch is None


# What torch.cuda.get_device_name / nvmlDeviceGetName report for real parts, and the
# profile each must map to (None: a different chip that must not borrow a profile).
REPORTED_NAMES = [
    ("NVIDIA A100-SXM4-40GB", "a100-40gb"),
    ("NVIDIA A100-PCIE-40GB", "a100-40gb"),
    ("NVIDIA A100-SXM4-80GB", "a100-80gb"),
    ("NVIDIA A100 80GB PCIe", "a100-80gb"),
    ("NVIDIA H100 80GB HBM3", "h100-sxm"),
    ("NVIDIA H100 PCIe", "h100-pcie"),
    ("NVIDIA H100 NVL", None),
    ("NVIDIA H200", "h200"),
    ("NVIDIA H200 NVL", None),
    ("NVIDIA L4", "l4"),
    ("NVIDIA L40S", "l40s"),
    ("NVIDIA L40", None),
    ("NVIDIA A10G", "a10g"),
    ("NVIDIA A10", None),
    ("Tesla V100-SXM2-16GB", "v100"),
    ("Tesla V100-SXM2-32GB", "v100"),
    ("Tesla V100-PCIE-16GB", "v100"),
    ("Tesla V100S-PCIE-32GB", None),
    ("NVIDIA GeForce RTX 4090", "rtx4090"),
    ("NVIDIA GeForce RTX 4090 D", None),
    ("NVIDIA GeForce RTX 4090 Laptop GPU", None),
    ("NVIDIA B200", None),
]


@pytest.mark.parametrize("reported, expected", REPORTED_NAMES, ids=[n for n, _ in REPORTED_NAMES])
def test_reported_names_match_exactly_one_profile(reported, expected):
    assert devices.match_profile(reported) == expected  # raises if two profiles match


# ---- schema ----------------------------------------------------------------------------

def _broken(mutate) -> dict:
    data = copy.deepcopy(raw_table())
    mutate(data)
    return data


@pytest.mark.parametrize("mutate, key", [
    (lambda t: t["devices"]["h200"].update(sm_count="many"), "devices.h200.sm_count"),
    (lambda t: t["devices"]["h200"].pop("l2_mib"), "devices.h200.l2_mib"),
    (lambda t: t["devices"]["h200"].update(sm_clock=1), "devices.h200.sm_clock"),
    (lambda t: t["devices"]["l4"]["peak_tflops"].update(float16="fast"),
     "devices.l4.peak_tflops.float16"),
    (lambda t: t["devices"]["l4"]["peak_tflops"].pop("tf32"), "devices.l4.peak_tflops"),
    (lambda t: t["devices"]["l4"].update(name_patterns=["L4("]), "devices.l4.name_patterns[0]"),
    (lambda t: t["devices"]["l4"].update(kind="tpu"), "devices.l4.kind"),
    (lambda t: t["devices"]["l4"].update(arch="ampere"), "devices.l4.arch"),
    (lambda t: t["devices"]["l4"].update(mem_gib=None), "devices.l4.mem_gib"),
    (lambda t: t["aliases"].update(h300="h300-sxm"), "aliases.h300"),
    (lambda t: t.update(extra={}), "extra"),
], ids=["type", "missing", "unknown-field", "peak-type", "peak-keys", "regex", "kind",
        "arch", "null-on-gpu", "alias-target", "top-level"])
def test_schema_errors_name_the_key(mutate, key):
    with pytest.raises(DeviceTableError) as err:
        parse_table(_broken(mutate), "test.yaml")
    assert key in str(err.value)
    assert str(err.value).startswith("test.yaml")


def test_the_shipped_table_parses():
    specs, alias_map = parse_table(raw_table())
    assert list(specs) == devices.list_devices()
    assert alias_map == devices.aliases()


# ---- detection and resolution ----------------------------------------------------------

@pytest.fixture
def fake_gpu(monkeypatch):
    """Pretend torch sees one CUDA device with the given name."""
    def install(name: str):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=None: name)
    return install


@pytest.fixture
def no_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(devices, "_nvml_gpu_names", lambda: [])


def test_detect_local_without_cuda_is_the_cpu(no_gpu):
    detected = devices.detect_local()
    assert detected.name == "cpu" and detected.kind == "cpu"
    assert detected.reported  # the CPU model name


def test_detect_local_notes_a_gpu_torch_cannot_use(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(devices, "_nvml_gpu_names", lambda: ["NVIDIA L4"])
    detected = devices.detect_local()
    assert detected.name == "cpu" and "NVIDIA L4" in detected.note


def test_detect_local_matches_the_cuda_name(fake_gpu):
    fake_gpu("NVIDIA H100 80GB HBM3")
    detected = devices.detect_local()
    assert (detected.name, detected.kind) == ("h100-sxm", "cuda")
    assert resolve_gpu("auto").name == "h100-sxm"
    assert resolve_gpu("h100").name == "h100-sxm"


def test_resolve_auto_on_a_cpu_machine(no_gpu):
    assert resolve_gpu("auto").name == "cpu"
    assert resolve_gpu("cpu").name == "cpu"


def test_requested_profile_must_match_the_local_device(no_gpu):
    with pytest.raises(UserError) as err:
        resolve_gpu("h100")
    message = str(err.value)
    assert "h100-sxm" in message and "cpu device" in message and "--model-only" in message


def test_mismatch_lists_what_was_detected(fake_gpu):
    fake_gpu("NVIDIA A100-SXM4-80GB")
    with pytest.raises(UserError) as err:
        resolve_gpu("h200")
    assert "NVIDIA A100-SXM4-80GB" in str(err.value) and "a100-80gb" in str(err.value)


def test_model_only_skips_the_match(no_gpu):
    assert resolve_gpu("h200", model_only=True).name == "h200"
    with pytest.raises(UserError):
        resolve_gpu("h300", model_only=True)


def test_auto_with_an_unknown_gpu_is_an_error(fake_gpu):
    fake_gpu("NVIDIA B200")
    with pytest.raises(UserError) as err:
        resolve_gpu("auto")
    assert "NVIDIA B200" in str(err.value) and "--model-only" in str(err.value)


def test_measure_cpu_marks_its_peaks_measured():
    spec = devices.measure_cpu(matmul_size=128, copy_mib=4, repeats=2)
    assert spec.name == "cpu" and spec.source == "measured"
    assert spec.peak("float32") > 0 and spec.peak("float64") > 0
    assert spec.peak("tf32") is None
    assert spec.mem_bandwidth_bytes_per_s > 0
    assert get_device("cpu").source == "none"  # the registry itself is unchanged


def test_cli_devices_prints_the_table(capsys, no_gpu):
    assert main(["devices"]) == 0
    out = capsys.readouterr().out
    for name in REQUIRED:
        assert name in out
    assert "detected here: cpu device" in out
    assert "h100 = h100-sxm" in out


def test_efficiency_entries_are_cited_and_checked():
    h100 = get_device("h100-sxm")
    exact = h100.efficiency["exact"]
    assert exact.measured_tflops == (620.73, 476.753)
    assert exact.factor == pytest.approx((620.73 * 476.753) ** 0.5 / 989.4)
    assert "PR #2391" in exact.calibrated_on and "head_dim 128" in exact.calibrated_on
    assert get_device("a100-80gb").efficiency == {}


@pytest.mark.parametrize("mutate, key", [
    (lambda t: t["devices"]["h100-sxm"]["efficiency"].update(flash={}),
     "devices.h100-sxm.efficiency.flash"),
    (lambda t: t["devices"]["h100-sxm"]["efficiency"]["exact"].update(peak="fp8"),
     "devices.h100-sxm.efficiency.exact.peak"),
    (lambda t: t["devices"]["h100-sxm"]["efficiency"]["exact"].update(
        measured_tflops=[2000]), "devices.h100-sxm.efficiency.exact.measured_tflops"),
    (lambda t: t["devices"]["h100-sxm"]["efficiency"]["exact"].pop("calibrated_on"),
     "devices.h100-sxm.efficiency.exact"),
], ids=["family", "peak", "above-peak", "uncited"])
def test_efficiency_schema_errors_name_the_key(mutate, key):
    with pytest.raises(DeviceTableError) as err:
        parse_table(_broken(mutate), "test.yaml")
    assert key in str(err.value)
