"""What the sparse kernel (sparse.py) needs besides the kernel, kept apart so that both
files stay readable (nothing here imports triton): the state the rounds of one call share,
and the search space, default and ``keep``.

The bucket fixes the key tile (BLOCK_B = next power of two of bucket_size) and the problem
fixes d and dv, so the free knobs are the projection block (2 x BLOCK_P features per step
of the feature loop: fewer trips vs. more live [Q, P] / [B, P] tiles) and the warps that
share the tiles. The query block (BLOCK_Q of the bucket's queries per program: [BLOCK_Q,
BLOCK_B] score / estimate tiles) follows from the shape: the whole bucket where it fits,
smaller blocks for large buckets (query_block). Each program loads q, k, v once, so the only
pipelined loads are the W (and, in the first round, kv) blocks of the feature loop: 1-3
stages. Buckets above 256 would make even [16, B] tiles crowd the registers.
"""

from __future__ import annotations

import torch
from sbbench.kernels._common import (
    LIMITS_BY_ARCH,
    Config,
    DeviceLimits,
    KernelShape,
    empty,
    fits_registers,
    fold_grid,
    next_pow2,
)
from sbbench.kernels.default_table import table_default, table_queries


def int32_rows(name: str, t: torch.Tensor | None, shape: tuple[int, ...]) -> torch.Tensor | None:
    if t is None:
        return None
    if tuple(t.shape) != shape:
        raise ValueError(f"{name} must be {list(shape)}, got {tuple(t.shape)}")
    return t.to(torch.int32).contiguous()


def f32_rows(name: str, t: torch.Tensor | None, shape: tuple[int, ...]) -> None:
    if t is not None and (tuple(t.shape) != shape or t.dtype != torch.float32
                          or not t.is_contiguous()):
        raise ValueError(f"{name} must be contiguous float32 {list(shape)}, got "
                         f"{t.dtype} {tuple(t.shape)}")


def check_lowrank(lowrank: dict | None, batch: int, heads: int, seq: int,
                  head_dim_v: int) -> int:
    """Check the low-rank dict a launcher takes (see sparse.sparse_attention); returns
    its number of projections (0 without one)."""
    if lowrank is None:
        return 0
    n_proj = lowrank["weights"].n_proj
    rows = (batch, heads, seq)
    for name in ("q_shift", "q_bias", "k_bias"):
        f32_rows(name, lowrank[name], rows)
    f32_rows("lk", lowrank["lk"], (batch, heads))
    if "kv" in lowrank:
        f32_rows("kv", lowrank["kv"], (batch, heads, 2 * n_proj, head_dim_v))
        f32_rows("ks", lowrank["ks"], (batch, heads, 2 * n_proj))
    else:
        f32_rows("num", lowrank["num"], (batch, heads, seq, head_dim_v))
        f32_rows("den", lowrank["den"], rows)
    return n_proj


def keep_mask(key_padding_mask: torch.Tensor | None, batch: int, seq: int):
    """The key padding mask as the kernels read it: int8 [batch, seq] (None: no mask)."""
    if key_padding_mask is None:
        return None
    if key_padding_mask.shape != (batch, seq) or key_padding_mask.dtype != torch.bool:
        raise ValueError(f"key_padding_mask must be bool [{batch}, {seq}], got "
                         f"{key_padding_mask.dtype} {tuple(key_padding_mask.shape)}")
    return key_padding_mask.to(torch.int8).contiguous()


COUNT_ELEMENTS = 1 << 22  # (query slot, key) pairs per step of set_counts


def set_counts(q_order: torch.Tensor, k_order: torch.Tensor, key_sets, bucket_size: int
               ) -> torch.Tensor:
    """How many rounds pick each (query slot, key slot) pair of k-means key sets:
    [b, h, R, seq_pad, bucket] int8, at least 1 (``key_sets.contains`` of
    sbbench.attention.supports.KeySets, as the torch path counts it). Linear in seq."""
    b, h, n_rounds, seq_pad = q_order.shape
    counts = torch.empty(b, h, n_rounds, seq_pad, bucket_size, dtype=torch.int8,
                         device=q_order.device)
    step = max(1, COUNT_ELEMENTS // max(1, b * h * n_rounds * bucket_size)
               // bucket_size) * bucket_size
    for r in range(n_rounds):
        for start in range(0, seq_pad, step):
            q_pos = q_order[:, :, r, start:start + step].long()  # [b, h, M]
            keys = k_order[:, :, r, start:start + step].long().view(b, h, -1, 1, bucket_size)
            k_pos = keys.expand(-1, -1, -1, bucket_size, -1).reshape(b, h, -1, bucket_size)
            hits = key_sets.contains(q_pos, k_pos).sum(dim=2).clamp_min_(1)
            counts[:, :, r, start:start + step] = hits.to(torch.int8)
    return counts


class SparseState:
    """What the rounds of one forward share: the running sums between rounds and the
    int32 orders / bucket ids or k-means pair counts (built once, reused by every round's
    launch). ``fixed``: a sink / window launch runs before the rounds (it starts the
    running sums, so they exist even with one round)."""

    def __init__(self, q, k, v, *, bucket_size, q_order=None, k_order=None,
                 key_padding_mask=None, out=None, key_sets=None, fixed=False):
        batch, heads, seq, _ = q.shape
        head_dim_v = v.shape[-1]
        self.seq_pad = -(-seq // bucket_size) * bucket_size
        self.local = q_order is None
        self.n_rounds = 1 if self.local else q_order.shape[2]
        order_shape = (batch, heads, self.n_rounds, self.seq_pad)
        self.q_order = int32_rows("q_order", q_order, order_shape)
        self.k_order = int32_rows("k_order", k_order, order_shape)
        self.q_bucket = self.k_bucket = self.counts = None
        if self.n_rounds > 1 and key_sets is not None:
            self.counts = set_counts(self.q_order, self.k_order, key_sets, bucket_size)
        elif self.n_rounds > 1:
            ids = torch.arange(self.seq_pad, device=q.device, dtype=torch.int32) // bucket_size
            ids = ids.expand(order_shape).contiguous()
            # bucket of every position = inverse of the sorted order (lsh.bucket_ids)
            self.q_bucket = torch.empty_like(ids).scatter_(-1, self.q_order.long(), ids)
            self.k_bucket = torch.empty_like(ids).scatter_(-1, self.k_order.long(), ids)
        self.keep = keep_mask(key_padding_mask, batch, seq)
        if out is None:
            out = empty((batch, heads, seq, head_dim_v), q.dtype, q.device)
        self.out = out
        self.fixed = fixed
        self.acc = None
        if self.n_rounds > 1 or fixed:
            self.acc = running_sums(batch, heads, seq, head_dim_v, q.device)


def running_sums(batch, heads, seq, head_dim_v, device):
    """(num, den, lam) float32 accumulators of the online merge, in original order."""
    return (empty((batch, heads, seq, head_dim_v), torch.float32, device),
            empty((batch, heads, seq), torch.float32, device),
            empty((batch, heads, seq), torch.float32, device))


def sparse_grid(batch_heads: int, seq_pad: int, bucket_size: int, block_q: int
                ) -> tuple[tuple[int, int, int], int]:
    """(grid, tiles_y) of one round: batch * heads on axis 0, the (bucket, query block)
    tiles folded over axes 1 and 2 (_common.fold_grid: bucket 1 at 65,536 tokens has
    65,536 tiles, past CUDA's 65,535 on axis 1)."""
    q_blocks = -(-bucket_size // min(block_q, next_pow2(bucket_size)))
    return fold_grid(batch_heads, seq_pad // bucket_size * q_blocks)


def kernel_shape(q: torch.Tensor, v: torch.Tensor, bucket_size: int, n_rounds: int,
                 lowrank: dict | None) -> KernelShape:
    """What keep() needs to know of one call."""
    n_features = 2 * lowrank["weights"].n_proj if lowrank is not None else 0
    return KernelShape(head_dim=q.shape[-1], head_dim_v=v.shape[-1], n_features=n_features,
                       bucket_size=bucket_size, n_hashes=n_rounds,
                       dtype_bytes=q.element_size())


# ---------------------------------------------------------------- search space

MAX_BUCKET = 256
SPACE = {
    "BLOCK_P": (16, 32, 64),
    "num_warps": (2, 4, 8),
    "num_stages": (1, 2, 3),
}
# config keys the search space does not enumerate: BLOCK_DK, the columns of q / k rows read
# at a time (_common.head_chunks; a power of two in 16..next_pow2(head_dim)). Below
# next_pow2(head_dim) the kernel re-reads the rows per projection block instead of holding
# the [rows, head_dim] tiles (with tf32x3 hi / lo copies) through the feature loop; the
# default table sets it where only that compiles without spills (sm_90 float32 head_dim 32,
# bucket 256). A config without it takes the table default's for the shape, if any, else
# head_chunks' (the whole head_dim up to 32 columns in float32, 64 in half precision).
OPTIONAL = ("BLOCK_DK",)
# the fallback default: launches take the per-shape default of kernels/default_table.py
# where it has a row (spill-free where a config is, reports/kernels/static_resources.md);
# elsewhere this one, or the nearest config keep() leaves
DEFAULT = {"BLOCK_P": 16, "num_warps": 8, "num_stages": 2}


def key_layout(dtype: torch.dtype, bucket_size: int) -> int:
    """How the sparse kernel projects the bucket's keys (feature_map.project_part's TRANS):
    1, transposed, W_s @ k^T [P, B], so the key operand splits over the warps along the
    bucket as in the estimate and the logits (projected as [B, P], every warp holds the
    whole [B, d] key tile); 2, as [B, P] then transposed, for half-precision buckets of at
    most 32 keys, where the transposed product spilled 24-56 B per thread at head_dim
    128-256 and the other did not (reports/kernels/sparse_key_projection.md)."""
    return 2 if dtype != torch.float32 and next_pow2(bucket_size) <= 32 else 1


def fuse_by_default(head_dim_v: int) -> bool:
    """Whether the first round computes the low-rank numerator phi(Q) kv itself (non-causal).

    Fused, the kernel holds a [bucket, dv] float32 accumulator and streams kv through the
    feature loop: at dv <= 64 that compiles without spills on sm_80 and sm_90 (bucket 64);
    at dv = 128 the sm_80 build spills kilobytes per thread, so lowrank_apply(sums=True)
    computes it in its own pass (reports/kernels/static_resources.md).
    """
    return next_pow2(head_dim_v) <= 64


def fits_block(config: Config, q: int, limits: DeviceLimits, shape: KernelShape) -> bool:
    """Whether ``config`` with query blocks of ``q`` fits registers and shared memory.

    Live float32 elements: score and estimate [Q, B] (and the duplicate count with several
    rounds), the projection / feature tiles [Q, P] and [B, P] (three each), q [Q, d] and k
    [B, d] (input dtype: half the registers in half precision) and, when the low-rank
    numerator is fused, its [Q, dv] accumulator and [P, dv] kv tiles."""
    block_b = next_pow2(shape.bucket_size)
    block_d, block_dv = next_pow2(shape.head_dim), next_pow2(shape.head_dim_v)
    p, warps = config["BLOCK_P"], config["num_warps"]
    fused = fuse_by_default(shape.head_dim_v)
    words = shape.dtype_bytes / 4
    live = (2 + (shape.n_hashes > 1)) * q * block_b + 3 * (q + block_b) * p \
        + words * (q + block_b) * block_d \
        + (q * block_dv + 2 * p * block_dv if fused else 0)
    if not fits_registers(int(live), warps, limits):
        return False
    # shared memory: the pipelined W (and kv) blocks, plus the operands of both bucket
    # products, q [Q, d] and k [B, d] of the logits and the float32 residual [Q, B] with v
    # [B, dv] (float32 with a low-rank part); counted as if live at once (the compiler
    # reuses little: 263,168 B measured at head_dim 256, bucket 128, 64 queries, sm_90)
    v_bytes = 4 if shape.n_features else shape.dtype_bytes
    shared = config["num_stages"] * (2 * shape.dtype_bytes * block_d * p
                                     + (8 * p * block_dv if fused else 0)) \
        + shape.dtype_bytes * (q + block_b) * block_d \
        + 4 * q * block_b + v_bytes * block_b * block_dv
    return shared <= limits.shared_bytes


# queries per program, largest first: the whole bucket re-projects no key; smaller blocks
# fit large buckets (a launch parameter derived from the shape, like the state kernel's
# splits, so the search space and tuning files keep their keys)
QUERY_BLOCKS = (256, 128, 64, 32)


def query_block(config: Config, limits: DeviceLimits, shape: KernelShape) -> int | None:
    """The largest query block (at most the bucket's tile) with which ``config`` fits;
    None if none does."""
    block_b = next_pow2(shape.bucket_size)
    for q in (b for b in QUERY_BLOCKS if b <= block_b):
        if fits_block(config, q, limits, shape):
            return q
    if block_b < QUERY_BLOCKS[-1] and fits_block(config, block_b, limits, shape):
        return block_b
    return None


def keep(config: Config, limits: DeviceLimits, shape: KernelShape | None = None) -> bool:
    """Drop configs that fit the registers and shared memory with no query block (see
    :func:`query_block` and :func:`fits_block`)."""
    shape = shape or KernelShape(head_dim=128, head_dim_v=128)
    return query_block(config, limits, shape) is not None


def pick_query_block(config: Config, limits: DeviceLimits | None, shape: KernelShape) -> int:
    """Queries per program for a launch (sm_80's limits without a device): the default
    table's for its default config (kernels/default_table.py: the largest block that
    compiles without spills), else the largest block that fits the device's limits
    (:func:`query_block`); the smallest if none does."""
    limits = limits or LIMITS_BY_ARCH[80]
    block_q = table_queries(limits.arch, shape)
    if block_q is None or config != table_default("sparse", limits.arch, shape) \
            or not fits_block(config, block_q, limits, shape):
        block_q = query_block(config, limits, shape)
    return block_q or min(QUERY_BLOCKS[-1], next_pow2(shape.bucket_size))
