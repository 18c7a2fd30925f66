"""The interpreter modes of sbbench.kernels.testing: tf32 rounding of float32 dots (what
the tensor cores do and the interpreter does not) and a shuffled program order; and the
precision choice they test: Scatterbrain's cancelling products in tf32x3."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sbbench.kernels.testing import kernels_for_tests

kernels = kernels_for_tests()
if not getattr(kernels, "HAVE_TRITON", False):
    pytest.skip("triton is not installed", allow_module_level=True)
if torch.cuda.is_available():
    pytest.skip("interpreter modes: CPU only (a GPU rounds by itself)", allow_module_level=True)

import triton  # noqa: E402
import triton.language as tl  # noqa: E402
from sbbench.kernels import causal_lowrank, lowrank, sparse  # noqa: E402
from sbbench.kernels.testing import (  # noqa: E402
    emulate_tf32,
    emulated_dot,
    nan_filled_outputs,
    program_order,
    round_to_tf32,
)
from test_sparse import run_case  # noqa: E402

FP16, BF16, FP32 = torch.float16, torch.bfloat16, torch.float32


def test_round_to_tf32_keeps_ten_mantissa_bits():
    one = np.float32(1.0)
    x = np.array([1 + 2.0 ** -11, 1 + 2.0 ** -12, 1 + 3 * 2.0 ** -11, -(1 + 2.0 ** -11),
                  np.inf, 3.0], dtype=np.float32)
    assert round_to_tf32(x, "rna").tolist() == [1 + 2.0 ** -10, 1.0, 1 + 2.0 ** -9,
                                                -(1 + 2.0 ** -10), np.inf, 3.0]
    assert round_to_tf32(x, "rz").tolist() == [1.0, 1.0, 1 + 2.0 ** -10, -1.0, np.inf, 3.0]
    rng = np.random.default_rng(0)
    y = rng.standard_normal(10000).astype(np.float32)
    rel = np.abs(round_to_tf32(y) - y) / np.abs(y)
    assert rel.max() <= 2.0 ** -11 and rel.max() > 2.0 ** -12
    assert (round_to_tf32(y).view(np.uint32) & np.uint32(0x1FFF) == 0).all()
    assert round_to_tf32(np.array([one]), "rna")[0] == one
    with pytest.raises(ValueError, match="rounding"):
        round_to_tf32(y, "up")


def test_emulated_dot_errors_are_those_of_the_precision():
    rng = np.random.default_rng(1)
    a = rng.standard_normal((32, 64)).astype(np.float32)
    b = rng.standard_normal((64, 16)).astype(np.float32)
    exact = a.astype(np.float64) @ b.astype(np.float64)
    scale = np.abs(a).astype(np.float64) @ np.abs(b)
    err = {p: (np.abs(emulated_dot(a, b, p) - exact) / scale).max()
           for p in ("tf32", "tf32x3", "ieee")}
    assert 1e-5 < err["tf32"] <= 2 * 2.0 ** -11
    assert err["tf32x3"] < 1e-6 and err["ieee"] < 1e-6


@triton.jit
def _dot_kernel(a_ptr, b_ptr, c_ptr, PREC: tl.constexpr):
    offs = tl.arange(0, 16)
    a = tl.load(a_ptr + offs[:, None] * 16 + offs[None, :])
    b = tl.load(b_ptr + offs[:, None] * 16 + offs[None, :])
    tl.store(c_ptr + offs[:, None] * 16 + offs[None, :], tl.dot(a, b, input_precision=PREC))


@pytest.mark.parametrize("precision", ["tf32", "tf32x3", "ieee"])
def test_interpreted_dots_round_as_asked(precision):
    gen = torch.Generator().manual_seed(2)
    a, b = (torch.randn(16, 16, generator=gen) for _ in range(2))
    plain = torch.empty(16, 16)
    with emulate_tf32("off"):
        _dot_kernel[(1,)](a, b, plain, PREC=precision)
    with emulate_tf32() as seen:
        emulated = torch.empty(16, 16)
        _dot_kernel[(1,)](a, b, emulated, PREC=precision)
    assert seen == [precision]
    expected = torch.from_numpy(emulated_dot(a.numpy(), b.numpy(), precision))
    torch.testing.assert_close(emulated, expected, rtol=0, atol=0)
    if precision == "tf32":
        assert not torch.equal(emulated, plain)  # the interpreter alone does not round
        assert (emulated.double() - a.double() @ b.double()).abs().max() > 1e-4
    # nested modes restore the outer one
    again = torch.empty(16, 16)
    with emulate_tf32("off"):
        with emulate_tf32("rz"):
            pass
        _dot_kernel[(1,)](a, b, again, PREC=precision)
    assert torch.equal(again, plain)


def _all_tf32(monkeypatch):
    """What the kernels did before: tf32 for every float32 product of half inputs."""
    def tf32_only(dtype, residual=False):
        return "tf32x3" if dtype == torch.float32 else "tf32"
    for module in (sparse, lowrank, causal_lowrank):
        monkeypatch.setattr(module, "feature_precision", tf32_only)


# Cases where tf32 for the cancelling products fails under tf32 emulation (worst errors
# 5.7e-3 fp16 LSH, 6.4e-3 fp16 local, 1.2e-2 bf16 causal vs tolerances 1.1e-3 / 1.0e-3 /
# 5.6e-3) and tf32x3 passes with the unchanged dtype tolerance of check_close.
CANCELLING = {
    "fp16-s63-d48-m49-b24-h2-mask": dict(dtype=FP16, seq=63, head_dim=48, n_features=98,
                                         bucket_size=24, sparse="lsh", n_hashes=2, mask=True,
                                         config={"BLOCK_P": 64, "num_warps": 2}),
    "fp16-s256-d64-local": dict(dtype=FP16, seq=256, head_dim=64, n_features=128,
                                bucket_size=64, sparse="local"),
    "bf16-s256-d128-lsh2-causal-mask": dict(dtype=BF16, seq=256, head_dim=128,
                                            n_features=128, bucket_size=64, sparse="lsh",
                                            n_hashes=2, causal=True, mask=True),
}


@pytest.mark.parametrize("case", CANCELLING.values(), ids=CANCELLING.keys())
def test_cancelling_products_need_tf32x3(case, monkeypatch):
    with nan_filled_outputs():
        run_case(**case)  # the kernels as shipped: within tolerance
        _all_tf32(monkeypatch)
        with pytest.raises(AssertionError, match="out of tolerance"):
            run_case(**case)


ORDER_CASES = {
    "lsh3-lowrank-state": dict(dtype=FP32, seq=63, head_dim=32, n_features=32,
                               bucket_size=16, sparse="lsh", n_hashes=3, mask=True),
    "lsh2-causal-bf16": dict(dtype=BF16, seq=100, head_dim=32, n_features=32,
                             bucket_size=16, sparse="lsh", n_hashes=2, causal=True),
    "local-unfused": dict(dtype=FP16, seq=70, head_dim=16, n_features=64, bucket_size=8,
                          sparse="local", fuse_lowrank=False),
}


@pytest.mark.parametrize("case", ORDER_CASES.values(), ids=ORDER_CASES.keys())
def test_program_order_does_not_change_the_output(case):
    """Programs of a launch may run in any order on a GPU: reversed and shuffled orders
    give bitwise the same output (no program reads what another of its launch writes)."""
    import sbbench.kernels.testing as testing

    outs = []
    original = testing.check_close

    def keep_out(name, out, *args, **kwargs):
        outs.append(out.clone())
        return original(name, out, *args, **kwargs)

    import test_sparse

    test_sparse.check_close = keep_out
    try:
        with nan_filled_outputs():
            run_case(**case)
            with program_order("reversed"):
                run_case(**case)
            with program_order("shuffled", seed=3):
                run_case(**case)
    finally:
        test_sparse.check_close = original
    assert len(outs) == 3
    assert torch.equal(outs[0], outs[1]) and torch.equal(outs[0], outs[2])


def test_program_order_really_reorders():
    order = []

    @triton.jit
    def _record(out_ptr, n):
        pid = tl.program_id(0) * 3 + tl.program_id(1)
        tl.store(out_ptr + pid, tl.load(out_ptr + n) + 1)
        tl.store(out_ptr + n, tl.load(out_ptr + n) + 1)

    for mode in (None, "reversed", "shuffled"):
        out = torch.zeros(7, dtype=torch.int32)
        if mode is None:
            _record[(2, 3)](out, 6)
        else:
            with program_order(mode, seed=1):
                _record[(2, 3)](out, 6)
        order.append(out[:6].tolist())
    assert order[0] == [1, 2, 3, 4, 5, 6]
    assert order[1] == [6, 5, 4, 3, 2, 1]
    assert sorted(order[2]) == [1, 2, 3, 4, 5, 6] and order[2] not in order[:2]
    with pytest.raises(ValueError, match="order"):
        with program_order("sideways"):
            pass


def test_causal_scan_is_independent_of_program_order():
    """The chunked causal scan: state pass, torch scan, apply pass; each pass's programs
    in any order give bitwise the same sums (one projection block: no atomics)."""
    gen = torch.Generator().manual_seed(6)
    q, k, v = (torch.randn(1, 2, 90, 16, generator=gen) for _ in range(3))
    projections = torch.randn(16, 16, generator=gen, dtype=torch.float64)
    weights = kernels.scaled_projections(projections, 0.25, q.device)
    q_shift, _ = kernels.feature_stats(q, weights, 0.25)
    k_shift, k_bias = kernels.feature_stats(k, weights, 0.25)
    lk = kernels.key_log_scale(k_shift, k_bias, None)

    def sums():
        return kernels.lowrank_causal(q, k, v, weights, q_shift, k_bias, lk,
                                      config={"BLOCK_N": 16, "BLOCK_P": 16}, chunks=3)

    with nan_filled_outputs():
        plain = sums()
        with program_order("reversed"):
            reversed_ = sums()
        with program_order("shuffled", seed=5):
            shuffled = sums()
    for a, b in ((plain, reversed_), (plain, shuffled)):
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
