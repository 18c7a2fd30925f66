"""The default config of each kernel per architecture, dtype size, head_dim and bucket: the
config with the most work per program among those that keep() leaves and that compile
without register spills and within shared memory (ahead of time, kernels/static.py).

Found by ``scripts/search_defaults.py`` (which prints TABLE; the search and its log:
reports/kernels/default_search.md), checked row by row by ``scripts/static_compile.py
--matrix`` (reports/kernels/static_resources.md) and tests/kernels/test_static.py.

The rule (a rule, not a timing: no GPU timed these): candidates in order of work per
program, most first -- the tile that sets the number of programs (rows of feature_stats
and lowrank_apply, projections of lowrank_state and lowrank_causal, queries of the sparse
and sink / window kernels), then the tiles of the loops inside the program (the sink /
window kernel: keys, then projections) -- and, for equal tiles, the most warps, then
num_stages nearest the kernel's static default; the first that compiles with 0 spill
bytes within the limits on the architecture (for 2-byte inputs: as float16 and as
bfloat16) is the default. The sparse kernel's query block may go down to 16 queries
(below ``sparse_setup.QUERY_BLOCKS``, which only sets the largest block a config fits
with). Where no candidate compiles without spills, the entry is the compiled candidate
with the fewest spill bytes; those rows are listed, with the reason, in
reports/kernels/default_search.md and tests/kernels/test_static.py (NO_SPILL_FREE).

Rows are keyed by the tiles the compile depends on: next_pow2(head_dim) (= that of
head_dim_v) in 32..256 and, for the sparse kernel, next_pow2(bucket_size) in 16..256, for
sm_80 and sm_90 (``limits_for`` maps other architectures onto these). The compiled plans
use 256 features and one hash round (see each kernel's ``plan``); with two rounds (the
first round's launch then also keeps the duplicate counts and accumulators) 5 sparse
rows that are spill-free with one spill 8-64 B on sm_90 (head_dim 64 at buckets 128 and
256, float32 head_dim 32 at bucket 64: ``scripts/static_compile.py --matrix --kernels
sparse --n-hashes 2``, 2026-11-30). Shapes outside the table
(head_dim <= 16, head_dim_v in another power-of-two class than head_dim) and rows whose
entry keep() drops for the shape at hand take the fallback of ``_common.default_for``.
The sparse entries of sm_80 float32 head_dim 32 (buckets 128, 256), 64 (64, 128), 128 (32),
sm_80 2-byte head_dim 256 (64) and sm_90 float32 head_dim 128 (32) were set to 16 queries by
hand when the key projection was transposed (static compiles in
reports/kernels/sparse_key_projection.md, 2026-11-30), not by a rerun of the search: the
search may find larger spill-free blocks, or other entries, for that kernel.
Nothing here imports triton.
"""

from __future__ import annotations

from sbbench.kernels._common import Config, KernelShape, next_pow2

# the order of each kernel's entries in TABLE; "queries": the sparse kernel's query block
FIELDS = {
    "feature_stats": ("BLOCK_M", "BLOCK_P", "num_warps", "num_stages"),
    "lowrank_state": ("BLOCK_N", "BLOCK_P", "num_warps", "num_stages"),
    "lowrank_apply": ("BLOCK_M", "BLOCK_P", "num_warps", "num_stages"),
    "lowrank_causal": ("BLOCK_N", "BLOCK_P", "num_warps", "num_stages"),
    "sparse": ("BLOCK_P", "num_warps", "num_stages", "queries"),
    "fixed": ("BLOCK_M", "BLOCK_N", "BLOCK_P", "num_warps", "num_stages"),
}

# (arch, dtype bytes, head_dim tile) -> {kernel: entry}; the sparse kernel's entries by
# bucket tile. None: keep() leaves no config (the launch is refused).
TABLE: dict[tuple[int, int, int], dict] = {
    (80, 4, 32): {
        'feature_stats': (128, 64, 8, 1),
        'lowrank_state': (32, 32, 8, 2),
        'lowrank_apply': (128, 32, 8, 1),
        'lowrank_causal': (32, 16, 8, 1),
        'sparse': {
            16: (32, 8, 2, 16),
            32: (32, 8, 3, 16),
            64: (16, 8, 2, 16),
            128: (16, 8, 2, 16),
            256: (16, 8, 2, 16),
        },
        'fixed': (64, 32, 16, 8, 1),
    },
    (80, 4, 64): {
        'feature_stats': (128, 32, 8, 1),
        'lowrank_state': (64, 32, 8, 2),
        'lowrank_apply': (128, 32, 8, 1),
        'lowrank_causal': (16, 32, 8, 1),
        'sparse': {
            16: (16, 8, 2, 16),
            32: (16, 8, 2, 16),
            64: (16, 8, 3, 16),
            128: (16, 8, 3, 16),
            256: None,
        },
        'fixed': (16, 16, 16, 8, 1),
    },
    (80, 4, 128): {
        'feature_stats': (64, 32, 8, 2),
        'lowrank_state': (32, 32, 8, 2),
        'lowrank_apply': (64, 16, 8, 1),
        'lowrank_causal': (16, 32, 8, 1),
        'sparse': {
            16: (64, 8, 2, 16),
            32: (16, 8, 1, 16),
            64: (16, 8, 2, 16),
            128: None,
            256: None,
        },
        'fixed': (16, 16, 16, 8, 1),
    },
    (80, 2, 32): {
        'feature_stats': (128, 64, 8, 1),
        'lowrank_state': (32, 32, 8, 2),
        'lowrank_apply': (128, 32, 8, 1),
        'lowrank_causal': (32, 16, 8, 1),
        'sparse': {
            16: (64, 8, 2, 16),
            32: (32, 8, 2, 16),
            64: (32, 8, 2, 16),
            128: (16, 8, 2, 16),
            256: (16, 8, 1, 16),
        },
        'fixed': (64, 32, 16, 8, 1),
    },
    (80, 2, 64): {
        'feature_stats': (128, 64, 8, 1),
        'lowrank_state': (64, 32, 8, 2),
        'lowrank_apply': (128, 32, 8, 1),
        'lowrank_causal': (32, 32, 8, 1),
        'sparse': {
            16: (32, 8, 2, 16),
            32: (16, 8, 2, 32),
            64: (32, 8, 2, 16),
            128: (16, 8, 2, 16),
            256: (16, 8, 2, 16),
        },
        'fixed': (64, 32, 16, 8, 1),
    },
    (80, 2, 128): {
        'feature_stats': (128, 64, 8, 1),
        'lowrank_state': (32, 64, 8, 2),
        'lowrank_apply': (64, 16, 8, 1),
        'lowrank_causal': (16, 32, 8, 1),
        'sparse': {
            16: (32, 8, 2, 16),
            32: (16, 8, 2, 32),
            64: (16, 8, 1, 16),
            128: (16, 8, 2, 16),
            256: None,
        },
        'fixed': (64, 16, 16, 8, 1),
    },
    (80, 2, 256): {
        'feature_stats': (128, 32, 8, 1),
        'lowrank_state': (32, 32, 8, 2),
        'lowrank_apply': (32, 16, 4, 1),
        'lowrank_causal': (16, 32, 8, 1),
        'sparse': {
            16: (16, 8, 2, 16),
            32: (16, 8, 3, 32),
            64: (16, 8, 1, 16),
            128: None,
            256: None,
        },
        'fixed': (16, 16, 16, 8, 1),
    },
    (90, 4, 32): {
        'feature_stats': (128, 64, 8, 1),
        'lowrank_state': (32, 64, 8, 2),
        'lowrank_apply': (128, 32, 8, 1),
        'lowrank_causal': (32, 16, 8, 1),
        'sparse': {
            16: (32, 8, 2, 16),
            32: (16, 8, 2, 16),
            64: (32, 8, 1, 16),
            128: (16, 8, 2, 16),
            256: (16, 8, 2, 16),
        },
        'fixed': (64, 16, 16, 8, 1),
    },
    (90, 4, 64): {
        'feature_stats': (128, 64, 8, 1),
        'lowrank_state': (32, 64, 8, 2),
        'lowrank_apply': (128, 32, 8, 1),
        'lowrank_causal': (16, 16, 4, 1),
        'sparse': {
            16: (16, 8, 2, 16),
            32: (16, 8, 2, 16),
            64: (16, 8, 1, 16),
            128: (16, 8, 1, 16),
            256: (16, 8, 1, 16),
        },
        'fixed': (16, 16, 16, 8, 1),
    },
    (90, 4, 128): {
        'feature_stats': (128, 64, 8, 1),
        'lowrank_state': (32, 32, 8, 2),
        'lowrank_apply': (32, 16, 4, 1),
        'lowrank_causal': (16, 32, 8, 1),
        'sparse': {
            16: (16, 8, 2, 16),
            32: (16, 8, 2, 16),
            64: (16, 8, 2, 16),
            128: (16, 8, 3, 16),
            256: None,
        },
        'fixed': (16, 16, 16, 8, 1),
    },
    (90, 2, 32): {
        'feature_stats': (128, 64, 8, 1),
        'lowrank_state': (32, 64, 8, 2),
        'lowrank_apply': (128, 64, 8, 2),
        'lowrank_causal': (32, 16, 8, 1),
        'sparse': {
            16: (32, 8, 2, 16),
            32: (32, 8, 2, 16),
            64: (16, 8, 2, 64),
            128: (32, 8, 2, 16),
            256: (16, 8, 2, 16),
        },
        'fixed': (64, 32, 16, 8, 1),
    },
    (90, 2, 64): {
        'feature_stats': (128, 64, 8, 1),
        'lowrank_state': (32, 64, 8, 2),
        'lowrank_apply': (128, 32, 8, 1),
        'lowrank_causal': (16, 32, 8, 1),
        'sparse': {
            16: (32, 8, 2, 16),
            32: (16, 8, 2, 32),
            64: (16, 8, 2, 32),
            128: (16, 8, 2, 32),
            256: (16, 8, 2, 16),
        },
        'fixed': (64, 32, 16, 8, 1),
    },
    (90, 2, 128): {
        'feature_stats': (128, 64, 8, 1),
        'lowrank_state': (32, 64, 8, 2),
        'lowrank_apply': (64, 16, 8, 1),
        'lowrank_causal': (16, 32, 8, 1),
        'sparse': {
            16: (32, 8, 3, 16),
            32: (16, 8, 2, 32),
            64: (16, 8, 2, 64),
            128: (32, 8, 1, 16),
            256: None,
        },
        'fixed': (32, 64, 16, 8, 1),
    },
    (90, 2, 256): {
        'feature_stats': (128, 32, 8, 1),
        'lowrank_state': (32, 32, 8, 2),
        'lowrank_apply': (32, 16, 4, 1),
        'lowrank_causal': (16, 32, 8, 1),
        'sparse': {
            16: (64, 8, 2, 16),
            32: (16, 8, 3, 32),
            64: (16, 8, 3, 16),
            128: None,
            256: None,
        },
        'fixed': (16, 16, 16, 8, 1),
    },
}


# Rows where no candidate compiles without spills, (kernel, arch, dtype bytes, head_dim
# tile, bucket tile or 0) -> why (measured with the search's compiles; more in
# reports/kernels/default_search.md). Their entries above have the fewest spill bytes.
_ESTIMATE = ("the sparse kernel's low-rank estimate: q and k tiles with their tf32x3 feature "
             "products (float32: hi / lo operand copies); float32 head_dim 128 spills even "
             "at 16 queries x 16 keys, so not the bucket; the key projection runs transposed "
             "(sparse_setup.key_layout: its key tile splits over the warps along the bucket), "
             "which made 16 of these 28 rows spill-free (reports/kernels/"
             "sparse_key_projection.md); the same launch without the low-rank part needs 54 "
             "registers (sm_80, bfloat16, head_dim 64, bucket 64)")
_FLOAT32_PROJECTION = ("the tf32x3 projection of [rows, 128] float32 rows: on sm_80 the MMA "
                       "operands (hi and lo copies) live in registers; sm_90 compiles the "
                       "same config without spills")
_WIDE_HEAD = ("[rows, 256] input tiles with their tf32x3 feature products: the smallest "
              "tiles keep() leaves still spill")
_FIXED_TILES = ("the sink / window kernel's [queries, head_dim] and [keys, head_dim] tiles "
                "with the low-rank estimate's projections of both (float32: tf32x3 hi / lo "
                "copies) at float32 head_dim 128 and half head_dim 256: the smallest tiles "
                "keep() leaves (16 queries, 16 keys, 16 projections, 8 warps) still spill")
SPILLING: dict[tuple[str, int, int, int, int], str] = {
    **{("sparse", 80, 4, d, b): _ESTIMATE for d, b in (
        (64, 128), (128, 16), (128, 32), (128, 64))},
    **{("sparse", 80, 2, 256, 32): _ESTIMATE},
    **{("sparse", 90, 4, d, b): _ESTIMATE for d, b in (
        (32, 256), (64, 128), (64, 256), (128, 16), (128, 32), (128, 64), (128, 128))},
    **{("sparse", 90, 2, 256, b): _ESTIMATE for b in (16, 32)},
    ("feature_stats", 80, 4, 128, 0): _FLOAT32_PROJECTION,
    **{(name, arch, 2, 256, 0): _WIDE_HEAD for name in ("lowrank_apply", "lowrank_causal")
       for arch in (80, 90)},
    **{("fixed", arch, size, d, 0): _FIXED_TILES for arch in (80, 90)
       for size, d in ((4, 128), (2, 256))},
}


def _entry(name: str, arch: int, shape: KernelShape) -> tuple[int, ...] | None:
    block_d = next_pow2(shape.head_dim)
    if next_pow2(shape.head_dim_v) != block_d:
        return None
    row = TABLE.get((arch, shape.dtype_bytes, block_d), {}).get(name)
    if name == "sparse" and row is not None:
        row = row.get(next_pow2(shape.bucket_size))
    return row


def table_default(name: str, arch: int, shape: KernelShape) -> Config | None:
    """The table's default config of kernel ``name`` for ``shape`` on sm_``arch`` (search
    space keys only), or None where the table has no entry."""
    entry = _entry(name, arch, shape)
    if entry is None:
        return None
    return {k: v for k, v in zip(FIELDS[name], entry, strict=True) if k != "queries"}


def table_queries(arch: int, shape: KernelShape) -> int | None:
    """The sparse kernel's query block of the table's default for ``shape``, or None."""
    entry = _entry("sparse", arch, shape)
    return None if entry is None else entry[FIELDS["sparse"].index("queries")]


def spilling_reason(name: str, arch: int, shape: KernelShape) -> str | None:
    """Why the row of ``shape`` has no spill-free default (SPILLING), or None."""
    bucket = next_pow2(shape.bucket_size) if name == "sparse" else 0
    return SPILLING.get((name, arch, shape.dtype_bytes, next_pow2(shape.head_dim), bucket))
