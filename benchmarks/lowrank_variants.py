"""Which low-rank part helps on top of a sparse support: Performer or key centroids?

For each head and each support (the nonzero pattern of
``scatterbrain_attention(..., n_features=0, return_weights="unnormalized")``), at equal
keys-per-query budget, prints the output error (relative Frobenius vs exact attention,
as ``benchmarks/supports.py``'s ``head_metrics``) of

- the support alone (``f=0``, the library's call);
- the support + Performer with F features (the library's call, the same hashes);
- the support + key centroids with C = F clusters, computed densely in float64 here:
  each head's keys in C k-means clusters (``iters`` Lloyd steps from C distinct keys drawn
  by a ``torch.Generator``), exp(s q_i.k_j) estimated off the support by
  ``exp(s q_i.c_m(j))`` (variant A) or times ``exp(0.5 s^2 sum_d q_id^2 var_m,d)`` (variant
  B, the diagonal log-normal correction), exact on the support. A low-rank factorisation
  (query features exp(s q.c_m), key features onehot(m(j))), so the sum stays exact on the
  support like the library's Performer part.

Then the median and mean over heads. From the repository root:

    python benchmarks/lowrank_variants.py \
        --capture sbbench/data/captures/minilm_attention_kernels.safetensors
    python benchmarks/lowrank_variants.py --capture gemma.safetensors --iters 3 --variants B
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from supports import capture_layers  # noqa: E402

from sbbench.attention import draw_hashes, draw_projections, exact_attention  # noqa: E402
from sbbench.attention import scatterbrain_attention as attention  # noqa: E402


def kmeans_support(keys: int, kmeans: int, sink: int = 4) -> dict:
    """kmeans<kmeans> + sink + window filling ``keys`` keys per query."""
    return dict(bucket_size=kmeans, sparse="kmeans", sink=sink, window=keys - kmeans - sink)


# name -> (support call args, keys per query of the support); the low-rank rank F comes
# on top: budget = support keys + F
SUPPORTS = {
    "kmeans64+sink4+window60": (kmeans_support(128, 64), 128),
    "kmeans48+sink4+window44": (kmeans_support(96, 48), 96),
    "kmeans32+sink4+window28": (kmeans_support(64, 32), 64),
    "kmeans128+sink4+window124": (kmeans_support(256, 128), 256),
    "kmeans112+sink4+window108": (kmeans_support(224, 112), 224),
    "kmeans96+sink4+window92": (kmeans_support(192, 96), 192),
    "sink4+window124": (dict(bucket_size=0, sparse=None, sink=4, window=124), 128),
    "sink4+window92": (dict(bucket_size=0, sparse=None, sink=4, window=92), 96),
}
# (support, F): F = 0 the support alone
ROWS = [
    ("kmeans64+sink4+window60", 0), ("kmeans48+sink4+window44", 32),
    ("kmeans32+sink4+window28", 64),
    ("kmeans128+sink4+window124", 0), ("kmeans112+sink4+window108", 32),
    ("kmeans96+sink4+window92", 64),
    ("sink4+window124", 0), ("sink4+window92", 32),
    ("kmeans64+sink4+window60", 64), ("kmeans128+sink4+window124", 64),  # on top
]


def key_clusters(k, clusters: int, iters: int, generator, key_ok=None):
    """(assignment [n] long, centroids [C, d], per-dimension variance [C, d]) of k-means on
    the keys k [n, d] (``key_ok`` [n] bool: the keys that count; others get -1)."""
    n = k.shape[0]
    ok = torch.ones(n, dtype=torch.bool) if key_ok is None else key_ok
    valid = ok.nonzero()[:, 0]
    kv = k[valid]
    count = min(clusters, kv.shape[0])
    centres = kv[torch.randperm(kv.shape[0], generator=generator)[:count]].clone()
    for _ in range(max(iters, 1)):
        dist = (centres * centres).sum(-1)[None] - 2 * kv @ centres.T
        assign = dist.argmin(-1)
        sums = torch.zeros_like(centres).index_add_(0, assign, kv)
        sizes = torch.zeros(count, dtype=kv.dtype).index_add_(
            0, assign, torch.ones_like(assign, dtype=kv.dtype))
        centres = torch.where(sizes[:, None] > 0, sums / sizes.clamp_min(1)[:, None], centres)
    squares = torch.zeros_like(centres).index_add_(0, assign, kv * kv)
    var = (squares / sizes.clamp_min(1)[:, None] - centres * centres).clamp_min(0)
    full = torch.full((n,), -1, dtype=torch.long)
    full[valid] = assign
    return full, centres, var


def centroid_output(q, k, v, scale, causal, support, clusters, iters, variant, generator):
    """Output [n, dv] of the support (exact) + key centroids elsewhere, dense float64."""
    q, k, v = q.double(), k.double(), v.double()
    assign, centres, var = key_clusters(k, clusters, iters, generator)
    log_c = scale * q @ centres.T  # [n, C]
    if variant == "B":
        log_c = log_c + 0.5 * scale * scale * (q * q) @ var.T
    logits = torch.where(support, scale * q @ k.T, log_c[:, assign])
    if causal:
        logits = logits.masked_fill(torch.ones_like(support).triu(1), float("-inf"))
    return torch.softmax(logits, dim=-1) @ v


def error(out, exact) -> float:
    return ((out.double() - exact.double()).norm() / exact.double().norm()).item()


def head_errors(q, k, v, scale, causal, seed, iters_list, variants):
    """{(support, F, method): error} for one head q, k, v [1, 1, n, d]."""
    exact = exact_attention(q, k, v, causal=causal, softmax_scale=scale)[0, 0]
    found = {}
    for name, (args, _) in SUPPORTS.items():
        if all(row[0] != name for row in ROWS):
            continue
        call = dict(args, causal=causal, softmax_scale=scale, backend="torch")
        if call["sparse"] == "kmeans":
            call["hashes"] = draw_hashes(1, q.shape[-1],
                                         generator=torch.Generator().manual_seed(seed))
        out0, weights = attention(q, k, v, n_features=0, return_weights="unnormalized",
                                  **call)
        support = weights[0, 0] != 0
        for row_name, features in ROWS:
            if row_name != name:
                continue
            if features == 0:
                found[(name, 0, "alone")] = error(out0[0, 0], exact)
                continue
            projections = draw_projections(features, q.shape[-1],
                                           generator=torch.Generator().manual_seed(seed + 1))
            out = attention(q, k, v, n_features=features, projections=projections, **call)
            found[(name, features, "performer")] = error(out[0, 0], exact)
            for iters in iters_list:
                for variant in variants:
                    gen = torch.Generator().manual_seed(seed + 2)
                    out = centroid_output(q[0, 0], k[0, 0], v[0, 0], scale, causal, support,
                                          features, iters, variant, gen)
                    found[(name, features, f"centroids{variant} it{iters}")] = error(out,
                                                                                    exact)
    return found


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--capture", type=Path, required=True)
    parser.add_argument("--iters", type=int, nargs="+", default=[1, 3, 10])
    parser.add_argument("--variants", nargs="+", default=["A", "B"], choices=["A", "B"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--heads", type=int, default=0, help="first N heads only (0: all)")
    args = parser.parse_args(argv)
    layers = capture_layers(args.capture)
    print(f"inputs: {args.capture.name}, {len(layers)} layers, q {tuple(layers[0][1].shape)}, "
          f"causal {layers[0][5]}; torch {torch.__version__}", flush=True)
    table: dict = {}
    done = 0
    for _, q, k, v, scale, causal in layers:
        for head in range(q.shape[1]):
            if args.heads and done >= args.heads:
                break
            sl = slice(head, head + 1)
            found = head_errors(q[:, sl], k[:, sl], v[:, sl], scale, causal, args.seed,
                                args.iters, args.variants)
            for key, value in found.items():
                table.setdefault(key, []).append(value)
            done += 1
    print(f"{done} heads", flush=True)
    for (name, features, method), errors in table.items():
        budget = SUPPORTS[name][1] + features
        label = name if not features else f"{name} + {method} {features}"
        print(f"budget {budget:3d} | {label:58s} | error median {statistics.median(errors):.3f} "
              f"mean {statistics.mean(errors):.3f}", flush=True)


if __name__ == "__main__":
    main()
