"""Output error of k-means supports under other values of sbbench.attention.supports'
constants (e.g. the Lloyd steps inside the groups), per head, median and mean.

Each variant sets the named module constants for its rows and restores them after; the
hashes are drawn as ``benchmarks/supports.py``'s ``head_metrics`` draws them (seed 0), the
error is the relative Frobenius error against exact attention. ``--two-level-from N``
runs the two-level clustering from N clusters on (default 64: the library's), so short
captures reach it too. From the repository root:

    python benchmarks/kmeans_variants.py --capture CAPTURE.safetensors --buckets 16,32 \
        --windows 44,92 --two-level-from 4 --variant INNER_ITERATIONS=3 \
        --variant INNER_ITERATIONS=1
    python benchmarks/kmeans_variants.py --synthetic 8192 --variant CANDIDATES=1
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]  # this checkout's sbbench
import supports as bench  # noqa: E402  (benchmarks/supports.py)

from sbbench.attention import draw_hashes, exact_attention  # noqa: E402
from sbbench.attention import scatterbrain_attention as attention  # noqa: E402
from sbbench.attention import supports as library  # noqa: E402


def errors(layers, exacts, bucket: int, sink: int, window: int) -> list[float]:
    found = []
    for (_, q, k, v, scale, causal), exact in zip(layers, exacts, strict=True):
        for head in range(q.shape[1]):
            sl = slice(head, head + 1)
            gen = torch.Generator().manual_seed(0)
            hashes = draw_hashes(1, q.shape[-1], generator=gen)
            out = attention(q[:, sl], k[:, sl], v[:, sl], n_features=0, bucket_size=bucket,
                            sparse="kmeans", sink=sink, window=window, hashes=hashes,
                            causal=causal, softmax_scale=scale, backend="torch")
            found.append(((out - exact[:, sl]).norm() / exact[:, sl].norm()).item())
    return found


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--capture", type=Path)
    parser.add_argument("--synthetic", type=int, metavar="SEQ",
                        help="clustered synthetic inputs, 4 heads, head_dim 64, t=4")
    parser.add_argument("--causal", action="store_true", help="(synthetic only)")
    parser.add_argument("--buckets", default="64,128", help="bucket sizes, each with sink 4")
    parser.add_argument("--windows", default="60,124", help="the window of each bucket size")
    parser.add_argument("--two-level-from", type=int, default=library.TWO_LEVEL_CLUSTERS)
    parser.add_argument("--variant", action="append", default=[], metavar="NAME=VALUE")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    if args.capture is not None:
        layers = bench.capture_layers(args.capture)
    else:
        layers = bench.synthetic_layers("clustered", args.synthetic, 4, 64, args.causal, 4.0, 0)
    exacts = [exact_attention(q, k, v, causal=causal, softmax_scale=scale)
              for _, q, k, v, scale, causal in layers]
    variants = [("library", {})] + [
        (spec, {spec.split("=")[0]: int(spec.split("=")[1])}) for spec in args.variant]
    library_two_level = library.TWO_LEVEL_CLUSTERS
    for name, constants in variants:
        saved = {key: getattr(library, key) for key in constants}
        library.TWO_LEVEL_CLUSTERS = args.two_level_from
        try:
            for key, value in constants.items():
                setattr(library, key, value)
            for bucket, window in zip(map(int, args.buckets.split(",")),
                                      map(int, args.windows.split(",")), strict=True):
                found = errors(layers, exacts, bucket, 4, window)
                print(f"{name:22s} kmeans{bucket}+sink4+window{window:<4d} | error "
                      f"median {statistics.median(found):.4f} mean "
                      f"{statistics.mean(found):.4f} ({len(found)} heads)", flush=True)
        finally:
            for key, value in saved.items():
                setattr(library, key, value)
            library.TWO_LEVEL_CLUSTERS = library_two_level


if __name__ == "__main__":
    main()
