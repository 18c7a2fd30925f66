"""Pieces every kernel file shares: device limits for ``keep()``, the problem shape a
search space is pruned for, launch records, and small launch-setting helpers.

Nothing here imports triton, so ``keep()`` and the search spaces can be used (e.g. by the
autotuner's planning step) on a machine without it.
"""

from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from sbbench.core.errors import UserError

Config = dict[str, int]

# float32's smallest normal number: the clamp of every denominator (as in the torch core)
TINY = torch.finfo(torch.float32).tiny

KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


@dataclass(frozen=True)
class DeviceLimits:
    """What a launch may use on one architecture (per thread block / per thread).

    shared_bytes: the opt-in maximum of shared memory per block; registers_per_thread:
    the ISA maximum; registers_per_sm: the register file.
    """

    arch: int
    shared_bytes: int
    registers_per_thread: int = 255
    registers_per_sm: int = 65536
    max_threads: int = 1024


# CUDA C programming guide, "Technical specifications per compute capability":
# sm_80 (A100): 163 KiB opt-in shared memory per block; sm_90 (H100/H200): 227 KiB.
SM80 = DeviceLimits(arch=80, shared_bytes=163 * 1024)
SM90 = DeviceLimits(arch=90, shared_bytes=227 * 1024)
LIMITS_BY_ARCH = {80: SM80, 90: SM90}


def limits_for(arch: int) -> DeviceLimits:
    """Limits of a compute capability (major * 10 + minor); unknown ones get sm_80's."""
    if arch in LIMITS_BY_ARCH:
        return LIMITS_BY_ARCH[arch]
    older = [a for a in LIMITS_BY_ARCH if a <= arch]
    return LIMITS_BY_ARCH[max(older)] if older else SM80


@dataclass(frozen=True)
class KernelShape:
    """The problem dimensions a kernel's tiles depend on (not batch, heads or seq).

    head_dim / head_dim_v: of q, k and of v; n_features: length of phi(x) (2 x the
    projections); bucket_size: queries (and keys) per bucket; n_hashes: hash rounds;
    dtype_bytes: 2 for bf16 / fp16 inputs, 4 for fp32; half: which half-precision dtype
    a static-compile plan uses for 2-byte inputs ("bfloat16" or "float16").
    """

    head_dim: int = 64
    head_dim_v: int = 64
    n_features: int = 256
    bucket_size: int = 64
    n_hashes: int = 1
    dtype_bytes: int = 2
    half: str = "bfloat16"

    @property
    def dtype(self) -> torch.dtype:
        """The input dtype a static-compile plan uses."""
        return torch.float32 if self.dtype_bytes == 4 else getattr(torch, self.half)


def next_pow2(x: int, minimum: int = 16) -> int:
    """Tiles are powers of two of at least 16 (the smallest tl.dot operand)."""
    return max(minimum, 1 << max(0, math.ceil(math.log2(max(1, x)))))


def head_chunks(head_dim: int, dtype_bytes: int, block_dk: int | None = None
                ) -> dict[str, int | bool]:
    """The kernels' BLOCK_DK, the columns of q / k rows they read and multiply at a time:
    next_pow2(head_dim) up to 64 in half precision, 32 in float32 (whose tf32x3 products
    also hold hi / lo copies of the operands), or ``block_dk`` (a config's BLOCK_DK: a power
    of two in 16..next_pow2(head_dim), else a one-line UserError); and CHUNKED, whether
    head_dim takes more than one such chunk. Chunked, the kernels loop over head_dim, so no
    [rows, head_dim] tile has to live in registers (those spilled:
    reports/kernels/static_resources.md); else they load the rows once, as a whole."""
    whole = next_pow2(head_dim)
    if block_dk is None:
        block_dk = min(whole, 32 if dtype_bytes == 4 else 64)
    elif not 16 <= block_dk <= whole or block_dk & (block_dk - 1):
        raise UserError(f"BLOCK_DK must be a power of two in 16..{whole} for head_dim "
                        f"{head_dim}, got {block_dk}")
    return dict(BLOCK_DK=block_dk, CHUNKED=block_dk < whole)


def value_chunk(head_dim_v: int) -> int:
    """Columns of v (and of the numerators) one program of the low-rank kernels computes
    (their BLOCK_DV): at most 128, more columns run in more programs (each re-projecting
    its rows); [rows, 256] float32 numerators with [features, 256] state tiles spilled."""
    return min(next_pow2(head_dim_v), 128)


def expand_space(space: Mapping[str, Iterable[int]]) -> list[Config]:
    """Cartesian product of a search space {name: values} as a list of configs."""
    names = list(space)
    return [dict(zip(names, values, strict=True))
            for values in itertools.product(*(space[k] for k in names))]


def register_estimate(tile_elements: int, num_warps: int) -> int:
    """Rough 32-bit registers per thread that live fp32 tiles need (spread over the
    threads of the block), plus ~40 for addresses and loop state. Only a first filter:
    the static compile (kernels/static.py) measures the real count."""
    return tile_elements // (32 * num_warps) + 40


# keep() drops a config when register_estimate exceeds the per-thread maximum by this
# factor. Calibrated on sm_80 / sm_90 compiles (reports/kernels/static_resources.md): at
# 1.2 x 255 the configs it keeps compile with few or no spills and the ones it drops
# spill hundreds of bytes; the static compile then measures the borderline ones.
REGISTER_SLACK = 1.2


def fits_registers(live_elements: int, num_warps: int, limits: DeviceLimits) -> bool:
    """Whether ~live_elements fp32 values per block plausibly fit the register file."""
    return register_estimate(live_elements, num_warps) <= REGISTER_SLACK * \
        limits.registers_per_thread


def resolve_config(config: Mapping[str, int] | None, default: Config,
                   space: Mapping[str, Iterable[int]], optional: Iterable[str] = ()) -> Config:
    """default updated by ``config``; keys neither in the space nor ``optional`` (keys a
    config may carry that the space does not enumerate) are a one-line UserError."""
    if config is None:
        return dict(default)
    valid = sorted({*space, *optional})
    unknown = set(config) - set(valid)
    if unknown:
        raise UserError(f"unknown config keys {sorted(unknown)}; valid: {valid}")
    merged = dict(default)
    merged.update(config)
    if merged["num_warps"] not in (1, 2, 4, 8, 16):
        raise UserError(f"num_warps must be a power of two <= 16, got {merged['num_warps']}")
    for key, value in merged.items():
        if key.startswith("BLOCK_") and (value < 16 or value & (value - 1)):
            raise UserError(f"{key} must be a power of two >= 16, got {value}")
    return merged


def launch_limits(device: torch.device) -> DeviceLimits | None:
    """The limits a launch on ``device`` must fit: its compute capability's on CUDA; None
    on the CPU (the interpreter has no registers or shared memory to run out of)."""
    if device.type != "cuda":
        return None
    major, minor = torch.cuda.get_device_capability(device)
    return limits_for(10 * major + minor)


def _distance(a: Config, b: Config) -> float:
    """How far two configs are: summed |log2| ratio of their values."""
    return sum(abs(math.log2(a[key]) - math.log2(b[key])) for key in a)


def nearest_kept(wanted: Config, space: Mapping[str, Iterable[int]], keep,
                 limits: DeviceLimits, shape: KernelShape) -> Config | None:
    """The config ``keep`` leaves that is nearest to ``wanted`` (fewest and smallest
    changes; ties: the space's order), or None if keep leaves none."""
    kept = [c for c in expand_space(space) if keep(c, limits, shape)]
    return min(kept, key=lambda c: _distance(c, wanted)) if kept else None


_WARNED: set[tuple] = set()


def choose_config(name: str, config: Mapping[str, int] | None, default: Config,
                  space: Mapping[str, Iterable[int]], keep, limits: DeviceLimits | None,
                  shape: KernelShape, optional: Iterable[str] = ()) -> Config:
    """The config a launch runs: ``config`` over the kernel's default, checked by
    ``keep`` for the device's limits, dtype and head_dim (``shape``). A config keep drops
    is replaced by the nearest one it keeps, with a one-line warning (once per case);
    the default is the one for this architecture and shape (the spill-free table entry,
    else the static default moved to the nearest kept config: :func:`default_for`).
    Without limits (CPU) the SM80 limits pick the default and the config is only
    validated. ``optional`` keys (resolve_config) stay as given; the nearest kept config
    has none of them."""
    base = default_for(default, space, keep, limits or LIMITS_BY_ARCH[80], shape, name)
    wanted = resolve_config(config, base, space, optional)
    if limits is None or keep(wanted, limits, shape):
        return wanted
    chosen = nearest_kept(wanted, space, keep, limits, shape)
    if chosen is None:
        raise ValueError(no_config_message(name, limits, shape))
    key = (name, tuple(sorted(wanted.items())), limits.arch, shape)
    if key not in _WARNED:
        _WARNED.add(key)
        warnings.warn(f"{name}: config {wanted} does not fit sm_{limits.arch} for "
                      f"{_describe(shape)} (keep()); running {chosen}", stacklevel=3)
    return chosen


def default_for(default: Config, space: Mapping[str, Iterable[int]], keep,
                limits: DeviceLimits, shape: KernelShape, name: str = "") -> Config:
    """The kernel's default for one shape: the spill-free default of the table
    (kernels/default_table.py) for the architecture and shape where it has one and keep
    leaves it; else the static default if keep leaves it, else the nearest config it
    keeps (a default tuned at head_dim 64 in half precision may not fit at float32
    head_dim 256 or bucket 256)."""
    from sbbench.kernels.default_table import table_default

    chosen = table_default(name, limits.arch, shape) if name else None
    if chosen is not None and keep(chosen, limits, shape):
        return chosen
    if keep(default, limits, shape):
        return dict(default)
    return nearest_kept(default, space, keep, limits, shape) or dict(default)


def no_config_message(name: str, limits: DeviceLimits, shape: KernelShape) -> str:
    """The one-line refusal of a launch for which keep() leaves no config."""
    return (f"{name}: no config of the search space fits sm_{limits.arch} for "
            f"{_describe(shape)}; use a smaller bucket_size or head_dim, or backend='torch'")


def _describe(shape: KernelShape) -> str:
    dtype = "float32" if shape.dtype_bytes == 4 else "half"
    return (f"{dtype} head_dim {shape.head_dim}/{shape.head_dim_v}, "
            f"{shape.n_features} features, bucket {shape.bucket_size}")


# float32 inputs above this head_dim are refused: every feature_stats config then spilled
# kilobytes per thread (tf32x3 products with K = 256 fp32 operands; sm_80: 5,776-50,064 B
# of stack over its 36 configs, reports/kernels/static_resources.md), and the other
# kernels multiply the same operands (measured before the kernels read rows in head_dim
# chunks, head_chunks: not compiled since)
MAX_FLOAT32_HEAD_DIM = 128
MAX_HEAD_DIM = 256


def supports(dtype: torch.dtype, head_dim: int, head_dim_v: int | None = None) -> bool:
    """Whether the kernels take inputs of this dtype and head size (else use the torch
    path): float32, float16, bfloat16; head_dim <= 256 (<= 128 in float32)."""
    largest = max(head_dim, head_dim_v or head_dim)
    if dtype not in KERNEL_DTYPES or largest > MAX_HEAD_DIM:
        return False
    return dtype != torch.float32 or largest <= MAX_FLOAT32_HEAD_DIM


def check_kernel_inputs(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    """q, k: [batch, heads, seq, head_dim]; v: [batch, heads, seq, head_dim_v]."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.dim() != 4:
            raise ValueError(f"{name} must be [batch, heads, seq, head_dim], got {tuple(t.shape)}")
        if t.dtype not in KERNEL_DTYPES:
            raise TypeError(f"the triton kernels take float32, float16 or bfloat16; "
                            f"{name} is {t.dtype} (use backend='torch' for float64)")
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"q, k, v must share one dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if q.shape != k.shape or v.shape[:3] != q.shape[:3]:
        raise ValueError(f"shapes do not match: q {tuple(q.shape)}, k {tuple(k.shape)}, "
                         f"v {tuple(v.shape)}")
    if not (q.device == k.device == v.device):
        raise ValueError(f"q, k, v must be on one device, got {q.device}, {k.device}, {v.device}")
    if not supports(q.dtype, q.shape[-1], v.shape[-1]):
        raise ValueError(unsupported_message(q.dtype, q.shape[-1], v.shape[-1]))


def unsupported_message(dtype: torch.dtype, head_dim: int, head_dim_v: int) -> str:
    """Why the kernels do not take this dtype and head size (:func:`supports` is False)."""
    name = str(dtype).removeprefix("torch.")
    if dtype not in KERNEL_DTYPES:
        return (f"the triton kernels take float32, float16 or bfloat16, not {name} (use "
                f"backend='torch')")
    limit = MAX_FLOAT32_HEAD_DIM if dtype == torch.float32 else MAX_HEAD_DIM
    return (f"the triton kernels take {name} head_dim <= {limit}, got {head_dim} / "
            f"{head_dim_v}; use float16 / bfloat16 inputs or backend='torch'")


def feature_precision(dtype: torch.dtype, residual: bool = False) -> str:
    """tl.dot input precision of the float32 products (features, low-rank sums).

    float32 inputs: "tf32x3" (three tf32 products, about float32 accuracy on tensor
    cores). Half inputs: "tf32" (10-bit mantissa, relative rounding 2^-11 of each operand)
    where the result is a positively weighted average (Performer: the error stays ~2^-11
    of |v|), but "tf32x3" when ``residual``: Scatterbrain subtracts the low-rank estimate
    of the bucketed pairs from their exact weights, and the difference can be far smaller
    than the terms, so a 2^-11 rounding of the terms becomes a large error of the output
    (under tf32 emulation, fp16 scatterbrain errors reach 1.3e-2 for a 1e-3 tolerance).
    """
    return "tf32x3" if dtype == torch.float32 or residual else "tf32"


def element_span(t: torch.Tensor) -> int:
    """1 + the largest element offset of ``t`` from its first element."""
    return 1 + sum((size - 1) * abs(stride)
                   for size, stride in zip(t.shape, t.stride(), strict=True) if size > 0)


# Kernels compute element offsets (pid * seq * d, position * stride) in int32 unless their
# INT64 constexpr is set, which widens the program ids and positions (so every product
# with them is int64). Valid lanes stay inside their tensor's span; masked lanes (tile
# padding, positions in padded buckets) reach at most about twice it, and are never
# dereferenced, but the margin keeps even their addresses exact.
INT32_OFFSET_LIMIT = 2 ** 31 // 2


def needs_int64(values: Iterable[Any]) -> bool:
    """Whether some tensor among ``values`` (a launch's arguments) spans enough elements
    that int32 offsets could wrap: 64-bit offsets then (they cost registers, so only
    then)."""
    return any(isinstance(v, torch.Tensor) and element_span(v) > INT32_OFFSET_LIMIT
               for v in values)


# Tests set this to fill every buffer a kernel must write completely with NaN, so an
# element a kernel forgot fails (an unwritten element is NaN, not a plausible stale value).
FILL_UNWRITTEN_WITH_NAN = False


def empty(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """torch.empty for kernel outputs (NaN-filled under FILL_UNWRITTEN_WITH_NAN)."""
    if FILL_UNWRITTEN_WITH_NAN:
        return torch.full(shape, float("nan"), dtype=dtype, device=device)
    return torch.empty(shape, dtype=dtype, device=device)


@dataclass
class Launch:
    """One kernel launch, fully described: the static compiler and the launcher share it,
    so the resources reported are those of the kernel that runs."""

    kernel: Any  # a triton JITFunction (or the interpreter's InterpretedFunction)
    grid: tuple[int, ...]
    args: dict[str, Any]  # every kernel argument by name, constexprs included
    num_warps: int
    num_stages: int
    outputs: tuple[torch.Tensor, ...] = field(default=())

    def run(self) -> tuple[torch.Tensor, ...]:
        self.kernel[self.grid](**self.args, num_warps=self.num_warps,
                               num_stages=self.num_stages)
        return self.outputs


@dataclass(frozen=True)
class KernelSpec:
    """A kernel's search space and pruning, for the autotuner and the static report.

    plan(shape, config, limits=None): a Launch on meta tensors for a representative
    problem of ``shape`` on the architecture of ``limits`` (sm_80 if None), used by
    kernels/static.py to compile it ahead of time.
    """

    name: str
    space: Mapping[str, tuple[int, ...]]
    default: Config
    keep: Callable[[Config, DeviceLimits, KernelShape | None], bool]
    plan: Callable[..., Launch]
    optional: tuple[str, ...] = ()  # config keys outside the space (resolve_config)

    def configs(self, limits: DeviceLimits, shape: KernelShape | None = None) -> list[Config]:
        """The search space after ``keep``."""
        return [c for c in expand_space(self.space) if self.keep(c, limits, shape)]

    def default_for(self, limits: DeviceLimits, shape: KernelShape) -> Config:
        """The default config for one shape (:func:`default_for`)."""
        return default_for(self.default, self.space, self.keep, limits, shape, self.name)

    def choose(self, config: Mapping[str, int] | None, limits: DeviceLimits | None,
               shape: KernelShape) -> Config:
        """The config a launch runs (:func:`choose_config`)."""
        return choose_config(self.name, config, self.default, self.space, self.keep, limits,
                             shape, self.optional)


MAX_GRID_YZ = 65535  # CUDA's limit on grid dimensions y and z (x: 2^31 - 1)


def fold_grid(x: int, tiles: int) -> tuple[tuple[int, int, int], int]:
    """Grid for x * tiles programs when ``tiles`` may exceed 65,535: tiles run on axes 1
    and 2 (tile = program_id(1) + program_id(2) * tiles_y) -> (grid, tiles_y). Programs
    past the last tile (at most tiles_y - 1) must do nothing. More than 65,535^2 tiles is
    refused."""
    if tiles > MAX_GRID_YZ * MAX_GRID_YZ:
        raise ValueError(f"{tiles} tiles exceed the CUDA grid ({MAX_GRID_YZ}^2 on axes "
                         f"y and z): use a larger bucket_size")
    tiles_y = min(max(tiles, 1), MAX_GRID_YZ)
    return (x, tiles_y, -(-tiles // tiles_y)), tiles_y
