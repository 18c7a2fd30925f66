#!/usr/bin/env python
"""Search every kernel's space for its spill-free default per architecture, dtype,
head_dim and bucket (no GPU: ahead-of-time compiles, kernels/static.py), and print the
TABLE of kernels/default_table.py.

    python scripts/search_defaults.py --arch 80 90 --jobs 2 \\
        --markdown reports/kernels/default_search.md --table /tmp/table.py
    python scripts/search_defaults.py --kernels fixed --append --markdown FILE.md  # a section
    python scripts/search_defaults.py --rows sparse:90:4:64:256 fixed:80:2:256 ...  # rows

Per row (arch x float32 / 2-byte x head_dim 32..256, x bucket 16..256 for the sparse
kernel): the configs keep() leaves (for the sparse kernel: each config with each query
block that fits, ``sparse_setup.fits_block``, down to 16 queries: smaller than the blocks
``query_block`` picks from, a default can have them, and each BLOCK_DK of ``chunks``:
head_chunks' first, smaller ones, which re-read the q / k rows per projection block, only
where no candidate with it compiles without spills), in the order of
kernels/default_table.py (most work per program first, then most warps, then num_stages
nearest the static default), compiled one after the other until one compiles with 0 spill
bytes within the limits; 2-byte rows compile as bfloat16 and then as float16, and a
candidate must pass both. To keep the compiles affordable, spills are taken to be monotone
in the loop tile and the warps: a candidate is not compiled (counted "skipped") when a
config with the same grid tile (query block, rows or projections per program) and chunk, no
larger loop tiles, as many warps or more and the same num_stages spilled; after a few
spilling compiles a row probes the smallest loop tile of each grid tile and num_stages
first. Across grid tiles nothing is assumed (a 16-query block can spill more than a
128-query one: the warps then all lie along the keys). The chosen defaults themselves are
always compiled. Rows run in parallel over --jobs processes; --cache keeps the compiles
(JSON) so that a rerun only compiles what is new.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass, field

HEAD_DIMS = (32, 64, 128, 256)
BUCKETS = (16, 32, 64, 128, 256)
# the tiles that set the work of one program, most significant first
WORK = {
    "feature_stats": ("BLOCK_M", "BLOCK_P"),
    "lowrank_state": ("BLOCK_P", "BLOCK_N"),
    "lowrank_apply": ("BLOCK_M", "BLOCK_P"),
    "lowrank_causal": ("BLOCK_P", "BLOCK_N"),
    "sparse": ("BLOCK_Q", "BLOCK_P"),
    "fixed": ("BLOCK_M", "BLOCK_N", "BLOCK_P"),
}


PROBE_AFTER = 4  # spilling compiles of a row before it probes its smallest tiles


@dataclass
class Row:
    name: str
    arch: int
    dtype_bytes: int
    head_dim: int
    bucket: int
    shapes: list  # KernelShape per compiled dtype (bfloat16 then float16 for 2 bytes)
    candidates: list
    index: int = 0
    variant: int = 0
    spilled: list = field(default_factory=list)  # configs that spill or exceed a limit
    compiled: list = field(default_factory=list)  # (config, dtype variant, usage)
    skipped: int = 0  # candidates taken to spill (dominated by a spilling config)
    probes: list | None = None
    chosen: dict | None = None
    done: bool = False

    @property
    def dtype(self) -> str:
        return "float32" if self.dtype_bytes == 4 else "float16/bfloat16"


def tiles(name: str, config: dict) -> tuple[int, ...]:
    return tuple(config[k] for k in WORK[name])


def chunks(shape) -> list[int]:
    """The sparse kernel's BLOCK_DK values for ``shape``, _common.head_chunks' first (whole
    rows up to its chunk), then each smaller power of two down to 16."""
    from sbbench.kernels._common import head_chunks

    first = head_chunks(shape.head_dim, shape.dtype_bytes)["BLOCK_DK"]
    return [first >> i for i in range(first.bit_length()) if first >> i >= 16]


def candidates(name: str, limits, shape) -> list[dict]:
    """The configs keep() leaves for ``shape`` (the sparse kernel's with "BLOCK_Q" and
    "BLOCK_DK"): the sparse kernel's with head_chunks' BLOCK_DK first, those with smaller
    chunks (q / k rows re-read per projection block) only after them; then most work per
    program first, then the most warps, then num_stages nearest the static default; ties
    in the space's order."""
    from sbbench.kernels import SEARCH_SPACES, expand_space, sparse_setup
    from sbbench.kernels._common import next_pow2

    spec = SEARCH_SPACES[name]
    out = []
    for config in expand_space(spec.space):
        if not spec.keep(config, limits, shape):
            continue
        if name == "sparse":
            block_b = next_pow2(shape.bucket_size)
            blocks = [q for q in (*sparse_setup.QUERY_BLOCKS, 16) if q <= block_b]
            out += [{**config, "BLOCK_Q": q, "BLOCK_DK": dk} for dk in chunks(shape)
                    for q in blocks if sparse_setup.fits_block(config, q, limits, shape)]
        else:
            out.append(config)

    def rank(c):
        stages = abs(math.log2(c["num_stages"]) - math.log2(spec.default["num_stages"]))
        return (-c.get("BLOCK_DK", 0), *(-t for t in tiles(name, c)), -c["num_warps"], stages)

    return sorted(out, key=rank)


def dominated(row: Row, config: dict) -> bool:
    """Whether a config that spilled has the same grid tile (the first of WORK: no
    monotony is assumed across it, a smaller query block can spill more) and head_dim
    chunk, no larger other tiles, as many warps or more and the same num_stages: then
    ``config`` is taken to spill too, and not compiled."""
    mine = tiles(row.name, config)
    return any(tiles(row.name, d)[0] == mine[0] and d.get("BLOCK_DK") == config.get("BLOCK_DK")
               and all(a <= b for a, b in zip(tiles(row.name, d)[1:], mine[1:], strict=True))
               and d["num_warps"] >= config["num_warps"]
               and d["num_stages"] == config["num_stages"] for d in row.spilled)


def probes(row: Row) -> list[dict]:
    """Per grid tile, head_dim chunk and num_stages, the candidate with the smallest other
    tiles (and of those the most warps): if it spills, so does (by dominance) every
    candidate of its group."""
    groups: dict[tuple, list] = {}
    for c in row.candidates:
        key = (tiles(row.name, c)[0], c.get("BLOCK_DK"), c["num_stages"])
        groups.setdefault(key, []).append(c)
    out = []
    for same in groups.values():
        smallest = tiles(row.name, same[-1])
        out.append(next(c for c in same if tiles(row.name, c) == smallest))
    return out


def parse_row(text: str) -> tuple:
    """"kernel:arch:dtype bytes:head_dim[:bucket]" (bucket: sparse only) -> the tuple of
    kernels/default_table.SPILLING's keys."""
    parts = text.split(":")
    if len(parts) not in (4, 5) or not all(p.isdigit() for p in parts[1:]):
        raise SystemExit(f"--rows takes kernel:arch:bytes:head_dim[:bucket], got {text!r}")
    name, *numbers = parts
    return (name, *map(int, numbers), *((0,) if len(parts) == 4 else ()))


def make_rows(archs, names, only=None) -> list[Row]:
    """The rows of ``names`` on ``archs`` (``only``: just these (kernel, arch, bytes,
    head_dim, bucket or 0) keys)."""
    import torch
    from sbbench.kernels import KernelShape, limits_for, supports

    rows = []
    for arch in archs:
        limits = limits_for(arch)
        for size in (4, 2):
            for d in HEAD_DIMS:
                if not supports(torch.float32 if size == 4 else torch.bfloat16, d):
                    continue
                for name in names:
                    for bucket in BUCKETS if name == "sparse" else (64,):
                        halves = ("bfloat16",) if size == 4 else ("bfloat16", "float16")
                        shapes = [KernelShape(head_dim=d, head_dim_v=d, n_features=256,
                                              bucket_size=bucket, n_hashes=1,
                                              dtype_bytes=size, half=h) for h in halves]
                        key = (name, arch, size, d, bucket if name == "sparse" else 0)
                        if only is not None and key not in only:
                            continue
                        rows.append(Row(name, arch, size, d, bucket, shapes,
                                        candidates(name, limits, shapes[0])))
    return rows


def _key(job) -> str:
    name, config, arch, shape = job
    return json.dumps([name, sorted(config.items()), arch, asdict(shape)])


def next_step(row: Row):
    """(config, dtype variant, is a probe) to compile next, or None (row done)."""
    if row.probes is None and len(row.spilled) >= PROBE_AFTER:
        row.probes = probes(row)
    while row.probes:
        config = row.probes.pop(0)
        if not dominated(row, config) and all(config != c for c, _, _ in row.compiled):
            return config, 0, True
    while row.index < len(row.candidates):
        config = row.candidates[row.index]
        if row.variant == 0 and dominated(row, config):
            row.skipped += 1
            row.index += 1
            continue
        return config, row.variant, False
    row.done = True
    return None


def record(row: Row, step, usage: dict) -> None:
    config, variant, probe = step
    if not any(c == config and v == variant for c, v, _ in row.compiled):
        row.compiled.append((config, variant, usage))
    fine = usage["ok"] and usage["spills"] == 0
    if not fine:
        row.spilled.append(config)
    if probe:
        return
    if not fine:
        row.index, row.variant = row.index + 1, 0
    elif row.variant + 1 < len(row.shapes):
        row.variant += 1
    else:
        row.chosen, row.done = config, True


def search(rows: list[Row], jobs: int, cache: dict, save) -> None:
    """Advance every row through its candidates; one compile in flight per row."""
    from sbbench.kernels import static

    def job_of(row, step):
        return (row.name, step[0], row.arch, row.shapes[step[1]])

    pending = {}
    with ProcessPoolExecutor(max_workers=jobs,
                             mp_context=multiprocessing.get_context("spawn")) as pool:
        queue = list(rows)
        while queue or pending:
            while queue and len(pending) < 2 * jobs:
                row = queue.pop(0)
                step = next_step(row)
                while step is not None and _key(job_of(row, step)) in cache:
                    record(row, step, cache[_key(job_of(row, step))])
                    step = None if row.done else next_step(row)
                if step is None:
                    continue
                job = job_of(row, step)
                pending[pool.submit(static._compile_job, job)] = (row, step, job)
            if not pending:
                continue
            finished, _ = wait(list(pending), return_when=FIRST_COMPLETED)
            for future in finished:
                row, step, job = pending.pop(future)
                usage = static.to_records([future.result()])[0]
                cache[_key(job)] = usage
                save()
                record(row, step, usage)
                if not row.done:
                    queue.append(row)
                half = job[3].half if row.dtype_bytes == 2 else "float32"
                print(f"{row.name} sm_{row.arch} {half} d{row.head_dim} b{row.bucket}: "
                      f"{step[0]}{' (probe)' if step[2] else ''} -> spills "
                      f"{usage['spills']} ok {usage['ok']}", file=sys.stderr, flush=True)


def default_of(row: Row) -> tuple[dict | None, int]:
    """(the row's default, its spill bytes): the first spill-free candidate; where there is
    none, the compiled candidate within the limits with the fewest spill bytes (then the
    most work); None where keep() leaves nothing."""
    if row.chosen is not None:
        return row.chosen, 0
    worst: dict[int, int | None] = {}  # candidate index -> most spill bytes of its dtypes
    for config, _, usage in row.compiled:
        index = row.candidates.index(config)
        if not usage["ok"] or worst.get(index, 0) is None:
            worst[index] = None  # over a limit
        else:
            worst[index] = max(worst.get(index, 0), usage["spills"])
    kept = [(bytes_, index) for index, bytes_ in worst.items() if bytes_ is not None]
    if not kept:
        return None, 0
    bytes_, index = min(kept)
    return row.candidates[index], bytes_


def table_text(rows: list[Row]) -> str:
    """The TABLE literal of kernels/default_table.py."""
    from sbbench.kernels.default_table import FIELDS

    groups: dict[tuple, dict] = {}
    for row in rows:
        entry = None
        config, _ = default_of(row)
        if config is not None:
            chosen = {**config, "queries": config.get("BLOCK_Q")}
            if chosen.get("BLOCK_DK") == chunks(row.shapes[0])[0]:
                del chosen["BLOCK_DK"]  # head_chunks' own: not written (FIELDS)
            entry = tuple(chosen[k] for k in FIELDS[row.name] if k in chosen)
        group = groups.setdefault((row.arch, row.dtype_bytes, row.head_dim), {})
        if row.name == "sparse":
            group.setdefault("sparse", {})[row.bucket] = entry
        else:
            group[row.name] = entry
    lines = ["TABLE: dict[tuple[int, int, int], dict] = {"]
    for key, group in groups.items():
        lines.append(f"    {key}: {{")
        for name, entry in group.items():
            if isinstance(entry, dict):
                lines.append(f"        {name!r}: {{")
                lines += [f"            {bucket}: {value!r}," for bucket, value in entry.items()]
                lines.append("        },")
            else:
                lines.append(f"        {name!r}: {entry!r},")
        lines.append("    },")
    lines.append("}")
    return "\n".join(lines)


def _cfg(config: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(config.items()) if k != "BLOCK_Q") + (
        f", {config['BLOCK_Q']} queries" if "BLOCK_Q" in config else "")


def log_text(rows: list[Row]) -> str:
    lines = ["| kernel | arch | dtype | head_dim | bucket | kept | compiled | skipped | "
             "default | regs | shared (B) | spills of the other compiles (B) |",
             "|" + "---|" * 12]
    for row in rows:
        config, least = default_of(row)
        others = [u for c, _, u in row.compiled if c != config]
        spills = [u["spills"] for u in others if u["spills"]]
        unfit = sum(not u["ok"] for u in others)
        before = f"{min(spills)}-{max(spills)}" if spills else "-"
        if unfit:
            before += f" ({unfit} over a limit)"
        if config is None:
            chosen = "none kept (refused)" if not row.candidates else "none within the limits"
            regs = shared = ""
        else:
            usages = [u for c, _, u in row.compiled if c == config]
            chosen = _cfg(config)
            if row.chosen is None:
                chosen = f"**no spill-free candidate**; fewest spills ({least} B): {chosen}"
            regs = "/".join(str(u["registers"]) for u in usages)
            shared = "/".join(str(u["shared_bytes"]) for u in usages)
        bucket = str(row.bucket) if row.name == "sparse" else ""
        lines.append(f"| {row.name} | sm_{row.arch} | {row.dtype} | {row.head_dim} | {bucket} "
                     f"| {len(row.candidates)} | {len(row.compiled)} | {row.skipped} | "
                     f"{chosen} | {regs} | {shared} | {before} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", nargs="+", default=["80", "90"])
    parser.add_argument("--kernels", nargs="+", default=None)
    parser.add_argument("--rows", nargs="+", default=None,
                        help="only these rows, kernel:arch:bytes:head_dim[:bucket] (e.g. "
                             "sparse:90:4:64:256 fixed:80:2:256); --table then prints them")
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--cache", default=os.path.join(
        os.path.expanduser("~"), ".cache", "sbbench-default-search.json"))
    parser.add_argument("--table", help="write the TABLE literal here (else: stdout)")
    parser.add_argument("--markdown", help="write the search log (with a header) here")
    parser.add_argument("--append", action="store_true",
                        help="add the log to --markdown as a section (the --kernels searched)")
    args = parser.parse_args(argv)
    import triton
    from sbbench.kernels import SEARCH_SPACES, static

    from sbbench.core.provenance import now_utc, revision_text

    only = None if args.rows is None else {parse_row(r) for r in args.rows}
    names = args.kernels or sorted({key[0] for key in only or ()}) or list(SEARCH_SPACES)
    archs = [static.parse_arch(a) for a in args.arch]
    cache = {}
    if os.path.exists(args.cache):
        with open(args.cache) as f:
            cache = json.load(f)

    def save() -> None:
        os.makedirs(os.path.dirname(args.cache) or ".", exist_ok=True)
        with open(args.cache + ".tmp", "w") as f:
            json.dump(cache, f)
        os.replace(args.cache + ".tmp", args.cache)

    start = time.time()
    rows = make_rows(archs, names, only)
    search(rows, args.jobs, cache, save)
    elapsed = time.time() - start
    table = table_text(rows)
    if args.table:
        with open(args.table, "w") as f:
            f.write(table + "\n")
    else:
        print(table)
    compiles = sum(len(row.compiled) for row in rows)
    missing = [row for row in rows if row.chosen is None and row.candidates]
    summary = (f"{len(rows)} rows, {compiles} compiles ({elapsed:.0f} s in this run; the "
               f"compiles of earlier runs come from --cache); {len(missing)} rows without a "
               f"spill-free candidate (their default: the fewest spills)")
    print(summary, file=sys.stderr)
    if args.markdown:
        command = "python scripts/search_defaults.py " + " ".join(argv or sys.argv[1:])
        run = (f"- date: {now_utc()[:10]}; code revision {revision_text()}\n"
               f"- triton {triton.__version__}; ptxas / cuobjdump from the triton wheel; no "
               f"GPU (ahead-of-time compile)\n- command: `{command.strip()}`\n- {summary}\n\n")
        if args.append:  # a later search of some kernels, after the file's full search
            with open(args.markdown, "a") as f:
                f.write(f"\n## Searched later: {', '.join(names)}\n\n{run}"
                        f"Same rule and plans as above.\n\n{log_text(rows)}\n")
            return 0
        header = (
            f"# The search for spill-free defaults\n\n{run}"
            f"Per row, the configs keep() leaves (\"kept\"; the sparse kernel's: config x "
            f"query block), compiled in the order of `kernels/default_table.py` (most "
            f"work per program first, then most warps, then num_stages nearest the static "
            f"default) until one compiles with 0 spill bytes within the shared-memory and "
            f"register limits; for 2-byte inputs as bfloat16 and as float16 (regs / "
            f"shared: per dtype). The first such is the row's default in "
            f"`kernels/default_table.py`. \"skipped\": candidates not compiled because a "
            f"config with the same grid tile, no larger loop tiles, as many warps or more and "
            f"the same num_stages spilled (spills taken as monotone in those; the script's "
            f"docstring). Where no candidate compiles without spills, the default is the "
            f"compiled one with the fewest spill bytes. Plans: head_dim "
            f"= head_dim_v, 256 features, one hash round, sequence 4096 (each kernel's "
            f"`plan`). Not timed on a GPU.\n\n")
        with open(args.markdown, "w") as f:
            f.write(header + log_text(rows) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
