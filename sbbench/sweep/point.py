"""One measured sweep point (``measure_point``; a predicted one: ``point_model``).

A measured point, in this order (docs/measurement.md):

1. peak memory. CPU: peak RSS of a child process running only that point
   (``sbbench.measure.memory``), while this process checks accuracy. GPU: the CUDA
   allocator's peak over one call.
2. accuracy against exact attention on the same inputs (float64 reference, float32 on
   large sizes), over every seed; a NaN/Inf output fails the point, and it gets no time;
3. time, through ``timing.time_fn`` on a zero-argument closure: inputs, random
   projections and hash functions are drawn outside it (the row's ``timed_region``);
4. energy through the telemetry observer (the null observer on CPU says why);
5. FLOPs, bytes, working set and roofline time from the cost model.

Before anything is allocated, a point that cannot run is recorded without running it: a
triton point the kernels refuse on the device (``guards.kernel_refusal``: skipped, in the
launch's words) and a point whose modeled working set exceeds the device's memory
(``guards.fit_refusal``: oom). A point that fails (exception, OOM, NaN) becomes a row
with its status and reason: ``measure_point`` never raises for a failure of the point
itself.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from sbbench.attention import exact_attention
from sbbench.attention.backends import triton_available
from sbbench.core.provenance import now_utc
from sbbench.core.record import Record
from sbbench.core.types import Problem
from sbbench.measure import calls, costmodel
from sbbench.measure.accuracy import relative_error, relative_error_per_slice
from sbbench.measure.calibration import calibration_call, sweep_cpu_clock
from sbbench.measure.inputs import make_qkv
from sbbench.measure.memory import (
    MeasurementFailed,
    MemoryServer,
    cuda_memory_profile,
    describe,
    is_oom,
)
from sbbench.measure.telemetry import NullObserver, measure_energy
from sbbench.measure.timing import time_fn
from sbbench.sweep import guards
from sbbench.sweep.grid import Point
from sbbench.sweep.point_memory import add_memory as _add_memory
from sbbench.sweep.point_memory import memory_job

if TYPE_CHECKING:  # the runner imports this module
    from sbbench.sweep.runner import Settings

# Above these sizes (batch * heads * seq_len^2 elements) the float64 reference and the
# dense attention matrices stop being cheap: fall back to a float32 reference / skip the
# attention-matrix error.
FLOAT64_REFERENCE_MAX = 1 << 26
ATTN_MATRIX_MAX = 1 << 22

TIMED_EXACT = "exact_attention (SDPA) call only; inputs made outside the timed closure"
TIMED_APPROX = ("attention call incl. hashing, sorting and feature maps; inputs, random "
                "projections and hash functions drawn outside the timed closure")

# A point that cannot be measured further: status and reason for its row.
PointFailed = MeasurementFailed

def base_record(point: Point, settings: Settings, source: str) -> Record:
    """A Record holding the point's key and nothing measured yet."""
    p, b = point.problem, point.budget
    return Record(
        device=settings.device, method=b.method, backend=point.backend,
        seq_len=p.seq_len, head_dim=p.head_dim, batch=p.batch, heads=p.heads,
        dtype=p.dtype, causal=p.causal, n_features=b.n_features,
        bucket_size=b.bucket_size, n_hashes=b.n_hashes, sparse=b.sparse or "", sink=b.sink,
        window=b.window, kernel_config=point.kernel_config,
        inputs=settings.inputs_label, code_version=settings.code_version, source=source,
        git_revision=settings.git_revision, timestamp=now_utc(),
    )


def make_call(point: Point, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
              generator: torch.Generator) -> Callable[..., object]:
    """``call(return_weights=False)`` running the point's method on q, k, v; the
    randomness is drawn once, outside the closure (``measure.calls.make_call``)."""
    return calls.make_call(point.budget, q, k, v, generator=generator,
                           causal=point.problem.causal, backend=point.backend)


def inputs_for(problem: Problem, settings: Settings, seed: int):
    """Seeded q, k, v of ``problem`` on the sweep's device."""
    return make_qkv(problem, seed=seed, kind=settings.input_kind,
                    temperature=settings.temperature, device=settings.torch_device)


def prepare(point: Point, settings: Settings, seed: int, inputs=None):
    """Seeded inputs (or the given ``inputs``) and the method's closure: (q, k, v, call)."""
    q, k, v = inputs if inputs is not None else inputs_for(point.problem, settings, seed)
    generator = torch.Generator(device="cpu").manual_seed(seed)
    return q, k, v, make_call(point, q, k, v, generator)


@dataclass
class Reference:
    """Exact attention on one shape and seed: the inputs and the reference outputs."""

    inputs: tuple
    out: torch.Tensor  # in ``dtype``
    weights: torch.Tensor | None  # dense [batch, heads, seq, seq], where it fits
    dtype: torch.dtype


class References:
    """Exact references of the current shape, reused by every method of that shape.

    The grid orders points by shape, so one shape is held at a time (a new shape drops
    the old one). On a GPU nothing is cached: recomputing is cheap there, and cached
    float64 tensors would take device memory from the points being measured.
    """

    def __init__(self, settings: Settings):
        self.settings = settings
        self.enabled = settings.torch_device == "cpu"
        self._problem: Problem | None = None
        self._by_seed: dict[int, Reference] = {}
        self._calibration = None

    def calibration(self):
        """The calibration closure paired with every CPU sample (None when turned off)."""
        if self._calibration is None and self.settings.paired_reference:
            self._calibration = calibration_call()
        return self._calibration

    def get(self, problem: Problem, seed: int) -> Reference:
        if problem != self._problem:
            self._problem, self._by_seed = problem, {}
        if seed in self._by_seed:
            return self._by_seed[seed]
        reference = compute_reference(problem, self.settings, seed)
        if self.enabled:
            self._by_seed[seed] = reference
        return reference

    def cached_inputs(self, problem: Problem, seed: int) -> tuple | None:
        if problem == self._problem and seed in self._by_seed:
            return self._by_seed[seed].inputs
        return None


def reference_dtype(problem: Problem) -> torch.dtype:
    elements = problem.batch * problem.heads * problem.seq_len * problem.seq_len
    return torch.float64 if elements <= FLOAT64_REFERENCE_MAX else torch.float32


def matrix_fits(problem: Problem) -> bool:
    return problem.batch * problem.heads * problem.seq_len * problem.seq_len <= ATTN_MATRIX_MAX


def compute_reference(problem: Problem, settings: Settings, seed: int) -> Reference:
    q, k, v = inputs_for(problem, settings, seed)
    dtype = reference_dtype(problem)
    qr, kr, vr = (x.to(dtype) for x in (q, k, v))
    with torch.no_grad():
        if matrix_fits(problem):
            out, weights = exact_attention(qr, kr, vr, causal=problem.causal,
                                           return_weights=True)
        else:
            out, weights = exact_attention(qr, kr, vr, causal=problem.causal), None
    return Reference((q, k, v), out, weights, dtype)


def check_accuracy(point: Point, settings: Settings,
                   references: References | None = None) -> dict:
    """Output (and attention-matrix) relative error against exact attention, per seed.

    The reference is exact attention in float64 (float32 above FLOAT64_REFERENCE_MAX
    elements) on the same inputs; the attention-matrix error is computed where the dense
    matrices fit (ATTN_MATRIX_MAX elements) and on the torch backend.
    """
    references = references if references is not None else References(settings)
    out_errors, attn_errors, head_errors = [], [], []
    dtype = None
    for seed in settings.seeds:
        reference = references.get(point.problem, seed)
        dtype = reference.dtype
        _, _, _, call = prepare(point, settings, seed, inputs=reference.inputs)
        with torch.no_grad():
            out = call()
            if not bool(torch.isfinite(out).all()):
                raise PointFailed("failed", f"non-finite output (NaN/Inf) with seed {seed}; "
                                            f"not timed")
            out_errors.append(relative_error(out, reference.out))
            # [batch, heads] -> [heads]: each head's error, batch entries averaged
            head_errors.append(relative_error_per_slice(out, reference.out).mean(dim=0))
            if reference.weights is not None and point.backend == "torch":
                _, weights = call(return_weights=True)
                attn_errors.append(relative_error(weights, reference.weights))
                del weights
        del out, reference
    per_head = torch.stack(head_errors).mean(dim=0)  # [heads], seeds averaged
    return dict(
        error_mean=statistics.fmean(out_errors),
        error_heads=[float(x) for x in per_head],
        error_p50=float(torch.quantile(per_head, 0.5)),
        error_p90=float(torch.quantile(per_head, 0.9)),
        error_max=float(per_head.max()),
        error_std=statistics.pstdev(out_errors) if len(out_errors) > 1 else 0.0,
        attn_error_mean=statistics.fmean(attn_errors) if attn_errors else None,
        attn_error_std=(statistics.pstdev(attn_errors) if len(attn_errors) > 1 else 0.0)
        if attn_errors else None,
        reference_dtype=str(dtype).removeprefix("torch."),
        n_seeds=len(out_errors),
    )


def add_model(record: Record, point: Point, spec) -> None:
    """Cost-model columns (FLOPs, bytes, working set, roofline time)."""
    p, b = point.problem, point.budget
    record.flops = float(costmodel.flops(p, b))
    record.bytes_moved = float(costmodel.bytes_moved(p, b))
    record.working_set_bytes = int(costmodel.working_set_bytes(p, b))
    roofline_s = costmodel.roofline_time_s(p, b, spec) if spec is not None else None
    record.roofline_time_ms = roofline_s * 1e3 if roofline_s is not None else None


def skip_reason(point: Point, settings: Settings) -> str | None:
    if point.backend == "triton":
        if settings.torch_device == "cpu":
            return "triton backend needs a CUDA device (use the torch backend on CPU)"
        if not triton_available():
            return "triton backend unavailable (install sbbench[triton])"
    return None


def measure_point(point: Point, settings: Settings, spec=None, observer=None, *,
                  exact_ms: float | None = None, state_fn: Callable[[], dict] | None = None,
                  versions: dict | None = None,
                  memory_server: MemoryServer | None = None,
                  references: References | None = None) -> Record:
    """Measure one point; never raises for a failure of the point itself (the row says).

    spec: the DeviceSpec (roofline columns); observer: telemetry.make_observer(...);
    exact_ms: exact attention's median on this shape (speedup column); state_fn: reads
    the device state; memory_server: the CPU memory server of the sweep (a temporary one
    is started if None); references: exact references of the current shape, shared by
    the points of a sweep.
    """
    record = base_record(point, settings, "measured")
    record.versions = dict(versions or {})
    try:
        add_model(record, point, spec)
    except Exception as err:  # the model is a column, not a reason to lose the point
        record.reason = f"cost model failed: {describe(err)}"
    if spec is not None:
        record.device_state["profile"] = profile_info(spec)
    reason = skip_reason(point, settings)
    if reason:
        record.status, record.reason = "skipped", reason
        return record
    reason = guards.kernel_refusal(point, spec)
    if reason:  # the launch would refuse it in the same words
        record.status, record.reason = "skipped", reason
        return record
    reason = guards.fit_refusal(point, guards.device_memory_bytes(
        settings.torch_device, getattr(spec, "mem_bytes", None)))
    if reason:  # nothing is allocated for a point that cannot fit
        record.status, record.reason = "oom", reason
        return record
    child = own_server = None
    try:
        if state_fn is not None:
            record.device_state["before"] = state_fn()
        if settings.measure_memory and settings.torch_device == "cpu":
            if memory_server is None:
                memory_server = own_server = MemoryServer()
            child = memory_server.start(memory_job(point, settings))  # runs meanwhile
        references = references if references is not None else References(settings)
        for name, value in check_accuracy(point, settings, references).items():
            setattr(record, name, value)
        seed = settings.seeds[0]
        q, k, v, call = prepare(point, settings, seed,
                                inputs=references.cached_inputs(point.problem, seed))
        fn = torch.no_grad()(lambda: call())
        if child is not None:
            _add_memory(record, child.result())
            child = None
        elif settings.measure_memory:
            baseline, peak = cuda_memory_profile(fn, settings.torch_device)
            record.peak_memory_bytes, record.baseline_memory_bytes = int(peak), int(baseline)
            record.peak_memory_delta_bytes = int(peak) - int(baseline)
            record.memory_method = "cuda_max_memory_allocated"
        cpu = settings.torch_device == "cpu"
        timing = time_fn(fn, device=settings.torch_device, warmup_ms=settings.warmup_ms,
                         rep_ms=settings.rep_ms, min_samples=settings.min_samples,
                         cpu_clock=sweep_cpu_clock(settings.cpu_clock, torch.get_num_threads())
                         if cpu else "perf_counter_ns",
                         reference=references.calibration() if cpu else None)
        record.timed_region = TIMED_EXACT if point.budget.method == "exact" else TIMED_APPROX
        record.time_samples_ms = [float(s) for s in timing.samples_ms]
        record.reference_samples_ms = [float(s) for s in timing.reference_samples_ms]
        record.time_median_ms = float(timing.median_ms)
        record.time_p20_ms, record.time_p80_ms = float(timing.p20_ms), float(timing.p80_ms)
        record.n_warmup, record.timer = int(timing.n_warmup), str(timing.timer)
        record.first_call_ms = getattr(timing, "first_call_ms", None)
        record.l2_flushed = bool(timing.l2_flushed)
        record.noise = ",".join(guards.noise_flags(record.time_p20_ms, record.time_p80_ms,
                                                   settings.torch_device))
        add_rates(record, exact_ms)
        if settings.measure_energy and observer is not None:
            _add_energy(record, fn, observer)
        if state_fn is not None:
            record.device_state["after"] = state_fn()
    except PointFailed as failure:
        record.status, record.reason = failure.status, failure.reason
    except Exception as err:
        record.status = "oom" if is_oom(err) else "failed"
        record.reason = describe(err)
        if settings.torch_device.startswith("cuda"):
            torch.cuda.empty_cache()
    finally:
        if child is not None:
            child.cancel()
        if own_server is not None:
            own_server.close()
    return record


def profile_info(spec) -> dict:
    """What the roofline columns were computed from (the CPU's peaks are measured)."""
    return {"name": spec.name, "label": getattr(spec, "label", ""),
            "source": getattr(spec, "source", ""), "peak_flops": dict(spec.peak_flops),
            "mem_bandwidth_bytes_per_s": spec.mem_bandwidth_bytes_per_s}


def add_rates(record: Record, exact_ms: float | None) -> None:
    seconds = record.time_median_ms / 1e3
    if seconds <= 0:
        return
    if record.flops is not None:
        record.achieved_flops_per_s = record.flops / seconds
    if record.bytes_moved is not None:
        record.achieved_bytes_per_s = record.bytes_moved / seconds
    if record.roofline_time_ms is not None:
        record.roofline_fraction = record.roofline_time_ms / record.time_median_ms
    if record.method == "exact":
        record.speedup_vs_exact = 1.0
    elif exact_ms is not None:
        record.speedup_vs_exact = exact_ms / record.time_median_ms


def _add_energy(record: Record, fn, observer) -> None:
    if isinstance(observer, NullObserver):  # nothing to read: skip the 1 s window
        record.telemetry = observer.stop(0, 0.0).telemetry
        return
    result = measure_energy(fn, observer, min_window_s=1.0)
    record.energy_j = result.energy_j
    record.avg_power_w = result.avg_power_w
    record.max_power_w = result.max_power_w
    record.telemetry = result.telemetry
    if result.energy_j is not None and not result.window_ok:
        record.telemetry += "; energy window shorter than 1 s (counter resolution ~100 ms)"
