"""``sbbench accuracy``: the accuracy study from the command line (parsing only)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from sbbench.cli.args import (
    DEFAULT_REPORTS,
    add_command,
    add_out_argument,
    float_list,
    int_at_least,
    name_list,
    positive_int,
)
from sbbench.core.errors import UserError

DEFAULT_OUT = f"{DEFAULT_REPORTS}/accuracy"

_DESCRIPTION = """\
Accuracy study (the Scatterbrain paper's regime experiment): sweep the softmax
temperature of seeded synthetic q, k (i.i.d. gaussian and clustered) from near-uniform
to near one-hot attention, and report the relative Frobenius error of Performer (all
low-rank), LSH (all sparse) and Scatterbrain (split) against exact float64 attention at
one attention-memory budget per query, with oracles at the same budget, the share of
attention mass the hash buckets catch, the ratio Scatterbrain / better baseline per
regime, and the best split of the budget where Scatterbrain loses. Two more rows per
regime at the same budget (on by default, off with --no-supports): the better supports,
"scatterbrain_kmeans" (no low-rank part; query k-means clusters of budget/2 keys + sink 4
+ window, exact softmax over them) and "scatterbrain_centroids" (budget/4 key centroids +
such a support); they need --budget >= 11 and are skipped below. Writes a report
(README.md), markdown tables, CSV files and a plot into --out.

With --inputs qkv:minilm or qkv:FILE[#layer=N] the study runs on Q/K/V captured from a
real model (`sbbench capture`): heads and head_dim come from the capture, the sequence is
its first --seq-len tokens (default: all, up to 4096), temperature 1 is the model's own
scale, and seeds vary only the methods' random features and hashes. Causal captures are
refused (the study's references and oracles are non-causal; sweep them with
`sbbench sweep --inputs qkv:FILE`)."""

_EPILOG = f"""\
examples:
  sbbench accuracy                            default study (a few minutes on a 2-core CPU),
                                              into ./{DEFAULT_OUT}
  sbbench accuracy --quick --out /tmp/acc     tiny smoke run (seconds)
  sbbench accuracy --out reports/accuracy     regenerate the committed study of a checkout
  sbbench accuracy --seq-len 512 --budget 16 --seeds 5
  sbbench accuracy --temperatures 0.5,2,8 --kinds clustered --hashes 2
  sbbench accuracy --inputs qkv:minilm --budget 64 --out /tmp/acc-minilm
                                              the shipped MiniLM capture (all 6 layers)
"""


def register(subparsers) -> None:
    parser = add_command(
        subparsers, "accuracy",
        help="error of Performer / LSH / Scatterbrain vs exact attention across softmax "
             "temperatures (writes a report)",
        description=_DESCRIPTION,
        epilog=_EPILOG)
    add_out_argument(parser, default=DEFAULT_OUT,
                     help=f"output folder (default: ./{DEFAULT_OUT})")
    parser.add_argument("--seq-len", metavar="N", type=int_at_least(8),
                        help="sequence length (default 1024)")
    parser.add_argument("--head-dim", metavar="D", type=positive_int,
                        help="head dimension (default 64)")
    parser.add_argument("--heads", metavar="H", type=positive_int,
                        help="attention heads (default 4)")
    parser.add_argument("--budget", metavar="B", type=int_at_least(4),
                        help="attention memory per query, features + bucket_size * hashes "
                             "(default seq_len / 16)")
    parser.add_argument("--hashes", metavar="R", type=positive_int,
                        help="hash rounds of LSH and Scatterbrain (default 1)")
    parser.add_argument("--seeds", metavar="N", type=positive_int,
                        help="number of seeds, 0 .. N-1 (default 3)")
    parser.add_argument("--temperatures", metavar="T,T,...", type=float_list,
                        help="softmax temperatures, > 0 (default 0.25,0.5,1,2,4,8)")
    parser.add_argument("--kinds", metavar="KIND,...", type=name_list(),
                        help="input kinds: gaussian, clustered (default both)")
    parser.add_argument("--inputs", metavar="qkv:FILE", default=None,
                        help="run on a capture instead of synthetic inputs: qkv:minilm (the "
                             "shipped one) or qkv:FILE[#layer=N] from `sbbench capture`")
    parser.add_argument("--clusters", metavar="C", type=positive_int,
                        help="clusters of the clustered kind (default 8)")
    parser.add_argument("--no-oracles", action="store_true",
                        help="skip the oracle approximations")
    parser.add_argument("--no-split-sweep", action="store_true",
                        help="skip the split sweep where Scatterbrain loses")
    parser.add_argument("--no-supports", action="store_true",
                        help="skip the k-means and key-centroid support rows")
    parser.add_argument("--threads", metavar="N", default=1, type=positive_int,
                        help="torch CPU threads (default 1: fastest on a shared machine; "
                             "results change only by rounding)")
    parser.add_argument("--quick", action="store_true",
                        help="tiny run (seq 128, head_dim 32, 2 heads, 2 seeds, 3 "
                             "temperatures); explicit flags still apply")
    parser.set_defaults(func=run)


def build_config(args: argparse.Namespace):
    """The StudyConfig the flags ask for (UserError on bad values)."""
    from sbbench.measure.inputs import KINDS
    from sbbench.study.accuracy import QUICK, StudyConfig, with_overrides

    if args.kinds is not None and any(kind not in KINDS for kind in args.kinds):
        raise UserError(f"--kinds must be a comma-separated subset of {', '.join(KINDS)}, "
                        f"got {','.join(args.kinds)!r}")
    base = QUICK if args.quick else StudyConfig()
    seq_len, budget = args.seq_len, args.budget
    inputs = getattr(args, "inputs", None)
    if inputs is not None:
        base, seq_len = captured_base(base, inputs, args)
    if budget is None and seq_len is not None:  # keep the base's share of the sequence
        budget = max(4, round(seq_len * base.budget / base.seq_len))
    changes = dict(
        seq_len=seq_len, budget=budget, head_dim=args.head_dim, heads=args.heads,
        n_hashes=args.hashes,
        seeds=None if args.seeds is None else tuple(range(args.seeds)),
        temperatures=None if args.temperatures is None else
        tuple(dict.fromkeys(args.temperatures)),
        kinds=args.kinds, n_clusters=args.clusters,
        oracles=False if args.no_oracles else None,
        split_sweep=False if args.no_split_sweep else None,
        supports=False if args.no_supports else None,
    )
    try:
        return with_overrides(base, **changes)
    except ValueError as err:
        raise UserError(str(err).replace("seq_len", "--seq-len").replace(
            "budget", "--budget")) from None


def captured_base(base, kind: str, args: argparse.Namespace):
    """``base`` on the capture ``kind``: its heads, head_dim and (prefix of) its tokens,
    temperature 1 unless asked; (config, seq_len). UserError for what cannot run."""
    from sbbench.measure.inputs import capture_shape, is_capture_kind
    from sbbench.study.accuracy import MAX_SEQ_LEN, with_overrides

    if not is_capture_kind(kind):
        raise UserError(f"--inputs takes a capture, qkv:minilm or qkv:FILE[#layer=N], got "
                        f"{kind!r} (synthetic kinds: --kinds)")
    if args.kinds is not None:
        raise UserError("--inputs and --kinds exclude each other")
    try:
        heads, head_dim, tokens, causal = capture_shape(kind)
    except (OSError, ValueError) as err:
        raise UserError(f"--inputs {kind}: {err}") from None
    if causal:
        raise UserError(f"--inputs {kind}: a causal capture; the accuracy study's references "
                        f"and oracles are non-causal (use `sbbench sweep --inputs {kind}`)")
    for flag, value, captured in (("--heads", args.heads, heads),
                                  ("--head-dim", args.head_dim, head_dim)):
        if value is not None and value != captured:
            raise UserError(f"{flag} {value}: the capture {kind} has {captured}")
    seq_len = args.seq_len if args.seq_len is not None else min(tokens, MAX_SEQ_LEN)
    if seq_len > tokens:
        raise UserError(f"--seq-len {seq_len}: the capture {kind} has {tokens} tokens")
    config = with_overrides(base, heads=heads, head_dim=head_dim, kinds=(kind,),
                            temperatures=(1.0,), seq_len=seq_len,
                            budget=max(4, round(seq_len * base.budget / base.seq_len)))
    return config, seq_len


def command_line(config, out: str, threads: int) -> str:
    """An explicit command that reproduces ``config`` (every flag spelled out)."""
    parts = ["sbbench accuracy", f"--out {out}", f"--seq-len {config.seq_len}",
             f"--head-dim {config.head_dim}", f"--heads {config.heads}",
             f"--budget {config.budget}", f"--hashes {config.n_hashes}",
             f"--seeds {len(config.seeds)}",
             "--temperatures " + ",".join(f"{t:g}" for t in config.temperatures),
             f"--clusters {config.n_clusters}"]
    captured = [kind for kind in config.kinds if kind.startswith("qkv:")]
    parts.append(f"--inputs {captured[0]}" if captured else "--kinds " + ",".join(config.kinds))
    if not config.oracles:
        parts.append("--no-oracles")
    if not config.split_sweep:
        parts.append("--no-split-sweep")
    if not config.supports:
        parts.append("--no-supports")
    parts.append(f"--threads {threads}")
    return " ".join(parts)


def run(args: argparse.Namespace) -> int:
    import torch

    from sbbench.study.accuracy import run_study
    from sbbench.study.report import machine_info, write_outputs

    config = build_config(args)
    threads = args.threads
    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".sbbench-write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as err:
        raise UserError(f"cannot write to --out {args.out}: {err.strerror or err}") from None
    torch.set_num_threads(threads)
    machine = machine_info()  # the checkout as it measured, before the report lands in it
    command = command_line(config, args.out, threads)
    started = time.perf_counter()

    def progress(message: str) -> None:
        print(f"sbbench accuracy: {time.perf_counter() - started:6.1f} s  {message}",
              file=sys.stderr, flush=True)

    settings = len(config.kinds) * len(config.temperatures) * len(config.seeds)
    progress(f"{settings} settings (kind x temperature x seed), seq {config.seq_len}, "
             f"budget {config.budget}; writing to {out}")
    result = run_study(config, progress=progress)
    paths = write_outputs(result, out, command=command, machine=machine)
    ratios = result.ratios
    supports = [name for name in config.support_budgets() if f"{name}_ratio" in ratios]
    for _, r in ratios.iterrows():
        print(f"{r['kind']:>9}  T={r['temperature']:<5g} entropy {r['entropy']:5.2f}  "
              f"scatterbrain / {r['best_baseline']:<9} = {r['ratio']:.2f}"
              + "".join(f"  {name.removeprefix('scatterbrain_')} {r[f'{name}_ratio']:.2f}"
                        for name in supports))
    print(f"report: {paths['report']}  (tables {paths['markdown'].name}, "
          f"{paths['summary'].name}; plot {paths['plot'].name})")
    return 0
