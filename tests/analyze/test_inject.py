"""sbbench.measure.inject and its hook in measure.calls.make_call: a slowdown injected
through the environment, used to show that `sbbench check` catches a real slowdown."""

from __future__ import annotations

import pytest
import torch

from sbbench.core.errors import UserError
from sbbench.core.types import Budget
from sbbench.measure.calls import make_call
from sbbench.measure.inject import INJECT_ENV, INJECT_METHODS_ENV, inject_from_env, slowed


def test_slowed_waits_factor_times_the_call_on_its_clock():
    now = [0]

    def clock():
        now[0] += 1
        return now[0]

    def work(x):
        now[0] += 100  # the call takes 100 ticks
        return x * 2

    assert slowed(work, 1.0) is work
    fast_start = now[0]
    assert work(3) == 6
    plain = now[0] - fast_start
    start = now[0]
    assert slowed(work, 1.5, clock)(3) == 6
    assert now[0] - start >= 1.5 * plain


def test_inject_from_env_parses_factor_and_methods():
    assert inject_from_env({}) == (1.0, ())
    assert inject_from_env({INJECT_ENV: "1.3", INJECT_METHODS_ENV: "performer, lsh"}) == (
        1.3, ("performer", "lsh"))
    with pytest.raises(UserError, match="not a number"):
        inject_from_env({INJECT_ENV: "fast"})
    with pytest.raises(UserError, match=">= 1"):
        inject_from_env({INJECT_ENV: "0.5"})


def _call(method: str, **sizes):
    q = k = v = torch.randn(1, 1, 16, 8, generator=torch.Generator().manual_seed(0))
    return make_call(Budget(method, **sizes), q, k, v, generator=torch.Generator().manual_seed(1))


def test_make_call_is_slowed_only_for_the_named_methods(monkeypatch):
    plain = _call("performer", n_features=8)
    assert plain.__name__ == "call"
    monkeypatch.setenv(INJECT_ENV, "1.3")
    monkeypatch.setenv(INJECT_METHODS_ENV, "performer")
    slow = _call("performer", n_features=8)
    assert slow.__name__ == "run"  # wrapped by inject.slowed
    assert torch.equal(slow(), plain())  # same result, only slower
    assert _call("exact").__name__ == "call"
    monkeypatch.setenv(INJECT_METHODS_ENV, "")
    assert _call("exact").__name__ == "run"  # no method list: every method
