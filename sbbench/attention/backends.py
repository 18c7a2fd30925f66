"""Which implementation runs a call: the torch core or the Triton kernels.

``backend="auto"`` runs the kernels where they take the call and the torch path
everywhere else: CPU tensors, triton not installed, anything the kernels refuse
(``sbbench.kernels.forward_refusal``: float64, head_dim above 256 or above 128 in
float32, a bucket above 256, no tile config that fits the device), ``return_weights``
(the dense matrix is a torch-path output) and inputs that need gradients (the kernels
compute the forward only). ``backend="triton"`` never falls back: the kernels then refuse
in one line.
"""

from __future__ import annotations

import torch

BACKENDS = ("auto", "torch", "triton")


def triton_available() -> bool:
    try:
        import sbbench.kernels as kernels  # noqa: F401
    except ImportError:
        return False
    return hasattr(kernels, "scatterbrain_forward")


def check_backend(backend: str) -> None:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")


def resolve_backend(backend: str, q: torch.Tensor, k: torch.Tensor | None = None,
                    v: torch.Tensor | None = None, *, return_weights: bool | str = False,
                    **call) -> str:
    """"torch" or "triton" for one call: ``backend`` itself unless it is "auto"; "auto"
    -> "triton" for CUDA tensors when the kernels import and take the call
    (:func:`auto_refusal`), else "torch". ``call``: the dispatch arguments of
    ``run_method`` (projections, hashes, bucket_size, sparse, causal, sink, window)."""
    check_backend(backend)
    if backend != "auto":
        return backend
    if not q.is_cuda or not triton_available():
        return "torch"
    from sbbench.kernels._common import launch_limits

    k = q if k is None else k
    v = q if v is None else v
    needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v))
    projections, hashes = call.get("projections"), call.get("hashes")
    reason = auto_refusal(
        q.dtype, q.shape[-1], v.shape[-1], limits=launch_limits(q.device),
        n_features=2 * projections.shape[0] if projections is not None else 0,
        bucket_size=call.get("bucket_size"), sparse=call.get("sparse"),
        n_hashes=getattr(hashes, "n_hashes", 1), causal=bool(call.get("causal")),
        sink=call.get("sink", 0), window=call.get("window", 0),
        return_weights=return_weights, needs_grad=needs_grad)
    return "torch" if reason else "triton"


def auto_refusal(dtype: torch.dtype, head_dim: int, head_dim_v: int, *, limits,
                 n_features: int, bucket_size: int | None, sparse: str | None,
                 n_hashes: int = 1, causal: bool = False, sink: int = 0, window: int = 0,
                 return_weights: bool | str = False, needs_grad: bool = False) -> str | None:
    """Why "auto" runs a call of these sizes on the torch path although a GPU and the
    kernels are there, or None (it runs the kernels). ``limits``: the device's
    ``kernels.DeviceLimits`` (what a launch checks its tiles against)."""
    if return_weights:
        return "return_weights: the dense matrix is a torch-path output"
    if needs_grad:
        return "inputs need gradients: the kernels compute the forward only"
    from sbbench.kernels import forward_refusal

    return forward_refusal(dtype, head_dim, head_dim_v, n_features=n_features,
                           bucket_size=bucket_size, n_hashes=n_hashes, sparse=sparse,
                           causal=causal, limits=limits, sink=sink, window=window)
