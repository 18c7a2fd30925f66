"""What ``config="tuned"`` and ``ScatterbrainAttention.from_tuned`` get from the tables.

The math layer asks through ``sbbench.attention.settings`` (the package root registers
:func:`resolve` as the "tuned" resolver); this module answers with the budget and the
implementation settings of :func:`sbbench.tuned.lookup.tuned_choice` (with the budget's
``lowrank``: "centroids" for a scatterbrain_centroids budget), or, where no budget meets
the target, the reason in words. A call that gives its own sizes gets the settings of
its own bucket (its bucket kind, sink and window included), not the table budget's.
"""

from __future__ import annotations

from sbbench.attention.settings import ConfigRequest, ResolvedConfig
from sbbench.core.types import budget_label
from sbbench.tuned.files import load
from sbbench.tuned.lookup import tuned_choice
from sbbench.tuned.shape import ShapeBucket


def resolve(request: ConfigRequest) -> ResolvedConfig:
    """Budget and implementation settings for ``request`` from its device's table."""
    shape = None
    if request.n_features is not None and request.bucket_size is not None:
        try:
            shape = ShapeBucket(request.seq_len, request.head_dim, request.n_features,
                                request.bucket_size, request.dtype, request.sparse or "",
                                request.sink, request.window)
        except ValueError:  # an invalid bucket kind: the call's own checks say so
            shape = None
    choice = tuned_choice(request.device, seq_len=request.seq_len, head_dim=request.head_dim,
                          max_error=request.max_error, dtype=request.dtype,
                          causal=request.causal, method=request.method, shape=shape)
    impl = {"kernels": choice.kernel_configs,
            "chunk_elements": choice.cpu_config.get("chunk_elements"),
            "num_threads": choice.cpu_config.get("num_threads")}
    budget = choice.budget
    if budget is not None and budget.method == request.method:
        return ResolvedConfig(budget.n_features, budget.bucket_size, budget.n_hashes, impl,
                              sparse=budget.sparse, sink=budget.sink, window=budget.window,
                              lowrank=budget.lowrank)
    return ResolvedConfig(None, None, None, impl,
                          no_budget=_why_no_budget(request, choice.device, budget))


def _why_no_budget(request: ConfigRequest, device: str, budget) -> str:
    where = (f"max_error={request.max_error} at seq {request.seq_len}, "
             f"head_dim {request.head_dim}")
    table = load(device)
    if table.path is None:
        return (f"no tuning table for device {device} (so no {request.method} budget "
                f"meeting {where})")
    if budget is not None:  # Budget("exact"): not reachable, or exact measured faster
        here = [e for e in table.nearest_entries(request.seq_len, request.head_dim, None,
                                                 dtype=request.dtype, causal=request.causal)
                if e.max_error <= request.max_error and e.budget.method == "exact"]
        unreachable = [e for e in here if e.reachable is False]
        if unreachable:
            closest = max(unreachable, key=lambda e: e.max_error)
            best = (f"; the best approximation measured, {closest.best_approx}, reaches "
                    f"error {closest.best_approx_error:.4g}" if closest.best_approx else "")
            return (f"max_error={request.max_error} is not reachable at seq "
                    f"{request.seq_len}, head_dim {request.head_dim} on {device}{best}")
        return (f"the {device} tuned table has no {request.method} budget meeting {where} "
                f"(exact attention is faster there)")
    entries = table.nearest_entries(request.seq_len, request.head_dim, request.method,
                                    dtype=request.dtype, causal=request.causal)
    if not entries:
        return f"the {device} tuned table has no {request.method} budget meeting {where}"
    best = min(entries, key=lambda e: (e.error, e.time_ms))
    return (f"the {device} tuned table has no {request.method} budget meeting {where} "
            f"(nothing meets it; the best measured at seq {best.seq_len}, head_dim "
            f"{best.head_dim} reaches error {best.error:.4g} with {budget_label(best.budget)})")
