"""Capture a real model's attention inputs: per layer the q, k, v its softmax sees.

``capture_model`` runs one forward pass with every attention layer intercepted
(``intercept.intercepted``): each call's q, k, v (after projection, head split, any
q/k norm and rotary embedding; grouped key/value heads repeated to the query heads)
and the model's own attention output are recorded, and the model continues with that
output, so the forward pass is the model's own. ``save_capture`` writes the file
``make_qkv("qkv:FILE")`` reads.
"""

from __future__ import annotations

import hashlib
import inspect
from pathlib import Path

import torch

from sbbench import __version__
from sbbench.core.errors import UserError
from sbbench.core.provenance import now_utc, package_version
from sbbench.measure.inputs import Capture, CapturedLayer, save_capture
from sbbench.models.intercept import AttentionCall, intercepted, sdpa_output
from sbbench.models.loading import LoadedModel, load_model, model_config


def parse_layers(text: str | None) -> tuple[int, ...] | None:
    """"0,2,5" -> (0, 2, 5); None or "all" -> None (every layer)."""
    if text is None or text.strip() in ("", "all"):
        return None
    try:
        layers = tuple(sorted({int(part) for part in text.split(",") if part.strip()}))
    except ValueError:
        raise UserError(f"--layers must be comma-separated layer indices (e.g. 0,2,5) or "
                        f"'all', got {text!r}") from None
    if not layers or min(layers) < 0:
        raise UserError(f"--layers must list layer indices >= 0, got {text!r}")
    return layers


def read_text(path: str | Path) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except OSError as err:
        raise UserError(f"cannot read the text file {path}: {err.strerror}") from None


def tokenize(loaded: LoadedModel, text: str, max_tokens: int | None) -> dict:
    """The tokenizer's tensors for one sequence, cut to ``max_tokens`` (special tokens
    included)."""
    if max_tokens is not None and max_tokens < 2:
        raise UserError(f"--max-tokens must be >= 2, got {max_tokens}")
    encoded = loaded.tokenizer(text, return_tensors="pt", truncation=max_tokens is not None,
                               max_length=max_tokens)
    return dict(encoded)


def forward(loaded: LoadedModel, encoded: dict):
    """One forward pass of the model's base (no language-model head: its logits are not
    needed and, for a large vocabulary, cost more than the whole model)."""
    base = loaded.model.base_model
    accepted = inspect.signature(base.forward).parameters
    with torch.no_grad():
        return base(**{name: t for name, t in encoded.items() if name in accepted})


def capture_model(loaded: LoadedModel, text: str, *, max_tokens: int | None = None,
                  layers: tuple[int, ...] | None = None) -> Capture:
    """Run ``loaded`` on ``text`` and return its attention inputs (float32 tensors,
    [heads, tokens, head_dim], batch 0) for ``layers`` (None: all)."""
    n_layers = int(model_config(loaded).num_hidden_layers)
    wanted = tuple(range(n_layers)) if layers is None else layers
    if max(wanted) >= n_layers:
        raise UserError(f"{loaded.name} has layers 0..{n_layers - 1}, got --layers "
                        f"{','.join(map(str, wanted))}")
    encoded = tokenize(loaded, text, max_tokens)
    recorded: dict[int, CapturedLayer] = {}

    def record(call: AttentionCall) -> torch.Tensor:
        out = sdpa_output(call)
        if call.layer in wanted:
            recorded[call.layer] = CapturedLayer(
                index=call.layer, q=_first(call.q), k=_first(call.k), v=_first(call.v),
                out=_first(out), scale=call.scale, causal=call.causal,
                layer_type="sliding" if call.window else "global",
                window=int(call.window) if call.window else None, kv_heads=call.kv_heads)
        return out

    with intercepted(loaded.model, record):
        forward(loaded, encoded)
    missing = sorted(set(wanted) - set(recorded))
    if missing:
        raise UserError(f"{loaded.name}: no attention call was seen for layers {missing}; "
                        f"the model may not route attention through transformers' "
                        f"AttentionInterface")
    tokens = int(encoded["input_ids"].shape[1])
    meta = {
        "model": loaded.name, "package": loaded.package,
        "source": None if loaded.package else Path(loaded.source).name,
        "model_class": type(loaded.model).__name__, "tokens": tokens,
        "max_tokens": max_tokens, "text_sha256": hashlib.sha256(text.encode()).hexdigest(),
        "sbbench_version": __version__, "date": now_utc(),
        "transformers_version": package_version("transformers"),
        "torch_version": torch.__version__, "compute_dtype": str(loaded.model.dtype),
    }
    return Capture(meta=meta, layers=recorded)


def _first(t: torch.Tensor) -> torch.Tensor:
    """[batch, heads, seq, d] -> [heads, seq, d] (the one sequence), float32, detached."""
    return t[0].detach().to(torch.float32).clone()


def run_capture(model: str, text_path: str | Path, out: str | Path, *,
                max_tokens: int | None = None, layers: tuple[int, ...] | None = None,
                command: str | None = None) -> Capture:
    """Load ``model``, capture its attention inputs on the text file, write ``out``."""
    text = read_text(text_path)
    if not text.strip():
        raise UserError(f"the text file {text_path} is empty")
    loaded = load_model(model)
    capture = capture_model(loaded, text, max_tokens=max_tokens, layers=layers)
    meta = dict(capture.meta, text_file=Path(text_path).name)
    if command:
        meta["command"] = command
    capture = Capture(meta=meta, layers=capture.layers, path=str(out))
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    save_capture(out, capture)
    return capture
