"""ScatterbrainAttention: a multi-head attention layer (drop-in for self-attention)."""

from __future__ import annotations

import torch
from torch import nn

from sbbench.attention.centroids import check_lowrank
from sbbench.attention.checks import check_positive_int, check_support
from sbbench.attention.exact import exact_attention
from sbbench.attention.features import draw_projections
from sbbench.attention.lsh import HashFunctions, draw_hashes
from sbbench.attention.scatterbrain import impl_settings, scatterbrain_attention
from sbbench.attention.settings import ConfigRequest, tuned_method, warn_once
from sbbench.attention.settings import resolve as resolve_settings


class ScatterbrainAttention(nn.Module):
    """Multi-head self-attention whose attention is Scatterbrain's sparse + low-rank estimate.

    x: [batch, seq, embed_dim] -> [batch, seq, embed_dim]; key_padding_mask: [batch, seq]
    bool, True = keep. The random projections and hash functions are buffers drawn once
    from ``seed`` (so the layer is deterministic and saves with its state dict);
    :meth:`redraw` draws new ones. Forward and backward both work. ``sparse``, ``sink``,
    ``window`` pick the support as in :func:`scatterbrain_attention` (``sparse=None`` takes
    ``bucket_size=0``; ``n_features=0`` drops the low-rank part). ``lowrank="centroids"``:
    key centroids instead of Performer features, their start keys drawn in every forward
    from a generator seeded with the buffer ``centroid_seed`` (drawn from ``seed``).
    """

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        *,
        n_features: int = 64,
        bucket_size: int = 64,
        n_hashes: int = 1,
        sparse: str | None = "lsh",
        causal: bool = False,
        softmax_scale: float | None = None,
        bias: bool = True,
        backend: str = "auto",
        seed: int = 0,
        config: dict | str | None = None,
        exact: bool = False,
        sink: int = 0,
        window: int = 0,
        lowrank: str = "performer",
    ) -> None:
        super().__init__()
        embed_dim = check_positive_int("embed_dim", embed_dim)
        num_heads = check_positive_int("num_heads", num_heads)
        if embed_dim % num_heads:
            raise ValueError(
                f"embed_dim ({embed_dim}) must be divisible by num_heads ({num_heads})"
            )
        self.embed_dim, self.num_heads = embed_dim, num_heads
        self.head_dim = embed_dim // num_heads
        (self.n_features, self.bucket_size, self.n_hashes, self.sink,
         self.window) = check_support(n_features, bucket_size, n_hashes, sparse, sink, window,
                                      check_lowrank(lowrank))
        self.sparse, self.causal = sparse, causal
        self.lowrank = lowrank
        self.softmax_scale, self.backend = softmax_scale, backend
        self.config = config  # implementation settings (kernel tiles, CPU chunking)
        # exact attention instead of the estimate: what from_tuned builds where no
        # measured budget meets the error target
        self.exact = bool(exact)
        self.qkv = nn.Linear(embed_dim, 3 * embed_dim, bias=bias)
        self.out = nn.Linear(embed_dim, embed_dim, bias=bias)
        performer = self.lowrank == "performer"
        self.register_buffer("projections", torch.empty(n_features // 2 if performer else 0,
                                                        self.head_dim))
        if not performer:
            self.register_buffer("centroid_seed", torch.zeros((), dtype=torch.long))
        self.register_buffer("hash_directions", torch.empty(n_hashes, self.head_dim + 2))
        self.register_buffer("hash_shifts", torch.empty(n_hashes))
        self.redraw(torch.Generator().manual_seed(seed))

    @classmethod
    def from_tuned(
        cls,
        device: str = "auto",
        *,
        seq_len: int,
        head_dim: int,
        num_heads: int = 8,
        max_error: float = 0.05,
        sparse: str = "lsh",
        causal: bool = False,
        dtype: str = "float32",
        **layer_kwargs,
    ) -> ScatterbrainAttention:
        """A layer with the budget and implementation settings the device's tuned table
        picks for [*, num_heads, seq_len, head_dim] calls at ``max_error`` (relative
        output error): exact shape bucket, then the nearest, then defaults.

        ``device``: "auto" (the local GPU, or cpu), a profile or alias ("h100"). Reads
        ``tuning_configs/<device>.yaml`` (``$SBBENCH_TUNING_DIR`` overrides the folder).
        Where the table holds no Scatterbrain budget meeting ``max_error`` at that shape
        (or the device has no table), the layer runs exact attention and a warning, given
        once, says why and, where measured, the best error reached and its budget.
        ``lowrank="centroids"`` (a layer keyword) looks up scatterbrain_centroids budgets.
        """
        method = tuned_method(sparse, layer_kwargs.get("lowrank", "performer"))
        resolved = resolve_settings("tuned", ConfigRequest(
            device, seq_len=seq_len, head_dim=head_dim, max_error=max_error, dtype=dtype,
            causal=causal, method=method))
        config = impl_settings(resolved)
        if not resolved.has_budget:
            warn_once(f"ScatterbrainAttention.from_tuned: {resolved.no_budget}; the layer "
                      f"runs exact attention (build it with n_features and bucket_size to "
                      f"choose a budget, or run sbbench sweep and sbbench select for this "
                      f"device)")
            return cls(head_dim * num_heads, num_heads, sparse=sparse, causal=causal,
                       config=config, exact=True, **layer_kwargs)
        support = dict(sparse=resolved.sparse or sparse, sink=resolved.sink,
                       window=resolved.window, lowrank=resolved.lowrank)
        return cls(head_dim * num_heads, num_heads, n_features=resolved.n_features,
                   bucket_size=resolved.bucket_size, n_hashes=resolved.n_hashes,
                   causal=causal, config=config, **{**layer_kwargs, **support})

    @torch.no_grad()
    def redraw(self, generator: torch.Generator | None = None) -> None:
        """Draw new random projections and hash functions (e.g. every few training steps)."""
        device = self.projections.device
        if self.n_features and self.lowrank == "centroids":
            self.centroid_seed.fill_(int(torch.randint(2**62, (), generator=generator)))
        elif self.n_features:  # n_features 0: no low-rank part, nothing to draw
            self.projections.copy_(draw_projections(self.n_features, self.head_dim,
                                                    generator=generator, device=device))
        hashes = draw_hashes(self.n_hashes, self.head_dim, generator=generator, device=device)
        self.hash_directions.copy_(hashes.directions)
        self.hash_shifts.copy_(hashes.shifts)

    def forward(self, x: torch.Tensor, key_padding_mask: torch.Tensor | None = None):
        if x.dim() != 3 or x.shape[-1] != self.embed_dim:
            raise ValueError(
                f"x must have shape [batch, seq, embed_dim={self.embed_dim}], got {tuple(x.shape)}"
            )
        batch, seq, _ = x.shape
        qkv = self.qkv(x).view(batch, seq, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each [batch, heads, seq, head_dim]
        if self.exact:
            attn = exact_attention(q, k, v, causal=self.causal,
                                   key_padding_mask=key_padding_mask,
                                   softmax_scale=self.softmax_scale)
            return self.out(attn.transpose(1, 2).reshape(batch, seq, self.embed_dim))
        centroids = {}
        if self.lowrank == "centroids":  # the same start keys for the same inputs
            centroids = dict(lowrank="centroids", generator=torch.Generator().manual_seed(
                int(self.centroid_seed)))
        attn = scatterbrain_attention(
            q, k, v,
            n_features=self.n_features, bucket_size=self.bucket_size, n_hashes=self.n_hashes,
            sparse=self.sparse, causal=self.causal, key_padding_mask=key_padding_mask,
            softmax_scale=self.softmax_scale, backend=self.backend,
            projections=self.projections if self.n_features and not centroids else None,
            hashes=HashFunctions(self.hash_directions, self.hash_shifts),
            config=self.config, sink=self.sink, window=self.window, **centroids,
        )
        return self.out(attn.transpose(1, 2).reshape(batch, seq, self.embed_dim))

    def extra_repr(self) -> str:
        return (f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, "
                f"n_features={self.n_features}, bucket_size={self.bucket_size}, "
                f"n_hashes={self.n_hashes}, sparse={self.sparse!r}, causal={self.causal}"
                + (f", sink={self.sink}" if self.sink else "")
                + (f", window={self.window}" if self.window else "")
                + (", exact=True" if self.exact else "")
                + (f", lowrank={self.lowrank!r}" if self.lowrank != "performer" else ""))
