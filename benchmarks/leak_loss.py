"""Does the later-token dependence move the next-token loss?

Hash buckets, k-means query clusters and key centroids are chosen from the whole sequence
(``Budget.prefix_consistent`` is False), so under causal masking the output at position t
can depend on the tokens after t (benchmarks/causal_leak.py measures how much, per head).
``sbbench e2e`` reports the next-token loss of ONE forward over the whole text: position t
predicts token t + 1 with token t + 1 itself (and everything after it) in the sequence
that chose the keys. This script measures what that is worth: for sampled positions t,
the loss from the whole-text forward (what e2e reports) beside the leak-free loss, from a
forward over tokens 0 .. t only (nothing after t exists), taking its last position.

Both forwards of a configuration use the same seed (randomness drawn per replaced layer,
in layer order, from one generator, as ``sbbench e2e`` does); the approximation's own
randomness that depends on the sequence (k-means start points, the centroids' start keys)
may act differently on the shorter sequence: that is part of what leak-free means for a
user who only has the prefix. A third forward per position, over tokens 0 .. t + 1 (the
target token present, nothing after it), separates the information channel from the
change of the key sets: the whole-text forward's buckets and clusters are formed over
hundreds of later positions too (keys the causal mask then hides), while one more token
barely changes them, so a lower loss with the target present is the target's own
information reaching position t
(--no-peek skips it). The exact row is the control of the method: its difference
is 0 up to rounding, and the script checks it.

    python benchmarks/leak_loss.py --model gemma3-270m \\
        --text /usr/share/common-licenses/GPL-3 --max-tokens 1024 --positions 32
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import torch

from sbbench.core.errors import UserError
from sbbench.core.types import Budget, budget_label
from sbbench.models.capture import forward, read_text, tokenize
from sbbench.models.e2e import _replaced, token_losses
from sbbench.models.intercept import intercepted
from sbbench.models.loading import load_model

EXACT_TOLERANCE = 1e-3  # |loss difference| of the exact row (float32 rounding, nats)

# name -> budget; all approximations spend 128 keys per query
CONFIGS = {
    "exact (control of the method)": Budget("exact"),
    "scatterbrain_local f64 + local64 (prefix-consistent control)": Budget(
        "scatterbrain_local", n_features=64, bucket_size=64, n_hashes=1),
    "kmeans64 + sink4 + window60 (f=0)": Budget(
        "scatterbrain", n_features=0, bucket_size=64, n_hashes=1, sparse="kmeans", sink=4,
        window=60),
    "centroids48 + kmeans48 + sink4 + window28": Budget(
        "scatterbrain_centroids", n_features=48, bucket_size=48, n_hashes=1, sparse="kmeans",
        sink=4, window=28),
    "scatterbrain f64 + lsh64 (today's SMYRF)": Budget(
        "scatterbrain", n_features=64, bucket_size=64, n_hashes=1),
}


def sample_positions(tokens: int, n: int, *, start: int = 128, seed: int = 0) -> list[int]:
    """``n`` target positions t (each predicting token t + 1, so t <= tokens - 2), spread
    evenly over [start, tokens - 2]: one drawn uniformly (seeded) from each of ``n``
    equal strata; sorted, distinct."""
    last = tokens - 2
    if n < 1 or last - start + 1 < n:
        raise UserError(f"cannot sample {n} positions from {start} .. {last} "
                         f"({tokens} tokens)")
    generator = torch.Generator().manual_seed(seed)
    edges = [start + (last - start + 1) * i // n for i in range(n + 1)]
    return [lo + int(torch.randint(hi - lo, (), generator=generator))
            for lo, hi in zip(edges, edges[1:], strict=False)]


def prefix(encoded: dict, t: int) -> dict:
    """The tokenizer's tensors cut to tokens 0 .. t (nothing after t)."""
    return {name: value[:, :t + 1] for name, value in encoded.items()}


def full_losses(loaded, encoded: dict, positions: list[int], budget: Budget, *,
                seed: int = 0, backend: str = "torch") -> list[float]:
    """The losses at ``positions`` from one forward over the whole sequence (e2e's)."""
    ids = encoded["input_ids"]
    with intercepted(loaded.model, _replaced(budget, seed, backend, {})):
        hidden = forward(loaded, encoded).last_hidden_state
    index = torch.tensor(positions)
    return token_losses(loaded, hidden[:, index], ids[:, index + 1]).tolist()


def prefix_losses(loaded, encoded: dict, positions: list[int], budget: Budget, *,
                  extra: int = 0, seed: int = 0, backend: str = "torch") -> list[float]:
    """The loss at each position t from a forward over tokens 0 .. t + ``extra`` alone,
    with the same seed as the whole-sequence forward. ``extra`` 0: leak-free (nothing
    after t exists); 1: only the target token t + 1 is there besides the prefix."""
    ids = encoded["input_ids"]
    out = []
    for t in positions:
        with intercepted(loaded.model, _replaced(budget, seed, backend, {})):
            hidden = forward(loaded, prefix(encoded, t + extra)).last_hidden_state
        out.append(float(token_losses(loaded, hidden[:, t:t + 1], ids[:, t + 1:t + 2])[0]))
    return out


def paired(a: list[float], b: list[float]) -> tuple[float, float, float]:
    """Mean of the per-position difference a - b, its standard error (std / sqrt(n))
    and the largest |a - b|."""
    diffs = [x - y for x, y in zip(a, b, strict=True)]
    sem = statistics.stdev(diffs) / math.sqrt(len(diffs)) if len(diffs) > 1 else math.nan
    return statistics.fmean(diffs), sem, max(abs(d) for d in diffs)


def summarise(name: str, budget: Budget, full: list[float], free: list[float],
              peek: list[float] | None, seconds: float) -> dict:
    """Mean losses, perplexities and the paired differences: full - leak-free (negative
    where the whole-text forward understates the loss), next-token-present - leak-free
    (negative where seeing token t + 1 lowers its own loss), with standard errors."""
    diff, sem, max_abs = paired(full, free)
    row = {"config": name, "budget": f"{budget.method} {budget_label(budget)}",
           "prefix_consistent": budget.prefix_consistent, "n": len(full),
           "full": statistics.fmean(full), "free": statistics.fmean(free), "diff": diff,
           "sem": sem, "max_abs": max_abs, "seconds": seconds}
    row.update(ppl_full=math.exp(row["full"]), ppl_free=math.exp(row["free"]))
    if peek is not None:
        row["peek"] = statistics.fmean(peek)
        row["peek_diff"], row["peek_sem"], _ = paired(peek, free)
    return row


def table(rows: list[dict]) -> str:
    """The rows as a markdown table (the next-token-present columns where measured)."""
    peek = all("peek" in r for r in rows)
    head = ("| configuration | prefix-consistent | loss, full run | loss, leak-free | "
            "full - leak-free (mean +- s.e.) | max abs diff | perplexity full / leak-free |")
    if peek:
        head += " loss, token t+1 present | present - leak-free (mean +- s.e.) |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        line = (f"| {r['config']} | {'yes' if r['prefix_consistent'] else 'no'} | "
                f"{r['full']:.4f} | {r['free']:.4f} | {r['diff']:+.4f} +- {r['sem']:.4f} | "
                f"{r['max_abs']:.2e} | {r['ppl_full']:.2f} / {r['ppl_free']:.2f} |")
        if peek:
            line += f" {r['peek']:.4f} | {r['peek_diff']:+.4f} +- {r['peek_sem']:.4f} |"
        lines.append(line)
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="gemma3-270m")
    parser.add_argument("--text", required=True)
    parser.add_argument("--max-tokens", type=int, default=1024)
    parser.add_argument("--positions", type=int, default=32, help="target positions sampled")
    parser.add_argument("--start", type=int, default=128, help="first position sampled")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--configs", default=None,
                        help="comma-separated indices into CONFIGS (default: all)")
    parser.add_argument("--no-peek", action="store_true",
                        help="skip the forwards over tokens 0 .. t + 1 (target present)")
    parser.add_argument("--out", default=None, help="also write the table (markdown)")
    args = parser.parse_args(argv)
    names = list(CONFIGS)
    if args.configs:
        names = [names[int(i)] for i in args.configs.split(",")]
    loaded = load_model(args.model)
    encoded = tokenize(loaded, read_text(args.text), args.max_tokens)
    tokens = int(encoded["input_ids"].shape[1])
    positions = sample_positions(tokens, args.positions, start=args.start, seed=args.seed)
    print(f"leak_loss: {args.model}, {tokens} tokens, seed {args.seed}, {len(positions)} "
          f"positions {positions[0]} .. {positions[-1]}", flush=True)
    rows = []
    for name in names:
        budget = CONFIGS[name]
        started = time.perf_counter()
        full = full_losses(loaded, encoded, positions, budget, seed=args.seed)
        free = prefix_losses(loaded, encoded, positions, budget, seed=args.seed)
        peek = None if args.no_peek else prefix_losses(loaded, encoded, positions, budget,
                                                       extra=1, seed=args.seed)
        rows.append(summarise(name, budget, full, free, peek, time.perf_counter() - started))
        r = rows[-1]
        present = (f", token t+1 present {r['peek']:.4f} ({r['peek_diff']:+.4f} +- "
                   f"{r['peek_sem']:.4f})" if peek is not None else "")
        print(f"{name}: full {r['full']:.4f} leak-free {r['free']:.4f} diff "
              f"{r['diff']:+.4f} +- {r['sem']:.4f}{present} ({r['seconds']:.0f} s)",
              flush=True)
    text = table(rows)
    print(text)
    for r in rows:
        if r["config"].startswith("exact"):
            ok = r["max_abs"] <= EXACT_TOLERANCE
            print(f"leak_loss: check: exact row's largest |full - leak-free| = "
                  f"{r['max_abs']:.2e} nats ({'OK' if ok else 'FAILED'}: <= "
                  f"{EXACT_TOLERANCE:g}, rounding)")
    if args.out:
        with open(args.out, "w") as f:
            f.write(f"{args.model}, {tokens} tokens of {args.text}, seed {args.seed}, "
                    f"{len(positions)} positions {positions[0]} .. {positions[-1]}\n\n")
            f.write(text + "\n")


if __name__ == "__main__":
    main()
