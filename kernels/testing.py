"""Helpers of the kernel tests (tests/test_kernels_*.py): interpreter set-up, the
dtype-derived tolerance and NaN-filled outputs.

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
import sys
from collections.abc import Iterator

import torch

KERNEL_MODULES = ("feature_map", "lowrank", "causal_lowrank", "sparse", "scatterbrain")


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
    """Every buffer a kernel must write completely starts as NaN (STYLE.md 6)."""
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
    """Elementwise bound 2 |ref_dtype - ref64| + atol (STYLE.md 5), atol = ulp(ref64) +
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
