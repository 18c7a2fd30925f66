"""Scatterbrain attention and its baselines, in PyTorch (reference and CPU path).

Tensors follow ``torch.nn.functional.scaled_dot_product_attention``: q, k, v are
[batch, heads, seq, head_dim]; key_padding_mask is [batch, seq] bool, True = keep.
"""

from .baselines import lsh_attention, performer_attention
from .exact import exact_attention
from .features import draw_projections
from .lsh import HashFunctions, draw_hashes
from .module import ScatterbrainAttention
from .scatterbrain import scatterbrain_attention

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
