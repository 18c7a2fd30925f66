"""The one "run a budget" path: draw the randomness from a generator, call the method.

Every caller that runs a ``Budget`` (the sweep runner, the CI benchmark, the accuracy
study, the tuner, the tests) goes through here, so the same seed gives the same estimate
everywhere: projections are drawn first, then hash functions, from one generator (then,
for key centroids, the seed of their start keys).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import torch

from sbbench import attention
from sbbench.core.types import CENTROID_METHODS, Budget
from sbbench.measure.inject import INJECT_ENV, injected


@dataclass(frozen=True)
class Randomness:
    """What a budget's method draws: random-feature projections, LSH hash functions and
    the seed of the key centroids' start keys (None where the method has no such part;
    the start keys depend on the inputs' shape, so each call draws them from a generator
    seeded with ``centroid_seed``, as ``ScatterbrainAttention`` does)."""

    projections: torch.Tensor | None = None
    hashes: object | None = None
    centroid_seed: int | None = None

    def options(self) -> dict:
        """The keyword arguments of :func:`call_method` that pass this randomness."""
        return dict(projections=self.projections, hashes=self.hashes,
                    centroid_seed=self.centroid_seed)


def draw_randomness(budget: Budget, head_dim: int, generator: torch.Generator, *,
                    device: torch.device | str | None = None) -> Randomness:
    """The budget's randomness, drawn from ``generator``: projections, then hashes, then
    the centroid seed."""
    performer = budget.has_lowrank and budget.lowrank == "performer"
    projections = (attention.draw_projections(budget.n_features, head_dim, generator=generator,
                                              device=device) if performer else None)
    hashes = (attention.draw_hashes(budget.n_hashes, head_dim, generator=generator, device=device)
              if budget.draws_hashes else None)
    seed = None
    if budget.has_lowrank and budget.lowrank == "centroids":
        seed = int(torch.randint(2**62, (), generator=generator, device=generator.device))
    return Randomness(projections, hashes, seed)


def call_method(budget: Budget, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *,
                generator: torch.Generator | None = None, backend: str = "auto",
                projections: torch.Tensor | None = None, hashes=None,
                centroid_seed: int | None = None, **options):
    """q, k, v: [batch, heads, seq, head_dim] -> output (and weights if asked).

    ``options`` (causal, key_padding_mask, softmax_scale, return_weights) go to the
    method as they are. ``projections`` / ``hashes``: randomness drawn beforehand (else
    from ``generator``); ``centroid_seed``: the key centroids' start keys are drawn from
    a generator seeded with it (else from ``generator``)."""
    if budget.method == "exact":
        return attention.exact_attention(q, k, v, **options)
    options.update(generator=generator, backend=backend)
    if budget.method == "performer":
        return attention.performer_attention(q, k, v, n_features=budget.n_features,
                                             projections=projections, **options)
    support = dict(sink=budget.sink, window=budget.window)
    if budget.method == "lsh":
        return attention.lsh_attention(q, k, v, bucket_size=budget.bucket_size,
                                       n_hashes=budget.n_hashes, hashes=hashes, **support,
                                       **options)
    if budget.lowrank == "centroids":  # no projections; the start keys: from the seed
        support["lowrank"] = "centroids"
        if centroid_seed is not None:
            options["generator"] = torch.Generator().manual_seed(centroid_seed)
    return attention.scatterbrain_attention(
        q, k, v, n_features=budget.n_features, bucket_size=budget.bucket_size,
        n_hashes=budget.n_hashes, sparse=budget.sparse, projections=projections,
        hashes=hashes, **support, **options)


def make_call(budget: Budget, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *,
              generator: torch.Generator | None = None,
              randomness: Randomness | None = None, causal: bool = False,
              key_padding_mask: torch.Tensor | None = None,
              softmax_scale: float | None = None,
              backend: str = "auto", inject: bool = True) -> Callable[..., object]:
    """``call(return_weights=False)`` running ``budget`` on q, k, v.

    ``inject``: apply a slowdown asked for in the environment (``measure.inject``); a
    caller that applies its own (the CI benchmark) passes False.

    The randomness is drawn here, once (from ``generator``, unless ``randomness`` is
    given) -- setup that a real model caches -- so the closure holds only the attention
    call and can be timed as it is."""
    if randomness is None:
        if generator is None:
            raise ValueError("make_call needs a generator or drawn randomness")
        randomness = draw_randomness(budget, q.shape[-1], generator, device=q.device)

    def call(return_weights: bool | str = False):
        return call_method(budget, q, k, v, causal=causal, key_padding_mask=key_padding_mask,
                           softmax_scale=softmax_scale, backend=backend,
                           return_weights=return_weights, **randomness.options())

    if inject and os.environ.get(INJECT_ENV):  # a deliberate slowdown, to test regression checks
        return injected(call, budget.method)
    return call


def split_budget(method: str, memory_per_query: int, *, n_hashes: int = 1,
                 lowrank_share: float = 0.5) -> Budget:
    """The Budget of ``method`` that uses ``memory_per_query`` (features + bucket * hashes).

    Scatterbrain gives ``lowrank_share`` of it to features (rounded to an even number;
    scatterbrain_centroids: to centroids, any count >= 1) and the rest to buckets of its
    ``n_hashes`` rounds.
    """
    if memory_per_query < 2:
        raise ValueError(f"memory_per_query must be >= 2, got {memory_per_query}")
    if method == "exact":
        return Budget("exact")
    if method == "performer":
        return Budget("performer", n_features=memory_per_query - memory_per_query % 2)
    if method == "lsh":
        return Budget("lsh", bucket_size=max(1, memory_per_query // n_hashes), n_hashes=n_hashes)
    if not 0.0 < lowrank_share < 1.0:
        raise ValueError(f"lowrank_share must be in (0, 1), got {lowrank_share}")
    if method in CENTROID_METHODS:
        n_features = max(1, int(round(memory_per_query * lowrank_share)))
    else:
        n_features = max(2, int(round(memory_per_query * lowrank_share / 2)) * 2)
    hashes = 1 if method == "scatterbrain_local" else n_hashes
    bucket_size = max(1, (memory_per_query - n_features) // hashes)
    return Budget(method, n_features=n_features, bucket_size=bucket_size, n_hashes=hashes)
