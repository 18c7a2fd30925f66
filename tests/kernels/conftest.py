"""Every interpreted kernel test runs with tensor-core rounding of float32 dots
(sbbench.kernels.testing.emulate_tf32): the interpreter would otherwise multiply tf32
operands in full float32 and hide the GPU's rounding. SBBENCH_TF32_ROUNDING=rz selects
truncation instead of round-to-nearest; =off disables the emulation."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _tf32_dots():
    try:
        from sbbench.kernels.testing import TF32_ROUNDING, emulate_tf32
    except ImportError:  # no triton: the kernel modules skip themselves
        yield None
        return
    if torch.cuda.is_available() or TF32_ROUNDING == "off":
        yield None
        return
    with emulate_tf32(TF32_ROUNDING) as seen:
        yield seen
