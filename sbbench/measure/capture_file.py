"""Captured attention inputs: the file ``sbbench capture`` writes and ``make_qkv`` reads.

A capture is a safetensors file: per captured layer ``i`` the tensors ``layer{i}.q``,
``layer{i}.k``, ``layer{i}.v`` (and, when recorded, ``layer{i}.out``, the model's own
attention output) of shape [heads, tokens, head_dim], float16, exactly as they reach the
model's softmax (after any q/k norm and rotary embedding; grouped key/value heads
repeated to the query heads). The header's metadata holds one JSON document under
``"sbbench_capture"``: the model, the text's sha256, the token count, the sbbench version,
the date, and per layer its type (global or sliding + window), heads, kv heads, head_dim,
softmax scale and causal flag.

The format is read and written here with torch alone (it is 8 bytes of header length,
a JSON header, then the raw tensors), so a shipped capture loads without the optional
``safetensors`` package; files written here load with ``safetensors`` too.
"""

from __future__ import annotations

import functools
import json
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

import torch

from sbbench.core.errors import UserError

CAPTURE_PREFIX = "qkv:"
# Captures shipped with sbbench, by name: "qkv:minilm" is the shipped MiniLM capture.
SHIPPED_CAPTURES = {"minilm": "minilm_attention_kernels.safetensors"}
ALL_LAYERS = -1  # CapturedLayer.index of every captured layer stacked along the heads
METADATA_KEY = "sbbench_capture"
FORMAT_VERSION = 1

_DTYPE_CODES = {torch.float16: "F16", torch.float32: "F32", torch.float64: "F64",
                torch.bfloat16: "BF16"}
_CODE_DTYPES = {code: dtype for dtype, code in _DTYPE_CODES.items()}


# ---------------------------------------------------------------------------------------
# safetensors, the subset sbbench needs (little-endian, contiguous float tensors)
# ---------------------------------------------------------------------------------------

def write_safetensors(path: str | os.PathLike, tensors: dict[str, torch.Tensor],
                      metadata: dict[str, str]) -> None:
    """Write ``tensors`` (floating, any shape) and string ``metadata`` as safetensors."""
    header: dict[str, object] = {"__metadata__": dict(metadata)}
    blobs, offset = [], 0
    for name in sorted(tensors):
        tensor = tensors[name].detach().cpu().contiguous()
        data = tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b""
        header[name] = {"dtype": _DTYPE_CODES[tensor.dtype], "shape": list(tensor.shape),
                        "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the data starts 8-byte aligned, as safetensors does
    tmp = Path(f"{path}.tmp")
    with open(tmp, "wb") as out:
        out.write(struct.pack("<Q", len(text)))
        out.write(text)
        for data in blobs:
            out.write(data)
    os.replace(tmp, path)


def read_safetensors(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict]:
    """(tensors, metadata) of a safetensors file; UserError if it is not one."""
    raw = Path(path).read_bytes()
    try:
        (length,) = struct.unpack("<Q", raw[:8])
        header = json.loads(raw[8:8 + length])
    except (struct.error, ValueError) as err:
        raise UserError(f"{path}: not a safetensors file ({err}); write one with "
                        f"`sbbench capture`") from None
    body = memoryview(raw)[8 + length:]
    metadata = header.pop("__metadata__", None) or {}
    tensors = {}
    for name, entry in header.items():
        dtype = _CODE_DTYPES.get(entry["dtype"])
        if dtype is None:
            raise UserError(f"{path}: tensor {name} has dtype {entry['dtype']}, sbbench "
                            f"reads {', '.join(_CODE_DTYPES)}")
        begin, end = entry["data_offsets"]
        flat = torch.frombuffer(bytearray(body[begin:end]), dtype=torch.uint8)
        tensors[name] = flat.view(dtype).reshape(entry["shape"])
    return tensors, metadata


# ---------------------------------------------------------------------------------------
# The capture
# ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class CapturedLayer:
    """One layer's attention inputs: q, k, v (and the model's output) [heads, tokens, d]."""

    index: int
    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    out: torch.Tensor | None
    scale: float  # the model's softmax scale: logits = scale * q k^T
    causal: bool
    layer_type: str  # "global" or "sliding"
    window: int | None  # the sliding window (tokens), None for a global layer
    kv_heads: int  # key/value heads in the model (here repeated to ``heads``)

    @property
    def heads(self) -> int:
        return self.q.shape[0]

    @property
    def tokens(self) -> int:
        return self.q.shape[1]

    @property
    def head_dim(self) -> int:
        return self.q.shape[2]

    def check_problem(self, problem) -> None:
        """UserError unless ``problem`` fits this layer (heads, head_dim, seq_len)."""
        if (problem.heads, problem.head_dim) != (self.heads, self.head_dim):
            raise UserError(
                f"the capture's layer {self.index} has {self.heads} heads of head_dim "
                f"{self.head_dim}: set heads={self.heads} and head_dim={self.head_dim} "
                f"(got heads={problem.heads}, head_dim={problem.head_dim})")
        if problem.seq_len > self.tokens:
            raise UserError(
                f"seq_len {problem.seq_len} exceeds the {self.tokens} captured tokens: use "
                f"seq_len <= {self.tokens} or capture a longer text (sbbench capture "
                f"--max-tokens)")

    def meta(self) -> dict:
        return {"layer_type": self.layer_type, "window": self.window, "heads": self.heads,
                "kv_heads": self.kv_heads, "head_dim": self.head_dim, "scale": self.scale,
                "causal": self.causal}


@dataclass(frozen=True)
class Capture:
    """A capture file's contents: ``meta`` (model, tokens, text_sha256, sbbench_version,
    date, ...) and the captured layers by index."""

    meta: dict
    layers: dict[int, CapturedLayer] = field(default_factory=dict)
    path: str | None = None

    @property
    def tokens(self) -> int:
        return int(self.meta["tokens"])

    def layer(self, index: int | None = None) -> CapturedLayer:
        """Layer ``index``; None: every captured layer stacked along the heads (a MiniLM
        capture of 6 layers x 12 heads is one 72-head input, so per-head statistics cover
        the whole model). UserError if not captured."""
        if index is None or index == ALL_LAYERS:
            return self.stacked()
        if index not in self.layers:
            raise UserError(f"{self.path or 'the capture'} has no layer {index}; captured "
                            f"layers: {', '.join(map(str, sorted(self.layers)))}")
        return self.layers[index]

    def stacked(self) -> CapturedLayer:
        """All captured layers along the heads axis, each layer's softmax scale folded
        into its q (so the stack's scale is 1 / sqrt(head_dim)). Layers must share
        head_dim and causality."""
        layers = [self.layers[i] for i in sorted(self.layers)]
        if len(layers) == 1:
            return layers[0]
        first = layers[0]
        if any((x.head_dim, x.causal) != (first.head_dim, first.causal) for x in layers):
            raise UserError(f"{self.path or 'the capture'}: its layers differ in head_dim "
                            f"or causality; pick one with qkv:FILE#layer=N")
        d = first.head_dim
        # fold each layer's scale into q: (scale * q) k^T == (1/sqrt(d)) (q') k^T
        q = torch.cat([x.q.float() * (x.scale * d ** 0.5) for x in layers])
        cat = lambda name: torch.cat([getattr(x, name) for x in layers])  # noqa: E731
        out = cat("out") if all(x.out is not None for x in layers) else None
        return CapturedLayer(
            index=ALL_LAYERS, q=q, k=cat("k"), v=cat("v"), out=out, scale=d ** -0.5,
            causal=first.causal,
            layer_type="all" if len({x.layer_type for x in layers}) > 1 else first.layer_type,
            window=first.window if len({x.window for x in layers}) == 1 else None,
            kv_heads=sum(x.kv_heads for x in layers))


def save_capture(path: str | os.PathLike, capture: Capture) -> None:
    """Write ``capture`` (tensors as float16) to ``path`` in the format described above."""
    tensors, layers_meta = {}, {}
    for index, layer in sorted(capture.layers.items()):
        parts = {"q": layer.q, "k": layer.k, "v": layer.v, "out": layer.out}
        for name, tensor in parts.items():
            if tensor is not None:
                tensors[f"layer{index}.{name}"] = tensor.to(torch.float16)
        layers_meta[str(index)] = layer.meta()
    document = {"format": "sbbench-qkv", "format_version": FORMAT_VERSION,
                **capture.meta, "layers": layers_meta}
    write_safetensors(path, tensors, {METADATA_KEY: json.dumps(document, sort_keys=True)})


def load_capture(path: str | os.PathLike) -> Capture:
    """Read a capture written by ``sbbench capture``; UserError if it is not one."""
    if not Path(path).is_file():
        raise UserError(f"capture file {path} does not exist; write one with `sbbench "
                        f"capture --model minilm --text FILE --out {path}`")
    tensors, metadata = read_safetensors(path)
    try:
        document = json.loads(metadata[METADATA_KEY])
    except (KeyError, ValueError):
        raise UserError(f"{path}: no sbbench capture metadata; write the file with "
                        f"`sbbench capture`") from None
    layers_meta = document.pop("layers")
    layers = {}
    for key, info in layers_meta.items():
        index = int(key)
        get = lambda name: tensors.get(f"layer{index}.{name}")  # noqa: B023 - used at once
        layers[index] = CapturedLayer(
            index=index, q=get("q"), k=get("k"), v=get("v"), out=get("out"),
            scale=float(info["scale"]), causal=bool(info["causal"]),
            layer_type=info["layer_type"], window=info.get("window"),
            kv_heads=int(info["kv_heads"]))
        if any(t is None for t in (layers[index].q, layers[index].k, layers[index].v)):
            raise UserError(f"{path}: layer {index} lacks q, k or v tensors")
    return Capture(meta=document, layers=layers, path=str(path))


@functools.lru_cache(maxsize=4)
def _load_cached(path: str, mtime_ns: int, size: int) -> Capture:
    return load_capture(path)


def load_capture_cached(path: str | os.PathLike) -> Capture:
    """``load_capture``, reusing the last few files read while they are unchanged (a
    sweep asks for the same capture at every point)."""
    if not Path(path).is_file():
        return load_capture(path)  # raises the UserError
    stat = Path(path).stat()
    return _load_cached(str(Path(path).resolve()), stat.st_mtime_ns, stat.st_size)


def is_capture_kind(kind: object) -> bool:
    """Whether ``kind`` names a capture (``"qkv:FILE"`` or ``"qkv:FILE#layer=N"``)."""
    return isinstance(kind, str) and kind.startswith(CAPTURE_PREFIX)


def shipped_capture(name: str) -> Path | None:
    """The file of a capture shipped with sbbench ("minilm"), None for another name."""
    if name not in SHIPPED_CAPTURES:
        return None
    return Path(__file__).resolve().parents[1] / "data" / "captures" / SHIPPED_CAPTURES[name]


def capture_kind(kind: str) -> tuple[str, int | None]:
    """``"qkv:FILE#layer=N"`` -> (FILE, N); N is None (every layer) without ``#layer=``.

    FILE may be the name of a shipped capture ("qkv:minilm")."""
    spec = kind[len(CAPTURE_PREFIX):]
    path, _, fragment = spec.partition("#")
    if not path:
        raise UserError(f"input kind {kind!r} names no file: use qkv:FILE or "
                        f"qkv:FILE#layer=N (shipped: {', '.join(SHIPPED_CAPTURES)})")
    shipped = shipped_capture(path)
    if shipped is not None:
        path = str(shipped)
    if not fragment:
        return path, None
    name, _, value = fragment.partition("=")
    if name != "layer" or not value.isdigit():
        raise UserError(f"input kind {kind!r}: the part after '#' must be layer=N "
                        f"(N a layer index)")
    return path, int(value)


def capture_label(kind: str) -> str:
    """Short, machine-independent name of a capture input for the record's ``inputs``
    column: ``qkv:<file stem>#layer=N@<text sha256[:8]>`` (no absolute path)."""
    path, layer = capture_kind(kind)
    capture = load_capture_cached(path)
    text = str(capture.meta.get("text_sha256", ""))[:8]
    which = "all" if layer is None else str(layer)
    return f"{CAPTURE_PREFIX}{Path(path).stem}#layer={which}@{text}"
