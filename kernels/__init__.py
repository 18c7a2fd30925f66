"""Triton kernels of Scatterbrain attention (imported as ``sbbench.kernels``).

Files, in the order of the computation:

- ``feature_map.py``  per-row log-scales of the random features (and the shared
  projection helper);
- ``lowrank.py``      phi(K)^T V / phi(K)^T 1 state, phi(Q)(...) output;
- ``causal_lowrank.py`` ``lowrank_causal``: the causal prefix-sum form of the low-rank part
  (a scan over sequence chunks);
- ``lowrank_setup.py`` search spaces, defaults and ``keep`` of the three low-rank kernels;
- ``fixed.py``        the sink and window keys: residual per block of queries in original
  order (a band-masked contiguous key run), the first merge into the running sums;
- ``sparse.py``       per-bucket residual, duplicate-pair correction, masks, per-query
  scale, merge with the low-rank part, write-back in original order (LSH, k-means key
  sets and local);
- ``sparse_setup.py`` the rounds' shared state (k-means pair counts), search space,
  default and ``keep`` of it;
- ``default_table.py`` the default config per architecture, dtype size, head_dim and
  bucket: the one with the most work per program that compiles without spills (found
  by scripts/search_defaults.py; what ``KernelSpec.default_for`` returns where it has a
  row);
- ``refusal.py``      ``forward_refusal``: whether the kernels take a call, from its sizes
  and the device's limits, before anything runs (backend="auto" and the sweep ask it);
- ``scatterbrain.py`` ``scatterbrain_forward``: the whole forward (what backend="triton"
  runs);
- ``static.py``       ahead-of-time compile for sm_80 / sm_90: shared memory, registers,
  spills per config (``compile_config``, ``sweep``; table: scripts/static_compile.py);
- ``testing.py``      interpreter set-up, dtype-derived tolerances, and interpreter modes
  of the kernel tests (tf32 rounding of dots, program order, checked memory accesses).

Each kernel has a search space, a default config, a ``keep(config, limits, shape)``
predicate and a ``KernelSpec``; ``SEARCH_SPACES`` collects them (a config may also carry
the spec's ``optional`` keys, which the space does not enumerate: the sparse kernel's
BLOCK_DK, sparse_setup.OPTIONAL). Every launch runs
``KernelSpec.choose``: the config asked (or the default for the shape) checked by keep()
for the device (``_common.choose_config``). Without
triton, importing this package still works (``HAVE_TRITON`` is False; only the device
limits and shapes are exported) and ``scatterbrain_forward`` is absent, so backend="auto"
falls back to the torch path.
"""

from sbbench.kernels._common import (
    SM80,
    SM90,
    DeviceLimits,
    KernelShape,
    KernelSpec,
    expand_space,
    limits_for,
    supports,
)
from sbbench.kernels.refusal import forward_refusal

try:
    import triton  # noqa: F401
except ImportError:  # pragma: no cover - exercised only without triton
    HAVE_TRITON = False
else:
    HAVE_TRITON = True

__all__ = ["HAVE_TRITON", "SM80", "SM90", "DeviceLimits", "KernelShape", "KernelSpec",
           "expand_space", "forward_refusal", "limits_for", "supports"]

if HAVE_TRITON:
    from sbbench.kernels import causal_lowrank, feature_map, fixed, lowrank, sparse
    from sbbench.kernels.causal_lowrank import lowrank_causal
    from sbbench.kernels.feature_map import (
        FeatureWeights,
        feature_stats,
        key_log_scale,
        scaled_projections,
    )
    from sbbench.kernels.lowrank import lowrank_apply, lowrank_state
    from sbbench.kernels.scatterbrain import KERNEL_NAMES, scatterbrain_forward
    from sbbench.kernels.sparse import fuse_by_default, sparse_attention

    # name -> KernelSpec (search space, default, keep, static-compile plan)
    SEARCH_SPACES = {
        spec.name: spec
        for spec in (feature_map.SPEC, lowrank.STATE_SPEC, lowrank.APPLY_SPEC,
                     causal_lowrank.CAUSAL_SPEC, sparse.SPEC, fixed.FIXED_SPEC)
    }
    DEFAULT_CONFIGS = {name: dict(spec.default) for name, spec in SEARCH_SPACES.items()}

    __all__ += [
        "DEFAULT_CONFIGS", "KERNEL_NAMES", "SEARCH_SPACES", "FeatureWeights", "feature_stats",
        "fuse_by_default", "key_log_scale",
        "lowrank_apply", "lowrank_causal", "lowrank_state", "scaled_projections",
        "scatterbrain_forward", "sparse_attention",
    ]
