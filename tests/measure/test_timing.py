"""The timing wrapper: warm-up, sample budgets, every sample kept, percentiles."""

from __future__ import annotations

import itertools
import time

import numpy as np
import pytest
import torch

from sbbench.measure.memory import cuda_peak_memory, process_peak_rss_bytes
from sbbench.measure.timing import Timing, flush_buffer_bytes, quantile, time_fn


class FakeClock:
    """A nanosecond clock that only moves when the timed function says so."""

    def __init__(self):
        self.now_ns = 0

    def __call__(self) -> int:
        return self.now_ns

    def advance_ms(self, ms: float) -> None:
        self.now_ns += int(round(ms * 1e6))


def fake_fn(clock: FakeClock, durations_ms):
    """A closure whose calls take the given durations in turn; records every call."""
    durations = iter(durations_ms)
    calls = []

    def fn():
        duration = next(durations)
        calls.append(duration)
        clock.advance_ms(duration)

    return fn, calls


def test_samples_are_the_call_times_and_warmup_comes_first():
    clock = FakeClock()
    # first call 50 ms (compilation), then 1 ms per call
    fn, calls = fake_fn(clock, itertools.chain([50.0], itertools.repeat(1.0)))
    timing = time_fn(fn, warmup_ms=10, rep_ms=50, min_samples=5, clock=clock)
    assert timing.first_call_ms == 50.0
    assert timing.n_warmup == 1 + 10  # first call + 10 ms of 1 ms calls
    assert timing.n_samples == 50  # 50 ms budget of 1 ms calls
    assert len(calls) == timing.n_warmup + timing.n_samples
    assert set(timing.samples_ms) == {1.0}  # the slow first call is not a sample
    assert timing.timer == "perf_counter_ns" and timing.l2_flushed is False


def test_percentiles_of_varied_samples():
    clock = FakeClock()
    pattern = [3.0, 1.0, 4.0, 1.5, 5.0, 9.0, 2.0, 6.0]
    fn, _ = fake_fn(clock, itertools.cycle(pattern))
    timing = time_fn(fn, warmup_ms=0, rep_ms=0, min_samples=40, clock=clock)
    samples = np.array(timing.samples_ms)
    assert len(samples) == 40
    # first call and no warm-up budget: samples start at the second value of the cycle
    assert list(samples[:8]) == pattern[1:] + pattern[:1]
    assert timing.median_ms == pytest.approx(np.percentile(samples, 50))
    assert timing.p20_ms == pytest.approx(np.percentile(samples, 20))
    assert timing.p80_ms == pytest.approx(np.percentile(samples, 80))


def test_min_samples_when_calls_outlast_the_budget():
    clock = FakeClock()
    fn, _ = fake_fn(clock, itertools.repeat(100.0))
    timing = time_fn(fn, warmup_ms=25, rep_ms=50, min_samples=5, clock=clock)
    assert timing.n_samples == 5
    assert timing.n_warmup == 2  # first call + one warm-up call (100 ms > 25 ms budget)


def test_max_samples_caps_fast_calls():
    clock = FakeClock()
    fn, _ = fake_fn(clock, itertools.repeat(0.001))
    timing = time_fn(fn, warmup_ms=1, rep_ms=100, max_samples=500, clock=clock)
    assert timing.n_samples == 500


def test_setup_outside_the_closure_is_not_timed():
    """Real clock: setup (50 ms) happens before the closure exists; each call sleeps
    2 ms. Samples see only the calls."""
    def make_closure():
        time.sleep(0.05)  # setup: allocation, hashing, random matrices
        return lambda: time.sleep(0.002)

    timing = time_fn(make_closure(), warmup_ms=5, rep_ms=30, min_samples=5)
    assert timing.n_samples >= 5
    assert timing.n_warmup >= 2
    assert 2.0 <= timing.median_ms < 25.0
    assert min(timing.samples_ms) >= 2.0


@pytest.mark.parametrize("q", [0.0, 0.2, 0.5, 0.8, 1.0])
@pytest.mark.parametrize("size", [1, 2, 7, 100])
def test_quantile_matches_numpy(q, size):
    values = np.random.default_rng(size).exponential(size=size)
    assert quantile(values.tolist(), q) == pytest.approx(np.percentile(values, 100 * q))


def test_invalid_arguments():
    with pytest.raises(ValueError):
        time_fn(lambda: None, min_samples=0)
    with pytest.raises(ValueError):
        time_fn(lambda: None, min_samples=10, max_samples=5)
    with pytest.raises(ValueError):
        Timing.from_samples([], n_warmup=0, timer="perf_counter_ns", l2_flushed=False)
    with pytest.raises(ValueError):
        cuda_peak_memory(lambda: None, "cpu")


def test_flush_buffer_is_larger_than_l2():
    assert flush_buffer_bytes(50 * 2**20) > 50 * 2**20
    assert flush_buffer_bytes(None) == 256 * 2**20
    assert flush_buffer_bytes(200 * 2**20) == 400 * 2**20


def test_process_peak_rss_is_plausible():
    assert process_peak_rss_bytes() > 10 * 2**20


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_timing_and_peak_memory():
    a = torch.randn(1024, 1024, device="cuda")
    timing = time_fn(lambda: a @ a, device="cuda", warmup_ms=5, rep_ms=20)
    assert timing.timer == "cuda_event" and timing.l2_flushed
    assert timing.n_samples >= 5 and timing.median_ms > 0
    peak = cuda_peak_memory(lambda: a @ a, "cuda")
    assert peak >= 2 * a.numel() * a.element_size()


def test_reference_is_sampled_round_by_round_with_the_call():
    """With reference=, every sample of the call is followed by one of the reference:
    the two lists pair one to one, in call order."""
    clock = FakeClock()
    order = []
    fn, _ = fake_fn(clock, itertools.repeat(2.0))

    def call():
        order.append("fn")
        fn()

    def reference():
        order.append("ref")
        clock.advance_ms(0.5)

    timing = time_fn(call, warmup_ms=0, rep_ms=10, min_samples=3, clock=clock,
                     reference=reference)
    assert timing.n_samples >= 3
    assert timing.reference_samples_ms == (0.5,) * timing.n_samples
    assert set(timing.samples_ms) == {2.0}
    assert order[-2:] == ["fn", "ref"] and order.count("fn") == order.count("ref")


def test_thread_clock_leaves_out_time_spent_sleeping():
    """thread_time_ns counts this thread's CPU time: a sleeping call costs ~nothing,
    while the wall clock sees the whole sleep."""
    sleeper = lambda: time.sleep(0.003)  # noqa: E731
    cpu = time_fn(sleeper, warmup_ms=0, rep_ms=15, min_samples=3, cpu_clock="thread_time_ns")
    wall = time_fn(sleeper, warmup_ms=0, rep_ms=15, min_samples=3)
    assert cpu.timer == "thread_time_ns" and wall.timer == "perf_counter_ns"
    assert cpu.median_ms < 1.0 <= 3.0 <= wall.median_ms


def test_bad_cpu_clock_and_reference_on_cuda_are_refused():
    with pytest.raises(ValueError, match="cpu_clock"):
        time_fn(lambda: None, cpu_clock="sundial")
    with pytest.raises(ValueError, match="reference"):
        time_fn(lambda: None, device="cuda", reference=lambda: None)
    with pytest.raises(ValueError, match="pair"):
        Timing.from_samples([1.0, 2.0], n_warmup=1, timer="t", l2_flushed=False,
                            reference_samples_ms=[1.0])


def test_sweep_cpu_clock_resolves_auto_by_thread_count():
    from sbbench.measure.calibration import calibration_call, sweep_cpu_clock

    assert sweep_cpu_clock("auto", 1) == "thread_time_ns"
    assert sweep_cpu_clock("auto", 2) == "perf_counter_ns"
    assert sweep_cpu_clock("perf_counter_ns", 1) == "perf_counter_ns"
    with pytest.raises(ValueError, match="cpu clock"):
        sweep_cpu_clock("wall", 1)
    out = calibration_call(8)()
    assert out.shape == (8, 8) and torch.equal(out, calibration_call(8)())
