"""Balanced LSH buckets (SMYRF style) and the fixed local blocks.

Asymmetric transform XBOX+ turns maximum inner product into nearest neighbour:
with ``M = max_i |q_i|^2 + max_j |k_j|^2``,

    q' = [q, 0, sqrt(M - |q|^2)],   k' = [k, sqrt(M - |k|^2), 0],   |q' - k'|^2 = 2M - 2 q.k

Each hash round projects onto a Gaussian direction ``a`` ([head_dim + 2]) plus a shift
``b ~ U(0, r)``; queries and keys are sorted by that value and cut into consecutive chunks
of ``bucket_size`` (every bucket holds exactly ``bucket_size`` queries and keys). Query
chunk ``c`` attends to key chunk ``c``.

Positions beyond ``seq`` (padding up to a multiple of ``bucket_size``) and positions whose
key is masked get hash value +inf, so they sort behind every real position: the real
positions then fall into the same buckets as in a run on the truncated sequence.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sbbench.attention.checks import check_positive_int


@dataclass(frozen=True)
class HashFunctions:
    """``n_hashes`` rounds of scalar projection hashing for XBOX+-transformed vectors.

    directions: [n_hashes, head_dim + 2]; shifts: [n_hashes] (drawn from U(0, r); a shift
    does not change the sorted order, it is kept so the hash is the one SMYRF defines).
    """

    directions: torch.Tensor
    shifts: torch.Tensor

    @property
    def n_hashes(self) -> int:
        return self.directions.shape[0]

    @property
    def head_dim(self) -> int:
        return self.directions.shape[1] - 2

    def to(self, device: torch.device | str) -> HashFunctions:
        return HashFunctions(self.directions.to(device), self.shifts.to(device))

    def order(self, q: torch.Tensor, k: torch.Tensor, bucket_size: int,
              key_padding_mask: torch.Tensor | None = None
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """:func:`lsh_order` with these functions (on q's device): what the Triton
        forward calls, so the kernels need not import this module."""
        return lsh_order(q, k, self.to(q.device), bucket_size, key_padding_mask)


def draw_hashes(
    n_hashes: int,
    head_dim: int,
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    r: float = 1.0,
) -> HashFunctions:
    """Draw ``n_hashes`` hash functions for vectors of ``head_dim`` (float32, on ``device``)."""
    n_hashes = check_positive_int("n_hashes", n_hashes)
    head_dim = check_positive_int("head_dim", head_dim)
    gen_device = generator.device if generator is not None else torch.device("cpu")
    directions = torch.randn(n_hashes, head_dim + 2, generator=generator, device=gen_device)
    shifts = torch.rand(n_hashes, generator=generator, device=gen_device) * r
    device = device if device is not None else gen_device
    return HashFunctions(directions.to(device), shifts.to(device))


def xbox_plus(
    q: torch.Tensor, k: torch.Tensor, key_padding_mask: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """[batch, heads, seq, d] -> [batch, heads, seq, d + 2] each; M over unmasked positions."""
    q_sq = (q * q).sum(dim=-1)  # [b, h, n]
    k_sq = (k * k).sum(dim=-1)
    if key_padding_mask is not None:
        keep = key_padding_mask[:, None, :]
        q_max = q_sq.masked_fill(~keep, 0.0).amax(dim=-1, keepdim=True)
        k_max = k_sq.masked_fill(~keep, 0.0).amax(dim=-1, keepdim=True)
    else:
        q_max = q_sq.amax(dim=-1, keepdim=True)
        k_max = k_sq.amax(dim=-1, keepdim=True)
    big_m = q_max + k_max  # [b, h, 1]
    zeros = torch.zeros_like(q_sq)
    q_ext = torch.cat([q, zeros[..., None], (big_m - q_sq).clamp_min(0).sqrt()[..., None]], dim=-1)
    k_ext = torch.cat([k, (big_m - k_sq).clamp_min(0).sqrt()[..., None], zeros[..., None]], dim=-1)
    return q_ext, k_ext


def hash_values(x_ext: torch.Tensor, hashes: HashFunctions) -> torch.Tensor:
    """[batch, heads, seq, d + 2] -> [batch, heads, n_hashes, seq]: a . x' + b."""
    proj = torch.matmul(x_ext, hashes.directions.to(x_ext.dtype).T)  # [b, h, n, R]
    return (proj + hashes.shifts.to(x_ext.dtype)).transpose(-1, -2)


def padded_length(seq: int, bucket_size: int) -> int:
    return -(-seq // bucket_size) * bucket_size


def lsh_order(
    q: torch.Tensor,
    k: torch.Tensor,
    hashes: HashFunctions,
    bucket_size: int,
    key_padding_mask: torch.Tensor | None = None,
    queries_only: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Sorted order of queries and of keys per round: two [batch, heads, n_hashes, seq_pad]
    long tensors of positions in the padded sequence; chunk ``c`` of both is bucket ``c``
    (``queries_only``: the keys' order is not sorted, None).

    The hash of XBOX+ vectors is computed without building them:
    ``a . q' = a[:d] . q + a[d+1] sqrt(M - |q|^2)`` and
    ``a . k' = a[:d] . k + a[d] sqrt(M - |k|^2)``.
    """
    batch, heads, seq, d = q.shape
    seq_pad = padded_length(seq, bucket_size)
    with torch.no_grad():
        q, k = q.detach(), k.detach()
        q_sq = torch.linalg.vector_norm(q, dim=-1).square()  # [b, h, n]
        k_sq = torch.linalg.vector_norm(k, dim=-1).square()
        if key_padding_mask is not None:
            keep = key_padding_mask[:, None, :]
            big_m = (q_sq.masked_fill(~keep, 0.0).amax(dim=-1, keepdim=True)
                     + k_sq.masked_fill(~keep, 0.0).amax(dim=-1, keepdim=True))
        else:
            big_m = q_sq.amax(dim=-1, keepdim=True) + k_sq.amax(dim=-1, keepdim=True)
        a = hashes.directions.to(q.dtype)  # [R, d + 2]
        shift = hashes.shifts.to(q.dtype)[:, None]  # [R, 1]
        # [b,h,n,d] @ [d,R] -> [b,h,n,R] -> [b,h,R,n]; plus the extra coordinate's term
        fill = torch.full((batch, heads, hashes.n_hashes, seq_pad - seq), float("inf"),
                          dtype=q.dtype, device=q.device)
        drop = None
        if key_padding_mask is not None:
            drop = torch.zeros(batch, seq_pad, dtype=torch.bool, device=q.device)
            drop[:, :seq] = ~key_padding_mask

        def order(x, x_sq, extra):  # the sorted order of the hash values a . x' + b
            values = torch.matmul(x, a[:, :d].T).transpose(-1, -2) + shift \
                + a[:, extra, None] * (big_m - x_sq).clamp_min(0).sqrt()[:, :, None, :]
            values = torch.cat([values, fill], dim=-1)
            if drop is not None:
                values = values.masked_fill(drop[:, None, None, :], float("inf"))
            return torch.sort(values, dim=-1, stable=True).indices

        q_order = order(q, q_sq, d + 1)
        k_order = None if queries_only else order(k, k_sq, d)  # no key hashes unless asked
    return q_order, k_order


def local_order(batch: int, heads: int, seq: int, bucket_size: int,
                device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The local (block-diagonal) variant: positions in their own order, one round."""
    seq_pad = padded_length(seq, bucket_size)
    order = torch.arange(seq_pad, device=device).expand(batch, heads, 1, seq_pad)
    return order, order


def bucket_ids(order: torch.Tensor, bucket_size: int) -> torch.Tensor:
    """Inverse of a sorted order: the bucket of every padded position, same shape as order."""
    ids = torch.arange(order.shape[-1], device=order.device) // bucket_size
    return torch.empty_like(order).scatter_(-1, order, ids.expand_as(order).contiguous())
