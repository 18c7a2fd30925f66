"""``sbbench e2e``: the model with its attention replaced, per budget (parsing only)."""

from __future__ import annotations

from sbbench.cli.args import add_command, add_model_arguments
from sbbench.cli.capture import positive_int
from sbbench.core.errors import UserError

_DESCRIPTION = """\
Run a model with its attention replaced by an approximation (Performer, LSH,
Scatterbrain, Scatterbrain with local blocks) at each budget. Encoders (minilm, a local
BERT-like folder): every layer is replaced; printed: the cosine similarity between the
mean-pooled sentence embedding and the model's own. Decoders (gemma3-270m, a local
causal-LM folder): the global layers are replaced (sliding-window layers keep the
model's own attention); printed: the next-token loss and perplexity over the text, and
the perplexity ratio to the model's own. Both: the relative error of the last hidden
state, and e2e_error (0 = unchanged: 1 - cosine, or perplexity ratio - 1).

A budget is the attention memory per query (features + bucket_size * hashes), split as
in the sweep; randomness is drawn per layer from --seed. The exact row runs exact
attention through the same path (it checks the path). With --store the rows go into a
results store (inputs e2e:<model>@<text hash>), so `sbbench select --store FILE` picks,
per target, the cheapest budget whose end-to-end error meets it, or says "not
reachable"."""

_EPILOG = """\
examples:
  sbbench e2e --model minilm --text notes.txt --budgets 32,64,128
  sbbench e2e --model minilm --text notes.txt --budgets 64 --methods scatterbrain --seed 3
  sbbench e2e --model minilm --text notes.txt --budgets 32,64,128 --store e2e.sqlite
  sbbench select --store e2e.sqlite --gpu cpu --targets 0.01,0.05 --report-out e2e-reports
      budgets chosen on end-to-end quality (e2e_error <= target)
  sbbench e2e --model gemma3-270m --text notes.txt --budgets 256 --max-tokens 2048 --time-samples 1
  sbbench e2e --model minilm --text notes.txt --budgets 256 --methods scatterbrain,lsh \\
      --sparse kmeans --sink 4 --window 124
      the better supports: k-means clusters, the first 4 and the nearest 124 keys
"""


def register(subparsers) -> None:
    parser = add_command(subparsers, "e2e", description=_DESCRIPTION, epilog=_EPILOG,
                         help="end-to-end quality of a model with approximate attention "
                              "(embedding cosine, or perplexity)")
    add_model_arguments(parser, models="minilm, gemma3-270m or a local Hugging Face folder")
    parser.add_argument("--budgets", required=True, metavar="B,B,...",
                        help="attention memory per query, features + bucket_size * hashes")
    parser.add_argument("--methods", metavar="M,...",
                        help="performer, lsh, scatterbrain, scatterbrain_local, "
                             "scatterbrain_centroids (default all)")
    parser.add_argument("--hashes", metavar="R", help="hash rounds of LSH and Scatterbrain "
                                                      "(default 1)")
    parser.add_argument("--seed", metavar="S", help="seed of the random projections and "
                                                    "hash functions (default 0)")
    parser.add_argument("--max-tokens", metavar="N", help="cut the text to N tokens "
                                                          "(default 512)")
    parser.add_argument("--sparse", metavar="KIND", default=None,
                        help="bucket kind of Scatterbrain: lsh (default) or kmeans")
    parser.add_argument("--sink", metavar="N", default=None,
                        help="every query also attends to the first N keys (taken from the "
                             "budget of the methods with a sparse part; default 0)")
    parser.add_argument("--window", metavar="N", default=None,
                        help="... and to its N nearest keys (default 0)")
    parser.add_argument("--time-samples", metavar="N", default=None,
                        help="forward passes timed per budget, their median kept (default 3; "
                             "1 for long decoder runs)")
    parser.add_argument("--store", metavar="PATH", default=None,
                        help="also write the rows into this results store (SQLite), for "
                             "`sbbench select`")
    parser.set_defaults(func=run_e2e_command)


def parse_budgets(text: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        values = []
    if not values or min(values) < 2:
        raise UserError(f"--budgets must be comma-separated ints >= 2, got {text!r}")
    return values


def parse_methods(text: str | None) -> tuple[str, ...]:
    from sbbench.models.e2e import APPROX_METHODS

    if text is None:
        return APPROX_METHODS
    methods = tuple(part.strip() for part in text.split(",") if part.strip())
    bad = [m for m in methods if m not in APPROX_METHODS]
    if not methods or bad:
        raise UserError(f"--methods must be a comma-separated subset of "
                        f"{', '.join(APPROX_METHODS)}, got {text!r}")
    return methods


def _count(flag: str, text: str | None) -> int:
    if text is None:
        return 0
    if not text.strip().isdigit():
        raise UserError(f"{flag} must be an int >= 0, got {text!r}")
    return int(text)


def _seed(text: str) -> int:
    if not text.strip().isdigit():
        raise UserError(f"--seed must be an int >= 0, got {text!r}")
    return int(text)


def run_e2e_command(args) -> int:
    from sbbench.models.capture import read_text
    from sbbench.models.e2e import budgets_at, format_rows, run_e2e
    from sbbench.models.loading import load_model

    if args.sparse not in (None, "lsh", "kmeans"):
        raise UserError(f"--sparse must be lsh or kmeans, got {args.sparse!r}")
    budgets = budgets_at(parse_budgets(args.budgets), parse_methods(args.methods),
                         n_hashes=positive_int("--hashes", args.hashes, 1),
                         sparse=args.sparse, sink=_count("--sink", args.sink),
                         window=_count("--window", args.window))
    max_tokens = positive_int("--max-tokens", args.max_tokens, 512)
    seed = 0 if args.seed is None else _seed(args.seed)
    text = read_text(args.text)
    store = None
    if args.store:
        from sbbench.sweep.store import Store

        store = Store(args.store)  # a bad path or foreign file fails before the model runs
    samples = positive_int("--time-samples", args.time_samples, 3)
    rows = run_e2e(load_model(args.model), text, budgets, seed=seed, max_tokens=max_tokens,
                   time_samples=samples)
    what = ("next-token loss over the text with the global layers replaced; e2e_error = "
            "perplexity / the model's own - 1" if rows[0]["decoder"] else
            "cosine of mean-pooled embeddings, approximate vs the model's own")
    print(f"sbbench e2e: {args.model}, {rows[0]['tokens']} tokens, seed {seed}; {what}")
    print(format_rows(rows))
    later = sorted({b.method for b in budgets if not b.prefix_consistent})
    if rows[0]["decoder"] and later:
        print(f"sbbench e2e: note: {', '.join(later)} choose keys (or centroids) from the "
              "whole text, so a position's output also depends on later tokens: their loss "
              "may differ from a leak-free one (benchmarks/leak_loss.py, "
              "reports/e2e/README.md)")
    if store is not None:
        import hashlib

        from sbbench.models.e2e import e2e_records

        with store:
            for record in e2e_records(rows, text_sha256=hashlib.sha256(
                    text.encode()).hexdigest()):
                store.add(record, replace=True)
        print(f"sbbench e2e: {len(rows)} rows written to {args.store}")
    return 0
