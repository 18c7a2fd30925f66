"""Search spaces, keep(), the table of spill-free defaults, and the ahead-of-time compile of
the defaults for sm_80 and sm_90 (no GPU needed: triton.compile with a GPUTarget,
cuobjdump on the cubin)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from sbbench.kernels.testing import kernels_for_tests

kernels = kernels_for_tests()
if not getattr(kernels, "HAVE_TRITON", False):
    pytest.skip("triton is not installed", allow_module_level=True)

from sbbench.kernels import (  # noqa: E402
    SM80,
    SM90,
    KernelShape,
    expand_space,
    limits_for,
    sparse_setup,
    static,
)
from sbbench.kernels.default_table import (  # noqa: E402
    FIELDS,
    SPILLING,
    TABLE,
    spilling_reason,
    table_default,
)

REPORT = Path(__file__).resolve().parents[2] / "reports" / "kernels" / "static_resources.md"

SHAPES = {
    "d64": KernelShape(head_dim=64, head_dim_v=64, n_features=256, bucket_size=64),
    "d128": KernelShape(head_dim=128, head_dim_v=128, n_features=256, bucket_size=64),
    "d32-fp32": KernelShape(head_dim=32, head_dim_v=32, n_features=64, bucket_size=16,
                            dtype_bytes=4),
}

# Rows of the matrix (kernel, arch, dtype bytes, head_dim, bucket or 0) where no config
# keep() leaves compiles without spills (reports/kernels/default_search.md), with the most
# spill bytes their default may have (float16 and bfloat16 alike); the reason of each is in
# kernels/default_table.SPILLING. None since the kernels read q / k rows in chunks of
# head_dim and split wide v over programs (feature_map.project_rows, _common.head_chunks
# and value_chunk) and the sparse entries may set the chunk (BLOCK_DK: sm_90 float32
# head_dim 32, bucket 256, whose single-chunk [256, 32] key tile spilled 32 B).
NO_SPILL_FREE: dict[tuple[str, int, int, int, int], int] = {}

ARCHS = (80, 90)
HEAD_DIMS = (32, 64, 128, 256)
BUCKETS = (16, 32, 64, 128, 256)


def matrix_rows():
    """(kernel, arch, dtype bytes, head_dim, bucket or 0, shape) of every matrix row."""
    for arch in ARCHS:
        for size in (4, 2):
            for d in HEAD_DIMS:
                if not kernels.supports(torch.float32 if size == 4 else torch.bfloat16, d):
                    continue
                for name in kernels.SEARCH_SPACES:
                    for bucket in BUCKETS if name == "sparse" else (64,):
                        shape = KernelShape(head_dim=d, head_dim_v=d, n_features=256,
                                            bucket_size=bucket, dtype_bytes=size)
                        yield name, arch, size, d, bucket if name == "sparse" else 0, shape


@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
@pytest.mark.parametrize("limits", [SM80, SM90], ids=["sm80", "sm90"])
def test_spaces_are_data_and_keep_the_default(shape, limits):
    for name, spec in kernels.SEARCH_SPACES.items():
        space = expand_space(spec.space)
        assert spec.default in space, name
        assert spec.keep(spec.default, limits, shape), name
        kept = spec.configs(limits, shape)
        assert 0 < len(kept) <= len(space), name
        assert set(kernels.DEFAULT_CONFIGS[name]) == set(spec.space), name


def test_the_table_has_a_kept_default_for_every_row():
    """Every row of the matrix has a table entry that keep() leaves and that default_for
    returns (the sparse kernel's with a query block that fits), except the rows keep()
    refuses and the listed ones without a spill-free config."""
    for name, arch, size, d, bucket, shape in matrix_rows():
        spec, limits = kernels.SEARCH_SPACES[name], limits_for(arch)
        entry = table_default(name, arch, shape)
        row = (name, arch, size, d, bucket)
        assert (spilling_reason(name, arch, shape) is not None) == (row in NO_SPILL_FREE), row
        if not spec.configs(limits, shape):
            assert entry is None, row
            continue
        assert entry is not None, row
        assert set(entry) - set(spec.optional) == set(spec.space), row
        assert spec.keep(entry, limits, shape), row
        assert spec.default_for(limits, shape) == entry, row
        if name == "sparse":
            block_q = sparse_setup.pick_query_block(entry, limits, shape)
            assert sparse_setup.fits_block(entry, block_q, limits, shape), row
            assert block_q <= max(16, 1 << (bucket - 1).bit_length()), row
    assert set(FIELDS) == set(kernels.SEARCH_SPACES)
    assert all(set(FIELDS[name]) - {"queries", *spec.optional} == set(spec.space)
               for name, spec in kernels.SEARCH_SPACES.items())
    assert all(key[0] in ARCHS and key[2] in HEAD_DIMS for key in TABLE)
    assert set(SPILLING) == set(NO_SPILL_FREE)


def test_parse_arch():
    assert [static.parse_arch(a) for a in (90, "90", "sm_90", "sm80")] == [90, 90, 90, 80]
    with pytest.raises(ValueError, match="arch must be"):
        static.parse_arch("hopper")


# the defaults compiled here (each a few seconds; the report compiles them all): bfloat16
# head_dim 64 (rows loaded whole) and float16 head_dim 256 (chunked rows, split v)
COMPILED = {
    "bf16-d64-b64": KernelShape(head_dim=64, head_dim_v=64, bucket_size=64),
    "fp16-d256-b16": KernelShape(head_dim=256, head_dim_v=256, bucket_size=16,
                                 half="float16"),
}


@pytest.mark.parametrize("shape", COMPILED.values(), ids=COMPILED.keys())
def test_the_defaults_compile_without_spills_for_sm80_and_sm90(shape):
    """The defaults default_for picks compile within the limits and without spills
    (the listed rows: at most their bound)."""
    work = [(name, spec.default_for(limits_for(arch), shape), arch, shape)
            for arch in ARCHS for name, spec in kernels.SEARCH_SPACES.items()]
    rows = static.compile_many(work)
    assert len(rows) == len(work)
    for r in rows:
        bucket = shape.bucket_size if r.kernel == "sparse" else 0
        allowed = NO_SPILL_FREE.get((r.kernel, r.arch, shape.dtype_bytes, shape.head_dim,
                                     bucket), 0)
        assert r.ok, (r.kernel, r.arch, r.reason)
        assert 0 < r.registers <= 255, r
        assert r.spills <= allowed, r
        assert r.shared_bytes <= limits_for(r.arch).shared_bytes, r
    table = static.format_table(rows)
    assert table.count("\n") == len(rows) + 1 and "sm_90" in table


def test_the_chunked_sparse_default_compiles_without_spills():
    """sm_90 float32 head_dim 32, bucket 256: the table's default (BLOCK_DK 16) compiles
    without spills, and so does sm_80's whole-row one; a config without BLOCK_DK compiles
    the chunk the launch would take (the table's)."""
    shape = KernelShape(head_dim=32, head_dim_v=32, n_features=256, bucket_size=256,
                        dtype_bytes=4)
    spec = kernels.SEARCH_SPACES["sparse"]
    defaults = {arch: spec.default_for(limits_for(arch), shape) for arch in ARCHS}
    assert defaults[90].get("BLOCK_DK") == 16 and "BLOCK_DK" not in defaults[80]
    plain = {k: v for k, v in defaults[90].items() if k != "BLOCK_DK"}
    rows = static.compile_many([("sparse", defaults[80], 80, shape),
                                ("sparse", defaults[90], 90, shape)])
    assert all(r.ok and r.spills == 0 for r in rows), rows
    assert rows[1].config_dict["BLOCK_DK"] == 16
    usage = static.compile_config("sparse", plain, 90, shape)
    assert usage.config_dict["BLOCK_DK"] == 16 and usage.spills == 0, usage


def test_the_report_shows_the_defaults_of_the_code():
    """reports/kernels/static_resources.md has one row per matrix row, with the config
    default_for returns now, compiled without spills except the listed rows."""
    pattern = re.compile(r"^\| (\w+) \| sm_(\d+) \| (\w+) \| (\d+) \| (\d*) \| ([^|]+) \| "
                         r"([^|]+) \|(?: [^|]* \|){2} (\d+) \| ([^|]+) \|$")
    rows = {}
    for line in REPORT.read_text().splitlines():
        match = pattern.match(line)
        if match:
            name, arch, dtype, d, bucket, config, _, spills, ok = match.groups()
            size = 4 if dtype == "float32" else 2
            rows[(name, int(arch), size, int(d), int(bucket or 0), dtype)] = (
                config, int(spills), ok)
    expected = 0
    for name, arch, size, d, bucket, shape in matrix_rows():
        spec, limits = kernels.SEARCH_SPACES[name], limits_for(arch)
        for dtype in (("float32",) if size == 4 else ("float16", "bfloat16")):
            expected += 1
            config, spills, ok = rows[(name, arch, size, d, bucket, dtype)]
            if not spec.configs(limits, shape):
                assert ok.startswith("NO"), (name, arch, dtype, d, bucket)
                continue
            default = spec.default_for(limits, shape)
            text = ", ".join(f"{k}={v}" for k, v in sorted(default.items()))
            if name == "sparse":
                text += f", {sparse_setup.pick_query_block(default, limits, shape)} queries"
            assert config.strip() == text, (name, arch, dtype, d, bucket, config, text)
            allowed = NO_SPILL_FREE.get((name, arch, size, d, bucket))
            if allowed is None:
                assert ok.strip() == "yes", (name, arch, dtype, d, bucket, ok)
            else:
                assert ok.strip() in ("yes", "NO: spills"), (name, arch, dtype, d, bucket, ok)
                assert spills <= allowed, (name, arch, dtype, d, bucket, spills)
    assert len(rows) == expected


def test_a_failed_compile_is_a_result_not_an_exception():
    usage = static.compile_config("sparse", {"BLOCK_P": 24}, "sm_90")  # arange needs 2^k
    assert not usage.ok and usage.reason.startswith("compile failed")
