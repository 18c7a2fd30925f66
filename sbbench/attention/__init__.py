"""Scatterbrain attention and its baselines, in PyTorch (reference and CPU path).

Tensors follow ``torch.nn.functional.scaled_dot_product_attention``: q, k, v are
[batch, heads, seq, head_dim]; key_padding_mask is [batch, seq] bool, True = keep.
"""

from sbbench.attention.baselines import lsh_attention, performer_attention
from sbbench.attention.exact import exact_attention
from sbbench.attention.features import draw_projections
from sbbench.attention.lsh import HashFunctions, draw_hashes
from sbbench.attention.module import ScatterbrainAttention
from sbbench.attention.scatterbrain import scatterbrain_attention

__all__ = [
    "HashFunctions",
    "ScatterbrainAttention",
    "draw_hashes",
    "draw_projections",
    "exact_attention",
    "lsh_attention",
    "performer_attention",
    "scatterbrain_attention",
]
