"""Two versions of sbbench's torch path timed in one process, interleaved.

On a shared machine absolute times move by tens of percent from minute to minute, so a
before / after comparison is only fair when both versions run side by side: this script
imports an older commit's ``sbbench`` package as ``sbbench_old`` (``git archive`` of that
commit into a temporary folder, its imports renamed) next to the working tree's, and
times today's Scatterbrain (64 features + 64-key LSH buckets) and k-means 64 + sink 4 +
window 60 (as ``supports.timing``) of each version, in a shuffled order on every repeat,
on one intra-op thread. Prints the best and the median thread time (``time.thread_time``)
and wall time per call, each with its ratio to today's Scatterbrain of the same version,
and whether the two versions' outputs are identical.

Usage (from the repository root):
  python benchmarks/compare_timing.py --old main --seq 16384 --repeats 15
  python benchmarks/compare_timing.py --old d47f274 --causal
"""

from __future__ import annotations

import argparse
import importlib
import io
import random
import re
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def import_old(rev: str, folder: Path):
    """sbbench.attention.scatterbrain of commit ``rev``, imported as sbbench_old."""
    archive = subprocess.run(["git", "archive", rev, "sbbench"], cwd=ROOT, check=True,
                             capture_output=True).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(folder, filter="data")
    package = folder / "sbbench_old"
    (folder / "sbbench").rename(package)
    for path in package.rglob("*.py"):
        text = path.read_text()
        text = re.sub(r"\bsbbench\.", "sbbench_old.", text)
        path.write_text(text.replace("from sbbench import", "from sbbench_old import"))
    sys.path.insert(0, str(folder))
    return importlib.import_module("sbbench_old.attention.scatterbrain")


def calls_of(module, q, k, v, projections, hashes, causal):
    """{name: call} of one version (its own HashFunctions type)."""
    own = module.HashFunctions(hashes.directions, hashes.shifts)
    common = dict(causal=causal, backend="torch", hashes=own)
    return {
        "today": lambda: module.scatterbrain_attention(
            q, k, v, n_features=64, bucket_size=64, projections=projections, **common),
        "kmeans64+sink4+window60": lambda: module.scatterbrain_attention(
            q, k, v, n_features=0, bucket_size=64, sparse="kmeans", sink=4, window=60,
            **common),
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--old", required=True, help="git revision to compare against")
    parser.add_argument("--seq", type=int, default=16384)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--causal", action="store_true")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    sys.path.insert(0, str(ROOT))
    from sbbench.attention import draw_hashes, draw_projections
    from sbbench.attention import scatterbrain as new

    with tempfile.TemporaryDirectory() as folder:
        old = import_old(args.old, Path(folder))
        gen = torch.Generator().manual_seed(args.seed)
        q, k, v = (torch.randn(1, 1, args.seq, args.head_dim, generator=gen) for _ in range(3))
        projections = draw_projections(64, args.head_dim, generator=gen)
        hashes = draw_hashes(1, args.head_dim, generator=gen)
        calls = {}
        for version, module in (("old", old), ("new", new)):
            for name, call in calls_of(module, q, k, v, projections, hashes,
                                       args.causal).items():
                calls[(version, name)] = call
        outputs = {key: call() for key, call in calls.items()}  # also the warm-up
        for name in ("today", "kmeans64+sink4+window60"):
            same = torch.equal(outputs[("old", name)], outputs[("new", name)])
            diff = (outputs[("old", name)] - outputs[("new", name)]).abs().max().item()
            print(f"{name}: old and new outputs identical {same} (max difference {diff:.3g})")
        thread = {key: [] for key in calls}
        wall = {key: [] for key in calls}
        keys = list(calls)
        for _ in range(args.repeats):
            random.shuffle(keys)
            for key in keys:
                start_thread, start_wall = time.thread_time(), time.perf_counter()
                calls[key]()
                thread[key].append(time.thread_time() - start_thread)
                wall[key].append(time.perf_counter() - start_wall)
    print(f"seq {args.seq} d {args.head_dim} causal {args.causal}, {args.repeats} repeats, "
          f"old {args.old}; seconds per call (ratio to today's of the same version)")
    for key in calls:
        base = (key[0], "today")
        cells = []
        for label, times in (("thread", thread), ("wall", wall)):
            for stat in (min, statistics.median):
                value, ref = stat(times[key]), stat(times[base])
                cells.append(f"{label} {'best' if stat is min else 'median'} "
                             f"{value:.3f} ({value / ref:.2f}x)")
        print(f"{key[0]} {key[1]:24s} | " + " | ".join(cells), flush=True)


if __name__ == "__main__":
    main()
