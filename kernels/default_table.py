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
with the fewest spill bytes; those rows are listed, with the reason, in SPILLING below,
reports/kernels/default_search.md and tests/kernels/test_static.py (NO_SPILL_FREE). None
is left: every entry compiles without spills (reports/kernels/static_resources.md).

Rows are keyed by the tiles the compile depends on: next_pow2(head_dim) (= that of
head_dim_v) in 32..256 and, for the sparse kernel, next_pow2(bucket_size) in 16..256, for
sm_80 and sm_90 (``limits_for`` maps other architectures onto these). The compiled plans
use 256 features and one hash round (see each kernel's ``plan``); with two rounds (the
first round's launch then also keeps the duplicate counts and accumulators) 5 sparse
rows that are spill-free with one spill 8-64 B on sm_90 (head_dim 64 at buckets 128 and
256, float32 head_dim 32 at bucket 64: ``scripts/static_compile.py --matrix --kernels
sparse --n-hashes 2``, 2026-11-30, before the head_dim chunks below; not rerun since).
Shapes outside the table
(head_dim <= 16, head_dim_v in another power-of-two class than head_dim) and rows whose
entry keep() drops for the shape at hand take the fallback of ``_common.default_for``.
The sparse entries of sm_80 float32 head_dim 32 (buckets 128, 256), 64 (64), sm_80
2-byte head_dim 256 (64) were set to 16 queries by hand when the key projection was
transposed (static compiles in reports/kernels/sparse_key_projection.md, 2026-11-30), not
by a rerun of the search: the search may find larger spill-free blocks for them.

Then the kernels changed (2026-11-30): where head_dim takes more than one BLOCK_DK chunk
(float32 above 32, half precision above 64: ``_common.head_chunks``) they read and project
q / k rows one chunk at a time instead of holding [rows, head_dim] tiles (with the
float32 hi / lo copies of tf32x3), and lowrank_apply / lowrank_causal split head_dim_v
above 128 over programs (``_common.value_chunk``); rows that fit one chunk compile the
same code as before. The 23 rows that had no spill-free config and the 8 rows whose entry
the change made spill were searched again (``scripts/search_defaults.py --rows ...``, logs
appended to reports/kernels/default_search.md): all but one then had a spill-free config.
The other entries are the earlier search's and still compile without spills, but were not
searched again: with the chunked kernels a config with more work per program may now
compile without spills for them.

That one, sm_90 float32 head_dim 32 at bucket 256 (32 B), fits one BLOCK_DK chunk, so its
[256, 32] float32 key tile (with the tf32x3 hi / lo copies) stayed loaded through the
feature loop. The sparse entries may end in a BLOCK_DK (FIELDS; sparse_setup.OPTIONAL)
below head_chunks' chunk: the kernel then re-reads the q / k rows per projection block.
The search tries such chunks only where no candidate with head_chunks' chunk is spill-free
(``scripts/search_defaults.py --rows sparse:90:4:32:256``, 2026-11-30, appended to
reports/kernels/default_search.md): there BLOCK_DK 16 with num_stages=2 compiles without
spills on sm_90. The sm_80 row keeps its whole-row entry, spill-free (the chunked config
spills 8 B there): the chunk is the table's choice per architecture.
Nothing here imports triton.
"""

from __future__ import annotations

from sbbench.kernels._common import Config, KernelShape, next_pow2

# the order of each kernel's entries in TABLE; "queries": the sparse kernel's query block;
# its last field, BLOCK_DK (sparse_setup.OPTIONAL), only where the entry's differs from
# _common.head_chunks' (chunked rows where whole rows spill)
FIELDS = {
    "feature_stats": ("BLOCK_M", "BLOCK_P", "num_warps", "num_stages"),
    "lowrank_state": ("BLOCK_N", "BLOCK_P", "num_warps", "num_stages"),
    "lowrank_apply": ("BLOCK_M", "BLOCK_P", "num_warps", "num_stages"),
    "lowrank_causal": ("BLOCK_N", "BLOCK_P", "num_warps", "num_stages"),
    "sparse": ("BLOCK_P", "num_warps", "num_stages", "queries", "BLOCK_DK"),
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
            128: (16, 8, 2, 32),
            256: None,
        },
        'fixed': (16, 16, 16, 8, 1),
    },
    (80, 4, 128): {
        'feature_stats': (128, 64, 8, 1),
        'lowrank_state': (32, 32, 8, 2),
        'lowrank_apply': (64, 16, 8, 1),
        'lowrank_causal': (16, 32, 8, 1),
        'sparse': {
            16: (64, 8, 2, 16),
            32: (32, 8, 2, 32),
            64: (32, 8, 2, 32),
            128: None,
            256: None,
        },
        'fixed': (64, 32, 16, 8, 1),
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
        'lowrank_apply': (64, 16, 8, 1),
        'lowrank_causal': (16, 32, 8, 1),
        'sparse': {
            16: (16, 8, 2, 16),
            32: (32, 8, 2, 32),
            64: (16, 8, 1, 16),
            128: None,
            256: None,
        },
        'fixed': (32, 16, 32, 8, 1),
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
            256: (16, 8, 2, 16, 16),
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
            128: (16, 8, 2, 32),
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
            16: (64, 8, 2, 16),
            32: (32, 8, 2, 32),
            64: (32, 8, 2, 64),
            128: (16, 8, 1, 64),
            256: None,
        },
        'fixed': (32, 64, 32, 8, 1),
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
        'lowrank_apply': (128, 16, 8, 1),
        'lowrank_causal': (16, 32, 8, 1),
        'sparse': {
            16: (64, 8, 2, 16),
            32: (64, 8, 1, 32),
            64: (16, 8, 3, 16),
            128: None,
            256: None,
        },
        'fixed': (32, 32, 16, 8, 1),
    },
}


# Rows where no candidate compiles without spills, (kernel, arch, dtype bytes, head_dim
# tile, bucket tile or 0) -> why (measured with the search's compiles; more in
# reports/kernels/default_search.md); their entries above would have the fewest spill
# bytes. 32 rows before the kernels read q / k rows in head_dim chunks ([rows, head_dim]
# tiles with tf32x3 hi / lo copies, [rows, 256] numerators), one after (sm_90 float32
# head_dim 32, bucket 256: 32 B), none since the sparse entries may carry BLOCK_DK:
SPILLING: dict[tuple[str, int, int, int, int], str] = {}


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
    fields = FIELDS[name][:len(entry)]  # the sparse kernel's BLOCK_DK is optional
    return {k: v for k, v in zip(fields, entry, strict=True) if k != "queries"}


def table_queries(arch: int, shape: KernelShape) -> int | None:
    """The sparse kernel's query block of the table's default for ``shape``, or None."""
    entry = _entry("sparse", arch, shape)
    return None if entry is None else entry[FIELDS["sparse"].index("queries")]


def spilling_reason(name: str, arch: int, shape: KernelShape) -> str | None:
    """Why the row of ``shape`` has no spill-free default (SPILLING), or None."""
    bucket = next_pow2(shape.bucket_size) if name == "sparse" else 0
    return SPILLING.get((name, arch, shape.dtype_bytes, next_pow2(shape.head_dim), bucket))
