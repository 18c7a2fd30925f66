"""The support rows of the accuracy study (layer 4): the better supports at the study's
budget -- Scatterbrain with query k-means clusters + sink + window and no low-rank part,
and with key centroids in place of part of that support."""

from __future__ import annotations

from sbbench.core.types import Budget

# The rows of the better supports, by row name: "scatterbrain_kmeans" is
# Scatterbrain with no low-rank part and a support of query k-means clusters + sink +
# window (exact softmax over it), "scatterbrain_centroids" the method of that name (key
# k-means centroids) with such a support. Their budgets: :func:`support_budget`.
SUPPORTS = ("scatterbrain_kmeans", "scatterbrain_centroids")
SUPPORT_SINK = 4  # the first keys every query of a support row attends to


def support_budget(name: str, budget: int) -> Budget | None:
    """The Budget of the support row ``name`` at ``budget`` memory per query (None where
    it does not fit: every part needs at least one key). Both use one k-means clustering
    (whatever the study's hash rounds) and sink ``SUPPORT_SINK``; the window takes what is
    left, so ``memory_per_query == budget``:

    - "scatterbrain_kmeans": no low-rank part, k-means buckets of ``budget // 2`` keys;
    - "scatterbrain_centroids": ``budget // 4`` key centroids, then half of the rest to
      k-means buckets.

    These are the f=0 support that did best at 128 keys on the real captures and its
    variant with a quarter of the budget in key centroids (benchmarks/supports.py,
    reports/supports)."""
    if name not in SUPPORTS:
        raise ValueError(f"support rows are {', '.join(SUPPORTS)}, got {name!r}")
    centroids = budget // 4 if name == "scatterbrain_centroids" else 0
    rest = budget - centroids
    bucket = rest // 2
    window = rest - bucket - SUPPORT_SINK
    if bucket < 1 or window < 1 or (name == "scatterbrain_centroids" and centroids < 1):
        return None
    method = "scatterbrain_centroids" if centroids else "scatterbrain"
    return Budget(method, n_features=centroids, bucket_size=bucket, n_hashes=1,
                  sparse="kmeans", sink=SUPPORT_SINK, window=window)


def support_label(budget: Budget) -> str:
    """E.g. "16 key centroids + k-means bucket 24 + sink 4 + window 20" (the "detail" of
    a support row)."""
    parts = [f"{budget.n_features} key centroids"] if budget.n_features else []
    parts.append(f"k-means bucket {budget.bucket_size}"
                 + (f" x {budget.n_hashes}" if budget.n_hashes > 1 else ""))
    parts += [f"sink {budget.sink}", f"window {budget.window}"]
    return " + ".join(parts)


# the least budget each support row fits in
SUPPORT_MIN_BUDGET = {name: next(b for b in range(1, 64) if support_budget(name, b))
                      for name in SUPPORTS}
