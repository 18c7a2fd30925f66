"""Intercept a transformers model's attention: see (capture) or replace (e2e) Q/K/V.

transformers routes every modern attention layer through ``AttentionInterface``: the
layer projects, splits heads, applies its q/k norm and rotary embedding, then calls the
registered function with q, k, v exactly as they enter the softmax, the scale and the
mask. Registering one function under ``IMPLEMENTATION`` and pointing the model at it
therefore sees the real inputs of every layer without copying any model code.

The function asks the active ``Handler`` (set by ``intercepted``) for the output; a
handler that returns None falls back to torch SDPA, the model's own path.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

IMPLEMENTATION = "sbbench"


@dataclass(frozen=True)
class AttentionCall:
    """One layer's attention call: q, k, v [batch, heads, seq, head_dim], key/value heads
    already repeated to the query heads."""

    layer: int
    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    scale: float
    causal: bool
    window: int | None  # sliding window (tokens) of a local layer, None for global
    kv_heads: int
    attention_mask: torch.Tensor | None


# (call) -> output [batch, heads, seq, head_dim] or None (= the model's own SDPA)
Handler = Callable[[AttentionCall], "torch.Tensor | None"]

_active: list[Handler] = []


def _repeat_heads(t: torch.Tensor, heads: int) -> torch.Tensor:
    """[b, kv_heads, s, d] -> [b, heads, s, d]: query head h reads kv head h // group."""
    groups = heads // t.shape[1]
    return t if groups == 1 else t.repeat_interleave(groups, dim=1)


def _attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None,
               **kwargs):
    """The function registered with transformers (its attention-function signature)."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    handler = _active[-1] if _active else None
    if handler is not None:
        heads, head_dim = query.shape[1], query.shape[-1]
        causal = kwargs.get("is_causal")
        causal = bool(getattr(module, "is_causal", False) if causal is None else causal)
        call = AttentionCall(
            layer=int(getattr(module, "layer_idx", -1)),
            q=query, k=_repeat_heads(key, heads), v=_repeat_heads(value, heads),
            scale=float(scaling if scaling is not None else head_dim ** -0.5),
            causal=causal, window=kwargs.get("sliding_window"), kv_heads=key.shape[1],
            attention_mask=attention_mask)
        out = handler(call)
        if out is not None:
            # transformers expects [batch, seq, heads, head_dim] back
            return out.transpose(1, 2).contiguous(), None
    return sdpa_attention_forward(module, query, key, value, attention_mask,
                                  dropout=dropout, scaling=scaling, **kwargs)


def _register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    AttentionInterface.register(IMPLEMENTATION, _attention)
    # the masks our function receives are SDPA's (boolean, None where nothing is masked)
    ALL_MASK_ATTENTION_FUNCTIONS.register(IMPLEMENTATION, sdpa_mask)


@contextlib.contextmanager
def intercepted(model, handler: Handler) -> Iterator[None]:
    """Run ``model``'s attention through ``handler`` inside the block, then restore it."""
    _register()
    before = model.config._attn_implementation
    model.set_attn_implementation(IMPLEMENTATION)
    _active.append(handler)
    try:
        yield
    finally:
        _active.pop()
        model.set_attn_implementation(before)


def sdpa_output(call: AttentionCall) -> torch.Tensor:
    """The model's own attention output for ``call``: SDPA with its mask and scale,
    [batch, heads, seq, head_dim]."""
    mask = call.attention_mask
    causal = call.causal and mask is None and call.q.shape[2] > 1
    return torch.nn.functional.scaled_dot_product_attention(
        call.q, call.k, call.v, attn_mask=mask, is_causal=causal, scale=call.scale)
