"""Time and peak memory of the PyTorch path: scatterbrain_attention vs exact attention (SDPA).

Each (method, seq) point runs in a fresh child process, so its peak resident memory
(``ru_maxrss``) is that point's alone; the child times the call with sbbench's one timing
wrapper (warm-up, then >= 5 samples, all kept). Random projections and hash functions
are drawn outside the timed call (a model would hold them); hashing and sorting are
inside it.

    python benchmarks/torch_path.py --out reports/torch_path
    python benchmarks/torch_path.py --seq-len 1024,4096 --out /tmp/tp   # quicker

Writes ``results.csv``, ``results.json`` and ``README.md`` (table, crossover, targets).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import subprocess
import sys
from pathlib import Path

DEFAULT_SEQ = "1024,2048,4096,8192,16384,32768,65536"


def run_point(method: str, seq: int, args: argparse.Namespace) -> dict:
    """In the child: build inputs, time one method, report peak RSS."""
    import torch

    from sbbench.attention import (
        draw_hashes,
        draw_projections,
        exact_attention,
        scatterbrain_attention,
    )
    from sbbench.measure.timing import time_fn

    torch.manual_seed(0)
    shape = (1, args.heads, seq, args.head_dim)
    q, k, v = (torch.randn(shape) for _ in range(3))
    gen = torch.Generator().manual_seed(0)
    projections = draw_projections(args.features, args.head_dim, generator=gen)
    hashes = draw_hashes(args.hashes, args.head_dim, generator=gen)
    base_rss = _rss_bytes()
    if method == "exact":
        fn = lambda: exact_attention(q, k, v)  # torch SDPA
    else:
        fn = lambda: scatterbrain_attention(
            q, k, v, n_features=args.features, bucket_size=args.bucket_size,
            n_hashes=args.hashes, projections=projections, hashes=hashes, backend="torch")
    with torch.inference_mode():
        timing = time_fn(fn, device="cpu", warmup_ms=args.warmup_ms, rep_ms=args.rep_ms,
                         min_samples=args.min_samples)
    return {
        "method": method, "seq_len": seq, "heads": args.heads, "head_dim": args.head_dim,
        "n_features": args.features if method != "exact" else 0,
        "bucket_size": args.bucket_size if method != "exact" else 0,
        "n_hashes": args.hashes if method != "exact" else 0,
        "median_ms": timing.median_ms, "p20_ms": timing.p20_ms, "p80_ms": timing.p80_ms,
        "n_samples": len(timing.samples_ms), "samples_ms": list(timing.samples_ms),
        "peak_rss_bytes": _peak_rss_bytes(), "rss_before_call_bytes": base_rss,
        "torch_threads": torch.get_num_threads(),
    }


def _peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _child(method: str, seq: int, argv: list[str]) -> dict:
    cmd = [sys.executable, __file__, "--child", method, str(seq), *argv]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
    if done.returncode != 0:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return {"method": method, "seq_len": seq, "status": "failed", "reason": tail}
    row = json.loads(done.stdout.strip().splitlines()[-1])
    row["status"] = "ok"
    return row


def _report(rows: list[dict], args: argparse.Namespace, command: str) -> str:
    from tabulate import tabulate

    by = {(r["method"], r["seq_len"]): r for r in rows}
    seqs = sorted({r["seq_len"] for r in rows})
    table, crossover = [], None
    for seq in seqs:
        sb, ex = by.get(("scatterbrain", seq), {}), by.get(("exact", seq), {})
        speedup = (ex["median_ms"] / sb["median_ms"]
                   if sb.get("status") == "ok" and ex.get("status") == "ok" else None)
        if speedup is not None and speedup > 1 and crossover is None:
            crossover = seq
        if speedup is not None and speedup <= 1:
            crossover = None  # must stay ahead from here on
        table.append([
            seq,
            _ms(sb), _ms(ex), f"{speedup:.2f}x" if speedup else "-",
            _gib(sb), _gib(ex),
        ])
    headers = ["seq", "scatterbrain ms (p20-p80)", "exact SDPA ms (p20-p80)",
               "speedup", "scatterbrain peak RSS GiB", "exact peak RSS GiB"]
    lines = [
        "# PyTorch path: Scatterbrain vs exact attention on the CPU",
        "",
        f"- command: `{command}`",
        f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}",
        f"- machine: {_cpu_model()}, {os.cpu_count()} cores, torch threads "
        f"{rows[0].get('torch_threads', '?') if rows else '?'}",
        f"- problem: float32, batch 1, {args.heads} heads, head_dim {args.head_dim}; "
        f"scatterbrain n_features {args.features}, bucket_size {args.bucket_size}, "
        f"{args.hashes} hash round(s), backend torch",
        "- timing: sbbench.measure.timing.time_fn (warm-up, then >= "
        f"{args.min_samples} samples; median with p20-p80); projections and hash functions "
        "drawn outside the timed call, hashing and sorting inside",
        "- memory: peak resident set (ru_maxrss) of a child process that ran only that point "
        "(includes the Python/torch runtime and the inputs)",
        "",
        tabulate(table, headers=headers, tablefmt="github"),
        "",
    ]
    if crossover is not None:
        lines.append(f"Crossover: Scatterbrain is faster than exact from seq {crossover} on "
                     "(among the lengths measured).")
    else:
        lines.append("Crossover: Scatterbrain was not faster than exact at every length from "
                     "some point on in this run.")
    for seq, target in ((16384, "speedup >= 8x"), (65536, "peak RSS < 2 GiB")):
        sb, ex = by.get(("scatterbrain", seq)), by.get(("exact", seq))
        if not sb or sb.get("status") != "ok":
            lines.append(f"Target at seq {seq} ({target}): not measured in this run.")
        elif seq == 16384 and ex and ex.get("status") == "ok":
            ratio = ex["median_ms"] / sb["median_ms"]
            lines.append(f"Target at seq {seq} ({target}): measured {ratio:.1f}x -> "
                         f"{'met' if ratio >= 8 else 'NOT met'}.")
        elif seq == 65536:
            gib = sb["peak_rss_bytes"] / 2**30
            lines.append(f"Target at seq {seq} ({target}): measured {gib:.2f} GiB -> "
                         f"{'met' if gib < 2 else 'NOT met'}.")
    failed = [r for r in rows if r.get("status") != "ok"]
    for r in failed:
        lines.append(f"Failed: {r['method']} seq {r['seq_len']}: {r.get('reason')}")
    return "\n".join(lines) + "\n"


def _ms(row: dict) -> str:
    if row.get("status") != "ok":
        return row.get("status", "-")
    return f"{row['median_ms']:.1f} ({row['p20_ms']:.1f}-{row['p80_ms']:.1f})"


def _gib(row: dict) -> str:
    return f"{row['peak_rss_bytes'] / 2**30:.2f}" if row.get("status") == "ok" else "-"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seq-len", default=DEFAULT_SEQ, help="comma-separated lengths")
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--features", type=int, default=128)
    parser.add_argument("--bucket-size", type=int, default=64)
    parser.add_argument("--hashes", type=int, default=1)
    parser.add_argument("--warmup-ms", type=float, default=25.0)
    parser.add_argument("--rep-ms", type=float, default=100.0)
    parser.add_argument("--min-samples", type=int, default=5)
    parser.add_argument("--methods", default="scatterbrain,exact")
    parser.add_argument("--out", default="reports/torch_path")
    parser.add_argument("--child", nargs=2, metavar=("METHOD", "SEQ"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(run_point(args.child[0], int(args.child[1]), args)))
        return 0
    try:
        seqs = [int(s) for s in args.seq_len.split(",") if s]
    except ValueError:
        parser.error(f"--seq-len must be comma-separated integers, got {args.seq_len!r}")
    methods = [m for m in args.methods.split(",") if m]
    if not set(methods) <= {"scatterbrain", "exact"}:
        parser.error(f"--methods must name scatterbrain and/or exact, got {args.methods!r}")
    passthrough = [a for a in argv if a != "--child"]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    total = len(seqs) * len(methods)
    for seq in seqs:
        for method in methods:
            print(f"[{len(rows) + 1}/{total}] {method} seq {seq} ...", file=sys.stderr,
                  flush=True)
            rows.append(_child(method, seq, passthrough))
            (out / "results.json").write_text(json.dumps(rows, indent=1))  # keep partials
    import pandas as pd

    pd.DataFrame([{k: v for k, v in r.items() if k != "samples_ms"} for r in rows]).to_csv(
        out / "results.csv", index=False)
    command = "python benchmarks/torch_path.py " + " ".join(argv)
    (out / "README.md").write_text(_report(rows, args, command.strip()))
    print((out / "README.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
