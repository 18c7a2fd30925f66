"""Scatterbrain attention and its baselines, in PyTorch (reference and CPU path).

Tensors follow ``torch.nn.functional.scaled_dot_product_attention``: q, k, v are
[batch, heads, seq, head_dim]; key_padding_mask is [batch, seq] bool, True = keep.

The public names load on first use, so importing ``sbbench.attention.settings`` (what the
package root does to register the "tuned" resolver) does not import torch.
"""

from __future__ import annotations

import importlib

_SOURCES = {
    "HashFunctions": "lsh",
    "ScatterbrainAttention": "module",
    "draw_hashes": "lsh",
    "draw_projections": "features",
    "exact_attention": "exact",
    "lsh_attention": "baselines",
    "performer_attention": "baselines",
    "scatterbrain_attention": "scatterbrain",
}

__all__ = sorted(_SOURCES)


def __getattr__(name: str):
    source = _SOURCES.get(name)
    if source is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{source}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_SOURCES))
