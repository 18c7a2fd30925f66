"""Run-time lookups in the tuned tables: exact shape bucket -> nearest -> default (layer 2).

Per-device configs with an explicit lookup order: the bucket of the exact shape, else the
nearest tuned bucket, else the default (the kernel's declared default, or the torch
path's untuned settings).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sbbench.core.types import Budget, Problem
from sbbench.tuned.files import load
from sbbench.tuned.schema import CPU_TARGET_PREFIX, ShapeBucket


def cpu_target(method: str) -> str:
    """The ``kernels.<target>`` name of the torch path of ``method``."""
    return f"{CPU_TARGET_PREFIX}{method}"


def cpu_default(method: str) -> dict:
    """The torch path's untuned settings (num_threads null: torch's own choice)."""
    from sbbench.attention.core import CHUNK_ELEMENTS

    config = {"num_threads": None}
    if method != "performer" and method != "exact":
        config["chunk_elements"] = CHUNK_ELEMENTS
    return config


def kernel_default(kernel: str) -> dict:
    """The default config a kernel declares (``sbbench.kernels.DEFAULT_CONFIGS``); {} if
    the kernels are not importable (no triton) or do not know the name."""
    try:
        from sbbench.kernels import DEFAULT_CONFIGS
    except ImportError:
        return {}
    return dict(DEFAULT_CONFIGS.get(kernel, {}))


def lookup_kernel_config(device: str, problem: Problem, kernel: str,
                         budget: Budget | None = None, *, default: dict | None = None,
                         folder: Path | str | None = None) -> dict:
    """Tile config of ``kernel`` for this call on ``device``: exact shape bucket, then the
    nearest tuned one, then ``default`` (or the kernel's declared default)."""
    table = load(device, folder=folder)
    fallback = default if default is not None else kernel_default(kernel)
    return table.lookup(kernel, ShapeBucket.of(problem, budget), fallback).config


def lookup_cpu_config(problem: Problem, budget: Budget | None = None, *,
                      device: str = "cpu", folder: Path | str | None = None) -> dict:
    """The torch path's settings (``chunk_elements``, ``num_threads``) for this call:
    exact bucket, then nearest, then the defaults. ``budget`` None means scatterbrain."""
    method = budget.method if budget else "scatterbrain"
    table = load(device, folder=folder)
    shape = ShapeBucket.of(problem, budget)
    return table.lookup(cpu_target(method), shape, cpu_default(method)).config


def lookup_budget(device: str, seq_len: int, head_dim: int, max_error: float, *,
                  method: str | None = None, dtype: str | None = None,
                  causal: bool | None = None, folder: Path | str | None = None
                  ) -> Budget | None:
    """The cheapest budget measured on ``device`` to meet ``max_error`` (relative output
    error) at this shape (exact, else nearest measured shape); ``Budget("exact")`` where
    exact attention is faster there; None when nothing measured meets ``max_error``.
    ``dtype`` / ``causal`` narrow the entries where the file records them."""
    if not (isinstance(max_error, (int, float)) and max_error > 0):
        raise ValueError(f"max_error must be a number > 0, got {max_error!r}")
    return load(device, folder=folder).budget_for(seq_len, head_dim, max_error, method,
                                                  dtype=dtype, causal=causal)


@dataclass(frozen=True)
class TunedChoice:
    """Everything the tables say for one call on one device (``ScatterbrainAttention.
    from_tuned`` and ``config="tuned"`` read this).

    budget: the approximation budget (None: nothing measured meets ``max_error``;
    ``Budget("exact")``: exact attention is faster there). kernel_configs: tile config per
    tuned kernel name, for ``scatterbrain_forward(configs=...)`` (kernels not tuned keep
    their defaults). cpu_config: the torch path's ``chunk_elements`` / ``num_threads``
    (None threads: leave torch's setting). sources: "exact" / "nearest" / "default" per
    kernel and "cpu".
    """

    device: str
    budget: Budget | None
    kernel_configs: dict
    cpu_config: dict
    sources: dict


def tuned_choice(device: str, *, seq_len: int, head_dim: int, max_error: float,
                 dtype: str = "float32", causal: bool = False, method: str | None = None,
                 folder: Path | str | None = None,
                 shape: ShapeBucket | None = None) -> TunedChoice:
    """The budget meeting ``max_error`` and the implementation settings for a call of
    [*, *, seq_len, head_dim] in ``dtype`` on ``device`` ("auto", a profile or alias),
    each by the lookup order exact shape bucket -> nearest -> default. The settings are
    for ``shape`` (a call's own bucket) when given, else for the budget found."""
    table = load(device, folder=folder)
    budget = lookup_budget(table.device, seq_len, head_dim, max_error, method=method,
                           dtype=dtype, causal=causal, folder=folder)
    problem = Problem(seq_len, head_dim, dtype=dtype)
    own = shape is not None  # the call's own budget: its method's torch path
    if shape is None:
        shape = ShapeBucket.of(problem, budget if budget and budget.method != "exact"
                               else None)
    kernel_configs, sources = {}, {}
    for name in table.targets:
        if name.startswith(CPU_TARGET_PREFIX):
            continue
        match = table.lookup(name, shape, kernel_default(name))
        kernel_configs[name], sources[name] = match.config, match.source
    cpu_method = budget.method if budget and budget.method != "exact" else "scatterbrain"
    if own and method is not None:
        cpu_method = method
    cpu = table.lookup(cpu_target(cpu_method), shape, cpu_default(cpu_method))
    sources["cpu"] = cpu.source
    return TunedChoice(table.device, budget, kernel_configs, cpu.config, sources)
