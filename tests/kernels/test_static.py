"""Search spaces, keep() and the ahead-of-time compile of every kernel's default config for
sm_80 and sm_90 (no GPU needed: triton.compile with a GPUTarget, cuobjdump on the cubin)."""

from __future__ import annotations

import pytest
from sbbench.kernels.testing import kernels_for_tests

kernels = kernels_for_tests()
if not getattr(kernels, "HAVE_TRITON", False):
    pytest.skip("triton is not installed", allow_module_level=True)

from sbbench.kernels import SM80, SM90, KernelShape, expand_space, static  # noqa: E402

SHAPES = {
    "d64": KernelShape(head_dim=64, head_dim_v=64, n_features=256, bucket_size=64),
    "d128": KernelShape(head_dim=128, head_dim_v=128, n_features=256, bucket_size=64),
    "d32-fp32": KernelShape(head_dim=32, head_dim_v=32, n_features=64, bucket_size=16,
                            dtype_bytes=4),
}


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


def test_parse_arch():
    assert [static.parse_arch(a) for a in (90, "90", "sm_90", "sm80")] == [90, 90, 90, 80]
    with pytest.raises(ValueError, match="arch must be"):
        static.parse_arch("hopper")


# Spills of the defaults at head_dim 64, bf16, bucket 64 (reports/kernels/
# static_resources.md). Not zero since the Scatterbrain products that cancel run in tf32x3
# (float32 hi / lo operand copies: the sparse kernel's residual x v and estimate, the
# low-rank state and causal sums); an open problem, kept from growing here.
KNOWN_SPILLS = {("sparse", 80): 240, ("lowrank_state", 80): 8, ("sparse", 90): 32,
                ("lowrank_state", 90): 16, ("lowrank_causal", 90): 72}


def test_default_configs_compile_for_sm80_and_sm90():
    rows = static.sweep(default_only=True, archs=(80, 90))
    assert {(r.kernel, r.arch) for r in rows} == {
        (name, arch) for name in kernels.SEARCH_SPACES for arch in (80, 90)}
    for r in rows:
        assert r.ok, (r.kernel, r.arch, r.reason)
        assert 0 < r.registers <= 255, r
        assert r.spills <= KNOWN_SPILLS.get((r.kernel, r.arch), 0), r
        assert r.shared_bytes <= (SM90 if r.arch == 90 else SM80).shared_bytes, r
    table = static.format_table(rows)
    assert table.count("\n") == len(rows) + 1 and "sm_90" in table


def test_a_failed_compile_is_a_result_not_an_exception():
    usage = static.compile_config("sparse", {"BLOCK_P": 24}, "sm_90")  # arange needs 2^k
    assert not usage.ok and usage.reason.startswith("compile failed")
