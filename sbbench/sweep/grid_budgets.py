"""The budgets a sweep grid gives each method (``grid.Grid``'s budget axes; see the
expansion table in ``sbbench.sweep.grid``)."""

from __future__ import annotations

from sbbench.core.errors import UserError
from sbbench.core.types import (
    CENTROID_METHODS,
    LOWRANK_METHODS,
    SPARSE_KINDS_OF,
    SPARSE_ONLY_METHODS,
    Budget,
)


def sparse_kinds(method: str, grid) -> tuple[str, ...]:
    """The bucket kinds ``method`` is crossed with: the grid's ``sparse`` axis where the
    method can choose, else its own kind (() for methods without a sparse part)."""
    kinds = SPARSE_KINDS_OF.get(method, ())
    if len(kinds) < 2 or not grid.sparse:
        return kinds[:1]
    return tuple(kind for kind in grid.sparse if kind in kinds)


def check_sparse(grid) -> None:
    """UserError (one line) if the grid's ``sparse`` axis holds a kind that none of its
    methods can choose, or leaves a method that chooses its kind without one."""
    if not grid.sparse:
        return
    choosers = [m for m in grid.methods if len(SPARSE_KINDS_OF.get(m, ())) > 1]
    takes = "; ".join(f"{m} takes {' or '.join(SPARSE_KINDS_OF[m])}"
                      for m in SPARSE_KINDS_OF if len(SPARSE_KINDS_OF[m]) > 1)
    for kind in grid.sparse:
        if not any(kind in SPARSE_KINDS_OF[m] for m in choosers):
            raise UserError(f"sparse {kind}: no method of the grid "
                            f"({', '.join(grid.methods)}) can choose it ({takes})")
    for method in choosers:
        if not sparse_kinds(method, grid):
            raise UserError(f"sparse {', '.join(grid.sparse)}: {method} takes "
                            f"{' or '.join(SPARSE_KINDS_OF[method])}")


def check_features(grid) -> None:
    """UserError (one line) if a low-rank method of the grid gets no n_features >= 2
    (n_features 0 is scatterbrain's sparse-only budget; the others skip it), or an odd
    n_features reaches a method with Performer features (only key centroids take odd
    counts)."""
    odd = [f for f in grid.n_features if f % 2]
    performer = [m for m in grid.methods if m in LOWRANK_METHODS and m not in CENTROID_METHODS]
    if odd and performer:
        raise UserError(f"n_features must be even for {', '.join(performer)} (phi(x) has a "
                        f"+/- pair per projection), got {odd[0]}; only scatterbrain_centroids "
                        f"takes odd counts")
    if any(grid.n_features):
        return
    needs = [m for m in grid.methods if m in LOWRANK_METHODS and m not in SPARSE_ONLY_METHODS]
    if needs:
        least = 1 if set(needs) <= set(CENTROID_METHODS) else 2
        raise UserError(f"n_features {', '.join(map(str, grid.n_features))}: {', '.join(needs)} "
                        f"need an n_features >= {least} (0 is scatterbrain without its "
                        f"low-rank part)")


def backends_for(method: str, grid) -> tuple[str, ...]:
    """The grid's backends ``method`` runs on: exact always on torch (SDPA), key
    centroids on torch only (the Triton kernels compute Performer features)."""
    if method == "exact":
        return ("torch",)
    if method in CENTROID_METHODS:
        return tuple(b for b in grid.backends if b != "triton")
    return grid.backends


def budgets_for(method: str, grid) -> list[Budget]:
    """The budgets of ``method`` the grid's axes give (see module doc)."""
    if method == "exact":
        return [Budget("exact")]
    if method == "performer":
        return [Budget("performer", n_features=f) for f in grid.n_features if f]
    features = ((0,) if method == "lsh" else grid.n_features if method in SPARSE_ONLY_METHODS
                else tuple(f for f in grid.n_features if f))
    hashes = (1,) if method == "scatterbrain_local" else grid.n_hashes
    return [Budget(method, n_features=f, bucket_size=b, n_hashes=h, sparse=kind, sink=sink,
                   window=window)
            for f in features for b in grid.bucket_size for h in hashes
            for kind in sparse_kinds(method, grid) for sink in grid.sink
            for window in grid.window]
