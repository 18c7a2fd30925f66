"""Performer positive random features (FAVOR+), in log space.

With ``x_s = sqrt(tau) x`` and projections ``W`` of shape [m, head_dim]:

    phi(x) = exp([W x_s, -W x_s] - |x_s|^2 / 2) / sqrt(2m)        (2m = n_features)

so that ``E[phi(q) . phi(k)] = exp(tau q . k)`` exactly (unbiased and entrywise positive).

Numerically, features are kept as ``exp(log_scale) * hat``: query features are divided by
their row maximum, key features by one maximum over the whole (unmasked) sequence, and the
log-scales are carried separately (docs/algorithm.md, numerical stability).
"""

from __future__ import annotations

import math

import torch

from sbbench.attention.checks import check_n_features, check_positive_int


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


def _projected(
    x: torch.Tensor, projections: torch.Tensor, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """log phi(x) = proj - bias: proj [..., seq, 2m] = [W x_s, -W x_s] (one matmul with
    [W; -W]), bias [..., seq] = |x_s|^2 / 2 + log(2m) / 2."""
    n_proj = projections.shape[0]
    root = math.sqrt(scale)
    both = torch.cat([projections, -projections]).to(x.dtype) * root  # [2m, d], sqrt(tau) folded
    proj = torch.matmul(x, both.T)  # [..., seq, d] @ [d, 2m] -> [..., seq, 2m]
    # |x_s|^2 / 2 without a [seq, d] temporary
    bias = (0.5 * scale) * torch.linalg.vector_norm(x, dim=-1).square() + 0.5 * math.log(2 * n_proj)
    return proj, bias


def feature_logits(x: torch.Tensor, projections: torch.Tensor, scale: float) -> torch.Tensor:
    """log phi(x): [..., seq, head_dim] -> [..., seq, 2m] (before any stabilisation)."""
    proj, bias = _projected(x, projections, scale)
    return proj - bias[..., None]


# The stabilisers (row and global maxima) are taken without gradient: they cancel
# exactly in phi = exp(log_scale) * hat, so the gradient of every output is unchanged,
# and it lets the exponentials run in place on the matmul output (no extra [seq, 2m]
# allocation, which dominates the CPU time at long sequences).


def query_features(
    q: torch.Tensor, projections: torch.Tensor, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Query features divided by their row maximum.

    q: [batch, heads, seq, head_dim] -> (hat [batch, heads, seq, 2m] in (0, 1],
    log_scale [batch, heads, seq]) with ``phi(q_i) = exp(log_scale_i) * hat_i``.
    """
    proj, bias = _projected(q, projections, scale)
    with torch.no_grad():
        shift = proj.amax(dim=-1)
    hat = proj.sub_(shift[..., None]).exp_()
    return hat, shift - bias


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
    proj, bias = _projected(k, projections, scale)
    keep = None if key_padding_mask is None else key_padding_mask[:, None, :]  # [b, 1, seq]
    with torch.no_grad():
        row_max = proj.amax(dim=-1) - bias  # [b, h, seq]
        if keep is not None:
            row_max = row_max.masked_fill(~keep, float("-inf"))
        log_scale = row_max.amax(dim=-1)  # [b, h]
        log_scale = torch.where(torch.isfinite(log_scale), log_scale,
                                torch.zeros_like(log_scale))
    shift = bias + log_scale[..., None]
    if keep is not None:
        shift = shift.masked_fill(~keep, float("inf"))
    hat = proj.sub_(shift[..., None]).exp_()
    return hat, log_scale


def positive_features(x: torch.Tensor, projections: torch.Tensor, scale: float) -> torch.Tensor:
    """phi(x) without stabilisation (tests and small analyses only: may overflow)."""
    return torch.exp(feature_logits(x, projections, scale))
