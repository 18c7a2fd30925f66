"""``sbbench e2e``: the model with its attention replaced, per budget (parsing only)."""

from __future__ import annotations

from sbbench.cli.args import add_command, add_model_arguments
from sbbench.cli.capture import positive_int
from sbbench.core.errors import UserError

_DESCRIPTION = """\
Run a model with every attention layer replaced by an approximation (Performer, LSH,
Scatterbrain, Scatterbrain with local blocks) at each budget, and print the cosine
similarity between its mean-pooled sentence embedding and the model's own, and the
relative error of the last hidden state. A budget is the attention memory per query
(features + bucket_size * hashes), split as in the sweep; randomness is drawn per
layer from --seed. The exact row runs exact attention through the same path (cosine
1 checks the path). Global-attention models only (minilm or a local BERT-like folder)."""

_EPILOG = """\
examples:
  sbbench e2e --model minilm --text notes.txt --budgets 32,64,128
  sbbench e2e --model minilm --text notes.txt --budgets 64 --methods scatterbrain --seed 3
"""


def register(subparsers) -> None:
    parser = add_command(subparsers, "e2e", description=_DESCRIPTION, epilog=_EPILOG,
                         help="sentence-embedding cosine of a model with approximate attention")
    add_model_arguments(parser, models="minilm or a local Hugging Face folder")
    parser.add_argument("--budgets", required=True, metavar="B,B,...",
                        help="attention memory per query, features + bucket_size * hashes")
    parser.add_argument("--methods", metavar="M,...",
                        help="performer, lsh, scatterbrain, scatterbrain_local (default all)")
    parser.add_argument("--hashes", metavar="R", help="hash rounds of LSH and Scatterbrain "
                                                      "(default 1)")
    parser.add_argument("--seed", metavar="S", help="seed of the random projections and "
                                                    "hash functions (default 0)")
    parser.add_argument("--max-tokens", metavar="N", help="cut the text to N tokens "
                                                          "(default 512)")
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


def _seed(text: str) -> int:
    if not text.strip().isdigit():
        raise UserError(f"--seed must be an int >= 0, got {text!r}")
    return int(text)


def run_e2e_command(args) -> int:
    from sbbench.models.capture import read_text
    from sbbench.models.e2e import budgets_at, format_rows, run_e2e
    from sbbench.models.loading import load_model

    budgets = budgets_at(parse_budgets(args.budgets), parse_methods(args.methods),
                         n_hashes=positive_int("--hashes", args.hashes, 1))
    max_tokens = positive_int("--max-tokens", args.max_tokens, 512)
    seed = 0 if args.seed is None else _seed(args.seed)
    text = read_text(args.text)
    rows = run_e2e(load_model(args.model), text, budgets, seed=seed, max_tokens=max_tokens)
    print(f"sbbench e2e: {args.model}, {rows[0]['tokens']} tokens, seed {seed}; cosine of "
          f"mean-pooled embeddings, approximate vs the model's own")
    print(format_rows(rows))
    return 0
