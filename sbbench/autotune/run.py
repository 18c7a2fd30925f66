"""A whole ``sbbench tune`` run: every (target, shape bucket) case, then the tuning file.

The CLI turns its flags into a :class:`TuneRequest`; :func:`tune_cpu` / :func:`tune_gpu`
build the cases, tune each one (``tuner.tune_case``) and write the ``kernels`` section of
``tuning_configs/<device>.yaml`` with the run's metadata, keeping the other sections and
the buckets of shapes this run did not tune.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from sbbench import tuned
from sbbench.autotune.cache import TuneCache
from sbbench.autotune.shapes import inputs_identity, too_large
from sbbench.autotune.strategies import TuneOptions
from sbbench.autotune.tuner import RUNNER_UP_WITHIN, BucketOutcome, merge_target, tune_case
from sbbench.core.errors import UserError
from sbbench.core.record import code_version, now_utc
from sbbench.tuned import ShapeBucket

Progress = Callable[[str], None]


@dataclass
class TuneRequest:
    """What to tune and how (the CLI's flags, checked)."""

    device: object  # DeviceSpec
    shapes: list[ShapeBucket]
    methods: tuple[str, ...] = ("scatterbrain", "lsh", "performer")  # CPU
    kernels: tuple[str, ...] = ("all",)  # GPU
    batch: int = 1
    heads: int = 4
    seed: int = 0
    inputs: str = "clustered"  # make_qkv kind; a capture ("qkv:...") sets heads and causal
    causal: bool = False  # CPU: the tuned calls are causal (a causal capture's)
    threads: tuple[int, ...] | None = None  # CPU; None: thread_counts()
    chunk_elements: tuple[int, ...] | None = None  # CPU; None: 2^16 .. 2^22
    strategy: str = "exhaustive"
    options: TuneOptions = field(default_factory=TuneOptions)
    warmup_ms: float = 25.0
    rep_ms: float = 100.0
    min_samples: int = 5
    within: float = RUNNER_UP_WITHIN
    out_dir: Path | None = None
    cache_path: Path | None = None  # None: no cache file
    simulate: Path | None = None  # GPU: replay recorded timings
    static: bool = True  # GPU: ahead-of-time compile for static pruning
    jobs: int = 1  # GPU: static compiles at a time
    dry_run: bool = False
    note: str = ""
    command: str = ""


@dataclass
class TuneReport:
    path: Path | None
    outcomes: list[BucketOutcome]
    skipped: list[str] = field(default_factory=list)
    defaults: dict[str, dict] = field(default_factory=dict)  # each target's default config
    meta: dict = field(default_factory=dict)  # metadata of the kernels section


def write_report(request: TuneRequest, report: TuneReport) -> Path | None:
    """Write a report tuned with ``write=False`` (on a Ray worker) here, as ``tune_*``
    would have: the driver's tuning_configs/ get the file, not the worker's disk."""
    report.path = write_outcomes(request, report.outcomes, report.defaults, report.meta)
    return report.path


def _load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def metadata(request: TuneRequest, *, source: str, load_before, torch_device: str) -> dict:
    """Who wrote the kernels section, when, on what, how (docs/measurement.md: record the state)."""
    from sbbench.measure.telemetry import device_state, versions

    meta = {
        "date": now_utc(),
        "command": request.command,
        "source": source,
        "strategy": request.strategy,
        "options": _strategy_options(request),
        "timing": {"warmup_ms": request.warmup_ms, "rep_ms": request.rep_ms,
                   "min_samples": request.min_samples},
        "inputs": {**inputs_identity(request.inputs), "batch": request.batch,
                   "heads": request.heads, "causal": request.causal, "seed": request.seed},
        "runner_up_within": request.within,
        "code_version": code_version(),
        "versions": versions(),
        "device_state": device_state(torch_device),
    }
    load_after = _load_average()
    if load_before is not None:
        meta["load_average"] = {"before": load_before, "after": load_after,
                                "cores": os.cpu_count()}
    if request.note:
        meta["note"] = request.note
    return meta


def _strategy_options(request: TuneRequest) -> dict:
    """The options the chosen strategy uses (the others would mislead a reader)."""
    used = {"exhaustive": (), "random": ("max_evals", "seed"),
            "successive_halving": ("eta", "min_effort", "final_keep")}[request.strategy]
    options = asdict(request.options)
    return {k: options[k] for k in (*used, "max_seconds") if options.get(k) is not None}


def _notes(skipped: list[str], progress: Progress | None) -> None:
    for note in skipped:
        if progress:
            progress(f"note: skipped {note}")


def _evaluation_counts(outcomes: list[BucketOutcome]) -> dict:
    """Evaluations run now vs replayed from the tuning cache (the state recorded above
    describes the former only)."""
    return {"measured_now": sum(o.measured for o in outcomes),
            "from_cache": sum(o.cache_hits for o in outcomes)}


def _cache(request: TuneRequest) -> TuneCache:
    return TuneCache(request.cache_path)


def _summary_line(outcome: BucketOutcome) -> str:
    label = f"{outcome.target} {outcome.shape.label}"
    if outcome.best is None:
        return f"{label}: every config failed; nothing written for this bucket"
    speedup = outcome.speedup()
    vs = f", {speedup:.2f}x vs default" if speedup else ""
    return (f"{label}: best {outcome.best.config} {outcome.best.median_ms:.4g} ms{vs} "
            f"({outcome.result.evaluated} evaluated, {outcome.measured} measured now, "
            f"{len(outcome.pruned.pruned)} pruned, {len(outcome.result.rejected())} rejected)")


def write_outcomes(request: TuneRequest, outcomes: list[BucketOutcome],
                   defaults: dict[str, dict], meta: dict) -> Path | None:
    """Merge the outcomes into ``kernels`` of the device's file (other shapes kept)."""
    by_target: dict[str, list[dict]] = {}
    for outcome in outcomes:
        entry = outcome.entry(request.within)
        if entry is not None:
            # per bucket: a later run on other inputs keeps this bucket, but not this metadata
            entry["date"], entry["inputs"] = meta["date"], meta["inputs"]["kind"]
            by_target.setdefault(outcome.target, []).append(entry)
    if not by_target:
        return None
    existing = tuned.load(request.device.name, folder=request.out_dir).raw.get("kernels") or {}
    section = {target: merge_target(existing.get(target), defaults[target], entries)
               for target, entries in by_target.items()}
    return tuned.write_section(request.device.name, "kernels", section, metadata=meta,
                               folder=request.out_dir)


# ---------------------------------------------------------------------------------------
# CPU: the torch path on this machine
# ---------------------------------------------------------------------------------------

def cpu_cases(request: TuneRequest):
    """(method, shape) pairs to tune, deduplicated (lsh ignores features, performer the
    bucket size, kind, sink and window), without a bucket kind the method cannot use and
    without supports as long as the sequence."""
    from sbbench.autotune.torch_path import CPU_METHODS, shape_for
    from sbbench.core.types import SPARSE_KINDS_OF

    for method in request.methods:
        if method not in CPU_METHODS:
            raise UserError(f"--methods: {method!r} has no torch-path tunables; valid: "
                            f"{', '.join(CPU_METHODS)}")
    seen, pairs, skipped = set(), [], []
    for shape in request.shapes:
        for method in request.methods:
            own = shape_for(method, shape)
            if own is None:
                note = (f"{method} {shape.label}: {method} takes "
                        f"{' or '.join(SPARSE_KINDS_OF[method])} buckets")
                if note not in skipped:
                    skipped.append(note)
                continue
            why = too_large(own, method)
            if why:
                skipped.append(f"{method} {own.label}: {why}")
                continue
            if (method, own) not in seen:
                seen.add((method, own))
                pairs.append((method, own))
    return pairs, skipped


def tune_cpu(request: TuneRequest, progress: Progress | None = None, *,
             write: bool = True) -> TuneReport:
    """Tune chunk_elements and threads of the torch path per method and shape bucket."""
    import torch

    from sbbench.autotune.torch_path import CpuCase, cpu_space

    pairs, skipped = cpu_cases(request)
    _notes(skipped, progress)
    if request.dry_run:
        for method, shape in pairs:
            size = len(cpu_space(method, **_cpu_axes(request)))
            print(f"{tuned.cpu_target(method)} {shape.label}: {size} configs")
        return TuneReport(None, [], skipped)
    load_before = _load_average()
    cache = _cache(request)
    version = code_version()
    outcomes = []
    for method, shape in pairs:
        if progress:
            progress(f"{tuned.cpu_target(method)} {shape.label}: preparing inputs and "
                     f"references")
        case = CpuCase(method, shape, batch=request.batch, heads=request.heads,
                       inputs=request.inputs, causal=request.causal, seed=request.seed,
                       warmup_ms=request.warmup_ms, rep_ms=request.rep_ms,
                       min_samples=request.min_samples, **_cpu_axes(request))
        outcomes.append(_tune(case, request, cache, version, progress))
    defaults = {tuned.cpu_target(m): tuned.cpu_default(m) for m, _ in pairs}
    meta = metadata(request, source="measured", load_before=load_before, torch_device="cpu")
    meta["evaluations"] = _evaluation_counts(outcomes)
    meta["torch_default_threads"] = torch.get_num_threads()
    path = write_outcomes(request, outcomes, defaults, meta) if write else None
    return TuneReport(path, outcomes, skipped, defaults, meta)


def _tune(case, request: TuneRequest, cache: TuneCache | None, version: str,
          progress: Progress | None) -> BucketOutcome:
    """Tune one case with the request's strategy and report its summary line."""
    outcome = tune_case(case, strategy=request.strategy, options=request.options,
                        cache=cache, device=request.device.name, code_version=version,
                        progress=progress)
    if progress:
        progress(_summary_line(outcome))
    return outcome


def _cpu_axes(request: TuneRequest) -> dict:
    axes = {}
    if request.threads:
        axes["threads"] = request.threads
    if request.chunk_elements:
        axes["chunk_elements"] = request.chunk_elements
    return axes


# ---------------------------------------------------------------------------------------
# GPU: the Triton kernels' tile sizes
# ---------------------------------------------------------------------------------------

def tune_gpu(request: TuneRequest, progress: Progress | None = None, *,
             write: bool = True) -> TuneReport:
    """Tune each kernel's tiles per shape bucket on the GPU (or replay recorded timings)."""
    from sbbench.autotune.triton_tiles import gpu_cases

    cache = _cache(request)
    version = code_version()
    cases, skipped = gpu_cases(request, cache=cache, code_version=version, progress=progress)
    _notes(skipped, progress)
    if request.dry_run:
        from sbbench.autotune.pruning import prune

        for case in cases:
            result = prune(case.space(), case.checks())
            print(f"{case.target} {case.shape.label}: {len(case.space())} configs, "
                  f"{len(result.kept)} kept, {len(result.pruned)} pruned "
                  f"{result.reason_counts() or ''}".rstrip())
        return TuneReport(None, [], skipped)
    load_before = _load_average()
    outcomes = [_tune(case, request, cache, version, progress) for case in cases]
    defaults = {case.target: dict(case.default()) for case in cases}
    source = f"simulated: timings replayed from {request.simulate}" if request.simulate \
        else "measured"
    meta = metadata(request, source=source, load_before=load_before,
                    torch_device="cpu" if request.simulate else "cuda")
    meta["evaluations"] = _evaluation_counts(outcomes)
    path = write_outcomes(request, outcomes, defaults, meta) if write else None
    return TuneReport(path, outcomes, skipped, defaults, meta)
