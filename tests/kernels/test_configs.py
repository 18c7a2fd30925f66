"""Every launch runs a checked config: defaults and user configs go through keep() for the
device's limits, dtype and head sizes (falling back to the nearest kept config with one
warning line); keep() leaves configs at every supported shape; the sparse grid folds
tiles past CUDA's 65,535 limit on grid axes y and z."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from sbbench.kernels.testing import kernels_for_tests

kernels = kernels_for_tests()
if not getattr(kernels, "HAVE_TRITON", False):
    pytest.skip("triton is not installed", allow_module_level=True)

from sbbench.kernels import SM80, SM90, KernelShape, _common, sparse  # noqa: E402
from sbbench.kernels.default_table import table_default  # noqa: E402
from sbbench.kernels.testing import nan_filled_outputs  # noqa: E402
from test_sparse import run_case  # noqa: E402

SHAPES = [KernelShape(head_dim=d, head_dim_v=d, n_features=256, bucket_size=b,
                      n_hashes=h, dtype_bytes=size)
          for size in (4, 2) for d in (32, 64, 128, 256) for b in (16, 64, 128, 256)
          for h in (1, 2) if size == 2 or d <= _common.MAX_FLOAT32_HEAD_DIM]


# (kernel, arch, dtype bytes, head_dim, bucket, rounds) keep() leaves nothing for: the
# sparse kernel stages q, k, the float32 residual [Q, bucket] and v [bucket, dv] in shared
# memory (at head_dim 256, bucket 128: 263,168 B measured on sm_90, over its 232,448);
# such launches are refused in one line
REFUSED = {("sparse", arch, size, d, bucket, rounds) for arch, size, d, bucket in (
    (80, 4, 64, 256), (80, 4, 128, 128), (80, 4, 128, 256), (90, 4, 128, 256),
    (80, 2, 128, 256), (90, 2, 128, 256), (80, 2, 256, 128), (90, 2, 256, 128),
    (80, 2, 256, 256), (90, 2, 256, 256)) for rounds in (1, 2)}


def refused(name, limits, shape):
    return (name, limits.arch, shape.dtype_bytes, shape.head_dim, shape.bucket_size,
            shape.n_hashes) in REFUSED


@pytest.mark.parametrize("limits", [SM80, SM90], ids=["sm80", "sm90"])
def test_every_supported_shape_has_a_kept_default(limits):
    for shape in SHAPES:
        for name, spec in kernels.SEARCH_SPACES.items():
            if refused(name, limits, shape):
                assert not spec.configs(limits, shape), (name, shape)
                with pytest.raises(ValueError, match="no config of the search space") as err:
                    spec.choose(None, limits, shape)
                assert "\n" not in str(err.value) and "bucket" in str(err.value)
                continue
            default = spec.default_for(limits, shape)
            assert spec.keep(default, limits, shape), (name, shape)
            assert spec.configs(limits, shape), (name, shape)
            table = table_default(name, limits.arch, shape)
            if table is not None and spec.keep(table, limits, shape):
                assert default == table  # the spill-free default where the table has one
            elif spec.keep(spec.default, limits, shape):
                assert default == spec.default  # else the static default where it fits


def test_a_config_keep_drops_falls_back_with_one_warning_line():
    spec = kernels.SEARCH_SPACES["sparse"]
    shape = KernelShape(head_dim=64, head_dim_v=64, bucket_size=256)
    wanted = {"BLOCK_P": 64, "num_warps": 2, "num_stages": 3}
    assert not spec.keep(wanted, SM80, shape)
    _common._WARNED.clear()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        chosen = spec.choose(wanted, SM80, shape)
        again = spec.choose(wanted, SM80, shape)
    assert chosen == again and spec.keep(chosen, SM80, shape)
    assert len(caught) == 1  # once per case
    message = str(caught[0].message)
    assert "\n" not in message and "sparse" in message and "sm_80" in message
    assert str(chosen) in message
    # kept configs and no limits (CPU) pass unchanged; unknown keys are still errors
    assert spec.choose(chosen, SM80, shape) == chosen
    assert spec.choose(wanted, None, shape) == wanted
    with pytest.raises(ValueError, match="unknown config keys"):
        spec.choose({"BLOCK_X": 1}, SM80, shape)


def test_launchers_check_configs_against_the_device(monkeypatch):
    """A launch on a (pretend) device whose limits drop the asked config runs the nearest
    kept one, warns once, and still matches the reference."""
    tiny = _common.DeviceLimits(arch=80, shared_bytes=24 * 1024)
    for module in ("feature_map", "lowrank", "causal_lowrank", "sparse"):
        monkeypatch.setattr(f"sbbench.kernels.{module}.launch_limits", lambda device: tiny)
    _common._WARNED.clear()
    with warnings.catch_warnings(record=True) as caught, nan_filled_outputs():
        warnings.simplefilter("always")
        run_case(torch.float32, 63, 32, n_features=64, bucket_size=16, sparse="lsh",
                 n_hashes=2, config={"BLOCK_P": 64, "num_warps": 2, "num_stages": 3})
    lines = [str(w.message) for w in caught if "does not fit" in str(w.message)]
    assert any(line.startswith("sparse:") for line in lines), lines


def test_block_dk_is_an_optional_sparse_key_checked_in_one_line():
    """BLOCK_DK (not in the search space) passes resolve_config for the sparse kernel
    only; a value that is no power of two in 16..next_pow2(head_dim) is a one-line
    UserError, at the config or at the launch."""
    from sbbench.core.errors import UserError

    spec = kernels.SEARCH_SPACES["sparse"]
    shape = KernelShape(head_dim=32, head_dim_v=32, bucket_size=64, dtype_bytes=4)
    assert "BLOCK_DK" not in spec.space and spec.optional == ("BLOCK_DK",)
    assert spec.choose({"BLOCK_DK": 16}, SM80, shape)["BLOCK_DK"] == 16
    assert all("BLOCK_DK" not in c for c in spec.configs(SM80, shape))
    with pytest.raises(UserError, match="unknown config keys") as err:
        kernels.SEARCH_SPACES["fixed"].choose({"BLOCK_DK": 16}, SM80, shape)
    assert "BLOCK_DK" not in str(err.value).split("valid:")[1]
    with pytest.raises(UserError, match="BLOCK_DK must be a power of two >= 16"):
        spec.choose({"BLOCK_DK": 24}, SM80, shape)
    for bad, message in ((64, "power of two in 16..32 for head_dim 32, got 64"),
                         (8, "power of two >= 16, got 8")):
        with pytest.raises(UserError, match=message) as err:
            run_case(torch.float32, 20, 32, n_features=32, bucket_size=8, sparse="local",
                     config={"BLOCK_DK": bad})
        assert "\n" not in str(err.value)
    assert _common.head_chunks(32, 4) == {"BLOCK_DK": 32, "CHUNKED": False}
    assert _common.head_chunks(32, 4, 16) == {"BLOCK_DK": 16, "CHUNKED": True}
    assert _common.head_chunks(64, 4, 64) == {"BLOCK_DK": 64, "CHUNKED": False}


def test_the_chunk_is_the_tables_per_architecture():
    """sm_90 float32 head_dim 32 at bucket 256 runs 16-column chunks by default (its whole
    rows spilled); sm_80 keeps whole rows. A config without BLOCK_DK keeps the table's."""
    spec = kernels.SEARCH_SPACES["sparse"]
    shape = KernelShape(head_dim=32, head_dim_v=32, n_features=256, bucket_size=256,
                        dtype_bytes=4)
    chunks = {limits.arch: sparse.plan(shape, spec.default_for(limits, shape), limits=limits)
              .args for limits in (SM80, SM90)}
    assert (chunks[90]["BLOCK_DK"], chunks[90]["CHUNKED"]) == (16, True)
    assert (chunks[80]["BLOCK_DK"], chunks[80]["CHUNKED"]) == (32, False)
    assert spec.choose({"BLOCK_P": 16}, SM90, shape)["BLOCK_DK"] == 16
    assert "BLOCK_DK" not in spec.choose({"BLOCK_P": 16}, SM80, shape)


def test_float32_above_head_dim_128_is_refused_in_one_line():
    assert kernels.supports(torch.float32, 128) and not kernels.supports(torch.float32, 256)
    assert kernels.supports(torch.bfloat16, 256) and not kernels.supports(torch.float16, 512)
    assert not kernels.supports(torch.float64, 64)
    q = torch.zeros(1, 1, 8, 256)
    with pytest.raises(ValueError, match="head_dim <= 128") as err:
        kernels.scatterbrain_forward(q, q, q, scale=1.0, projections=None, hashes=None,
                                     bucket_size=8, sparse="local", causal=False,
                                     key_padding_mask=None)
    assert "\n" not in str(err.value) and "backend='torch'" in str(err.value)


# ---- grid ------------------------------------------------------------------------------

def test_bucket_1_at_65536_tokens_folds_the_tiles_into_axis_2():
    grid, tiles_y = sparse.sparse_grid(32, 65536, 1, 256)
    assert grid == (32, 65535, 2) and tiles_y == 65535
    assert grid[1] * grid[2] >= 65536 and max(grid[1:]) <= _common.MAX_GRID_YZ
    grid, tiles_y = sparse.sparse_grid(32, 4096, 64, 256)
    assert grid == (32, 64, 1)
    # query blocks multiply the tiles: bucket 256 in blocks of 64 queries
    grid, _ = sparse.sparse_grid(2, 1024, 256, 64)
    assert grid == (2, 16, 1)
    config = sparse.DEFAULT
    with pytest.raises(ValueError, match="exceed the CUDA grid"):
        _common.fold_grid(1, _common.MAX_GRID_YZ ** 2 + 1)
    plan = sparse.plan(KernelShape(bucket_size=16), config, seq=2 ** 20)
    assert plan.grid[1] <= _common.MAX_GRID_YZ and plan.args["tiles_y"] == plan.grid[1]


def test_the_query_block_is_the_largest_that_fits():
    from sbbench.kernels import sparse_setup

    half = dict(n_features=256, dtype_bytes=2)
    small = KernelShape(head_dim=64, head_dim_v=64, bucket_size=64, **half)
    large = KernelShape(head_dim=64, head_dim_v=64, bucket_size=256, **half)
    assert sparse_setup.query_block(sparse.DEFAULT, SM80, small) == 64  # the whole bucket
    block = sparse_setup.query_block(sparse.DEFAULT, SM80, large)
    assert block is not None and block < 256  # [256, 256] tiles do not fit
    tiny = KernelShape(head_dim=16, head_dim_v=16, bucket_size=4, **half)
    assert sparse_setup.query_block(sparse.DEFAULT, SM80, tiny) == 16


def _forward(seq, bucket, config):
    gen = torch.Generator().manual_seed(4)
    q, k, v = (torch.randn(1, 2, seq, 16, generator=gen) for _ in range(3))
    from sbbench.attention.features import draw_projections
    from sbbench.attention.lsh import draw_hashes

    return kernels.scatterbrain_forward(
        q, k, v, scale=0.25, projections=draw_projections(32, 16, generator=gen),
        hashes=draw_hashes(2, 16, generator=gen), bucket_size=bucket, sparse="lsh",
        causal=True, key_padding_mask=None, configs={"sparse": config} if config else None)


@pytest.mark.skipif(torch.cuda.is_available(), reason="interpreter: the limit is lowered")
@pytest.mark.parametrize("block_q", [None, 32], ids=["whole", "q32"])
def test_a_folded_grid_gives_the_same_output(monkeypatch, block_q):
    """With the axis limit lowered to 5, 20 tiles run as a 5 x 4 grid (and 11 as 5 x 3,
    with 4 idle programs): bitwise the output of the unfolded launch."""
    if block_q:
        monkeypatch.setattr(sparse, "pick_query_block", lambda config, limits, shape: block_q)
    bucket = 48 if block_q else 8
    with nan_filled_outputs():
        plain = _forward(77, bucket, None)
        monkeypatch.setattr(_common, "MAX_GRID_YZ", 5)
        folded = _forward(77, bucket, None)
    assert torch.equal(plain, folded) and not torch.isnan(folded).any()
    assert math.isfinite(float(folded.abs().sum()))
