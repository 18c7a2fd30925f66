"""Injected slowdowns: make chosen methods slower on purpose, to test that a regression
check catches a real slowdown (and to measure how often it does).

``SBBENCH_INJECT_SLOWDOWN=1.3`` makes every attention call 1.3 times slower;
``SBBENCH_INJECT_METHODS=performer,lsh`` limits it to those methods (default: all). The
slowdown is a busy wait on the benchmark's own clock after each call, so it scales with
the machine like a real slowdown would. The clock is the calling thread's CPU time: the
wait adds CPU work in proportion to the call's own CPU work, as more instructions would,
whether or not other jobs preempt the process meanwhile (a wait on the wall clock would add
more CPU work to a call that was preempted, and less to one that was not). Nothing reads
these variables unless they are set.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

from sbbench.core.errors import UserError

INJECT_ENV = "SBBENCH_INJECT_SLOWDOWN"
INJECT_METHODS_ENV = "SBBENCH_INJECT_METHODS"


def slowed(fn: Callable[..., object], factor: float,
           clock: Callable[[], int] = time.thread_time_ns) -> Callable[..., object]:
    """``fn`` made ``factor`` times slower on ``clock``: after each call, busy-wait until
    (factor - 1) times the time the call took has passed (a busy wait, not a sleep:
    sleeps are coarse, take no CPU time, and do not slow down with the machine)."""
    if factor == 1.0:
        return fn

    def run(*args, **kwargs):
        start = clock()
        out = fn(*args, **kwargs)
        until = start + int((clock() - start) * factor)
        while clock() < until:
            pass
        return out

    return run


def inject_from_env(environ=None) -> tuple[float, tuple[str, ...]]:
    """The slowdown factor (1.0 when unset) and the methods it applies to (empty: all),
    from the environment."""
    environ = os.environ if environ is None else environ
    text = environ.get(INJECT_ENV, "").strip()
    try:
        factor = float(text) if text else 1.0
    except ValueError:
        raise UserError(f"{INJECT_ENV}={text!r} is not a number") from None
    if not factor >= 1.0:
        raise UserError(f"{INJECT_ENV} must be >= 1 (a slowdown), got {text!r}")
    methods = tuple(m.strip() for m in environ.get(INJECT_METHODS_ENV, "").split(",")
                    if m.strip())
    return factor, methods


def injected(fn: Callable[..., object], method: str, environ=None) -> Callable[..., object]:
    """``fn`` slowed as the environment asks for ``method``; ``fn`` itself otherwise."""
    factor, methods = inject_from_env(environ)
    if factor == 1.0 or (methods and method not in methods):
        return fn
    return slowed(fn, factor)
