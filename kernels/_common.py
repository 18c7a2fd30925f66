"""Pieces every kernel file shares: device limits for ``keep()``, the problem shape a
search space is pruned for, launch records, and small launch-setting helpers.

Nothing here imports triton, so ``keep()`` and the search spaces can be used (e.g. by the
autotuner's planning step) on a machine without it.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

Config = dict[str, int]

# float32's smallest normal number: the clamp of every denominator (as in the torch core)
TINY = torch.finfo(torch.float32).tiny

KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


class HashOrder(Protocol):
    """The LSH hash functions as the kernels see them: they only need the sorted order
    (``sbbench.attention.HashFunctions`` is one; the kernels import nothing from the
    attention package, which imports them)."""

    def order(self, q: torch.Tensor, k: torch.Tensor, bucket_size: int,
              key_padding_mask: torch.Tensor | None = None
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """Two [batch, heads, n_hashes, seq_pad] long tensors of sorted positions."""
        ...


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
    dtype_bytes: 2 for bf16 / fp16 inputs, 4 for fp32.
    """

    head_dim: int = 64
    head_dim_v: int = 64
    n_features: int = 256
    bucket_size: int = 64
    n_hashes: int = 1
    dtype_bytes: int = 2


def next_pow2(x: int, minimum: int = 16) -> int:
    """Tiles are powers of two of at least 16 (the smallest tl.dot operand)."""
    return max(minimum, 1 << max(0, math.ceil(math.log2(max(1, x)))))


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
                   space: Mapping[str, Iterable[int]]) -> Config:
    """default updated by ``config``; unknown keys are an error listing the valid ones."""
    if config is None:
        return dict(default)
    unknown = set(config) - set(space)
    if unknown:
        raise ValueError(f"unknown config keys {sorted(unknown)}; valid: {sorted(space)}")
    merged = dict(default)
    merged.update(config)
    for key in ("num_warps",):
        if merged[key] not in (1, 2, 4, 8, 16):
            raise ValueError(f"num_warps must be a power of two <= 16, got {merged[key]}")
    for key, value in merged.items():
        if key.startswith("BLOCK_") and (value < 16 or value & (value - 1)):
            raise ValueError(f"{key} must be a power of two >= 16, got {value}")
    return merged


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
# element a kernel forgot fails (STYLE.md 6).
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

    plan(shape, config, device): a Launch on meta tensors for a representative problem
    of ``shape`` (used by kernels/static.py to compile it ahead of time).
    """

    name: str
    space: Mapping[str, tuple[int, ...]]
    default: Config
    keep: Callable[[Config, DeviceLimits, KernelShape | None], bool]
    plan: Callable[[KernelShape, Config], Launch]

    def configs(self, limits: DeviceLimits, shape: KernelShape | None = None) -> list[Config]:
        """The search space after ``keep``."""
        return [c for c in expand_space(self.space) if self.keep(c, limits, shape)]
