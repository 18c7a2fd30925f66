"""Attention inputs (layer 2): seeded synthetic ones, and Q/K/V captured from a real model.

Shared by the benchmark harness and the accuracy study, so one seed means the same
tensors everywhere. Random i.i.d. Gaussians alone flatter or punish methods
unrealistically (docs/measurement.md), hence the ``"clustered"`` kind: keys and
queries with structure that hashing can find and that is close to low rank. Better
still are the inputs a trained model produces: the kind ``"qkv:FILE"`` reads a capture
written by ``sbbench capture`` (see ``load_capture``).
"""

from __future__ import annotations

import math
import operator

import torch

from sbbench.core.types import Problem
from sbbench.measure import capture_file
from sbbench.measure.capture_file import (  # noqa: F401 - the public names live here too
    CAPTURE_PREFIX,
    Capture,
    CapturedLayer,
    capture_kind,
    is_capture_kind,
    load_capture,
    save_capture,
)

# Synthetic kinds; a captured kind is spelt "qkv:FILE" or "qkv:FILE#layer=N".
KINDS = ("gaussian", "clustered")

# Clustered inputs: share of each coordinate's variance that is noise around the centre
# (the rest is the centre). 0.5 keeps same-cluster pairs clearly above the others
# without making every cluster a single point.
CLUSTER_NOISE = 0.5

_TORCH_DTYPES = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float64": torch.float64,
}


def _non_negative_int(name: str, value) -> int:
    """An int (or numpy integer) >= 0, else ValueError naming ``name``."""
    if isinstance(value, bool):
        raise ValueError(f"{name} must be an int >= 0, got {value!r}")
    try:
        value = operator.index(value)
    except TypeError:
        raise ValueError(f"{name} must be an int >= 0, got {value!r}") from None
    if value < 0:
        raise ValueError(f"{name} must be an int >= 0, got {value}")
    return value


def make_qkv(
    problem: Problem,
    *,
    seed: int,
    kind: str = "gaussian",
    temperature: float = 1.0,
    n_clusters: int = 8,
    device: torch.device | str = "cpu",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Seeded q, k, v: three [batch, heads, seq, head_dim] tensors in ``problem.dtype``.

    The generator, exactly. Every draw is float64 on a CPU ``torch.Generator`` seeded with
    ``seed``, in the order listed; the tensors are then scaled, cast to ``problem.dtype``
    and moved to ``device`` (so one seed gives the same inputs on every device). Shapes:
    ``S = [batch, heads, seq_len, head_dim]``, ``d = head_dim``.

    - ``"gaussian"``: ``x_q ~ N(0, 1)^S``, ``x_k ~ N(0, 1)^S``, ``v ~ N(0, 1)^S``, i.i.d.
    - ``"clustered"``: centres ``c ~ N(0, 1)^[batch, heads, n_clusters, d]``; then one
      cluster per position ``z ~ Uniform{0, ..., n_clusters - 1}^[batch, heads, seq_len]``
      (shared by the query and the key of that position, drawn with ``torch.randint``);
      then noises ``e_q ~ N(0, 1)^S``, ``e_k ~ N(0, 1)^S``; then ``v ~ N(0, 1)^S``;
      ``x_q = sqrt(1 - s) c[z] + sqrt(s) e_q``, ``x_k = sqrt(1 - s) c[z] + sqrt(s) e_k``
      with ``s = CLUSTER_NOISE = 0.5``.

    In both kinds every coordinate of ``x_q`` and ``x_k`` has unit variance, and

        q = sqrt(temperature) * x_q,   k = sqrt(temperature) * x_k,

    so the logits of attention with the default scale ``tau = 1 / sqrt(d)`` are
    ``tau q.k = temperature * x_q.x_k / sqrt(d)``: ``temperature`` multiplies them. Small
    temperature -> near-uniform softmax rows, large -> near one-hot. For ``"gaussian"``
    ``x_q.x_k / sqrt(d)`` has mean 0 and variance 1, so ``temperature`` is the logits'
    standard deviation. For ``"clustered"`` a same-cluster pair has mean logit about
    ``temperature * (1 - s) * sqrt(d)`` and a cross-cluster pair mean 0: each query's mass
    goes first to its cluster, and at large temperature to a few keys inside it.
    ``v`` is i.i.d. standard normal in both kinds and does not depend on ``temperature``.

    - ``"qkv:FILE"`` / ``"qkv:FILE#layer=N"``: a capture (``load_capture``): layer N, or
      without ``#layer=`` every captured layer stacked along the heads; FILE may be a
      shipped capture's name (``"qkv:minilm"``). No randomness (``seed`` is checked, not
      used).
      The capture defines the heads and head_dim: ``problem.heads`` and
      ``problem.head_dim`` must equal them, and ``problem.seq_len`` may not exceed the
      captured tokens (a ``UserError`` says what to set). The first ``seq_len`` tokens
      are taken and the one sequence is repeated over ``problem.batch``. The model's
      softmax scale is folded into q (``q * scale * sqrt(d)``), so attention with the
      default scale ``1 / sqrt(d)`` computes the model's logits; ``temperature``
      multiplies them as above (q and k times ``sqrt(temperature)``). Whether the
      attention is causal is the Problem's choice; the model's own flag, and a sliding
      window if the layer had one, are in the capture's metadata.
    """
    if is_capture_kind(kind):
        return _captured_qkv(problem, kind, seed=seed, temperature=temperature, device=device)
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)} or {CAPTURE_PREFIX}FILE, "
                         f"got {kind!r}")
    seed = _non_negative_int("seed", seed)
    n_clusters = _non_negative_int("n_clusters", n_clusters)
    if n_clusters < 1:
        raise ValueError(f"n_clusters must be an int >= 1, got {n_clusters}")
    temperature = _temperature(temperature)

    gen = torch.Generator(device="cpu").manual_seed(seed)
    shape = (problem.batch, problem.heads, problem.seq_len, problem.head_dim)
    f64 = torch.float64
    if kind == "gaussian":
        x_q = torch.randn(shape, generator=gen, dtype=f64)
        x_k = torch.randn(shape, generator=gen, dtype=f64)
        v = torch.randn(shape, generator=gen, dtype=f64)
    else:
        centres = torch.randn(problem.batch, problem.heads, n_clusters, problem.head_dim,
                              generator=gen, dtype=f64)
        z = torch.randint(0, n_clusters, shape[:3], generator=gen)
        # [b, h, C, d] gathered at z -> [b, h, seq, d]: the centre of every position
        centre = torch.gather(centres, 2, z[..., None].expand(shape))
        e_q = torch.randn(shape, generator=gen, dtype=f64)
        e_k = torch.randn(shape, generator=gen, dtype=f64)
        v = torch.randn(shape, generator=gen, dtype=f64)
        x_q = math.sqrt(1 - CLUSTER_NOISE) * centre + math.sqrt(CLUSTER_NOISE) * e_q
        x_k = math.sqrt(1 - CLUSTER_NOISE) * centre + math.sqrt(CLUSTER_NOISE) * e_k
    amplitude = math.sqrt(temperature)
    dtype = _TORCH_DTYPES[problem.dtype]
    return tuple(t.to(dtype=dtype, device=device)
                 for t in (amplitude * x_q, amplitude * x_k, v))


def input_label(kind: str, temperature: float) -> str:
    """The record's ``inputs`` column: the kind (a capture by file stem, layer and text
    hash, never a machine's path) and the temperature, e.g. ``clustered:t=1``."""
    name = capture_file.capture_label(kind) if is_capture_kind(kind) else kind
    return f"{name}:t={temperature:g}"


def capture_shape(kind: str) -> tuple[int, int, int, bool]:
    """(heads, head_dim, tokens, causal) of a capture kind's input."""
    path, layer_index = capture_kind(kind)
    layer = capture_file.load_capture_cached(path).layer(layer_index)
    return layer.heads, layer.head_dim, layer.tokens, layer.causal


def _temperature(temperature) -> float:
    try:
        value = float(temperature)
    except (TypeError, ValueError):
        value = math.nan
    if isinstance(temperature, bool) or not (math.isfinite(value) and value > 0):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
    return value


def _captured_qkv(problem: Problem, kind: str, *, seed: int, temperature: float,
                  device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``make_qkv`` for a ``"qkv:FILE[#layer=N]"`` kind (see there)."""
    _non_negative_int("seed", seed)
    temperature = _temperature(temperature)
    path, layer_index = capture_kind(kind)
    layer = capture_file.load_capture_cached(path).layer(layer_index)
    layer.check_problem(problem)
    q, k, v = (t[:, :problem.seq_len].to(torch.float64) for t in (layer.q, layer.k, layer.v))
    amplitude = math.sqrt(temperature)
    q = q * (layer.scale * math.sqrt(layer.head_dim) * amplitude)
    k = k * amplitude
    dtype = _TORCH_DTYPES[problem.dtype]
    # [heads, seq, d] -> [batch, heads, seq, d]: one sequence, repeated over the batch
    return tuple(t.expand(problem.batch, *t.shape).to(dtype=dtype, device=device).contiguous()
                 for t in (q, k, v))
