"""Does a causal approximation's output at position i depend on the tokens after i?

Exact causal attention does not: cutting the sequence after position P leaves outputs
0 .. P-1 unchanged. Approximations whose support or low-rank part is chosen from the whole
sequence (SMYRF hash buckets sort every position; k-means clusters group every query and
pick keys by their cluster; key centroids average every key) do: the output of a query can
change when later tokens change. For a prefill-time measurement that is harmless; for a
next-token loss (``sbbench e2e`` on decoders) it is a channel from later tokens into
earlier predictions. This script measures how large the dependence is, per head: the
relative change of outputs 0 .. P-1 between the whole sequence and the sequence cut after
P, ``|full[:P] - cut| / |exact[:P]|``, beside the cut call's own error against exact
attention. Sink / window only (every key chosen by position) and Performer (prefix sums)
are the controls: 0 up to rounding.

    python benchmarks/causal_leak.py --capture gemma.safetensors --prefix 1024
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from supports import capture_layers  # noqa: E402

from sbbench.attention import exact_attention  # noqa: E402
from sbbench.attention import scatterbrain_attention as attention  # noqa: E402
from sbbench.attention.baselines import performer_attention  # noqa: E402

CONFIGS = {
    "sink4+window124 (control)": dict(n_features=0, sparse=None, bucket_size=0, sink=4,
                                      window=124),
    "performer f128 (control)": None,
    "scatterbrain f64+lsh64 (today)": dict(n_features=64, bucket_size=64),
    "kmeans64+sink4+window60": dict(n_features=0, bucket_size=64, sparse="kmeans", sink=4,
                                    window=60),
    "c32+kmeans48+sink4+window44": dict(n_features=32, bucket_size=48, sparse="kmeans",
                                        sink=4, window=44, lowrank="centroids"),
    "c32+sink4+window92": dict(n_features=32, sparse=None, bucket_size=0, sink=4,
                               window=92, lowrank="centroids"),
}


def call(name, q, k, v, scale, causal, seed):
    gen = torch.Generator().manual_seed(seed)
    if CONFIGS[name] is None:
        return performer_attention(q, k, v, n_features=128, causal=causal,
                                   softmax_scale=scale, generator=gen)
    return attention(q, k, v, causal=causal, softmax_scale=scale, generator=gen,
                     **CONFIGS[name])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--capture", type=Path, required=True)
    parser.add_argument("--prefix", type=int, default=1024, help="P: cut after P tokens")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    layers = capture_layers(args.capture)
    p = args.prefix
    for name in CONFIGS:
        changes, errors = [], []
        for _, q, k, v, scale, causal in layers:
            if not causal:
                raise SystemExit("causal_leak: the capture's layers are not causal")
            for h in range(q.shape[1]):
                qs, ks, vs = q[:, h:h + 1], k[:, h:h + 1], v[:, h:h + 1]
                full = call(name, qs, ks, vs, scale, causal, args.seed)[:, :, :p]
                cut = call(name, qs[:, :, :p], ks[:, :, :p], vs[:, :, :p], scale, causal,
                           args.seed)
                exact = exact_attention(qs[:, :, :p], ks[:, :, :p], vs[:, :, :p],
                                        causal=True, softmax_scale=scale)
                changes.append(((full - cut).norm() / exact.norm()).item())
                errors.append(((cut - exact).norm() / exact.norm()).item())
        print(f"{name:32s} | {len(changes)} heads, prefix {p} of {q.shape[2]} | change of "
              f"outputs < P: median {statistics.median(changes):.4f} max {max(changes):.4f}"
              f" | error of the cut call: median {statistics.median(errors):.3f}", flush=True)


if __name__ == "__main__":
    main()
