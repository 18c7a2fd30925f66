"""Evaluators: ``evaluate(config, budget_hint) -> Evaluation`` for the strategies.

- :class:`MeasuredEvaluator`: builds the call for a config, checks its output against
  the reference first (a config that changes the result gets no time, docs/measurement.md),
  then times it with the one timing wrapper (``sbbench.measure.timing.time_fn``), spending
  ``budget_hint`` of the full warm-up and repetition budget.
- :class:`SimulatedEvaluator`: replays recorded timings from a YAML / JSON / CSV table
  (KernelTuner's ``runners/simulation.py``), so strategies and pruning are tested on a
  machine without the GPU the timings came from.
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
from collections.abc import Callable
from pathlib import Path

import yaml

from sbbench.autotune.strategies import Evaluation, config_key
from sbbench.core.errors import UserError

# Absolute tolerance floor of the output check, as a multiple of max |reference|, by the
# dtype the call accumulates in: a few units in the last place of a long dot product.
ATOL = {"float64": 1e-12, "float32": 1e-5, "bfloat16": 2e-2, "float16": 2e-3}


def output_mismatch(out, ref64, ref_dtype, *, dtype: str = "float32") -> str | None:
    """Why ``out`` is not a correct result (None if it is).

    ``ref64``: the float64 reference; ``ref_dtype``: the reference computed as the
    untuned call computes it (same dtype). Passes when, elementwise,
    ``|out - ref64| <= 2 |ref_dtype - ref64| + atol``: a config may round
    differently, never be less accurate than twice the untuned rounding error.
    """
    import torch

    out64 = out.detach().to(torch.float64).cpu()
    ref64 = ref64.detach().to(torch.float64).cpu()
    if out64.shape != ref64.shape:
        return f"output shape {list(out64.shape)} != reference {list(ref64.shape)}"
    if not torch.isfinite(out64).all():
        return "output has NaN/Inf"
    scale = max(float(ref64.abs().max()), 1.0)
    atol = ATOL.get(dtype, 1e-5) * scale
    base = (ref_dtype.detach().to(torch.float64).cpu() - ref64).abs()
    err = (out64 - ref64).abs()
    bad = err > 2 * base + atol
    if bad.any():
        rel_rms = float(torch.linalg.vector_norm(out64 - ref64)
                        / torch.linalg.vector_norm(ref64).clamp_min(1e-300))
        return (f"output differs from the reference: {int(bad.sum())} of {err.numel()} "
                f"elements beyond 2*|ref_{dtype} - ref64| + {atol:.1e} (max |out - ref64| "
                f"{float(err.max()):.2e}, relative RMS error {rel_rms:.2e})")
    return None


def _describe(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"[:300]


class MeasuredEvaluator:
    """Check, then time, the call a config builds.

    build(config) -> zero-argument closure running the call (setup outside it);
    check(output) -> reason | None, the correctness check of its output;
    setup(config) -> context manager held while the config runs (e.g. thread count);
    device: where it runs ("cpu", "cuda"); warmup_ms / rep_ms / min_samples: the full
    measurement (``budget_hint`` scales warm-up and repetition time and the sample floor).
    """

    def __init__(self, build: Callable[[dict], Callable[[], object]],
                 check: Callable[[object], str | None], *,
                 setup: Callable[[dict], contextlib.AbstractContextManager] | None = None,
                 device: str = "cpu", warmup_ms: float = 25.0, rep_ms: float = 100.0,
                 min_samples: int = 5, time_fn: Callable | None = None):
        self.build, self.check, self.setup = build, check, setup
        self.device = device
        self.warmup_ms, self.rep_ms, self.min_samples = warmup_ms, rep_ms, min_samples
        self._time_fn = time_fn

    def __call__(self, config: dict, budget_hint: float = 1.0) -> Evaluation:
        effort = min(1.0, max(budget_hint, 1e-3))
        timer = self._time_fn
        if timer is None:
            from sbbench.measure.timing import time_fn as timer
        context = self.setup(config) if self.setup else contextlib.nullcontext()
        try:
            with context:
                fn = self.build(config)
                reason = self.check(fn())
                if reason:
                    return Evaluation.failed(reason, effort)
                timing = timer(fn, device=self.device, warmup_ms=self.warmup_ms * effort,
                               rep_ms=self.rep_ms * effort,
                               min_samples=max(min(3, self.min_samples),
                                               math.ceil(self.min_samples * effort)))
        except Exception as err:  # a config that crashes (incl. OOM) is a result
            if "out of memory" in str(err).lower():
                return Evaluation.failed(f"oom: {_describe(err)}", effort)
            return Evaluation.failed(f"failed: {_describe(err)}", effort)
        return Evaluation(True, tuple(timing.samples_ms), "", effort)


# ---------------------------------------------------------------------------------------
# Simulation
# ---------------------------------------------------------------------------------------

def _int_or_none(text: str, where: str):
    text = text.strip()
    if text == "" or text.lower() in ("none", "null"):
        return None
    try:
        return int(text)
    except ValueError:
        raise UserError(f"{where}: config values must be integers, got {text!r}") from None


def load_recorded(path: str | Path) -> dict[str, tuple[tuple[float, ...], str]]:
    """A recorded table: config key -> (samples in ms, failure reason or "").

    YAML / JSON: a list (or ``{"configs": [...]}``) of ``{"config": {...}, "samples_ms":
    [...]}`` or ``{"config": {...}, "reason": "..."}``. CSV: one sample per row, a
    ``time_ms`` column, an optional ``reason`` column, every other column a config
    parameter; rows of the same config add up.
    """
    path = Path(path)
    if not path.exists():
        raise UserError(f"recorded timings {path}: no such file")
    table: dict[str, tuple[list[float], str]] = {}
    if path.suffix.lower() == ".csv":
        with open(path, newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            if not reader.fieldnames or "time_ms" not in reader.fieldnames:
                raise UserError(f"{path}: a recorded CSV needs a time_ms column")
            for line, row in enumerate(reader, start=2):
                where = f"{path}:{line}"
                config = {k: _int_or_none(v, f"{where}: {k}") for k, v in row.items()
                          if k not in ("time_ms", "reason")}
                samples, reason = table.setdefault(config_key(config), ([], ""))
                if (row.get("reason") or "").strip():
                    table[config_key(config)] = (samples, row["reason"].strip())
                elif row["time_ms"].strip():
                    samples.append(float(row["time_ms"]))
    else:
        text = path.read_text(encoding="utf-8")
        data = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
        entries = data.get("configs") if isinstance(data, dict) else data
        if not isinstance(entries, list):
            raise UserError(f"{path}: expected a list of {{config, samples_ms}} entries")
        for i, entry in enumerate(entries):
            if not isinstance(entry, dict) or not isinstance(entry.get("config"), dict):
                raise UserError(f"{path}: configs[{i}]: needs a 'config' mapping")
            samples = [float(s) for s in entry.get("samples_ms") or []]
            reason = str(entry.get("reason") or "")
            if not samples and not reason:
                raise UserError(f"{path}: configs[{i}]: needs samples_ms or a reason")
            table[config_key(entry["config"])] = (samples, reason)
    return {key: (tuple(samples), reason) for key, (samples, reason) in table.items()}


class SimulatedEvaluator:
    """Replays a recorded table: ``budget_hint`` h returns the first ceil(h * n) of a
    config's n samples (at least one). A config not in the table fails with that reason.
    ``calls`` lists every (config, budget_hint) asked, for tests."""

    def __init__(self, table: dict[str, tuple[tuple[float, ...], str]]):
        self.table = table
        self.calls: list[tuple[dict, float]] = []

    @classmethod
    def from_file(cls, path: str | Path) -> SimulatedEvaluator:
        return cls(load_recorded(path))

    @classmethod
    def from_configs(cls, rows: list[tuple[dict, list[float] | str]]) -> SimulatedEvaluator:
        """From (config, samples) and (config, "failure reason") pairs."""
        return cls({config_key(c): ((), v) if isinstance(v, str) else (tuple(v), "")
                    for c, v in rows})

    def configs(self) -> list[dict]:
        return [json.loads(key) for key in self.table]

    def __call__(self, config: dict, budget_hint: float = 1.0) -> Evaluation:
        effort = min(1.0, max(budget_hint, 1e-3))
        self.calls.append((dict(config), budget_hint))
        found = self.table.get(config_key(config))
        if found is None:
            return Evaluation.failed("not in the recorded table", effort)
        samples, reason = found
        if reason or not samples:
            return Evaluation.failed(reason or "no samples recorded", effort)
        count = max(1, math.ceil(effort * len(samples)))
        return Evaluation(True, samples[:count], "", effort)
