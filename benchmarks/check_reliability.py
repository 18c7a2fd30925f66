"""How reliable is `sbbench check` on this machine? Measure it.

Runs N pairs of small sweeps of identical code (each pair: a baseline store and a current
store, measured one after the other) and N pairs where the current sweep runs with one
method slowed down on purpose (``SBBENCH_INJECT_SLOWDOWN``, ``SBBENCH_INJECT_METHODS``;
see ``sbbench.measure.inject``). Every pair is checked with the `sbbench check` command
exactly as a user runs it, and the two rates are written to ``reports/check/README.md``:

- pass rate: identical pairs with exit status 0 (no regression flagged);
- catch rate: injected pairs with exit status 1 and the slowed method among the time
  regressions.

Usage (from the repository root; minutes, most of it sweeps):
  python benchmarks/check_reliability.py --pairs 20
  python benchmarks/check_reliability.py --pairs 20 --keep runs/   keep the stores
  python benchmarks/check_reliability.py --evaluate runs/          check kept stores again
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sbbench.analyze.regress import NOISE_Z  # noqa: E402
from sbbench.core.format import markdown_table  # noqa: E402
from sbbench.core.provenance import cpu_model_name, now_utc, revision_text  # noqa: E402
from sbbench.measure.inject import INJECT_ENV, INJECT_METHODS_ENV  # noqa: E402

GRID = """\
description: check reliability grid (tiny)
seq_len: [256, 512]
head_dim: [64]
batch: [1]
heads: [4]
dtype: [float32]
causal: [false]
methods: [exact, performer, lsh, scatterbrain]
backends: [torch]
n_features: [64]
bucket_size: [32]
n_hashes: [1]
seeds: 1
input_kind: clustered
temperature: 1.0
warmup_ms: 20
rep_ms: {rep_ms}
"""


def sweep(store: Path, grid: Path, threads: int | None, env: dict,
          time_processes: int | None = None) -> None:
    command = [sys.executable, "-m", "sbbench", "sweep", "--gpu", "cpu", "--grid", str(grid),
               "--store", str(store), "--no-progress", "--no-memory", "--no-energy"]
    if threads:
        command += ["--threads", str(threads)]
    if time_processes is not None:
        command += ["--time-processes", str(time_processes)]
    subprocess.run(command, cwd=ROOT, env=env, check=True, capture_output=True, text=True)


def check(baseline: Path, current: Path) -> tuple[int, list[str]]:
    """Exit status of `sbbench check` and the points whose time it flagged."""
    done = subprocess.run([sys.executable, "-m", "sbbench", "check", "--baseline",
                           str(baseline), "--current", str(current), "--only-changes"],
                          cwd=ROOT, capture_output=True, text=True)
    if done.returncode not in (0, 1):
        raise SystemExit(f"sbbench check failed ({done.returncode}): {done.stderr.strip()}")
    flagged = []
    for line in done.stdout.splitlines():
        cells = re.split(r"\s{2,}|\s*\|\s*", line.strip(" |"))
        if len(cells) > 2 and cells[0] == "REGRESSION" and cells[2] == "time":
            flagged.append(cells[1])
    return done.returncode, flagged


LOADS: list[float] = []  # 1-minute load average before every sweep


def run_pairs(folder: Path, pairs: int, *, rep_ms: float, threads: int | None,
              factor: float, methods: str, time_processes: int | None = None) -> None:
    grid = folder / "grid.yaml"
    grid.write_text(GRID.format(rep_ms=rep_ms))
    plain = {k: v for k, v in os.environ.items() if k not in (INJECT_ENV, INJECT_METHODS_ENV)}
    slow = {**plain, INJECT_ENV: str(factor), INJECT_METHODS_ENV: methods}
    for i in range(pairs):
        for name, env in (("same-base", plain), ("same-cur", plain),
                          ("inj-base", plain), ("inj-cur", slow)):
            LOADS.append(os.getloadavg()[0])
            sweep(folder / f"{i:02d}-{name}.sqlite", grid, threads, env, time_processes)
        print(f"pair {i + 1}/{pairs} swept", file=sys.stderr, flush=True)


def evaluate(folder: Path, methods: str) -> dict:
    slowed = {m.strip() for m in methods.split(",") if m.strip()}
    rows, passed, caught = [], 0, 0
    indices = sorted({p.name[:2] for p in folder.glob("*-same-base.sqlite")})
    for index in indices:
        rc_same, flagged_same = check(folder / f"{index}-same-base.sqlite",
                                      folder / f"{index}-same-cur.sqlite")
        rc_inj, flagged_inj = check(folder / f"{index}-inj-base.sqlite",
                                    folder / f"{index}-inj-cur.sqlite")
        hit = rc_inj == 1 and any(p.split()[0] in slowed for p in flagged_inj)
        passed += rc_same == 0
        caught += hit
        others = [p for p in flagged_inj if p.split()[0] not in slowed]
        rows.append([int(index) + 1, "pass" if rc_same == 0 else "FLAGGED",
                     "; ".join(flagged_same), "caught" if hit else "MISSED",
                     "; ".join(others)])
    return {"n": len(indices), "passed": passed, "caught": caught, "rows": rows}


def write_readme(path: Path, result: dict, *, command: str, rep_ms: float,
                 threads: int | None, factor: float, methods: str, seconds: float) -> None:
    n = result["n"]
    lines = [
        "# How reliable is `sbbench check`?", "",
        "Measured by `benchmarks/check_reliability.py`: pairs of small sweeps of identical "
        "code, and pairs where the current sweep runs with one method slowed down on "
        "purpose; each pair is compared with `sbbench check --baseline A --current B` "
        "(default settings: ratio mode on CPU stores, each time sample divided by the "
        "calibration kernel's sample taken right after it; time factor 1.10, a one-sided "
        "Mann-Whitney U test at alpha 0.01, and the pair's run-to-run noise gate at "
        f"z = {NOISE_Z:g}, against the other methods' points). "
        "With --threads 1 the samples are the computing thread's CPU time.", "",
        f"- command: `{command}`",
        f"- date: {now_utc()}; git {revision_text()}; {seconds / 60:.0f} min",
        f"- device: cpu ({cpu_model_name()}, {os.cpu_count()} logical CPUs), shared with "
        "other jobs while it ran (realistic noise)"
        + (f"; 1-minute load average before the sweeps: min {min(LOADS):.1f}, median "
           f"{sorted(LOADS)[len(LOADS) // 2]:.1f}, max {max(LOADS):.1f}" if LOADS else ""),
        f"- sweeps: seq_len 256, 512; head_dim 64; batch 1 x 4 heads; float32; exact, "
        f"performer (64 features), lsh (bucket 32 x 1), scatterbrain (64 + 32 x 1); "
        f"rep_ms {rep_ms:g}; --no-memory --no-energy"
        + (f"; --threads {threads}" if threads else ""),
        f"- injection: `{INJECT_ENV}={factor:g} {INJECT_METHODS_ENV}={methods}`", "",
        "## Result", "",
        f"- identical code: **{result['passed']}/{n} pairs pass** (no regression flagged)",
        f"- {methods} slowed x{factor:g}: **{result['caught']}/{n} pairs caught** (exit 1 "
        f"with {methods} among the time regressions)", "",
        markdown_table(["pair", "identical", "flagged (identical)", "injected",
                        "other points flagged (injected)"], result["rows"]),
        "",
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=20)
    parser.add_argument("--rep-ms", type=float, default=60.0)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads of the sweeps (default 1; 0: torch's choice)")
    parser.add_argument("--time-processes", type=int, default=None, metavar="N",
                        help="the sweeps' --time-processes (default: the sweep's default)")
    parser.add_argument("--factor", type=float, default=1.3)
    parser.add_argument("--methods", default="performer")
    parser.add_argument("--keep", type=Path, default=None, help="keep the stores here")
    parser.add_argument("--evaluate", type=Path, default=None,
                        help="only check the stores kept in this folder")
    parser.add_argument("--out", type=Path, default=ROOT / "reports" / "check" / "README.md")
    args = parser.parse_args(argv)
    command = "python benchmarks/check_reliability.py " + " ".join(
        argv if argv is not None else sys.argv[1:])
    start = time.monotonic()
    if args.evaluate:
        folder = args.evaluate
    else:
        folder = args.keep or Path(tempfile.mkdtemp(prefix="sbbench-check-"))
        folder.mkdir(parents=True, exist_ok=True)
        run_pairs(folder, args.pairs, rep_ms=args.rep_ms, threads=args.threads or None,
                  factor=args.factor, methods=args.methods,
                  time_processes=args.time_processes)
    result = evaluate(folder, args.methods)
    write_readme(args.out, result, command=command.strip(), rep_ms=args.rep_ms,
                 threads=args.threads or None, factor=args.factor, methods=args.methods,
                 seconds=time.monotonic() - start)
    print(f"identical pairs passing: {result['passed']}/{result['n']}; "
          f"injected pairs caught: {result['caught']}/{result['n']} -> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
