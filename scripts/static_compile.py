#!/usr/bin/env python
"""Compile the kernels' search spaces ahead of time for sm_80 / sm_90 (no GPU needed) and
print shared memory, registers and spills per config (kernels/static.py does the work).

    python scripts/static_compile.py                         # every kept config, d=64
    python scripts/static_compile.py --head-dim 64 128 --jobs 2 --json out.json
    python scripts/static_compile.py --default-only          # the defaults only
    python scripts/static_compile.py --all-configs           # ignore keep() (to check it)
    python scripts/static_compile.py --matrix --markdown reports/kernels/static_resources.md
        # the default each launch runs (default_for) per dtype x head_dim x bucket
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", nargs="+", default=["80", "90"],
                        help="compute capabilities, e.g. 80 90 or sm_90 (default: 80 90)")
    parser.add_argument("--kernels", nargs="+", default=None,
                        help="kernel names (default: every kernel in SEARCH_SPACES)")
    parser.add_argument("--head-dim", nargs="+", type=int, default=[64])
    parser.add_argument("--n-features", type=int, default=256)
    parser.add_argument("--bucket-size", type=int, default=64)
    parser.add_argument("--n-hashes", type=int, default=1)
    parser.add_argument("--dtype", choices=["bf16", "fp16", "fp32"], default="bf16")
    parser.add_argument("--default-only", action="store_true", help="only each default")
    parser.add_argument("--all-configs", action="store_true",
                        help="the whole space, without the keep() filter")
    parser.add_argument("--matrix", action="store_true",
                        help="the default config of every kernel for each dtype (float32, "
                             "float16, bfloat16) x head_dim (32..256) x bucket (16..256); "
                             "exit status 1 if one spills or exceeds a limit")
    parser.add_argument("--matrix-half16", nargs="+", type=int, default=[32, 64, 128, 256],
                        help="head_dims compiled for float16 in --matrix (default: all)")
    parser.add_argument("--jobs", type=int, default=1, help="compile processes")
    parser.add_argument("--json", help="also write the rows as JSON to this file")
    parser.add_argument("--markdown", help="also write the table (with a header) here")
    args = parser.parse_args(argv)

    try:
        import triton
        from sbbench.kernels import SEARCH_SPACES, KernelShape, static

        from sbbench.core.provenance import now_utc, revision_text
    except ImportError as err:
        print(f"static compile needs triton and sbbench.kernels: {err}", file=sys.stderr)
        return 2
    names = args.kernels or list(SEARCH_SPACES)
    unknown = [n for n in names if n not in SEARCH_SPACES]
    if unknown:
        print(f"unknown kernels {unknown}; valid: {', '.join(SEARCH_SPACES)}", file=sys.stderr)
        return 2
    archs = [static.parse_arch(a) for a in args.arch]
    if args.matrix:
        return _matrix(args, names, archs, argv)
    start = time.time()
    sections = []
    records = []
    for head_dim in args.head_dim:
        shape = KernelShape(head_dim=head_dim, head_dim_v=head_dim, n_features=args.n_features,
                            bucket_size=args.bucket_size, n_hashes=args.n_hashes,
                            dtype_bytes=4 if args.dtype == "fp32" else 2)
        rows = static.sweep(names, archs, shape, default_only=args.default_only,
                            jobs=args.jobs, use_keep=not args.all_configs)
        title = (f"head_dim {head_dim}, n_features {args.n_features}, bucket {args.bucket_size}, "
                 f"n_hashes {args.n_hashes}, {args.dtype}")
        table = static.format_table(rows)
        sections.append(f"### {title}\n\n{table}\n")
        print(f"# {title}\n{table}\n")
        for rec in static.to_records(rows):
            rec["shape"] = asdict(shape)
            records.append(rec)
    elapsed = time.time() - start
    summary = _summary(records)
    print(summary)
    print(f"{len(records)} compiles in {elapsed:.0f} s (triton {triton.__version__})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(records, f, indent=1)
    if args.markdown:
        command = "python scripts/static_compile.py " + " ".join(argv or sys.argv[1:])
        header = (f"# Static resources of the Triton kernels\n\n"
                  f"- date: {now_utc()[:10]}; code revision {revision_text()}\n"
                  f"- triton {triton.__version__}; ptxas / cuobjdump from the triton wheel; "
                  f"no GPU (ahead-of-time compile)\n"
                  f"- command: `{command.strip()}`\n"
                  f"- {len(records)} compiles in {elapsed:.0f} s\n\n"
                  f"Shared memory is per block (dynamic + static), registers per thread, "
                  f"spills in bytes of local memory (stack frame) per thread, what triton "
                  f"reports as n_spills. `ok` = compiled and within the architecture's "
                  f"shared-memory and register-file limits. Rows are the configs each "
                  f"kernel's `keep()` leaves (a coarse register / shared-memory model); this "
                  f"compile is the exact filter the autotuner applies after it. Shape: one "
                  f"representative problem (batch 1, head 1, seq 4096); the sparse kernel is "
                  f"its first round of a non-causal Scatterbrain call (low-rank numerator "
                  f"fused at head_dim 64, from lowrank_apply at 128: "
                  f"`sbbench.kernels.fuse_by_default`). Not measured on a GPU.\n\n"
                  f"## Summary\n\n{summary}\n\n## Per config\n\n")
        with open(args.markdown, "w") as f:
            f.write(header + "\n".join(sections))
    return 0


MATRIX_HEAD_DIMS = (32, 64, 128, 256)
MATRIX_BUCKETS = (16, 32, 64, 128, 256)


def _matrix(args, names, archs, argv) -> int:
    """Compile what every launch would run by default: for each arch, dtype, head_dim (and
    bucket for the sparse kernel) the config ``default_for`` picks; mark whether it is the
    spill-free default of kernels/default_table.py, the kernel's static default or moved
    to fit."""
    import torch
    import triton
    from sbbench.kernels import (
        SEARCH_SPACES,
        KernelShape,
        limits_for,
        sparse,
        static,
        supports,
    )
    from sbbench.kernels.default_table import spilling_reason, table_default

    from sbbench.core.provenance import now_utc, revision_text

    work, marks = [], []
    for arch in archs:
        limits = limits_for(arch)
        for dtype in ("float32", "float16", "bfloat16"):
            for head_dim in MATRIX_HEAD_DIMS:
                if not supports(getattr(torch, dtype), head_dim):
                    continue
                if dtype == "float16" and head_dim not in args.matrix_half16:
                    continue
                for name in names:
                    for bucket in (MATRIX_BUCKETS if name == "sparse" else (64,)):
                        shape = KernelShape(head_dim=head_dim, head_dim_v=head_dim,
                                            n_features=args.n_features, bucket_size=bucket,
                                            n_hashes=args.n_hashes,
                                            dtype_bytes=4 if dtype == "float32" else 2,
                                            half="float16" if dtype == "float16" else "bfloat16")
                        spec = SEARCH_SPACES[name]
                        config = spec.default_for(limits, shape)
                        if not spec.keep(config, limits, shape):
                            mark = "refused at launch (keep() leaves no config)"
                        elif config == table_default(name, arch, shape):
                            mark = "table"
                            if spilling_reason(name, arch, shape):
                                mark += " (no spill-free config: fewest spills)"
                        elif config == spec.default:
                            mark = "static default"
                        else:
                            mark = "moved to fit"
                        work.append((name, config, arch, shape))
                        marks.append((dtype, mark))
    start = time.time()
    # refused shapes never launch: not compiled (their unfit configs can keep ptxas busy
    # for many minutes)
    todo = [job for job, (_, mark) in zip(work, marks, strict=True)
            if not mark.startswith("refused")]
    done = iter(static.compile_many(todo, jobs=args.jobs))
    rows = [static.ResourceUsage(job[0], job[2], tuple(sorted(job[1].items())), 0, 0, 0,
                                 False, "not compiled") if mark.startswith("refused")
            else next(done) for job, (_, mark) in zip(work, marks, strict=True)]
    elapsed = time.time() - start
    lines = ["| kernel | arch | dtype | head_dim | bucket | config | default | shared (B) | "
             "regs | spills (B) | ok |", "|" + "---|" * 11]
    bad = listed = 0
    reasons: dict[str, list[str]] = {}
    for (name, config, arch, shape), (dtype, mark), r in zip(work, marks, rows, strict=True):
        cfg = ", ".join(f"{k}={v}" for k, v in sorted(config.items()))
        if name == "sparse":  # the query block follows from the shape (sparse_setup)
            cfg += f", {sparse.pick_query_block(config, limits_for(arch), shape)} queries"
        bucket = str(shape.bucket_size) if name == "sparse" else ""
        fine = r.ok and r.spills == 0
        bad += not fine and not mark.startswith("refused")
        reason = spilling_reason(name, arch, shape)
        if reason and not fine and not mark.startswith("refused"):
            listed += 1
            row = f"sm_{arch} {dtype} head_dim {shape.head_dim}" + (
                f" bucket {shape.bucket_size}" if name == "sparse" else "")
            reasons.setdefault(f"{name}: {reason}", []).append(f"{row} ({r.spills} B)")
        lines.append(f"| {name} | sm_{arch} | {dtype} | {shape.head_dim} | {bucket} | {cfg} | "
                     f"{mark} | {r.shared_bytes} | {r.registers} | {r.spills} | "
                     f"{'yes' if fine else 'NO: ' + (r.reason or 'spills')} |")
    table = "\n".join(lines)
    print(table)
    tally = (f"{bad} defaults spill or exceed a limit, {listed} of them in the rows of "
             f"`kernels/default_table.SPILLING` (no config keep() leaves compiles without "
             f"spills there)")
    print(f"{len(rows)} compiles in {elapsed:.0f} s; {tally}")
    table += "\n\n## Defaults that spill, and why\n\n" + ("\n".join(
        f"- {why}\n  - rows: {'; '.join(where)}" for why, where in reasons.items()) or "None.")
    if args.markdown:
        command = "python scripts/static_compile.py " + " ".join(argv or sys.argv[1:])
        header = (
            f"# Static resources of the Triton kernels: the defaults\n\n"
            f"- date: {now_utc()[:10]}; code revision {revision_text()}\n"
            f"- triton {triton.__version__}; ptxas / cuobjdump from the triton wheel; no GPU "
            f"(ahead-of-time compile)\n- command: `{command.strip()}`\n"
            f"- {len(rows)} compiles in {elapsed:.0f} s; {tally}\n\n"
            f"One row per launch a call would make by default: for each architecture, "
            f"dtype, head_dim (= head_dim_v; {args.n_features} features, {args.n_hashes} "
            f"hash round(s)) and, for the sparse kernel, bucket size, the config "
            f"`KernelSpec.default_for` picks: the spill-free default of "
            f"`kernels/default_table.py` (\"table\"; found by scripts/search_defaults.py, "
            f"log in reports/kernels/default_search.md), else the kernel's static default "
            f"where `keep()` leaves it (\"static default\"), else the nearest config "
            f"keep() leaves (\"moved to fit\"). float32 stops at head_dim 128 "
            f"(`sbbench.kernels.supports`); float16 is compiled at head_dim "
            f"{', '.join(map(str, args.matrix_half16))}. Shared memory per block, "
            f"registers per thread, spills in bytes of local memory per thread; `ok` = "
            f"compiled, within the limits and no spills. Plans: sequence 4096, one head "
            f"(see each kernel's `plan`; the sparse kernel's query block is the launch's "
            f"on that architecture). Not measured on a GPU.\n\n")
        with open(args.markdown, "w") as f:
            f.write(header + table + "\n")
    return 0 if bad == listed else 1


def _summary(records: list[dict]) -> str:
    """Per kernel, shape and arch: configs compiled, ok, spilling, register / shared range."""
    groups: dict[tuple, list[dict]] = {}
    for r in records:
        groups.setdefault((r["kernel"], r["shape"]["head_dim"], r["arch"]), []).append(r)
    lines = ["| kernel | head_dim | arch | configs | ok | spill | regs (min-max) | "
             "shared KiB (min-max) |", "|---|---|---|---|---|---|---|---|"]
    for (kernel, head_dim, arch), rows in groups.items():
        built = [r for r in rows if r["registers"]]
        regs = [r["registers"] for r in built] or [0]
        shared = [r["shared_bytes"] / 1024 for r in built] or [0]
        lines.append(f"| {kernel} | {head_dim} | sm_{arch} | {len(rows)} | "
                     f"{sum(r['ok'] for r in rows)} | {sum(r['spills'] > 0 for r in rows)} | "
                     f"{min(regs)}-{max(regs)} | {min(shared):.0f}-{max(shared):.0f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
