#!/usr/bin/env python
"""One command for a GPU session: the kernels' GPU tests, then timings of each kernel and
of the Triton forwards against the torch path and exact SDPA (flash backend).

    python scripts/device_check.py OUTDIR            # on the GPU (scripts/device_check.sh)
    python scripts/device_check.py OUTDIR --dry-run  # CPU, interpreter, tiny sizes: checks
                                                     # the script itself, measures nothing

Writes OUTDIR/device_check.md (tables), device_check.json (environment + every record),
device_check.csv (one row per timed case) and pytest.log / pytest.xml. Budgeted to finish
in under 8 minutes on one H200: the test run has its own timeout, and timing points stop
starting once ``--budget-s`` is spent (the skipped points are listed, not silently lost).
The first point is the issue's target (seq 32768, 16 heads, head_dim 64, 256 features,
bucket 64, bf16), so it is measured even when the budget runs out.
"""

from __future__ import annotations

import argparse
import csv
import importlib
import json
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GPU_SEQS = (32768, 4096, 8192, 16384, 65536)
GPU_HEAD_DIMS = (64, 128)
TARGET = {"seq": 32768, "head_dim": 64, "speedup_vs_sdpa": 5.0, "roofline_fraction": 0.4}


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("outdir", help="folder for the table, JSON, CSV and test logs")
    p.add_argument("--dry-run", action="store_true",
                   help="CPU + TRITON_INTERPRET=1 at tiny sizes (checks the script only)")
    p.add_argument("--seqs", type=int, nargs="+", default=None)
    p.add_argument("--head-dims", type=int, nargs="+", default=None)
    p.add_argument("--heads", type=int, default=None, help="default 16 (2 in a dry run)")
    p.add_argument("--n-features", type=int, default=None, help="default 256 (32 dry run)")
    p.add_argument("--bucket-size", type=int, default=None, help="default 64 (16 dry run)")
    p.add_argument("--budget-s", type=float, default=420.0,
                   help="stop starting timing points after this many seconds in all")
    p.add_argument("--test-timeout-s", type=float, default=210.0)
    p.add_argument("--skip-tests", action="store_true")
    p.add_argument("--no-torch-path", action="store_true",
                   help="do not time the torch path (it is the slowest case)")
    p.add_argument("--cases", default=None,
                   help="comma-separated subset of the timed cases (default: all; names as "
                        "in the table, e.g. sdpa_flash,triton_scatterbrain)")
    args = p.parse_args(argv)
    if args.dry_run:
        args.seqs = args.seqs or [64]
        args.head_dims = args.head_dims or [32]
        args.heads = args.heads or 2
        args.n_features = args.n_features or 32
        args.bucket_size = args.bucket_size or 16
    else:
        args.seqs = args.seqs or list(GPU_SEQS)
        args.head_dims = args.head_dims or list(GPU_HEAD_DIMS)
        args.heads = args.heads or 16
        args.n_features = args.n_features or 256
        args.bucket_size = args.bucket_size or 64
    args.cases = [c.strip() for c in args.cases.split(",") if c.strip()] if args.cases else None
    for name in ("seqs", "head_dims"):
        if any(x < 1 for x in getattr(args, name)):
            p.error(f"--{name.replace('_', '-')} must be positive")
    if args.n_features < 2 or args.n_features % 2:
        p.error("--n-features must be even and >= 2")
    return args


def run_tests(outdir: Path, timeout_s: float, dry_run: bool) -> dict:
    """pytest -m gpu on the kernel GPU tests (skips everything without CUDA)."""
    cmd = [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider",
           f"--junitxml={outdir / 'pytest.xml'}", str(ROOT / "tests" / "test_kernels_gpu.py")]
    env = dict(os.environ)
    if not dry_run:
        env.pop("TRITON_INTERPRET", None)
    start = time.time()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, env=env,
                              cwd=ROOT)
        log, rc = proc.stdout + proc.stderr, proc.returncode
    except subprocess.TimeoutExpired as err:
        log = (err.stdout or b"").decode() if isinstance(err.stdout, bytes) else (err.stdout or "")
        log += f"\nTIMEOUT after {timeout_s:.0f} s"
        rc = 124
    (outdir / "pytest.log").write_text(log)
    last = [line for line in log.strip().splitlines() if line.strip()][-1:] or [""]
    return {"command": " ".join(cmd), "returncode": rc, "seconds": round(time.time() - start, 1),
            "summary": last[0]}


def environment(device) -> dict:
    import torch
    import triton

    env = {"python": platform.python_version(), "torch": torch.__version__,
           "triton": triton.__version__, "device": str(device),
           "date": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
    try:
        env["git"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                                    capture_output=True, text=True).stdout.strip()
    except OSError:
        env["git"] = "unknown"
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
        major, minor = torch.cuda.get_device_capability(device)
        env["capability"] = f"sm_{major}{minor}"
        env["cuda"] = torch.version.cuda
    return env


def device_profile(device):
    """The sbbench device profile of this GPU (for the roofline), or None."""
    if device.type != "cuda":
        return None
    try:
        import torch

        from sbbench.core.devices import get_device, match_profile

        name = match_profile(torch.cuda.get_device_name(device))
        return get_device(name) if name else None
    except Exception:
        return None


class Point:
    """Inputs and prepared intermediates of one (head_dim, seq) timing point."""

    def __init__(self, kernels, seq, head_dim, heads, n_features, bucket_size, device,
                 dtype):
        import torch

        from sbbench.attention.features import draw_projections
        from sbbench.attention.lsh import draw_hashes, lsh_order

        gen = torch.Generator().manual_seed(0)
        shape = (1, heads, seq, head_dim)
        self.q, self.k, self.v = (torch.randn(shape, generator=gen).to(device, dtype)
                                  for _ in range(3))
        self.projections = draw_projections(n_features, head_dim, generator=gen).to(device)
        self.hashes = draw_hashes(1, head_dim, generator=gen).to(device)
        self.scale = 1.0 / math.sqrt(head_dim)
        self.bucket_size = bucket_size
        k = kernels
        self.w = k.scaled_projections(self.projections, self.scale, device, dtype)
        self.q_shift, self.q_bias = k.feature_stats(self.q, self.w, self.scale)
        k_shift, self.k_bias = k.feature_stats(self.k, self.w, self.scale)
        self.lk = k.key_log_scale(k_shift, self.k_bias, None)
        self.kv, self.ks = k.lowrank_state(self.k, self.v, self.w, self.k_bias, self.lk)
        self.order = lsh_order(self.q.float(), self.k.float(), self.hashes, bucket_size)
        self.lowrank = dict(weights=self.w, q_shift=self.q_shift, q_bias=self.q_bias,
                            k_bias=self.k_bias, lk=self.lk)
        if k.sparse.fuse_by_default(head_dim):  # what scatterbrain_forward runs
            self.lowrank.update(kv=self.kv, ks=self.ks)
        else:
            num, den = k.lowrank_apply(self.q, self.w, self.q_shift, self.kv, self.ks, sums=True)
            self.lowrank.update(num=num, den=den)

    def common(self, sparse, causal=False, lowrank=True):
        return dict(scale=self.scale, projections=self.projections if lowrank else None,
                    hashes=self.hashes if sparse == "lsh" else None,
                    bucket_size=self.bucket_size if sparse else None, sparse=sparse,
                    causal=causal, key_padding_mask=None)


def cases(kernels, point, no_torch_path, device):
    """name -> (kind, method for the cost model, causal, closure)."""
    import torch.nn.functional as F

    from sbbench.attention.core import attend
    from sbbench.attention.lsh import lsh_order

    p, k = point, kernels
    fwd = k.scatterbrain_forward

    def sdpa():
        if device.type == "cuda":
            from torch.nn.attention import SDPBackend, sdpa_kernel

            with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                return F.scaled_dot_product_attention(p.q, p.k, p.v)
        return F.scaled_dot_product_attention(p.q, p.k, p.v)

    out = {
        "sdpa_flash": ("baseline", "exact", False, sdpa),
        "triton_scatterbrain": ("forward", "scatterbrain", False,
                                lambda: fwd(p.q, p.k, p.v, **p.common("lsh"))),
        "triton_scatterbrain_causal": ("forward", "scatterbrain", True,
                                       lambda: fwd(p.q, p.k, p.v, **p.common("lsh", True))),
        "triton_performer": ("forward", "performer", False,
                             lambda: fwd(p.q, p.k, p.v, **p.common(None))),
        "triton_lsh": ("forward", "lsh", False,
                       lambda: fwd(p.q, p.k, p.v, **p.common("lsh", lowrank=False))),
        "triton_local_lowrank": ("forward", "scatterbrain_local", False,
                                 lambda: fwd(p.q, p.k, p.v, **p.common("local"))),
        "kernel_feature_stats": ("kernel", None, False,
                                 lambda: k.feature_stats(p.q, p.w, p.scale)),
        "kernel_lowrank_state": ("kernel", None, False,
                                 lambda: k.lowrank_state(p.k, p.v, p.w, p.k_bias, p.lk)),
        "kernel_lowrank_apply": ("kernel", None, False,
                                 lambda: k.lowrank_apply(p.q, p.w, p.q_shift, p.kv, p.ks)),
        "kernel_lowrank_causal": ("kernel", None, True,
                                  lambda: k.lowrank_causal(p.q, p.k, p.v, p.w, p.q_shift,
                                                           p.k_bias, p.lk)),
        "kernel_sparse_round": ("kernel", None, False,
                                lambda: k.sparse_attention(
                                    p.q, p.k, p.v, scale=p.scale, bucket_size=p.bucket_size,
                                    q_order=p.order[0], k_order=p.order[1],
                                    lowrank=p.lowrank)),
        "torch_lsh_order": ("kernel", None, False,
                            lambda: lsh_order(p.q.float(), p.k.float(), p.hashes,
                                              p.bucket_size)),
    }
    if not no_torch_path:
        out["torch_scatterbrain"] = ("forward", "scatterbrain", False,
                                     lambda: attend(p.q, p.k, p.v, **p.common("lsh")))
    return out


def model_numbers(method, causal, seq, head_dim, heads, args, dtype_name, profile):
    """FLOPs and bytes of the cost model, and its roofline time (s) on this GPU."""
    if method is None:
        return None, None, None
    from sbbench.core.types import Budget, Problem
    from sbbench.measure import costmodel

    problem = Problem(seq_len=seq, head_dim=head_dim, batch=1, heads=heads, dtype=dtype_name,
                      causal=causal)
    if method == "exact":
        budget = Budget("exact")
    elif method == "performer":
        budget = Budget("performer", n_features=args.n_features)
    elif method == "lsh":
        budget = Budget("lsh", bucket_size=args.bucket_size, n_hashes=1)
    else:
        budget = Budget(method, n_features=args.n_features, bucket_size=args.bucket_size,
                        n_hashes=1)
    bound = costmodel.roofline_time_s(problem, budget, profile) if profile else None
    return costmodel.flops(problem, budget), costmodel.bytes_moved(problem, budget), bound


def main(argv=None) -> int:
    args = parse_args(argv)
    start = time.time()
    outdir = Path(args.outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    if args.dry_run:
        os.environ["TRITON_INTERPRET"] = "1"
    sys.path.insert(0, str(ROOT))
    import torch
    from sbbench.kernels.testing import kernels_for_tests

    from sbbench.measure.timing import time_fn

    if not args.dry_run and not torch.cuda.is_available():
        print("device_check: no CUDA GPU here; use --dry-run to check the script on the CPU",
              file=sys.stderr)
        return 2
    kernels = kernels_for_tests() if args.dry_run else importlib.import_module("sbbench.kernels")
    if not getattr(kernels, "HAVE_TRITON", False):
        print("device_check: triton is not installed", file=sys.stderr)
        return 2
    device = torch.device("cpu" if args.dry_run else "cuda")
    dtype, dtype_name = torch.bfloat16, "bfloat16"
    profile = device_profile(device)
    report = {"environment": environment(device), "args": vars(args), "tests": None,
              "records": [], "skipped": [], "target": dict(TARGET)}
    if not args.skip_tests:
        report["tests"] = run_tests(outdir, args.test_timeout_s, args.dry_run)
        print(f"tests: {report['tests']['summary']} ({report['tests']['seconds']} s)")

    timing = dict(warmup_ms=5.0, rep_ms=10.0, min_samples=2) if args.dry_run \
        else dict(warmup_ms=25.0, rep_ms=150.0, min_samples=5, max_samples=200)
    points = [(d, s) for d in args.head_dims for s in args.seqs]
    target = (TARGET["head_dim"], TARGET["seq"])
    if target in points:  # the target first: measured even if the budget runs out
        points.remove(target)
        points.insert(0, target)
    for head_dim, seq in points:
        if time.time() - start > args.budget_s:
            report["skipped"].append({"head_dim": head_dim, "seq": seq,
                                      "reason": f"time budget {args.budget_s:.0f} s spent"})
            continue
        try:
            point = Point(kernels, seq, head_dim, args.heads, args.n_features,
                          args.bucket_size, device, dtype)
        except Exception as err:  # e.g. out of memory: record it, go on
            report["skipped"].append({"head_dim": head_dim, "seq": seq,
                                      "reason": f"{type(err).__name__}: {err}"[:300]})
            continue
        sdpa_ms = None
        timed = cases(kernels, point, args.no_torch_path, device)
        unknown = set(args.cases or ()) - set(timed)
        if unknown:
            print(f"device_check: unknown --cases {sorted(unknown)}; valid: {', '.join(timed)}",
                  file=sys.stderr)
            return 2
        for name, (kind, method, causal, fn) in timed.items():
            if args.cases and name not in args.cases:
                continue
            record = {"name": name, "kind": kind, "seq": seq, "head_dim": head_dim,
                      "heads": args.heads, "batch": 1, "dtype": dtype_name,
                      "n_features": args.n_features, "bucket_size": args.bucket_size,
                      "n_hashes": 1, "causal": causal}
            try:
                t = time_fn(fn, device=device, **timing)
                record.update(median_ms=t.median_ms, p20_ms=t.p20_ms, p80_ms=t.p80_ms,
                              n_samples=t.n_samples, first_call_ms=t.first_call_ms,
                              timer=t.timer)
            except Exception as err:
                record["error"] = f"{type(err).__name__}: {err}"[:300]
                report["records"].append(record)
                continue
            flops, nbytes, bound_s = model_numbers(method, causal, seq, head_dim, args.heads,
                                                   args, dtype_name, profile)
            if flops is not None:
                record.update(model_flops=flops, model_bytes=nbytes,
                              tflop_s=flops / (t.median_ms * 1e-3) / 1e12)
            if bound_s is not None:
                record["roofline_fraction"] = bound_s / (t.median_ms * 1e-3)
            if name == "sdpa_flash":
                sdpa_ms = t.median_ms
            if sdpa_ms and name != "sdpa_flash":
                record["speedup_vs_sdpa"] = sdpa_ms / t.median_ms
            if name in ("kernel_lowrank_state", "kernel_feature_stats"):
                # compulsory traffic: k (and v) read once
                el = point.q.element_size()
                read = point.k.numel() * el + (point.v.numel() * el
                                               if name == "kernel_lowrank_state" else 0)
                record["achieved_gb_s"] = read / (t.median_ms * 1e-3) / 1e9
            report["records"].append(record)
        print(f"head_dim {head_dim} seq {seq}: done ({time.time() - start:.0f} s)")
        del point
        if device.type == "cuda":
            torch.cuda.empty_cache()

    report["target"].update(verdict(report["records"]))
    report["seconds"] = round(time.time() - start, 1)
    write_outputs(outdir, report)
    print((outdir / "device_check.md").read_text())
    return 0


def verdict(records) -> dict:
    """The issue's targets at the target point, as measured (None if not measured)."""
    hit = [r for r in records if r["name"] == "triton_scatterbrain" and
           r["seq"] == TARGET["seq"] and r["head_dim"] == TARGET["head_dim"]
           and "median_ms" in r]
    if not hit:
        return {"measured": False}
    r = hit[0]
    speed, roof = r.get("speedup_vs_sdpa"), r.get("roofline_fraction")
    return {"measured": True, "median_ms": r["median_ms"], "speedup_vs_sdpa_measured": speed,
            "roofline_fraction_measured": roof,
            "speedup_met": speed is not None and speed >= TARGET["speedup_vs_sdpa"],
            "roofline_met": roof is not None and roof >= TARGET["roofline_fraction"]}


CSV_FIELDS = ["name", "kind", "seq", "head_dim", "heads", "batch", "dtype", "n_features",
              "bucket_size", "n_hashes", "causal", "median_ms", "p20_ms", "p80_ms",
              "n_samples", "first_call_ms", "timer", "model_flops", "model_bytes", "tflop_s",
              "roofline_fraction", "speedup_vs_sdpa", "achieved_gb_s", "error"]


def write_outputs(outdir: Path, report: dict) -> None:
    with open(outdir / "device_check.json", "w") as f:
        json.dump(report, f, indent=1, default=str)
    with open(outdir / "device_check.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(report["records"])
    (outdir / "device_check.md").write_text(markdown(report))


def _fmt(value, digits=3):
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def markdown(report: dict) -> str:
    env = report["environment"]
    lines = ["# Device check: Triton Scatterbrain kernels", "",
             "- " + ", ".join(f"{k} {v}" for k, v in env.items()),
             f"- budget: n_features {report['args']['n_features']}, bucket "
             f"{report['args']['bucket_size']}, 1 hash round, {report['args']['heads']} heads, "
             f"batch 1, bf16; {report.get('seconds')} s in all"]
    if report["tests"]:
        t = report["tests"]
        lines.append(f"- GPU tests: `{t['summary']}` (exit {t['returncode']}, {t['seconds']} s;"
                     f" log in pytest.log)")
    tgt = report["target"]
    if tgt.get("measured"):
        lines.append(f"- target (seq {tgt['seq']}, head_dim {tgt['head_dim']}): triton "
                     f"scatterbrain {tgt['median_ms']:.3f} ms, "
                     f"{_fmt(tgt['speedup_vs_sdpa_measured'])}x vs SDPA flash (target "
                     f">= {tgt['speedup_vs_sdpa']}x: {'met' if tgt['speedup_met'] else 'NOT met'})"
                     f", {_fmt(tgt['roofline_fraction_measured'])} of the roofline (target >= "
                     f"{tgt['roofline_fraction']}: {'met' if tgt['roofline_met'] else 'NOT met'})")
    else:
        lines.append("- target point not measured")
    lines += ["", "Median ms (20th-80th percentile in the CSV); speedup = SDPA flash time / "
              "this time; roofline = cost-model bound / measured.", ""]
    records = [r for r in report["records"]]
    names = list(dict.fromkeys(r["name"] for r in records))
    points = list(dict.fromkeys((r["head_dim"], r["seq"]) for r in records))
    lines.append("| head_dim | seq | " + " | ".join(names) + " |")
    lines.append("|---|---|" + "---|" * len(names))
    by_key = {(r["head_dim"], r["seq"], r["name"]): r for r in records}
    for d, s in points:
        cells = []
        for n in names:
            r = by_key.get((d, s, n))
            cells.append("" if r is None else ("error" if "error" in r else _fmt(r["median_ms"])))
        lines.append(f"| {d} | {s} | " + " | ".join(cells) + " |")
    lines += ["", "| name | head_dim | seq | ms | speedup vs SDPA | TFLOP/s (model) | roofline "
              "| GB/s |", "|---|---|---|---|---|---|---|---|"]
    for r in records:
        if "error" in r:
            lines.append(f"| {r['name']} | {r['head_dim']} | {r['seq']} | error: "
                         f"{r['error'][:80]} | | | | |")
            continue
        lines.append(f"| {r['name']} | {r['head_dim']} | {r['seq']} | {_fmt(r['median_ms'])} | "
                     f"{_fmt(r.get('speedup_vs_sdpa'))} | {_fmt(r.get('tflop_s'))} | "
                     f"{_fmt(r.get('roofline_fraction'))} | {_fmt(r.get('achieved_gb_s'))} |")
    if report["skipped"]:
        lines += ["", "Skipped points:", ""]
        lines += [f"- head_dim {s['head_dim']} seq {s['seq']}: {s['reason']}"
                  for s in report["skipped"]]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
