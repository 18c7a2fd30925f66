"""Performer positive random features (FAVOR+), in log space.

With ``x_s = sqrt(tau) x`` and projections ``W`` of shape [m, head_dim]:

    phi(x) = exp([W x_s, -W x_s] - |x_s|^2 / 2) / sqrt(2m)        (2m = n_features)

so that ``E[phi(q) . phi(k)] = exp(tau q . k)`` exactly (unbiased and entrywise positive).

Numerically, features are kept as ``exp(log_scale) * hat``: query features are divided by
their row maximum, key features by one maximum over the whole (unmasked) sequence, and the
log-scales are carried separately (SCATTERBRAIN.md section 2, "Numerical stability").
"""

from __future__ import annotations

import math

import torch

from .checks import check_n_features, check_positive_int


def draw_projections(
    n_features: int,
    head_dim: int,
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    orthogonal: bool = True,
) -> torch.Tensor:
    """Random projections ``W``: [n_features // 2, head_dim].

    Gaussian rows, made orthogonal in blocks of ``head_dim`` (QR of Gaussian blocks), each
    row rescaled to the norm of an independent Gaussian vector (Performer's
    ``ortho_scaling=0``), so every row is marginally N(0, I) and the estimate stays unbiased.
    Drawn on the generator's device (CPU by default) in float64, then moved, so one seed
    gives the same projections on every backend.
    """
    n_features = check_n_features(n_features)
    head_dim = check_positive_int("head_dim", head_dim)
    n_proj = n_features // 2
    gen_device = generator.device if generator is not None else torch.device("cpu")
    if not orthogonal:
        w = torch.randn(n_proj, head_dim, generator=generator, device=gen_device,
                        dtype=torch.float64)
    else:
        blocks = []
        for _ in range(math.ceil(n_proj / head_dim)):
            gauss = torch.randn(head_dim, head_dim, generator=generator, device=gen_device,
                                dtype=torch.float64)
            q_mat, _ = torch.linalg.qr(gauss)
            blocks.append(q_mat.T)  # rows orthonormal
        w = torch.cat(blocks, dim=0)[:n_proj]
        norms = torch.randn(n_proj, head_dim, generator=generator, device=gen_device,
                            dtype=torch.float64).norm(dim=1)
        w = w * norms[:, None]
    return w.to(device=device if device is not None else gen_device, dtype=dtype)


def feature_logits(x: torch.Tensor, projections: torch.Tensor, scale: float) -> torch.Tensor:
    """log phi(x): [..., seq, head_dim] -> [..., seq, 2m] (before any stabilisation)."""
    n_proj = projections.shape[0]
    x_s = x * math.sqrt(scale)
    wx = torch.matmul(x_s, projections.to(x.dtype).T)  # [..., seq, d] @ [d, m] -> [..., seq, m]
    half_sq = 0.5 * (x_s * x_s).sum(dim=-1, keepdim=True)  # [..., seq, 1]
    return torch.cat([wx, -wx], dim=-1) - half_sq - 0.5 * math.log(2 * n_proj)


def query_features(
    q: torch.Tensor, projections: torch.Tensor, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Query features divided by their row maximum.

    q: [batch, heads, seq, head_dim] -> (hat [batch, heads, seq, 2m] in (0, 1],
    log_scale [batch, heads, seq]) with ``phi(q_i) = exp(log_scale_i) * hat_i``.
    """
    logits = feature_logits(q, projections, scale)
    log_scale = logits.amax(dim=-1)
    return torch.exp(logits - log_scale[..., None]), log_scale


def key_features(
    k: torch.Tensor,
    projections: torch.Tensor,
    scale: float,
    key_padding_mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Key features divided by one maximum over the (unmasked) sequence.

    k: [batch, heads, seq, head_dim] -> (hat [batch, heads, seq, 2m], log_scale
    [batch, heads]). Masked keys (key_padding_mask False) get zero features and do not
    enter the maximum; a sequence with every key masked gets log_scale 0 and zero features.
    """
    logits = feature_logits(k, projections, scale)
    if key_padding_mask is not None:
        keep = key_padding_mask[:, None, :, None]  # [batch, 1, seq, 1]
        logits = logits.masked_fill(~keep, float("-inf"))
    log_scale = logits.amax(dim=(-1, -2))
    log_scale = torch.where(torch.isfinite(log_scale), log_scale, torch.zeros_like(log_scale))
    return torch.exp(logits - log_scale[..., None, None]), log_scale


def positive_features(x: torch.Tensor, projections: torch.Tensor, scale: float) -> torch.Tensor:
    """phi(x) without stabilisation (tests and small analyses only: may overflow)."""
    return torch.exp(feature_logits(x, projections, scale))
