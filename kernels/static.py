"""Ahead-of-time compile of the kernels for sm_80 / sm_90 (no GPU needed): shared memory,
registers and spills per config, which the autotuner uses to prune a search space before
timing anything.

``compile_config("sparse", {"BLOCK_P": 32, "num_warps": 4, "num_stages": 2}, 90)`` builds
the launch the launcher would make for a representative problem (meta tensors; see each
kernel file's ``plan``), turns its arguments into a triton signature with the JIT's own
specialisation rules (pointers and multiples of 16 get ``tt.divisibility=16``, integers
equal to 1 become constants), compiles it with ``triton.compile(ASTSource, GPUTarget)``
and reads the cubin with ``cuobjdump --dump-resource-usage`` (shipped in the triton wheel).

Under ``TRITON_INTERPRET=1`` the kernels are interpreter objects, and once the interpreter
has run a kernel it leaves parts of ``triton.language.core`` patched (device-function calls,
e.g. ``tl.sum``, patch without restoring), which breaks any later compile in that process.
So there the compiles run in a child process without TRITON_INTERPRET (``python -m
sbbench.kernels.static --worker``, JSON in and out).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any

import torch
from sbbench.kernels._common import Config, KernelShape, expand_space, limits_for

_DTYPE_CODES = {
    torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16", torch.float64: "fp64",
    torch.int8: "i8", torch.int32: "i32", torch.int64: "i64", torch.uint8: "u8",
    torch.bool: "u1",
}


@dataclass(frozen=True)
class ResourceUsage:
    """One compiled config. shared_bytes: dynamic (triton) + static shared memory per
    block; registers: per thread; spills: local memory (stack frame) bytes per thread, the
    register spills (triton's n_spills); ok: compiled and fits the architecture's limits;
    reason: why not."""

    kernel: str
    arch: int
    config: tuple[tuple[str, int], ...]
    shared_bytes: int
    registers: int
    spills: int
    ok: bool
    reason: str = ""

    @property
    def config_dict(self) -> Config:
        return dict(self.config)


def kernels_interpreted() -> bool:
    """Whether this process's kernels were decorated under TRITON_INTERPRET=1."""
    from sbbench.kernels import feature_map

    return feature_map.interpreted(feature_map._feature_stats_kernel)


def _arg_type(value: Any) -> tuple[str, bool]:
    """(signature type, divisible by 16) of one kernel argument, as the JIT specialises."""
    if isinstance(value, torch.Tensor):
        return "*" + _DTYPE_CODES[value.dtype], True
    if isinstance(value, bool):
        return "u1", False
    if isinstance(value, int):
        if value == 1:
            return "constexpr", False
        kind = "i32" if -2**31 <= value < 2**31 else "i64"
        return kind, value % 16 == 0
    if isinstance(value, float):
        return "fp32", False
    raise TypeError(f"cannot type kernel argument {value!r}")


def _compile(launch, arch: int):
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    kernel = launch.kernel
    constexpr_names = {p.name for p in kernel.params if p.is_constexpr}
    signature, constexprs, attrs = {}, {}, {}
    for index, name in enumerate(kernel.arg_names):
        value = launch.args[name]
        if name in constexpr_names:
            signature[name], constexprs[name] = "constexpr", value
            continue
        kind, aligned = _arg_type(value)
        signature[name] = kind
        if kind == "constexpr":
            constexprs[name] = value
        elif aligned:
            attrs[(index,)] = [["tt.divisibility", 16]]
    src = ASTSource(fn=kernel, signature=signature, constexprs=constexprs, attrs=attrs)
    options = {"num_warps": launch.num_warps, "num_stages": launch.num_stages,
               "enable_fp_fusion": True}
    return triton.compile(src, target=GPUTarget("cuda", arch, 32), options=options)


def _cuobjdump() -> str:
    import triton

    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin",
                        "cuobjdump")


def cubin_resources(cubin: bytes) -> dict[str, int]:
    """REG / SHARED / LOCAL / STACK of the (single) function in a cubin."""
    with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as f:
        f.write(cubin)
        path = f.name
    try:
        text = subprocess.run([_cuobjdump(), "--dump-resource-usage", path], check=True,
                              capture_output=True, text=True).stdout
    finally:
        os.unlink(path)
    line = next(row for row in text.splitlines() if "REG:" in row)
    return {key: int(val) for key, val in re.findall(r"(\w+):(\d+)", line)}


def parse_arch(arch: int | str) -> int:
    """90, "90", "sm_90", "sm90" -> 90."""
    if isinstance(arch, int):
        return arch
    digits = "".join(ch for ch in str(arch) if ch.isdigit())
    if not digits:
        raise ValueError(f"arch must be like 90 or 'sm_90', got {arch!r}")
    return int(digits)


def compile_config(kernel_name: str, config: Config, arch: int | str,
                   shape: KernelShape | None = None) -> ResourceUsage:
    """Compile one config of one kernel for ``arch`` (80, 90, "sm_90", ...) and measure it.

    shape: the problem dimensions the tiles depend on (default: head_dim 64, 256 features,
    bucket 64, bf16). Keys missing from ``config`` take the kernel's static default, except
    those outside its space (``KernelSpec.optional``, e.g. the sparse kernel's BLOCK_DK),
    which take the launch's: the default of ``shape`` on ``arch``
    (``KernelSpec.default_for``), if it has them. Never raises for a config that fails to
    compile: the result has ok=False and the compiler's message as reason.
    """
    shape = shape or KernelShape()
    arch = parse_arch(arch)
    if kernels_interpreted():
        return _in_child([(kernel_name, dict(config), arch, shape)], jobs=1)[0]
    return _compile_one(kernel_name, config, arch, shape)


def _compile_one(kernel_name: str, config: Config, arch: int, shape: KernelShape) -> ResourceUsage:
    from sbbench.kernels import SEARCH_SPACES

    spec = SEARCH_SPACES[kernel_name]
    limits = limits_for(arch)
    full = dict(spec.default)
    base = spec.default_for(limits, shape)  # keys outside the space: the launch's (optional)
    full.update({k: base[k] for k in spec.optional if k in base})
    full.update(config)
    key = tuple(sorted(full.items()))
    try:
        compiled = _compile(spec.plan(shape, full, limits=limits), arch)
        res = cubin_resources(compiled.asm["cubin"])
    except Exception as exc:  # a compile failure is a result, not an error
        message = " ".join(str(exc).split())[-300:]  # the source comes first, the error last
        return ResourceUsage(kernel_name, arch, key, 0, 0, 0, False,
                             f"compile failed: {type(exc).__name__}: {message}")
    shared = int(compiled.metadata.shared) + res.get("SHARED", 0)
    registers = res.get("REG", 0)
    # ptxas puts register spills in the stack frame (cuobjdump's STACK; `ptxas -v` reports
    # them as "bytes stack frame, ... spill stores"). STACK + LOCAL is the local memory per
    # thread, what the driver returns as CU_FUNC_ATTRIBUTE_LOCAL_SIZE_BYTES and triton's
    # CompiledKernel reports as n_spills.
    spills = res.get("STACK", 0) + res.get("LOCAL", 0)
    threads = 32 * full["num_warps"]
    reasons = []
    if shared > limits.shared_bytes:
        reasons.append(f"shared {shared} > {limits.shared_bytes}")
    if registers * threads > limits.registers_per_sm:
        reasons.append(f"registers {registers} x {threads} threads > {limits.registers_per_sm}")
    return ResourceUsage(kernel_name, arch, key, shared, registers, spills, not reasons,
                         "; ".join(reasons))


def _compile_job(job):
    kernel_name, config, arch, shape = job
    return _compile_one(kernel_name, config, arch, shape)


def _run_jobs(work: list, jobs: int) -> list[ResourceUsage]:
    if jobs <= 1 or len(work) <= 1:
        return [_compile_job(job) for job in work]
    import multiprocessing

    with ProcessPoolExecutor(max_workers=jobs,
                             mp_context=multiprocessing.get_context("spawn")) as pool:
        return list(pool.map(_compile_job, work, chunksize=1))


def _in_child(work: list, jobs: int) -> list[ResourceUsage]:
    """Run compile jobs in a fresh python without TRITON_INTERPRET (see module docstring)."""
    env = dict(os.environ)
    env.pop("TRITON_INTERPRET", None)
    payload = json.dumps({"jobs": jobs, "work": [
        [name, config, arch, asdict(shape)] for name, config, arch, shape in work]})
    proc = subprocess.run([sys.executable, "-m", "sbbench.kernels.static", "--worker"],
                          input=payload, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"static compile worker failed:\n{proc.stderr[-3000:]}")
    return [_from_record(r) for r in json.loads(proc.stdout.strip().splitlines()[-1])]


def _from_record(record: dict[str, Any]) -> ResourceUsage:
    record = dict(record)
    record["config"] = tuple(sorted(record["config"].items()))
    return ResourceUsage(**record)


def _worker() -> None:
    request = json.loads(sys.stdin.read())
    work = [(name, config, arch, KernelShape(**shape))
            for name, config, arch, shape in request["work"]]
    print(json.dumps(to_records(_run_jobs(work, request["jobs"]))))


def sweep(kernel_names=None, archs=(80, 90), shape: KernelShape | None = None,
          default_only: bool = False, jobs: int = 1,
          use_keep: bool = True) -> list[ResourceUsage]:
    """Compile every config that ``keep`` leaves (all of them without ``use_keep``, or only
    the defaults) for each arch.

    jobs > 1 compiles in worker processes (spawned: the compiler is single-threaded)."""
    shape = shape or KernelShape()
    archs = [parse_arch(a) for a in archs]
    from sbbench.kernels import SEARCH_SPACES

    names = list(kernel_names or SEARCH_SPACES)
    work = []
    for arch in archs:
        for name in names:
            spec = SEARCH_SPACES[name]
            if default_only:
                configs = [spec.default]
            elif use_keep:
                configs = spec.configs(limits_for(arch), shape)
            else:
                configs = expand_space(spec.space)
            work += [(name, dict(c), arch, shape) for c in configs]
    if kernels_interpreted():
        return _in_child(work, jobs)
    return _run_jobs(work, jobs)


def compile_many(work: list, jobs: int = 1) -> list[ResourceUsage]:
    """Compile (kernel name, config, arch, KernelShape) jobs (in a child process when the
    kernels are interpreted, see the module docstring)."""
    if kernels_interpreted():
        return _in_child(work, jobs)
    return _run_jobs(work, jobs)


def format_table(rows: list[ResourceUsage]) -> str:
    """Markdown table, one row per (kernel, arch, config)."""
    keys = sorted({k for r in rows for k, _ in r.config})
    head = ["kernel", "arch", *keys, "shared (B)", "regs", "spills (B)", "ok", "reason"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cfg = r.config_dict
        cells = [r.kernel, f"sm_{r.arch}", *(str(cfg.get(k, "")) for k in keys),
                 str(r.shared_bytes), str(r.registers), str(r.spills),
                 "yes" if r.ok else "no", r.reason]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def to_records(rows: list[ResourceUsage]) -> list[dict[str, Any]]:
    out = []
    for r in rows:
        record = asdict(r)
        record["config"] = r.config_dict
        out.append(record)
    return out


if __name__ == "__main__":  # python -m sbbench.kernels.static --worker (see _in_child)
    if sys.argv[1:] == ["--worker"]:
        _worker()
    else:
        sys.exit("usage: python -m sbbench.kernels.static --worker (JSON on stdin); "
                 "for the table run scripts/static_compile.py")
