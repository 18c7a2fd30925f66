"""Run sweep points and write one ``Record`` per point to the store.

For each point, in this order (MEASUREMENT.md):

1. peak memory. CPU: peak RSS of a child process that runs only that point, forked from
   ``python -m sbbench.sweep.runner --serve`` (a helper that imports torch once, so a point
   costs a fork, not a new interpreter); the child runs while the parent checks
   accuracy, which is not timed. GPU: the CUDA allocator's peak over one call.
2. accuracy against exact attention on the same inputs (float64 reference, float32 on
   large sizes), over every seed; a NaN/Inf output fails the point, and it gets no time;
3. time, through ``timing.time_fn`` on a zero-argument closure: inputs, random
   projections and hash functions are drawn outside it (the row's ``timed_region``);
4. energy through the telemetry observer (the null observer on CPU says why);
5. FLOPs, bytes, working set and roofline time from the cost model.

A point that fails (exception, OOM, NaN) becomes a row with its reason and the sweep goes
on. Every row is committed as soon as it is measured, so an interrupted sweep keeps its
rows, and a rerun with the same arguments skips the keys already in the store.

``python -m sbbench.sweep.runner --point JSON`` runs the memory measurement of one point in a
fresh process and prints it as JSON (the function the sweep's forked children run).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import select
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch

from sbbench.attention import exact_attention
from sbbench.attention.scatterbrain import triton_available
from sbbench.core.record import Record, code_version, git_revision, now_utc
from sbbench.core.types import Budget, Problem
from sbbench.measure import calls, costmodel
from sbbench.measure.accuracy import relative_error
from sbbench.measure.inputs import make_qkv
from sbbench.measure.telemetry import NullObserver, device_state, make_observer, measure_energy
from sbbench.measure.telemetry import versions as read_versions
from sbbench.measure.timing import cuda_memory_profile, time_fn
from sbbench.sweep.grid import Point
from sbbench.sweep.store import Store

# Above these sizes (batch * heads * seq_len^2 elements) the float64 reference and the
# dense attention matrices stop being cheap: fall back to a float32 reference / skip the
# attention-matrix error.
FLOAT64_REFERENCE_MAX = 1 << 26
ATTN_MATRIX_MAX = 1 << 22
CHILD_TIMEOUT_S = 600.0

TIMED_EXACT = "exact_attention (SDPA) call only; inputs made outside the timed closure"
TIMED_APPROX = ("attention call incl. hashing, sorting and feature maps; inputs, random "
                "projections and hash functions drawn outside the timed closure")


@dataclass(frozen=True)
class Settings:
    """How every point of one sweep is measured (sweep-wide, not part of a point)."""

    device: str  # device profile name: the ``device`` column
    torch_device: str = "cpu"  # "cpu" | "cuda"
    seeds: tuple[int, ...] = (0, 1)
    input_kind: str = "clustered"
    temperature: float = 1.0
    warmup_ms: float = 25.0
    rep_ms: float = 100.0
    min_samples: int = 5
    measure_memory: bool = True
    measure_energy: bool = True
    num_threads: int = 0  # torch threads (0: leave torch's default)
    git_revision: str = field(default_factory=git_revision)

    @property
    def inputs_label(self) -> str:
        return f"{self.input_kind}:t={self.temperature:g}"

    @property
    def code_version(self) -> str:
        return code_version(self.git_revision)


# ---------------------------------------------------------------------------------------
# One point
# ---------------------------------------------------------------------------------------

def base_record(point: Point, settings: Settings, source: str) -> Record:
    """A Record holding the point's key and nothing measured yet."""
    p, b = point.problem, point.budget
    return Record(
        device=settings.device, method=b.method, backend=point.backend,
        seq_len=p.seq_len, head_dim=p.head_dim, batch=p.batch, heads=p.heads,
        dtype=p.dtype, causal=p.causal, n_features=b.n_features,
        bucket_size=b.bucket_size, n_hashes=b.n_hashes, kernel_config=point.kernel_config,
        inputs=settings.inputs_label, code_version=settings.code_version, source=source,
        git_revision=settings.git_revision, timestamp=now_utc(),
    )


def point_key(point: Point, settings: Settings, source: str = "measured") -> tuple:
    return base_record(point, settings, source).key()


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


class PointFailed(Exception):
    """A point that cannot be measured further: status and reason for its row."""

    def __init__(self, status: str, reason: str):
        super().__init__(reason)
        self.status, self.reason = status, reason


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
    out_errors, attn_errors = [], []
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
            if reference.weights is not None and point.backend == "torch":
                _, weights = call(return_weights=True)
                attn_errors.append(relative_error(weights, reference.weights))
                del weights
        del out, reference
    return dict(
        error_mean=statistics.fmean(out_errors),
        error_std=statistics.pstdev(out_errors) if len(out_errors) > 1 else 0.0,
        attn_error_mean=statistics.fmean(attn_errors) if attn_errors else None,
        attn_error_std=(statistics.pstdev(attn_errors) if len(attn_errors) > 1 else 0.0)
        if attn_errors else None,
        reference_dtype=str(dtype).removeprefix("torch."),
        n_seeds=len(out_errors),
    )


def _add_model(record: Record, point: Point, spec) -> None:
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
        _add_model(record, point, spec)
    except Exception as err:  # the model is a column, not a reason to lose the point
        record.reason = f"cost model failed: {_describe(err)}"
    if spec is not None:
        record.device_state["profile"] = profile_info(spec)
    reason = skip_reason(point, settings)
    if reason:
        record.status, record.reason = "skipped", reason
        return record
    child = own_server = None
    try:
        if state_fn is not None:
            record.device_state["before"] = state_fn()
        if settings.measure_memory and settings.torch_device == "cpu":
            if memory_server is None:
                memory_server = own_server = MemoryServer()
            child = memory_server.start(point, settings)  # runs while we check accuracy
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
        timing = time_fn(fn, device=settings.torch_device, warmup_ms=settings.warmup_ms,
                         rep_ms=settings.rep_ms, min_samples=settings.min_samples)
        record.timed_region = TIMED_EXACT if point.budget.method == "exact" else TIMED_APPROX
        record.time_samples_ms = [float(s) for s in timing.samples_ms]
        record.time_median_ms = float(timing.median_ms)
        record.time_p20_ms, record.time_p80_ms = float(timing.p20_ms), float(timing.p80_ms)
        record.n_warmup, record.timer = int(timing.n_warmup), str(timing.timer)
        record.first_call_ms = getattr(timing, "first_call_ms", None)
        record.l2_flushed = bool(timing.l2_flushed)
        _add_rates(record, exact_ms)
        if settings.measure_energy and observer is not None:
            _add_energy(record, fn, observer)
        if state_fn is not None:
            record.device_state["after"] = state_fn()
    except PointFailed as failure:
        record.status, record.reason = failure.status, failure.reason
    except Exception as err:
        record.status = "oom" if _is_oom(err) else "failed"
        record.reason = _describe(err)
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


def _add_rates(record: Record, exact_ms: float | None) -> None:
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


def _add_memory(record: Record, result: dict) -> None:
    record.peak_memory_bytes = result["peak_bytes"]
    record.baseline_memory_bytes = result["baseline_bytes"]
    record.peak_memory_delta_bytes = result["peak_bytes"] - result["baseline_bytes"]
    record.memory_method = result["method"]


def _is_oom(err: BaseException) -> bool:
    oom_type = getattr(torch.cuda, "OutOfMemoryError", None)
    if isinstance(err, MemoryError) or (oom_type is not None and isinstance(err, oom_type)):
        return True
    return "out of memory" in str(err).lower()


def _describe(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"[:400]


def model_point(point: Point, settings: Settings, spec, *,
                exact_ms: float | None = None) -> Record:
    """Predict a point from the cost model alone: ``source=modeled``, time = roofline."""
    record = base_record(point, settings, "modeled")
    record.device_state["profile"] = profile_info(spec)
    try:
        _add_model(record, point, spec)
    except Exception as err:
        record.status, record.reason = "failed", f"cost model failed: {_describe(err)}"
        return record
    if record.roofline_time_ms is None:
        record.status = "skipped"
        record.reason = (f"device profile {spec.name} has no peak figures for "
                         f"{point.problem.dtype}; nothing to predict from")
        return record
    record.reason = f"predicted by the cost model (roofline on the {spec.name} profile)"
    record.timer = "roofline"
    record.time_median_ms = record.roofline_time_ms
    if exact_ms is not None and record.time_median_ms > 0:
        record.speedup_vs_exact = exact_ms / record.time_median_ms
    record.telemetry = "not measured: --model-only"
    return record


# ---------------------------------------------------------------------------------------
# Peak memory of one point in a child process (CPU)
# ---------------------------------------------------------------------------------------

def _rss_bytes(field_name: str) -> int | None:
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark to the current RSS (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
        return True
    except OSError:
        return False


def point_memory(point: Point, settings: Settings) -> dict:
    """Peak RSS of the first call of ``point`` in this (fresh) process.

    baseline: RSS after imports, inputs and setup, just before the call; peak: the
    kernel's high-water mark after it, reset just before the call where Linux allows.
    """
    if settings.num_threads:
        torch.set_num_threads(settings.num_threads)
    q, k, v, call = prepare(point, settings, settings.seeds[0])
    gc.collect()
    if _reset_peak_rss() and _rss_bytes("VmHWM") is not None:
        baseline = _rss_bytes("VmRSS")
        with torch.no_grad():
            call()
        peak = _rss_bytes("VmHWM")
        method = "child_peak_rss (VmHWM reset before the call)"
    else:  # ru_maxrss: KiB on Linux, bytes on macOS; a high-water mark since start
        scale = 1 if sys.platform == "darwin" else 1024
        baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale
        with torch.no_grad():
            call()
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale
        method = "child_ru_maxrss (high-water mark since process start)"
    return {"peak_bytes": int(peak), "baseline_bytes": int(baseline), "method": method}


def _request(point: Point, settings: Settings) -> str:
    data = asdict(settings)
    data["num_threads"] = settings.num_threads or torch.get_num_threads()
    return json.dumps({"point": point.to_json(), "settings": data})


def _answer_request(line: str) -> list:
    """Run one request in a forked child; the child's outcome as [status, payload]."""
    request = json.loads(line)
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: only this point, then exit without cleanup
        os.close(read_fd)
        os.dup2(2, 1)  # stray prints must not reach the server's answer stream
        try:
            settings = _settings_from_dict(request["settings"])
            reply = ["ok", point_memory(Point.from_json(request["point"]), settings)]
        except BaseException as err:
            reply = ["oom" if _is_oom(err) else "failed", _describe(err)]
        with os.fdopen(write_fd, "w") as out:
            out.write(json.dumps(reply))
        os._exit(0)
    os.close(write_fd)
    with os.fdopen(read_fd) as answer:
        text = answer.read()
    _, status = os.waitpid(pid, 0)
    if text:
        return json.loads(text)
    if os.WIFSIGNALED(status):
        return ["signal", os.WTERMSIG(status)]
    return ["failed", f"memory child exited with {os.WEXITSTATUS(status)} and no result"]


def serve() -> int:
    """``python -m sbbench.sweep.runner --serve``: torch is imported once here; each request
    (one JSON line on stdin) runs in a fresh fork of this process, and its result is one
    JSON line on stdout. A fork costs milliseconds where a new interpreter costs seconds."""
    try:
        for line in sys.stdin:
            if not line.strip():
                continue
            try:
                reply = _answer_request(line)
            except Exception as err:  # a malformed request: say so, keep serving
                reply = ["failed", f"bad request: {_describe(err)}"]
            print(json.dumps(reply), flush=True)
    except KeyboardInterrupt:  # the sweep was interrupted: it handles that
        return 130
    return 0


def _settings_from_dict(data: dict) -> Settings:
    data = dict(data)
    data["seeds"] = tuple(data["seeds"])
    return Settings(**data)


class MemoryServer:
    """The parent's handle on ``python -m sbbench.sweep.runner --serve`` (started on first use).

    ``start(point, settings)`` sends a point, ``result()`` waits for its measurement
    (the parent checks accuracy meanwhile). One point at a time.
    """

    def __init__(self):
        self._proc: subprocess.Popen | None = None
        self._pending = False

    def start(self, point: Point, settings: Settings) -> MemoryServer:
        if self._proc is None or self._proc.poll() is not None:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "sbbench.sweep.runner", "--serve"], stdin=subprocess.PIPE,
                stdout=subprocess.PIPE, text=True, bufsize=1)
        self._proc.stdin.write(_request(point, settings) + "\n")
        self._proc.stdin.flush()
        self._pending = True
        return self

    def result(self, timeout_s: float = CHILD_TIMEOUT_S) -> dict:
        """The measurement; PointFailed if the child failed or was killed."""
        self._pending = False
        ready, _, _ = select.select([self._proc.stdout], [], [], timeout_s)
        line = self._proc.stdout.readline() if ready else ""
        if not line:
            code = self._proc.poll()
            self.close()
            if code == -signal.SIGINT or code == 130:
                raise KeyboardInterrupt
            raise PointFailed("failed", "memory server gave no answer" + (
                f" (exit {code})" if code is not None else f" within {timeout_s:.0f} s"))
        status, payload = json.loads(line)
        if status == "ok":
            return payload
        if status == "signal":
            if payload == signal.SIGINT:
                raise KeyboardInterrupt
            if payload == signal.SIGKILL:
                raise PointFailed("oom", "memory child killed by SIGKILL (out of memory?)")
            raise PointFailed("failed", f"memory child killed by signal {payload}")
        raise PointFailed(status, f"in the memory child: {payload}")

    def cancel(self) -> None:
        """Drop a pending request (the point failed in the parent first)."""
        if self._pending:
            try:
                self.result()
            except (PointFailed, KeyboardInterrupt):
                pass

    def close(self) -> None:
        if self._proc is not None:
            if self._proc.poll() is None:
                self._proc.stdin.close()
                try:
                    self._proc.wait(10)
                except subprocess.TimeoutExpired:
                    self._proc.kill()
                    self._proc.wait()
            self._proc = None
        self._pending = False

    def __enter__(self) -> MemoryServer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ---------------------------------------------------------------------------------------
# The sweep
# ---------------------------------------------------------------------------------------

@dataclass
class Summary:
    total: int = 0
    measured: int = 0
    resumed: int = 0  # already in the store: skipped
    lost_race: int = 0  # another sweep wrote the same key first
    statuses: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    def line(self) -> str:
        counts = ", ".join(f"{n} {s}" for s, n in sorted(self.statuses.items())) or "none"
        text = (f"{self.total} points: {self.measured} run ({counts}), {self.resumed} "
                f"already in the store; {self.seconds:.1f} s")
        if self.lost_race:
            text += f"; {self.lost_race} written first by another sweep (kept theirs)"
        return text


class Progress:
    """A plain-text progress bar with ETA on stderr (one line per point when not a TTY)."""

    def __init__(self, total: int, *, stream=None, enabled: bool = True, width: int = 24):
        self.total, self.width, self.enabled = total, width, enabled
        self.stream = stream if stream is not None else sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.start = time.monotonic()
        self.done = 0
        self.timed: list[float] = []  # seconds of each point actually run

    def step(self, label: str, *, ran_seconds: float | None = None) -> None:
        self.done += 1
        if ran_seconds is not None:
            self.timed.append(ran_seconds)
        if not self.enabled:
            return
        elapsed = time.monotonic() - self.start
        remaining = self.total - self.done
        eta = (statistics.fmean(self.timed) * remaining) if self.timed else 0.0
        filled = int(self.width * self.done / max(self.total, 1))
        bar = "#" * filled + "." * (self.width - filled)
        text = (f"[{bar}] {self.done}/{self.total} {_clock(elapsed)} elapsed, "
                f"ETA {_clock(eta)}  {label}")
        if self.tty:
            self.stream.write("\r\x1b[K" + text)
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.enabled and self.tty:
            self.stream.write("\n")
            self.stream.flush()


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60}:{seconds % 60:02d}" if seconds < 3600 else \
        f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def run_sweep(points: list[Point], settings: Settings, store: Store, *, spec=None,
              model_only: bool = False, redo: str = "none", progress: bool = True,
              command: str = "", stream=None,
              memory_server: MemoryServer | None = None) -> Summary:
    """Measure (or, with ``model_only``, predict) every point not yet in ``store``.

    redo: "none" skips every key in the store; "failed" runs failed/oom rows again;
    "all" runs everything again (rows replaced). memory_server: reuse a running one
    (else the sweep starts its own and stops it at the end).
    """
    if redo not in ("none", "failed", "all"):
        raise ValueError(f"redo must be none, failed or all, got {redo!r}")
    source = "modeled" if model_only else "measured"
    summary = Summary(total=len(points))
    redo_keys = (store.done_keys(("failed", "oom")) if redo == "failed"
                 else store.done_keys() if redo == "all" else set())
    observer, state_fn, versions = None, None, {}
    if not model_only:
        if settings.num_threads:
            torch.set_num_threads(settings.num_threads)
        observer = make_observer(settings.torch_device) if settings.measure_energy else None
        versions = dict(read_versions())
        state_fn = lambda: device_state(settings.torch_device)  # noqa: E731
    exact_ms: dict[tuple, float] = {}
    bar = Progress(len(points), stream=stream, enabled=progress)
    sweep_id = store.start_sweep(command, settings.device)
    outcome = "interrupted"
    started = time.monotonic()
    own_server = memory_server is None
    memory_server = MemoryServer() if own_server else memory_server
    references = References(settings)
    try:
        for point in points:
            key = point_key(point, settings, source)
            again = key in redo_keys
            if store.has(key) and not again:  # re-read: another sweep may have written it
                summary.resumed += 1
                _remember_exact(exact_ms, point, store.get(key))
                bar.step(f"{point.label()} (in store)")
                continue
            t0 = time.monotonic()
            reference = exact_ms.get(_shape(point)) or _exact_from_store(
                store, point, settings, source)
            if model_only:
                record = model_point(point, settings, spec, exact_ms=reference)
            else:
                record = measure_point(point, settings, spec, observer, exact_ms=reference,
                                       state_fn=state_fn, versions=versions,
                                       memory_server=memory_server, references=references)
            if not store.add(record, replace=again):
                summary.lost_race += 1
            _remember_exact(exact_ms, point, record)
            summary.measured += 1
            summary.statuses[record.status] = summary.statuses.get(record.status, 0) + 1
            bar.step(f"{point.label()} {record.status}", ran_seconds=time.monotonic() - t0)
        outcome = "done"
    finally:
        if own_server:
            memory_server.close()
        bar.close()
        summary.seconds = time.monotonic() - started
        store.finish_sweep(sweep_id, outcome)
    return summary


def _shape(point: Point) -> tuple:
    return (point.problem, point.kernel_config)


def _remember_exact(table: dict, point: Point, record: Record | None) -> None:
    if (record is not None and point.budget.method == "exact" and record.status == "ok"
            and record.time_median_ms):
        table[_shape(point)] = record.time_median_ms


def _exact_from_store(store: Store, point: Point, settings: Settings,
                      source: str) -> float | None:
    """The exact time of this shape from an earlier sweep (resumed or exact-less grid)."""
    exact = Point(point.problem, Budget("exact"), "torch")
    record = store.get(point_key(exact, settings, source))
    if record is not None and record.status == "ok" and record.time_median_ms:
        return record.time_median_ms
    return None


def estimate_seconds(points: list[Point], settings: Settings) -> float:
    """A rough wall-clock estimate of measuring ``points`` (for --dry-run)."""
    per_point = (settings.warmup_ms + settings.rep_ms) / 1e3 + 0.2 * len(settings.seeds)
    if settings.measure_energy and settings.torch_device != "cpu":
        per_point += 1.0
    return per_point * len(points)


# ---------------------------------------------------------------------------------------
# python -m sbbench.sweep.runner --point JSON
# ---------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m sbbench.sweep.runner",
        description="Measure the peak memory of one point in this fresh process and print "
                    "it as JSON; or (--serve) answer the sweep's memory requests.")
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--point", help="a Point as JSON (grid.Point.to_json)")
    what.add_argument("--serve", action="store_true",
                      help="read requests (JSON lines) on stdin, fork a child for each")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--inputs", default="clustered")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--device", default="cpu", help="torch device (cpu | cuda)")
    args = parser.parse_args(argv)
    if args.serve:
        return serve()
    settings = Settings(device="local", torch_device=args.device, seeds=(args.seed,),
                        input_kind=args.inputs, temperature=args.temperature,
                        git_revision="")
    result = point_memory(Point.from_json(args.point), settings)
    result["delta_bytes"] = result["peak_bytes"] - result["baseline_bytes"]
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
