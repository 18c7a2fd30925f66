"""Low-rank kernels (feature statistics, kv state, Performer output, causal prefix sums)
against the torch reference with the same projections: float32 and half dtypes, odd sizes,
several tile configs, NaN-filled outputs. Without CUDA the kernels run under
TRITON_INTERPRET=1 (set before any kernel is imported: see sbbench.kernels.testing)."""

from __future__ import annotations

import math

import pytest
import torch
from sbbench.kernels.testing import device_for_tests, kernels_for_tests

kernels = kernels_for_tests()
if not getattr(kernels, "HAVE_TRITON", False):
    pytest.skip("triton is not installed", allow_module_level=True)

from sbbench.kernels.testing import check_close, nan_filled_outputs, tf32_unit_roundoff  # noqa: E402,I001

from sbbench.attention.core import attend, lowrank_sums  # noqa: E402
from sbbench.attention.features import draw_projections, key_features, query_features  # noqa: E402

DEVICE = device_for_tests()


def feature_floor(dtype: torch.dtype) -> float:
    """Floor of the tolerance of float32 intermediates, relative to their scale. Half
    inputs: the projections are W_s = hi + lo in the input dtype (~2^-16 relative, times
    |W_s x| <= ~10 in the exponent); float32 inputs use tf32x3 (about float32)."""
    return 1e-5 if dtype == torch.float32 else 1e-4


def tf32_bound(dtype: torch.dtype, roundings: int, magnitude: torch.Tensor) -> torch.Tensor:
    """Elementwise bound of the tf32 rounding of a float32 sum of products (half inputs,
    Performer path: products in tf32; float32 inputs and Scatterbrain use tf32x3, ~2^-21,
    which the float32 floor covers). Each operand rounding errs by at most u (2^-11 to
    nearest, 2^-10 truncated) relative to the operand; a term that went through
    ``roundings`` of them errs by <= roundings * u of |term|, so the sum errs by <=
    roundings * u * ``magnitude`` = the same sum over |terms|."""
    if dtype == torch.float32:
        return torch.zeros_like(magnitude)
    return roundings * tf32_unit_roundoff() * magnitude


@pytest.fixture(autouse=True)
def _nan_outputs():
    with nan_filled_outputs():
        yield


def make_inputs(seq, head_dim, dtype, *, batch=1, heads=2, n_features=64, seed=0,
                mask=False, head_dim_v=None):
    gen = torch.Generator().manual_seed(seed)
    dv = head_dim_v or head_dim
    q = torch.randn(batch, heads, seq, head_dim, generator=gen)
    k = torch.randn(batch, heads, seq, head_dim, generator=gen)
    v = torch.randn(batch, heads, seq, dv, generator=gen)
    projections = draw_projections(n_features, head_dim, generator=gen, dtype=torch.float64)
    keep = None
    if mask:
        keep = torch.rand(batch, seq, generator=gen) > 0.25
        keep[:, 0] = True
        keep = keep.to(DEVICE)
    q, k, v = (t.to(DEVICE, dtype) for t in (q, k, v))
    return q, k, v, projections.to(DEVICE), keep


def hat_reference(q, k, projections, scale, keep, acc):
    """qh, lq, kh, lk of the torch reference in ``acc`` (float32 or float64)."""
    w = projections.to(acc)
    qh, lq = query_features(q.to(acc), w, scale)
    kh, lk = key_features(k.to(acc), w, scale, keep)
    return qh, lq, kh, lk


def stats(q, k, projections, scale, keep, config=None):
    weights = kernels.scaled_projections(projections, scale, q.device, q.dtype)
    q_shift, q_bias = kernels.feature_stats(q, weights, scale, config)
    k_shift, k_bias = kernels.feature_stats(k, weights, scale, config)
    lk = kernels.key_log_scale(k_shift, k_bias, keep)
    return weights, q_shift, q_bias, k_bias, lk


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16],
                         ids=["fp32", "bf16", "fp16"])
@pytest.mark.parametrize("seq,head_dim,n_features,config", [
    (63, 32, 64, None),
    (200, 48, 98, {"BLOCK_M": 32, "BLOCK_P": 64, "num_warps": 2}),
    (63, 64, 256, {"BLOCK_M": 128, "BLOCK_P": 32, "num_warps": 8}),
], ids=["s63-d32-default", "s200-d48-m49", "s63-d64-m128"])
def test_feature_stats_match_the_reference_log_scales(dtype, seq, head_dim, n_features, config):
    q, k, _, projections, keep = make_inputs(seq, head_dim, dtype, n_features=n_features,
                                             mask=True)
    scale = 1.0 / math.sqrt(head_dim)
    _, q_shift, q_bias, _, lk = stats(q, k, projections, scale, keep, config)
    _, lq64, _, lk64 = hat_reference(q, k, projections, scale, keep, torch.float64)
    _, lq32, _, lk32 = hat_reference(q, k, projections, scale, keep, torch.float32)
    floor = feature_floor(dtype)
    check_close("lq", q_shift - q_bias, lq32, lq64, torch.float32, floor=floor)
    check_close("lk", lk, lk32, lk64, torch.float32, floor=floor)


# (dtype, seq, head_dim, head_dim_v, n_features, mask, state config, apply config, splits)
NONCAUSAL_CASES = [
    pytest.param(torch.float32, 63, 32, 32, 64, False, None, None, None, id="fp32-s63-d32"),
    pytest.param(torch.bfloat16, 200, 64, 64, 128, True,
                 {"BLOCK_N": 32, "BLOCK_P": 16, "num_warps": 2},
                 {"BLOCK_M": 32, "BLOCK_P": 64}, 3, id="bf16-s200-d64-mask-split3"),
    pytest.param(torch.float16, 63, 48, 40, 98, True,
                 {"BLOCK_N": 128, "BLOCK_P": 64, "num_warps": 8},
                 {"BLOCK_M": 128, "BLOCK_P": 16, "num_warps": 8}, 2,
                 id="fp16-s63-d48-dv40-m49-mask"),
    # q rows in two 64-column chunks, v in two 128-column blocks of programs
    pytest.param(torch.bfloat16, 40, 72, 136, 32, True, None, {"BLOCK_M": 16}, None,
                 id="bf16-s40-d72-dv136-mask"),
]


@pytest.mark.parametrize("dtype,seq,head_dim,head_dim_v,n_features,mask,state_cfg,apply_cfg,"
                         "splits", NONCAUSAL_CASES)
def test_performer_state_and_output(dtype, seq, head_dim, head_dim_v, n_features, mask,
                                    state_cfg, apply_cfg, splits):
    q, k, v, projections, keep = make_inputs(seq, head_dim, dtype, n_features=n_features,
                                             mask=mask, head_dim_v=head_dim_v)
    scale = 1.0 / math.sqrt(head_dim)
    weights, q_shift, _, k_bias, lk = stats(q, k, projections, scale, keep)
    kv, ks = kernels.lowrank_state(k, v, weights, k_bias, lk, keep, config=state_cfg,
                                   splits=splits)
    refs = {}
    for acc in (torch.float32, torch.float64):
        _, _, kh, _ = hat_reference(q, k, projections, scale, keep, acc)
        refs[acc] = (kh.transpose(-1, -2) @ v.to(acc), kh.sum(dim=2))
    # kv = kh^T v: kh rounded to tf32 once (v is exact in tf32); ks is a float32 sum
    kv_terms = kh.transpose(-1, -2) @ v.double().abs()
    check_close("kv", kv, refs[torch.float32][0], refs[torch.float64][0], torch.float32,
                floor=feature_floor(dtype) * refs[torch.float64][0].abs().max().item()
                + tf32_bound(dtype, 1, kv_terms))
    check_close("ks", ks, refs[torch.float32][1], refs[torch.float64][1], torch.float32,
                floor=feature_floor(dtype) * refs[torch.float64][1].abs().max().item())

    out = kernels.lowrank_apply(q, weights, q_shift, kv, ks, config=apply_cfg)
    common = dict(scale=scale, projections=projections, hashes=None, bucket_size=None,
                  sparse=None, causal=False, key_padding_mask=keep)
    check_close("out", out, attend(q, k, v, **common),
                attend(q.double(), k.double(), v.double(), **common), dtype)


CAUSAL_CASES = [
    pytest.param(torch.float32, 63, 48, 64, False, None, id="fp32-s63-d48"),
    pytest.param(torch.bfloat16, 200, 32, 98, True, {"BLOCK_N": 32, "BLOCK_P": 16,
                                                     "num_warps": 2},
                 id="bf16-s200-d32-m49-mask-atomic"),
    pytest.param(torch.float16, 63, 64, 64, True, {"BLOCK_N": 64, "BLOCK_P": 64,
                                                   "num_warps": 8},
                 id="fp16-s63-d64-mask-1block"),
]


@pytest.mark.parametrize("dtype,seq,head_dim,n_features,mask,config", CAUSAL_CASES)
def test_causal_prefix_sums_and_output(dtype, seq, head_dim, n_features, mask, config):
    q, k, v, projections, keep = make_inputs(seq, head_dim, dtype, n_features=n_features,
                                             mask=mask)
    scale = 1.0 / math.sqrt(head_dim)
    weights, q_shift, _, k_bias, lk = stats(q, k, projections, scale, keep)
    num, den = kernels.lowrank_causal(q, k, v, weights, q_shift, k_bias, lk, keep,
                                      config=config)
    refs = {}
    for acc in (torch.float32, torch.float64):
        qh, _, kh, _ = hat_reference(q, k, projections, scale, keep, acc)
        refs[acc] = lowrank_sums(qh, kh, v.to(acc), True)
    # num: a term (qh_i . kh_j) v_j passes three tf32 roundings on either path of the
    # kernel (qh, kh and the score inside a chunk; kh, the state and qh across chunks);
    # den: two (qh, kh of the score; the state part is a float32 sum)
    num_terms = lowrank_sums(qh, kh, v.double().abs(), True)[0]
    check_close("num", num, refs[torch.float32][0], refs[torch.float64][0], torch.float32,
                floor=feature_floor(dtype) * refs[torch.float64][0].abs().max().item()
                + tf32_bound(dtype, 3, num_terms))
    check_close("den", den, refs[torch.float32][1], refs[torch.float64][1], torch.float32,
                floor=feature_floor(dtype) * refs[torch.float64][1].abs().max().item()
                + tf32_bound(dtype, 2, refs[torch.float64][1]))
    common = dict(scale=scale, projections=projections, hashes=None, bucket_size=None,
                  sparse=None, causal=True, key_padding_mask=keep)
    out = kernels.scatterbrain_forward(q, k, v, **common)
    check_close("out", out, attend(q, k, v, **common),
                attend(q.double(), k.double(), v.double(), **common), dtype)


def test_strided_inputs_give_the_contiguous_result():
    """q, k, v as [batch, seq, heads, d] views transposed to [batch, heads, seq, d]."""
    gen = torch.Generator().manual_seed(3)
    base = torch.randn(3, 1, 63, 2, 32, generator=gen).to(DEVICE)  # [qkv, b, n, h, d]
    q, k, v = (base[i].transpose(1, 2) for i in range(3))
    assert not q.is_contiguous()
    projections = draw_projections(64, 32, generator=gen, dtype=torch.float64).to(DEVICE)
    common = dict(scale=32 ** -0.5, projections=projections, hashes=None, bucket_size=None,
                  sparse=None, causal=False, key_padding_mask=None)
    strided = kernels.scatterbrain_forward(q, k, v, **common)
    dense = kernels.scatterbrain_forward(q.contiguous(), k.contiguous(), v.contiguous(),
                                         **common)
    torch.testing.assert_close(strided, dense, rtol=1e-6, atol=1e-6)


def test_launchers_reject_bad_configs_and_inputs():
    q, k, v, projections, _ = make_inputs(20, 16, torch.float32, n_features=16)
    weights = kernels.scaled_projections(projections, 0.25, q.device)
    with pytest.raises(ValueError, match="unknown config keys"):
        kernels.feature_stats(q, weights, 0.25, {"BLOCK_Q": 16})
    with pytest.raises(ValueError, match="power of two"):
        kernels.feature_stats(q, weights, 0.25, {"BLOCK_M": 48})
    with pytest.raises(ValueError, match="projections must be contiguous"):
        kernels.feature_stats(q[..., :8], weights, 0.25)
    with pytest.raises(ValueError, match="made for"):
        kernels.feature_stats(q.half(), weights, 0.25)
    with pytest.raises(TypeError, match="float64"):
        kernels.scatterbrain_forward(q.double(), k.double(), v.double(), scale=0.25,
                                     projections=projections, hashes=None, bucket_size=None,
                                     sparse=None, causal=False, key_padding_mask=None)
    with pytest.raises(ValueError, match="unknown kernel names"):
        kernels.scatterbrain_forward(q, k, v, scale=0.25, projections=projections, hashes=None,
                                     bucket_size=None, sparse=None, causal=False,
                                     key_padding_mask=None, configs={"flash": {}})


@pytest.mark.parametrize("dtype,seq,head_dim,head_dim_v,n_features,mask,config,chunks", [
    pytest.param(torch.float32, 201, 40, 40, 98, True, {"BLOCK_N": 16, "BLOCK_P": 32}, 3,
                 id="fp32-s201-d40-m49-mask-3chunks"),
    pytest.param(torch.bfloat16, 77, 24, 24, 64, False, {"BLOCK_N": 16, "BLOCK_P": 16}, 7,
                 id="bf16-s77-d24-7chunks"),
    pytest.param(torch.float16, 100, 32, 32, 32, True, {"BLOCK_N": 32, "BLOCK_P": 16}, 100,
                 id="fp16-s100-d32-chunk-per-block"),
    # q / k rows in two 64-column chunks, v in two 128-column blocks of programs (atomic)
    pytest.param(torch.float16, 40, 72, 136, 64, True, {"BLOCK_N": 16, "BLOCK_P": 16}, 2,
                 id="fp16-s40-d72-dv136-2chunks"),
])
def test_causal_scan_over_chunks_matches_the_reference(dtype, seq, head_dim, head_dim_v,
                                                       n_features, mask, config, chunks):
    """State per chunk, exclusive scan, apply: the prefix sums of the torch reference at odd
    sizes, and the single-chunk kernel's result up to float32 summation order."""
    q, k, v, projections, keep = make_inputs(seq, head_dim, dtype, n_features=n_features,
                                             mask=mask, head_dim_v=head_dim_v)
    scale = 1.0 / math.sqrt(head_dim)
    weights, q_shift, _, k_bias, lk = stats(q, k, projections, scale, keep)
    num, den = kernels.lowrank_causal(q, k, v, weights, q_shift, k_bias, lk, keep,
                                      config=config, chunks=chunks)
    one = kernels.lowrank_causal(q, k, v, weights, q_shift, k_bias, lk, keep, config=config,
                                 chunks=1)
    refs = {}
    for acc in (torch.float32, torch.float64):
        qh, _, kh, _ = hat_reference(q, k, projections, scale, keep, acc)
        refs[acc] = lowrank_sums(qh, kh, v.to(acc), True)
    num_terms = lowrank_sums(qh, kh, v.double().abs(), True)[0]
    check_close("num", num, refs[torch.float32][0], refs[torch.float64][0], torch.float32,
                floor=feature_floor(dtype) * refs[torch.float64][0].abs().max().item()
                + tf32_bound(dtype, 3, num_terms))
    check_close("den", den, refs[torch.float32][1], refs[torch.float64][1], torch.float32,
                floor=feature_floor(dtype) * refs[torch.float64][1].abs().max().item()
                + tf32_bound(dtype, 2, refs[torch.float64][1]))
    torch.testing.assert_close(num, one[0], rtol=1e-5, atol=1e-5 * float(num.abs().max()))
    torch.testing.assert_close(den, one[1], rtol=1e-5, atol=0)


def test_causal_chunks_fill_the_gpu():
    from sbbench.kernels.causal_lowrank import causal_chunks

    from sbbench.core.devices import get_device

    sms = get_device("h100-sxm").sm_count
    assert causal_chunks(16, 8, 512, sms) == 3  # 128 programs -> 384 (2.9 waves)
    assert causal_chunks(1, 4, 512, sms) == 66  # 4 programs -> 264 (2 waves)
    assert causal_chunks(1, 4, 10, sms) == 10  # never more chunks than row blocks
    assert causal_chunks(64, 8, 512, sms) == 1  # already 3.9 waves
    assert causal_chunks(16, 8, 512, None) == 1  # the interpreter: one chunk


def test_static_plans_take_buckets_that_do_not_divide_the_sequence():
    from sbbench.kernels import KernelShape, sparse

    for bucket in (24, 100, 255):
        launch = sparse.plan(KernelShape(bucket_size=bucket, n_hashes=2), sparse.DEFAULT)
        assert launch.args["seq_pad"] % bucket == 0 and launch.args["seq_pad"] >= 4096
