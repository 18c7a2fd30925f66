"""The Triton kernels' tile sizes: one case per (kernel, shape bucket).

Each kernel declares its search space, default and ``keep(config, limits, shape)`` next
to its code (``sbbench.kernels.SEARCH_SPACES``). A case:

- prunes statically: the kernel's ``keep()`` against the device's limits, then an
  ahead-of-time compile for the device's architecture (``kernels/static.py``, no GPU
  needed) against shared memory per block, registers per thread and spills;
- measures a candidate as the whole forward (``scatterbrain_forward``) with that kernel's
  config and every other kernel at its default: the time that matters is the forward's,
  and its output is checked against the float64 torch reference, with the untuned
  forward's rounding error as the yardstick (``evaluators.output_mismatch``);
- or, with ``simulate``, replays recorded timings (no GPU).
"""

from __future__ import annotations

import math
from pathlib import Path

from sbbench.autotune.cache import TuneCache, cache_key
from sbbench.autotune.evaluators import MeasuredEvaluator, SimulatedEvaluator, output_mismatch
from sbbench.autotune.pruning import keep_check, resource_check
from sbbench.autotune.shapes import inputs_identity, too_large
from sbbench.autotune.strategies import config_key
from sbbench.core.errors import UserError
from sbbench.core.types import Budget, Problem
from sbbench.tuned import ShapeBucket

# kernel -> (method, causal) of the forward that runs it; "all" tunes the non-causal ones
KERNEL_CALLS = {
    "feature_stats": ("scatterbrain", False),
    "lowrank_state": ("scatterbrain", False),
    "sparse": ("scatterbrain", False),
    "lowrank_apply": ("performer", False),
    "lowrank_causal": ("performer", True),
    "fixed": ("scatterbrain", False),  # sink / window keys: buckets with sink or window
}
# "all": the fixed kernel only for buckets with sink or window > 0 (it runs only there)
DEFAULT_KERNELS = ("feature_stats", "lowrank_state", "sparse", "lowrank_apply", "fixed")
SUPPORT_KERNELS = ("fixed",)  # kernels that run only with sink or window > 0


def kernel_specs() -> dict:
    """name -> KernelSpec from ``sbbench.kernels`` (UserError without triton)."""
    try:
        import sbbench.kernels as kernels
    except ImportError as err:
        raise UserError(f"tuning the kernels needs sbbench.kernels: {err}") from None
    specs = getattr(kernels, "SEARCH_SPACES", None)
    if not specs:
        raise UserError("sbbench.kernels has no SEARCH_SPACES (is triton installed? "
                        "pip install sbbench[triton])")
    return dict(specs)


def device_limits(spec):
    """The kernels' DeviceLimits of a device profile (arch "sm_90" -> 90)."""
    from sbbench.kernels import DeviceLimits

    arch = int("".join(ch for ch in spec.arch if ch.isdigit()))
    return DeviceLimits(arch=arch, shared_bytes=spec.smem_per_block_bytes,
                        registers_per_thread=spec.max_registers_per_thread,
                        registers_per_sm=spec.registers_per_sm)


def kernel_bucket(method: str, shape: ShapeBucket) -> ShapeBucket:
    """The bucket as the forward of ``method`` sees it: performer has no buckets, sink or
    window; the others keep the bucket's kind, sink and window."""
    if method == "performer":
        return ShapeBucket(shape.seq_len, shape.head_dim, shape.n_features, 0, shape.dtype)
    return shape


def kernel_budget(method: str, shape: ShapeBucket) -> Budget:
    """The budget of the forward that times a kernel at ``shape`` (one hash round)."""
    if method == "performer":
        return Budget("performer", n_features=shape.n_features)
    return Budget(method, n_features=shape.n_features, bucket_size=shape.bucket_size,
                  n_hashes=1, sparse=shape.sparse, sink=shape.sink, window=shape.window)


def kernel_shape(shape: ShapeBucket, n_hashes: int = 1):
    from sbbench.kernels import KernelShape

    return KernelShape(head_dim=shape.head_dim, head_dim_v=shape.head_dim,
                       n_features=shape.n_features, bucket_size=shape.bucket_size,
                       n_hashes=n_hashes, dtype_bytes=4 if shape.dtype == "float32" else 2)


def static_available() -> str:
    """"" when ``kernels/static.py`` can compile here, else why not."""
    try:
        from sbbench.kernels import static
    except ImportError as err:
        return f"kernels/static.py unavailable ({err})"
    if not hasattr(static, "compile_config"):
        return "kernels/static.py has no compile_config"
    return ""


def _compile_entry(job) -> dict:
    """One static compile (runs in a worker process): the usage as a plain dict."""
    from sbbench.kernels import static

    kernel, config, arch, kshape = job
    try:
        usage = static.compile_config(kernel, config, arch, kshape)
    except Exception as err:  # e.g. the compile worker died: that config's verdict
        text = " ".join(str(err).split())[-300:]
        return {"ok": False, "reason": f"compile failed: {type(err).__name__}: {text}",
                "shared_bytes": 0, "registers": 0, "spills": 0}
    return {"ok": bool(usage.ok), "reason": usage.reason, "shared_bytes": usage.shared_bytes,
            "registers": usage.registers, "spills": usage.spills}


def compile_all(jobs_list: list, jobs: int) -> list[dict]:
    """Static compiles of (kernel, config, arch, shape) jobs, ``jobs`` at a time (spawned
    processes: the compiler is single-threaded and slow)."""
    if jobs <= 1 or len(jobs_list) <= 1:
        return [_compile_entry(job) for job in jobs_list]
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(max_workers=min(jobs, len(jobs_list)),
                             mp_context=multiprocessing.get_context("spawn")) as pool:
        return list(pool.map(_compile_entry, jobs_list, chunksize=1))


class GpuCase:
    """One kernel at one shape bucket on one GPU profile."""

    def __init__(self, kernel: str, shape: ShapeBucket, device_spec, *, kernel_spec,
                 batch: int = 1, heads: int = 4, seed: int = 0, inputs: str = "clustered",
                 warmup_ms: float = 25.0,
                 rep_ms: float = 100.0, min_samples: int = 5,
                 simulated: SimulatedEvaluator | None = None, static: bool = True,
                 static_cache: TuneCache | None = None, jobs: int = 1,
                 code_version: str = "", progress=None, simulated_from: str = "",
                 torch_device: str = "cuda"):
        method, causal = KERNEL_CALLS[kernel]
        if method == "scatterbrain" and shape.sparse == "local":
            method = "scatterbrain_local"  # fixed blocks: the forward of that method
        self.kernel, self.method, self.causal = kernel, method, causal
        self.target = kernel
        self.shape = kernel_bucket(method, shape)
        self.device_spec, self.kernel_spec = device_spec, kernel_spec
        self.batch, self.heads, self.seed, self.inputs = batch, heads, seed, inputs
        self.timing = dict(warmup_ms=warmup_ms, rep_ms=rep_ms, min_samples=min_samples)
        self.context = {"batch": batch, "heads": heads, "seed": seed,
                        "inputs": inputs_identity(inputs),
                        "causal": causal, "method": method, **self.timing}
        if simulated is not None:  # replayed timings never mix with measured ones
            self.context["simulated"] = simulated_from or "yes"
        self.limits = device_limits(device_spec)
        self.kshape = kernel_shape(self.shape)
        self.static = static
        self.static_note = static_available() if static else ""
        self.static_cache = static_cache if static_cache is not None else TuneCache(None)
        self.jobs, self.code_version, self.progress = jobs, code_version, progress
        self._checks = None
        self._simulated = simulated
        self._measured = None
        # "cuda"; "cpu" runs the kernels under TRITON_INTERPRET=1 (tests: logic, not speed)
        self.torch_device = torch_device

    def space(self) -> list[dict]:
        from sbbench.kernels import expand_space

        return expand_space(self.kernel_spec.space)

    def default(self) -> dict:
        return dict(self.kernel_spec.default)

    def checks(self) -> list:
        """keep() against the device limits, then (where the static compiler works) the
        compiled resource usage of every config keep() leaves; compiled once, cached."""
        if self._checks is not None:
            return self._checks
        spec, kshape = self.kernel_spec, self.kshape
        keep = keep_check(lambda c, limits: spec.keep(c, limits, kshape), self.limits)
        self._checks = [keep]
        if self.static and not self.static_note:
            usages = self.static_usages([c for c in self.space() if keep(c) is None])
            self._checks.append(resource_check(
                lambda c: usages[config_key(c)], arch=self.device_spec.arch,
                smem_per_block_bytes=self.device_spec.smem_per_block_bytes,
                max_registers_per_thread=self.device_spec.max_registers_per_thread))
        return self._checks

    def static_usages(self, configs: list[dict]) -> dict[str, dict]:
        """config key -> resource usage of each config compiled for the device's arch."""
        from dataclasses import asdict

        def key(config):
            return cache_key(device=self.device_spec.arch, target=f"static:{self.kernel}",
                             shape=asdict(self.kshape), context={}, config=config,
                             code_version=self.code_version)

        usages = {config_key(c): self.static_cache.get_payload(key(c)) for c in configs}
        missing = [c for c in configs if usages[config_key(c)] is None]
        if missing and self.progress:
            self.progress(f"{self.kernel} {self.shape.label}: compiling {len(missing)} "
                          f"configs for {self.device_spec.arch} ({len(configs) - len(missing)} "
                          f"cached, {self.jobs} at a time)")
        results = compile_all([(self.kernel, c, self.limits.arch, self.kshape) for c in missing],
                              self.jobs)
        for config, usage in zip(missing, results, strict=True):
            usages[config_key(config)] = usage
            self.static_cache.put_payload(key(config), usage)
        return usages

    @property
    def evaluator(self):
        if self._simulated is not None:
            return self._simulated
        if self._measured is None:
            self._measured = self._measured_evaluator()
        return self._measured

    # ---- measured on the GPU ---------------------------------------------------------

    def _measured_evaluator(self) -> MeasuredEvaluator:
        import torch

        from sbbench.attention.core import attend, kmeans_buckets
        from sbbench.kernels import scatterbrain_forward
        from sbbench.measure.calls import draw_randomness
        from sbbench.measure.inputs import make_qkv

        device = self.torch_device
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise UserError(f"tuning {self.kernel} needs the GPU; this machine has none "
                            f"(use --dry-run for the static pruning, or --simulate FILE)")
        shape = self.shape
        problem = Problem(shape.seq_len, shape.head_dim, batch=self.batch, heads=self.heads,
                          dtype=shape.dtype, causal=self.causal)
        q, k, v = make_qkv(problem, seed=self.seed, kind=self.inputs, device=device)
        budget = kernel_budget(self.method, shape)
        randomness = draw_randomness(budget, shape.head_dim,
                                     torch.Generator().manual_seed(self.seed), device=device)
        common = dict(scale=1.0 / math.sqrt(shape.head_dim),
                      projections=randomness.projections, hashes=randomness.hashes,
                      bucket_size=budget.bucket_size or None,
                      sparse=budget.sparse if budget.bucket_size else None, causal=self.causal,
                      key_padding_mask=None, sink=budget.sink, window=budget.window)
        with torch.inference_mode():
            ref64 = attend(q.double(), k.double(), v.double(), **common)
            # k-means key sets: the library's, computed once (the kernels take them)
            orders = (kmeans_buckets(q, k, common["hashes"], budget.bucket_size, self.causal,
                                     None, scale=common["scale"], sink=budget.sink,
                                     window=budget.window)
                      if budget.sparse == "kmeans" and budget.bucket_size else None)
            ref_default = scatterbrain_forward(q, k, v, orders=orders, **common)

        def build(config: dict):
            def run():
                with torch.inference_mode():
                    return scatterbrain_forward(q, k, v, configs={self.kernel: config},
                                                orders=orders, **common)
            return run

        return MeasuredEvaluator(
            build, lambda out: output_mismatch(out, ref64, ref_default, dtype=shape.dtype),
            device=device, **self.timing)


def gpu_cases(request, *, cache: TuneCache | None = None, code_version: str = "",
              progress=None) -> tuple[list[GpuCase], list[str]]:
    """The (kernel, shape bucket) cases of a GPU request, and notes on what was skipped."""
    specs = kernel_specs()
    names = DEFAULT_KERNELS if request.kernels in (("all",), ()) else request.kernels
    for name in names:
        if name not in specs or name not in KERNEL_CALLS:
            valid = ", ".join(n for n in specs if n in KERNEL_CALLS)
            raise UserError(f"--kernels: unknown kernel {name!r}; valid: {valid}, all")
    simulated = None
    if request.simulate:
        simulated = SimulatedEvaluator.from_file(Path(request.simulate))
    cases, skipped, seen = [], [], set()
    for shape in request.shapes:
        if shape.dtype == "float64":
            skipped.append(f"{shape.label}: the kernels take float32/float16/bfloat16")
            continue
        for name in names:
            if name in SUPPORT_KERNELS and not (shape.sink or shape.window):
                if name in request.kernels:  # asked for by name: say why not here
                    skipped.append(f"{name} {shape.label}: runs only with sink or window > 0")
                continue
            case = GpuCase(name, shape, request.device, kernel_spec=specs[name],
                           batch=request.batch, heads=request.heads, seed=request.seed,
                           inputs=request.inputs,
                           warmup_ms=request.warmup_ms, rep_ms=request.rep_ms,
                           min_samples=request.min_samples, simulated=simulated,
                           static=request.static, static_cache=cache, jobs=request.jobs,
                           code_version=code_version, progress=progress,
                           simulated_from=str(request.simulate or ""))
            why = too_large(case.shape)
            if why:
                skipped.append(f"{name} {case.shape.label}: {why}")
                continue
            if (name, case.shape) in seen:
                continue
            seen.add((name, case.shape))
            note = f"static compile: {case.static_note}; only keep() prunes"
            if case.static_note and note not in skipped:
                skipped.append(note)
            cases.append(case)
    return cases, skipped
