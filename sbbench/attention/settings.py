"""Named run-time settings the math layer asks a higher layer for.

``scatterbrain_attention(config="tuned")`` and ``ScatterbrainAttention.from_tuned`` need
an answer from the tuned tables (``sbbench.tuned``, a layer above this one). The math
layer does not import it: it asks the resolver registered under that name in
:data:`config_resolvers`. The package root (``sbbench/__init__.py``) registers "tuned"
with a function that imports the tables only when it is called, so this module (and
importing the package) needs neither torch nor YAML.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class ConfigRequest:
    """What a call asks for: a budget meeting ``max_error`` (relative output error) and
    implementation settings for [*, *, seq_len, head_dim] inputs of ``method`` on
    ``device`` ("auto", "cpu", a profile name or alias); with the call's own sizes
    (``n_features`` / ``bucket_size`` given), the settings for that budget."""

    device: str
    seq_len: int
    head_dim: int
    max_error: float
    dtype: str = "float32"
    causal: bool = False
    method: str = "scatterbrain"
    # the call's own budget where it gives its sizes (None: the table picks the budget):
    # the implementation settings are then looked up for this bucket kind, sink, window
    n_features: int | None = None
    bucket_size: int | None = None
    sparse: str | None = None
    sink: int = 0
    window: int = 0


def tuned_method(sparse: str | None, lowrank: str = "performer") -> str:
    """The method name a call's budget is looked up under in the tuned tables."""
    if lowrank == "centroids":
        return "scatterbrain_centroids"
    return "scatterbrain_local" if sparse == "local" else "scatterbrain"


@dataclass(frozen=True)
class ResolvedConfig:
    """A resolver's answer.

    n_features / bucket_size / n_hashes: the budget, or all None where none meets the
    target (then ``no_budget`` says why, in words fit for a message); sparse, sink,
    window: the rest of the budget (the bucket kind, None where the table does not
    say; the extra keys every query attends to); lowrank: the low-rank kind the budget
    was measured with ("centroids" for scatterbrain_centroids). impl: the
    implementation settings (``kernels``: tile config per kernel name,
    ``chunk_elements`` and ``num_threads`` of the torch path; None = default); they never
    change the estimate.
    """

    n_features: int | None
    bucket_size: int | None
    n_hashes: int | None
    impl: dict = field(default_factory=dict)
    no_budget: str | None = None
    sparse: str | None = None
    sink: int = 0
    window: int = 0
    lowrank: str = "performer"

    @property
    def has_budget(self) -> bool:
        return self.n_features is not None and self.bucket_size is not None


Resolver = Callable[[ConfigRequest], ResolvedConfig]

# name -> resolver; filled by the package root (sbbench/__init__.py)
config_resolvers: dict[str, Resolver] = {}


def resolve(name: str, request: ConfigRequest) -> ResolvedConfig:
    """The answer of the resolver registered as ``name``."""
    resolver = config_resolvers.get(name)
    if resolver is None:
        raise ValueError(f"config={name!r}: no resolver registered under that name "
                         f"(registered: {', '.join(sorted(config_resolvers)) or 'none'})")
    return resolver(request)


_warned: set[str] = set()


def warn_once(message: str, *, stacklevel: int = 2) -> None:
    """``warnings.warn(message)`` the first time this process sees ``message`` (a model
    calls attention once per layer and step: one warning says it, thousands hide it)."""
    if message in _warned:
        return
    _warned.add(message)
    warnings.warn(message, UserWarning, stacklevel=stacklevel + 1)
