"""Helpers of the kernel tests (tests/kernels/): interpreter set-up, the dtype-derived
tolerance, NaN-filled outputs, and two interpreter modes that make it behave more like a
GPU: tensor-core rounding of float32 dots (:func:`emulate_tf32`) and a program order
other than the grid's (:func:`program_order`).

Import order matters: ``@triton.jit`` decides at decoration time whether a kernel runs
in the interpreter, so a test module calls :func:`kernels_for_tests` before it touches a
kernel. Without CUDA it sets ``TRITON_INTERPRET=1`` and, if ``sbbench.kernels`` was already
imported in compiled mode (another test module got there first), reloads the kernel
modules so the tests get interpreter kernels. With CUDA the same tests run compiled on
the GPU.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import random
import sys
from collections.abc import Iterator

import numpy as np
import torch

KERNEL_MODULES = ("feature_map", "lowrank", "causal_lowrank", "fixed", "sparse",
                  "scatterbrain")


def device_for_tests() -> torch.device:
    """CUDA when present (compiled kernels), else the CPU (interpreter)."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def kernels_for_tests():
    """``sbbench.kernels`` ready for this machine's tests (see module docstring)."""
    if not torch.cuda.is_available():
        os.environ["TRITON_INTERPRET"] = "1"
        try:
            import triton

            triton.knobs.runtime.interpret = True
        except ImportError:
            pass
    package = importlib.import_module("sbbench.kernels")
    if not getattr(package, "HAVE_TRITON", False):
        return package
    from sbbench.kernels.feature_map import _feature_stats_kernel, interpreted

    if not torch.cuda.is_available() and not interpreted(_feature_stats_kernel):
        for name in KERNEL_MODULES:
            importlib.reload(sys.modules[f"sbbench.kernels.{name}"])
        package = importlib.reload(package)
    return package


@contextlib.contextmanager
def nan_filled_outputs() -> Iterator[None]:
    """Every buffer a kernel must write completely starts as NaN."""
    from sbbench.kernels import _common

    previous = _common.FILL_UNWRITTEN_WITH_NAN
    _common.FILL_UNWRITTEN_WITH_NAN = True
    try:
        yield
    finally:
        _common.FILL_UNWRITTEN_WITH_NAN = previous


# atol per output dtype: units in the last place of the value, plus a floor for values
# near zero. Half outputs get 2 ulp: one for a result that rounds to the other side of a
# rounding boundary than the reference's, one because the kernels feed the tensor cores
# the softmax weights and the features with a 10-bit (fp16 / tf32) or 8-bit (bf16)
# mantissa, as every flash-attention kernel does, while the torch reference keeps them in
# float32. float32 outputs get 4 ulp (different summation order over <= 256 terms).
# The floor is absolute, for unit-variance v (the tests' inputs): an output that is a
# cancelling weighted sum of v is small while the rounding of the weights errs on the scale
# of |v|: 2^-11 (fp16 / tf32 weights) and 2^-9 (bf16 weights), doubled.
ULP_FACTOR = {torch.float32: 4.0, torch.float16: 2.0, torch.bfloat16: 2.0}
ABS_FLOOR = {torch.float32: 1e-5, torch.float16: 1e-3, torch.bfloat16: 4e-3}


def tolerance(ref_dtype: torch.Tensor, ref64: torch.Tensor, dtype: torch.dtype,
              floor: float | None = None) -> torch.Tensor:
    """Elementwise bound 2 |ref_dtype - ref64| + atol, atol = ulp(ref64) +
    a floor (``floor`` overrides the dtype's: intermediate float32 results of half inputs
    computed with tf32 on a GPU need ~1e-3 of their scale)."""
    eps = torch.finfo(dtype).eps * ULP_FACTOR.get(dtype, 1.0)
    base = ABS_FLOOR.get(dtype, 1e-5) if floor is None else floor
    return 2 * (ref_dtype.double() - ref64).abs() + eps * ref64.abs() + base


def check_close(name: str, out: torch.Tensor, ref_dtype: torch.Tensor, ref64: torch.Tensor,
                dtype: torch.dtype, floor: float | None = None) -> float:
    """Assert |out - ref64| <= tolerance elementwise; return the relative RMS error
    (logged by the tests). Unwritten (NaN) elements fail."""
    out64 = out.double()
    ref64 = ref64.double()
    if out.shape != ref64.shape:
        raise AssertionError(f"{name}: shape {tuple(out.shape)} != {tuple(ref64.shape)}")
    if torch.isnan(out64).any():
        raise AssertionError(f"{name}: {int(torch.isnan(out64).sum())} NaN elements "
                             f"(unwritten or invalid) of {out.numel()}")
    err = (out64 - ref64).abs()
    tol = tolerance(ref_dtype, ref64, dtype, floor)
    bad = err > tol
    rel_rms = float((err.square().mean() / ref64.square().mean().clamp_min(1e-300)).sqrt())
    if bad.any():
        worst = int((err / tol).flatten().argmax())
        raise AssertionError(
            f"{name}: {int(bad.sum())} of {out.numel()} elements out of tolerance; worst at "
            f"flat index {worst}: |out - ref64| = {err.flatten()[worst]:.3e} > tol "
            f"{tol.flatten()[worst]:.3e} (|ref_dtype - ref64| = "
            f"{(ref_dtype.double() - ref64).abs().flatten()[worst]:.3e}); rel RMS {rel_rms:.2e}")
    return rel_rms


# ---------------------------------------------------------------- interpreter modes
#
# The interpreter multiplies float32 dot operands in full float32 whatever input precision
# the kernel asks for; a GPU rounds them to tf32 (8-bit exponent, 10-bit mantissa) on the
# tensor cores. emulate_tf32() makes interpreted dots do the same, so a kernel's precision
# choices are tested on the CPU:
#   "tf32":   both operands rounded to tf32, products and sums in float32;
#   "tf32x3": a = a_hi + a_lo (both tf32), a @ b ~ a_hi b_hi + a_hi b_lo + a_lo b_hi (the
#             split triton emits; the dropped a_lo b_lo is ~2^-22 relative);
#   "ieee":   float32 (unchanged).
# Half-precision operands are untouched (fp16 / bf16 values are exact in tf32).
# Rounding: "rna" rounds to nearest, ties away from zero (PTX cvt.rna.tf32.f32, what
# triton emits before tf32 MMAs); "rz" truncates the 13 low mantissa bits (what the tensor
# cores do with unconverted float32 registers), the pessimistic variant.

TF32_DROPPED_BITS = 13  # float32 has 23 mantissa bits, tf32 keeps 10
# the kernel tests' rounding (tests/kernels/conftest.py): rna, rz, or off
TF32_ROUNDING = os.environ.get("SBBENCH_TF32_ROUNDING", "rna")


def tf32_unit_roundoff() -> float:
    """Largest relative rounding error of one tf32 operand in the tests' mode: 2^-11
    rounding to nearest, 2^-10 truncating (assumed on a GPU, the worse of the two)."""
    if torch.cuda.is_available() or TF32_ROUNDING == "rz":
        return 2.0 ** -10
    return 2.0 ** -11


def round_to_tf32(x: np.ndarray, rounding: str = "rna") -> np.ndarray:
    """float32 array -> float32 values representable in tf32 (inf / nan unchanged)."""
    bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    finite = (bits & np.uint32(0x7F800000)) != np.uint32(0x7F800000)
    if rounding == "rna":
        rounded = bits + np.uint32(1 << (TF32_DROPPED_BITS - 1))  # half an ulp, carry up
    elif rounding == "rz":
        rounded = bits
    else:
        raise ValueError(f"rounding must be 'rna' or 'rz', got {rounding!r}")
    rounded = rounded & np.uint32(~((1 << TF32_DROPPED_BITS) - 1) & 0xFFFFFFFF)
    return np.where(finite, rounded, bits).view(np.float32)


def _precision_name(input_precision) -> str:
    return str(getattr(input_precision, "name", input_precision)).lower()


def emulated_dot(a: np.ndarray, b: np.ndarray, input_precision, rounding: str = "rna"
                 ) -> np.ndarray:
    """a @ b in float32 as a tensor core computes it for ``input_precision`` (float32
    operands; see the comment above)."""
    precision = _precision_name(input_precision)
    a = a.astype(np.float32)
    b = b.astype(np.float32)
    if precision == "tf32":
        return np.matmul(round_to_tf32(a, rounding), round_to_tf32(b, rounding),
                         dtype=np.float32)
    if precision == "tf32x3":
        a_hi, b_hi = round_to_tf32(a, rounding), round_to_tf32(b, rounding)
        a_lo = round_to_tf32(a - a_hi, rounding)
        b_lo = round_to_tf32(b - b_hi, rounding)
        small = np.matmul(a_hi, b_lo, dtype=np.float32) + np.matmul(a_lo, b_hi,
                                                                    dtype=np.float32)
        return small + np.matmul(a_hi, b_hi, dtype=np.float32)
    return np.matmul(a, b, dtype=np.float32)


def _builder():
    from triton.runtime import interpreter

    return interpreter, interpreter.interpreter_builder


@contextlib.contextmanager
def emulate_tf32(rounding: str = "rna") -> Iterator[list]:
    """Interpreted tl.dot rounds float32 operands as the kernel's input_precision asks
    (no effect on compiled kernels); rounding "off": the interpreter's own float32 dots.
    Yields a list that collects the precision of every float32 dot run (what the tests
    assert was emulated). Nests: the outer mode is back on exit."""
    if rounding not in ("rna", "rz", "off"):
        raise ValueError(f"rounding must be 'rna', 'rz' or 'off', got {rounding!r}")
    interpreter, builder = _builder()
    original = type(builder).create_dot.__get__(builder)
    previous = builder.__dict__.get("create_dot")
    seen: list[str] = []

    def create_dot(a, b, d, input_precision, max_num_imprecise_acc):
        import triton.language as tl

        if rounding == "off" or a.dtype.scalar != tl.float32 \
                or b.dtype.scalar != tl.float32 or d.data.dtype != np.float32:
            return original(a, b, d, input_precision, max_num_imprecise_acc)
        seen.append(_precision_name(input_precision))
        product = emulated_dot(a.data, b.data, input_precision, rounding)
        return interpreter.TensorHandle(product + d.data, d.dtype.scalar)

    builder.create_dot = create_dot
    try:
        yield seen
    finally:
        _restore(builder, "create_dot", previous)


def _restore(builder, name: str, previous) -> None:
    if previous is None:
        builder.__dict__.pop(name, None)  # back to the class's method
    else:
        setattr(builder, name, previous)


@contextlib.contextmanager
def program_order(order: str = "reversed", seed: int = 0) -> Iterator[None]:
    """Interpreted launches run their programs in another order than the grid's
    lexicographic one: "reversed", or "shuffled" (seeded). A kernel whose programs depend
    on each other's order (a race on a GPU) then gives a different result."""
    if order not in ("reversed", "shuffled"):
        raise ValueError(f"order must be 'reversed' or 'shuffled', got {order!r}")
    _, builder = _builder()
    original = type(builder).set_grid_idx.__get__(builder)
    previous = builder.__dict__.get("set_grid_idx")
    rng = random.Random(seed)
    cache: dict[tuple[int, int, int], list[int]] = {}

    def set_grid_idx(x, y, z):
        nx, ny, nz = builder.grid_dim
        total = nx * ny * nz
        if (nx, ny, nz) not in cache or len(cache[(nx, ny, nz)]) != total:
            perm = list(range(total))[::-1]
            if order == "shuffled":
                rng.shuffle(perm)
            cache[(nx, ny, nz)] = perm
        index = cache[(nx, ny, nz)][(x * ny + y) * nz + z]
        original(index // (ny * nz), (index // nz) % ny, index % nz)

    builder.set_grid_idx = set_grid_idx
    try:
        yield
    finally:
        _restore(builder, "set_grid_idx", previous)


@contextlib.contextmanager
def checked_memory() -> Iterator[set[tuple[int, int]]]:
    """Every interpreted load, store and atomic must hit the storage of a tensor argument
    of its launch: an address outside (a wrapped int32 offset, a wrong stride) raises an
    AssertionError naming it instead of reading or corrupting other memory (or crashing
    the process). Yields the [start, end) byte ranges seen."""
    interpreter, builder = _builder()
    ranges: set[tuple[int, int]] = set()
    cvt = interpreter._implicit_cvt
    saved = {name: builder.__dict__.get(name) for name in
             ("create_masked_load", "create_masked_store", "create_atomic_rmw",
              "create_atomic_cas")}

    def implicit_cvt(arg):
        if hasattr(arg, "untyped_storage"):
            storage = arg.untyped_storage()
            ranges.add((storage.data_ptr(), storage.data_ptr() + storage.nbytes()))
        return cvt(arg)

    def check(ptrs, mask, what):
        addresses = np.asarray(ptrs.data, dtype=np.uint64)
        if mask is not None:
            addresses = addresses[np.broadcast_to(np.asarray(mask.data, dtype=bool),
                                                  addresses.shape)]
        addresses = np.unique(addresses)
        size = max(1, ptrs.get_element_ty().primitive_bitwidth // 8)
        bounds = np.array(sorted(ranges), dtype=np.uint64).reshape(-1, 2)
        inside = (addresses[:, None] >= bounds[None, :, 0]) \
            & (addresses[:, None] + np.uint64(size) <= bounds[None, :, 1])
        outside = addresses[~inside.any(axis=1)]
        if outside.size:
            raise AssertionError(f"out-of-bounds {what} at address {int(outside[0]):#x} "
                                 f"({outside.size} addresses): outside every argument's "
                                 f"storage")

    def wrap(name, ptr_index, mask_index):
        original = getattr(type(builder), name).__get__(builder)

        def checked(*args):
            check(args[ptr_index], args[mask_index] if mask_index is not None else None,
                  name.removeprefix("create_").removeprefix("masked_"))
            return original(*args)
        return checked

    builder.create_masked_load = wrap("create_masked_load", 0, 1)
    builder.create_masked_store = wrap("create_masked_store", 0, 2)
    builder.create_atomic_rmw = wrap("create_atomic_rmw", 1, 3)
    builder.create_atomic_cas = wrap("create_atomic_cas", 0, None)
    interpreter._implicit_cvt = implicit_cvt
    try:
        yield ranges
    finally:
        interpreter._implicit_cvt = cvt
        for name, previous in saved.items():
            _restore(builder, name, previous)
