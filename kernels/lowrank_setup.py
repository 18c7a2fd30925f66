"""Search spaces, defaults and ``keep`` of the low-rank kernels (lowrank.py,
causal_lowrank.py), apart from the kernels so that the files stay readable; nothing here
imports triton."""

from __future__ import annotations

from sbbench.kernels._common import (
    Config,
    DeviceLimits,
    KernelShape,
    fits_registers,
    next_pow2,
)


def lowrank_shape(q, v, n_proj: int) -> KernelShape:
    """What keep() needs to know of one low-rank call (q or k, v, projections)."""
    return KernelShape(head_dim=q.shape[-1], head_dim_v=v.shape[-1], n_features=2 * n_proj,
                       dtype_bytes=q.element_size())


# ---- search spaces
#
# The low-rank kernels (these two and causal_lowrank.py) stream the sequence through
# [BLOCK, d] tiles and hold fp32 accumulators: state [2, BLOCK_P, dv] (state, causal) or
# [BLOCK_M, dv] (apply). The projection block BLOCK_P trades W re-reads and loop trips
# against registers: 2 x BLOCK_P features are live per step. Tiles below 32 rows (16 for
# the causal chunk, whose [BLOCK_N, BLOCK_N] score tile grows quadratically) waste
# tensor-core shapes; above 128 rows the fp32 copies spill. 2 warps cannot feed 64-row
# products (dropped from the spaces). num_stages pipelines the k / v loads of the
# sequence loop (state, causal); apply has no sequence loop (only kv blocks,
# L2-resident), so 1-2 stages suffice. The state kernel also splits the sequence over
# programs (default_splits: ~2 waves), a launch parameter derived from the GPU, not a tile.

STATE_SPACE = {
    "BLOCK_N": (32, 64, 128),
    "BLOCK_P": (16, 32, 64),
    "num_warps": (4, 8),
    "num_stages": (1, 2, 3),
}
STATE_DEFAULT = {"BLOCK_N": 64, "BLOCK_P": 32, "num_warps": 4, "num_stages": 2}

APPLY_SPACE = {
    "BLOCK_M": (32, 64, 128),
    "BLOCK_P": (16, 32, 64),
    "num_warps": (4, 8),
    "num_stages": (1, 2),
}
APPLY_DEFAULT = {"BLOCK_M": 64, "BLOCK_P": 32, "num_warps": 4, "num_stages": 1}


def shared_estimate(rows: int, shape: KernelShape, stages: int, extra: int = 0) -> int:
    """Bytes of pipelined [rows, d] + [rows, dv] input tiles (one copy per stage) plus
    ``extra`` (operand staging of the products)."""
    block_d, block_dv = next_pow2(shape.head_dim), next_pow2(shape.head_dim_v)
    return stages * rows * (block_d + block_dv) * shape.dtype_bytes + extra


# Live fp32 elements per block (the register model of keep): accumulators, the loaded
# tiles as converted for the products, and the [rows, BLOCK_P] projection / feature tiles.

def keep_state(config: Config, limits: DeviceLimits, shape: KernelShape | None = None) -> bool:
    shape = shape or KernelShape(head_dim=128, head_dim_v=128)
    block_d, block_dv = next_pow2(shape.head_dim), next_pow2(shape.head_dim_v)
    n, p, warps = config["BLOCK_N"], config["BLOCK_P"], config["num_warps"]
    live = 2 * p * block_dv + n * (block_d // 2 + block_dv) + 3 * n * p
    if not fits_registers(live, warps, limits):
        return False
    staging = 4 * (n * block_dv + 2 * n * p) + 4 * block_d * p
    if shared_estimate(n, shape, config["num_stages"], staging) > limits.shared_bytes:
        return False
    return warps * 16 <= max(n, p) * 4  # at least ~4 rows of the larger tile per warp


def keep_apply(config: Config, limits: DeviceLimits, shape: KernelShape | None = None) -> bool:
    shape = shape or KernelShape(head_dim=128, head_dim_v=128)
    block_d, block_dv = next_pow2(shape.head_dim), next_pow2(shape.head_dim_v)
    m, p, warps = config["BLOCK_M"], config["BLOCK_P"], config["num_warps"]
    live = m * (block_d // 2 + block_dv) + 3 * m * p + 2 * p * block_dv
    if not fits_registers(live, warps, limits):
        return False
    staging = 4 * (2 * m * p + 2 * p * block_dv) + 4 * block_d * p
    if shared_estimate(m, shape, config["num_stages"], staging) > limits.shared_bytes:
        return False
    return warps * 8 <= m



# ---- causal
#
# As the non-causal kernels (lowrank.py), plus the [BLOCK_N, BLOCK_N] score tile of the
# chunk, which grows quadratically: 16-row chunks stay in the space.

CAUSAL_SPACE = {
    "BLOCK_N": (16, 32, 64),
    "BLOCK_P": (16, 32, 64),
    "num_warps": (4, 8),
    "num_stages": (1, 2),
}
CAUSAL_DEFAULT = {"BLOCK_N": 32, "BLOCK_P": 16, "num_warps": 4, "num_stages": 1}


def keep_causal(config: Config, limits: DeviceLimits, shape: KernelShape | None = None) -> bool:
    shape = shape or KernelShape(head_dim=128, head_dim_v=128)
    block_d, block_dv = next_pow2(shape.head_dim), next_pow2(shape.head_dim_v)
    n, p, warps = config["BLOCK_N"], config["BLOCK_P"], config["num_warps"]
    live = 2 * p * block_dv + n * (block_d + 3 * block_dv) + 4 * n * p + n * n
    if not fits_registers(live, warps, limits):
        return False
    staging = 4 * (n * n + n * block_dv + 4 * n * p) + 4 * block_d * p
    if shared_estimate(2 * n, shape, config["num_stages"], staging) > limits.shared_bytes:
        return False
    return warps * 16 <= max(n, p) * 4


