"""Which keys do the sparse supports find, and what does it cost on the CPU?

For each support (SMYRF hash buckets, k-means clusters, sink + window keys, with or
without the low-rank part: "f" Performer features, "c" key centroids) and the top-k
oracle, at budgets of <= 128 and <= 256 keys per query, prints per head: the share of
each row's softmax mass that the support holds (mean over rows) and the output error
(relative Frobenius vs exact attention), then the median and mean over heads. Then the
CPU time of sparse="kmeans" with sink + window against today's Scatterbrain (64 features
+ 64-key hash buckets) at seq 16384.

Inputs: a capture written by ``sbbench capture`` (each layer with the model's softmax
scale and causal flag) or synthetic inputs from ``sbbench.measure.inputs.make_qkv``. From
the repository root:

    python benchmarks/supports.py --synthetic clustered --seq 512 --heads 8
    python benchmarks/supports.py --capture my_capture.safetensors
    python benchmarks/supports.py --synthetic clustered --seq 2048 --causal --no-timing
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from pathlib import Path

import torch

from sbbench.attention import draw_hashes, draw_projections, exact_attention
from sbbench.attention import scatterbrain_attention as attention


def _supports(keys: int, *, plain_lsh: bool = False) -> dict[str, dict]:
    """The supports of at most ``keys`` keys per query, by name; "f" = n_features, the
    sparse part as in the call. ``plain_lsh``: also LSH buckets of the whole budget."""
    half, quarter, three_eighths = keys // 2, keys // 4, 3 * keys // 8
    named = {f"scatterbrain f{half}+lsh{half} (today)": dict(n_features=half,
                                                            bucket_size=half)}
    if plain_lsh:
        named[f"lsh{keys}"] = dict(n_features=0, bucket_size=keys)
    named.update({
        f"kmeans{keys}": dict(n_features=0, bucket_size=keys, sparse="kmeans"),
        f"kmeans{half}+sink4+window{half - 4}": dict(
            n_features=0, bucket_size=half, sparse="kmeans", sink=4, window=half - 4),
        f"kmeans2x{quarter}+sink4+window{half - 4}": dict(
            n_features=0, bucket_size=quarter, n_hashes=2, sparse="kmeans", sink=4,
            window=half - 4),
        f"f{quarter}+kmeans{three_eighths}+sink4+window{three_eighths - 4}": dict(
            n_features=quarter, bucket_size=three_eighths, sparse="kmeans", sink=4,
            window=three_eighths - 4),
        f"sink4+window{keys - 4}": dict(n_features=0, sparse=None, bucket_size=0, sink=4,
                                        window=keys - 4),
    })
    # key centroids (lowrank="centroids") in place of keys of the support
    for clusters in (keys // 8, keys // 4):
        rest = keys - clusters
        named[f"c{clusters}+kmeans{rest // 2}+sink4+window{rest // 2 - 4}"] = dict(
            n_features=clusters, lowrank="centroids", bucket_size=rest // 2, sparse="kmeans",
            sink=4, window=rest // 2 - 4)
    named[f"c{quarter}+sink4+window{keys - quarter - 4}"] = dict(
        n_features=quarter, lowrank="centroids", sparse=None, bucket_size=0, sink=4,
        window=keys - quarter - 4)
    return named


# keys per query -> the supports measured at that budget
SUPPORTS = {128: _supports(128, plain_lsh=True), 256: _supports(256)}
SUPPORTS[128]["f64+sink4+window60"] = dict(n_features=64, sparse=None, bucket_size=0, sink=4,
                                           window=60)
# the same supports with a low-rank part on top (budget + n_features): helps or hurts?
WITH_FEATURES = {"kmeans64+sink4+window60": 64, "kmeans128+sink4+window124": 64}
# ... and the same with key centroids on top
WITH_CENTROIDS = WITH_FEATURES


def capture_layers(path: Path):
    """[(name, q, k, v [1, heads, tokens, d] float32, softmax_scale, causal)] per layer,
    read with sbbench's own capture reader (the model's scale and causal flag per layer)."""
    from sbbench.measure.inputs import load_capture

    capture = load_capture(path)
    return [(f"layer{index}", *(t.float()[None] for t in (layer.q, layer.k, layer.v)),
             layer.scale, layer.causal)
            for index, layer in sorted(capture.layers.items())]

def synthetic_layers(kind: str, seq: int, heads: int, head_dim: int, causal: bool,
                     temperature: float, seed: int):
    from sbbench.core.types import Problem
    from sbbench.measure.inputs import make_qkv

    problem = Problem(seq, head_dim, heads=heads, causal=causal)
    q, k, v = make_qkv(problem, seed=seed, kind=kind, temperature=temperature)
    return [(f"{kind}:t={temperature}", q, k, v, 1.0 / math.sqrt(head_dim), causal)]


def head_metrics(q, k, v, scale, causal, args, seed):
    """(mass, error) of one head [1, 1, n, d] for a support (args) or the oracle (int)."""
    logits = (q[0, 0] @ k[0, 0].T) * scale
    if causal:
        logits = logits.masked_fill(torch.ones_like(logits, dtype=torch.bool).triu(1),
                                    float("-inf"))
    weights = torch.softmax(logits, dim=-1)
    exact = exact_attention(q, k, v, causal=causal, softmax_scale=scale)[0, 0]
    if isinstance(args, int):  # top-k oracle: exact softmax over the k largest logits
        top = logits.topk(min(args, logits.shape[-1]), dim=-1).indices
        support = torch.zeros_like(weights, dtype=torch.bool).scatter_(1, top, True)
        kept = torch.where(support, weights, torch.zeros(()))
        out = (kept / kept.sum(-1, keepdim=True)) @ v[0, 0]
    else:
        gen = torch.Generator().manual_seed(seed)
        call = dict(args)
        n_features = call.pop("n_features")
        centroids = call.get("lowrank") == "centroids"  # their start keys from gen
        projections = (draw_projections(n_features, q.shape[-1], generator=gen)
                       if n_features and not centroids else None)
        sparse = call.get("sparse", "lsh")
        hashes = (draw_hashes(call.get("n_hashes", 1), q.shape[-1], generator=gen)
                  if sparse in ("lsh", "kmeans") else None)
        call.update(causal=causal, softmax_scale=scale, hashes=hashes, backend="torch")
        out = attention(q, k, v, n_features=n_features, projections=projections,
                        generator=gen, **call)[0, 0]
        call.pop("lowrank", None)
        _, sparse_only = attention(q, k, v, n_features=0, return_weights="unnormalized",
                                   **call)
        support = sparse_only[0, 0] != 0
    mass = (weights * support).sum(-1).mean().item()
    error = ((out - exact).norm() / exact.norm()).item()
    return mass, error


def evaluate(layers, seed: int) -> None:
    rows = []
    for budget, supports in SUPPORTS.items():
        named = dict(supports)
        for name, extra in WITH_FEATURES.items():
            if name in named:
                named[f"{name} +f{extra} (budget {budget + extra})"] = {
                    **named[name], "n_features": extra}
        for name, extra in WITH_CENTROIDS.items():
            if name in named:
                named[f"{name} +c{extra} (budget {budget + extra})"] = {
                    **named[name], "n_features": extra, "lowrank": "centroids"}
        named[f"top-{budget} oracle"] = budget
        for name, args in named.items():
            masses, errors = [], []
            for _, q, k, v, scale, causal in layers:
                for head in range(q.shape[1]):
                    sl = slice(head, head + 1)
                    mass, error = head_metrics(q[:, sl], k[:, sl], v[:, sl], scale, causal,
                                               args, seed)
                    masses.append(mass)
                    errors.append(error)
            rows.append((budget, name, masses, errors))
            print(f"<= {budget:3d} | {name:44s} | mass median {statistics.median(masses):.3f} "
                  f"mean {statistics.mean(masses):.3f} | error median "
                  f"{statistics.median(errors):.3f} mean {statistics.mean(errors):.3f}",
                  flush=True)
    return rows


def time_calls(calls: dict, repeats: int, median: bool = False) -> dict[str, float]:
    """Best of ``repeats`` seconds per call (wall time), or with ``median`` the median
    thread time (``time.thread_time``: what other processes' load adds to a call's wall
    time drops out), the calls interleaved so that load from other processes falls on all
    of them alike."""
    clock = time.thread_time if median else time.perf_counter
    samples: dict[str, list[float]] = {name: [] for name in calls}
    for fn in calls.values():
        fn()  # warm-up
    for _ in range(repeats):
        for name, fn in calls.items():
            start = clock()
            fn()
            samples[name].append(clock() - start)
    pick = statistics.median if median else min
    return {name: pick(values) for name, values in samples.items()}


def timing(seq: int, head_dim: int, heads: int, causal: bool, repeats: int, seed: int,
           median: bool = False, parts: bool = False):
    """Seconds of today's Scatterbrain (f64 + lsh64) and of k-means supports at <= 128
    keys per query, randomness drawn outside the timed call. ``parts``: also the two
    parts of kmeans64+sink4+window60 on their own, each at the whole budget (k-means
    clusters of 128 keys, sinks + a window of 128 keys), to see which part costs."""
    gen = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(1, heads, seq, head_dim, generator=gen) for _ in range(3))
    projections = draw_projections(64, head_dim, generator=gen)
    hashes = draw_hashes(1, head_dim, generator=gen)
    hashes2 = draw_hashes(2, head_dim, generator=gen)
    common = dict(causal=causal, backend="torch")
    calls = {
        "scatterbrain f64+lsh64 (today)": lambda: attention(
            q, k, v, n_features=64, bucket_size=64, projections=projections, hashes=hashes,
            **common),
        "kmeans64+sink4+window60": lambda: attention(
            q, k, v, n_features=0, bucket_size=64, sparse="kmeans", sink=4, window=60,
            hashes=hashes, **common),
        "kmeans2x32+sink4+window60": lambda: attention(
            q, k, v, n_features=0, bucket_size=32, n_hashes=2, sparse="kmeans", sink=4,
            window=60, hashes=hashes2, **common),
    }
    if parts:
        calls["kmeans128 (no sink/window)"] = lambda: attention(
            q, k, v, n_features=0, bucket_size=128, sparse="kmeans", hashes=hashes, **common)
        calls["sink4+window124 (no buckets)"] = lambda: attention(
            q, k, v, n_features=0, bucket_size=0, sparse=None, sink=4, window=124, **common)
    times = time_calls(calls, repeats, median)
    base = times["scatterbrain f64+lsh64 (today)"]
    kind = f"median thread time of {repeats}" if median else f"best wall time of {repeats}"
    for name, seconds in times.items():
        print(f"seq {seq} heads {heads} d {head_dim} causal {causal} | {name:32s} | "
              f"{seconds:.3f} s ({seconds / base:.2f}x today; {kind})", flush=True)
    return times


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--capture", type=Path, help="safetensors capture (see above)")
    parser.add_argument("--synthetic", default="clustered", choices=["clustered", "gaussian"])
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--temperature", type=float, default=4.0)
    parser.add_argument("--causal", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-timing", action="store_true")
    parser.add_argument("--timing-only", action="store_true")
    parser.add_argument("--timing-seq", type=int, default=16384)
    parser.add_argument("--timing-heads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--median", action="store_true",
                        help="timing: the median thread time of the repeats instead of the "
                             "best wall time")
    parser.add_argument("--parts", action="store_true",
                        help="timing: also k-means alone and sink + window alone at the "
                             "same budget")
    args = parser.parse_args(argv)
    if args.capture is not None:
        layers = capture_layers(args.capture)
    else:
        layers = synthetic_layers(args.synthetic, args.seq, args.heads, args.head_dim,
                                  args.causal, args.temperature, args.seed)
    print(f"inputs: {layers[0][0]}.. ({len(layers)} layers) q {tuple(layers[0][1].shape)} "
          f"causal {layers[0][5]}; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads", flush=True)
    if not args.timing_only:
        evaluate(layers, args.seed)
    if not args.no_timing:
        timing(args.timing_seq, args.head_dim, args.timing_heads, args.causal, args.repeats,
               args.seed, args.median, args.parts)


if __name__ == "__main__":
    main()
