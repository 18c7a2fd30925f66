"""Analytic cost of every method (layer 2): FLOPs, HBM bytes, working set, roofline time.

Pure functions of a Problem (shape) and a Budget (method + approximation budget); the
formulas are written as the equations they are (after attention-gym's
``benchmarks/flex_perf.py``), each term named after the operation it counts.

Notation (one attention call; q, k, v, out are [batch, heads, n, d]):

    BH  = batch * heads                  n   = seq_len          d = head_dim (= d_v)
    F   = n_features (length of phi(x); F / 2 random projections W [F/2, d]; for
          scatterbrain_centroids the number of key centroids, phi(k) a one-hot of k's
          cluster)
    L   = LLOYD_STEPS (Lloyd steps of the key centroids, ``attention.centroids``)
    b   = bucket_size      R = n_hashes (1 for scatterbrain_local)
    n_b = ceil(n / b) * b  (buckets are full b x b blocks: the sequence is padded)
    C   = CAUSAL_CHUNK     n_C = ceil(n / C) * C   (causal low-rank prefix-sum chunks)
    P   = attended pairs of exact attention: n^2, or n (n + 1) / 2 when causal
    s   = bytes per element of the problem's dtype; a = 4 (float32 accumulators);
    i   = 4 (int32 positions)

FLOPs count matrix products only, 2 FLOPs per multiply-add (the convention of the
FlashAttention papers and of ``torch.utils.flop_counter``). Exponentials, maxima,
masking and sorting are not counted: they run on special-function units or are bound by
memory, and the byte model covers them. The matmul terms equal what
``FlopCounterMode`` counts on the torch path (``tests/measure/test_costmodel.py``), with
one exception: causal exact attention counts the P attended pairs that a fused kernel
computes (FlashAttention skips masked blocks), not the full n^2 a dense path computes.

Bytes are the compulsory HBM traffic of an efficient fused implementation: each input
read once per pass that needs it, each output written once, small intermediates (hash
values, sorted positions, float32 partial results of several hash rounds, the low-rank
state) written and read once. Tiles re-read through L2 / shared memory are free, so the
roofline time is a lower bound.
"""

from __future__ import annotations

from dataclasses import dataclass

from sbbench.core.devices import DeviceSpec
from sbbench.core.types import SPARSE_METHODS, Budget, Problem

ELEMENT_BYTES = {"float64": 8, "float32": 4, "float16": 2, "bfloat16": 2}
ACC_BYTES = 4  # float32 accumulators and partial results
INDEX_BYTES = 4  # int32 positions in sorted order
# Chunk of the causal low-rank prefix sums; equals sbbench.attention.core.CAUSAL_CHUNK
# (a test keeps them equal: the torch path and the model must agree).
CAUSAL_CHUNK = 64

# Lloyd steps of the key centroids; equals sbbench.attention.centroids.LLOYD_STEPS (a
# test keeps them equal)
LLOYD_STEPS = 3


def _pad(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def _rounds(budget: Budget) -> int:
    return 1 if budget.method == "scatterbrain_local" else budget.n_hashes


def exact_pairs(problem: Problem) -> int:
    """P: (query, key) pairs exact attention computes: n^2, or n (n + 1) / 2 causal."""
    n = problem.seq_len
    return n * (n + 1) // 2 if problem.causal else n * n


# ---- FLOPs -----------------------------------------------------------------------------

def flop_terms(problem: Problem, budget: Budget) -> dict[str, float]:
    """Matmul FLOPs of each operation of ``budget.method`` on ``problem`` (see module doc).

    Sources of the terms: exact = FlashAttention (QK^T and PV over P pairs); features =
    ``features._projected`` (x_s [n, d] @ [W; -W]^T [d, F]); low-rank sums =
    ``core.lowrank_sums`` (Performer, causal as chunked prefix sums); hash =
    ``lsh.lsh_order`` (R scalar projections of q and of k); bucket terms = the
    [b, d] @ [d, b] and [b, b] @ [b, d] products per bucket and round of ``core.attend``;
    fixed terms = the sink and window keys of every query (:func:`fixed_pairs`).
    Key centroids (scatterbrain_centroids, F = C centroids; ``centroids.centroid_features``)
    replace the two feature terms: L Lloyd steps, each assigning every key to its nearest
    centroid ([n, d] @ [d, C]) and averaging each cluster's keys (one-hot^T K:
    [C, n] @ [n, d]), the final means (with gradient) and the query features
    ([n, d] @ [d, C]); the key features are the one-hot itself (no product), and the
    low-rank sums and bucket terms are Performer's with C. The one-hot cluster sizes
    ([n, C] sums per step) are not matmuls: bytes count them. Not modeled: choosing
    k-means clusters and their keys for sparse="kmeans" (``supports.kmeans_order``: a
    few [rows, clusters] products per round), so its modeled time is a lower bound; the
    measured rows include it.
    """
    bh, n, d = problem.batch * problem.heads, problem.seq_len, problem.head_dim
    method = budget.method
    terms: dict[str, float] = {}
    if method == "exact":
        pairs = exact_pairs(problem)
        terms["scores"] = 2.0 * bh * pairs * d  # Q K^T
        terms["values"] = 2.0 * bh * pairs * d  # softmax(.) V
        return terms

    if budget.has_lowrank:
        f = budget.n_features
        if budget.lowrank == "centroids":
            # per step: K C^T [n, d] @ [d, C] (assign) and onehot^T K [C, n] @ [n, d] (means)
            terms["lloyd_steps"] = 2.0 * 2 * bh * LLOYD_STEPS * n * d * f
            terms["centroid_means"] = 2.0 * bh * n * d * f  # the final means, onehot^T K
            terms["query_features"] = 2.0 * bh * n * d * f  # Q C^T [n, d] @ [d, C]
        else:
            terms["query_features"] = 2.0 * bh * n * d * f  # [n, d] @ [d, F]
            terms["key_features"] = 2.0 * bh * n * d * f
        if not problem.causal:
            terms["lowrank_kv"] = 2.0 * bh * f * n * d  # phi(K)^T V: [F, n] @ [n, d]
            terms["lowrank_num"] = 2.0 * bh * n * f * d  # phi(Q) (phi(K)^T V)
            terms["lowrank_den"] = 2.0 * bh * n * f  # phi(Q) (phi(K)^T 1)
        else:
            chunk = min(CAUSAL_CHUNK, n)
            n_c = _pad(n, chunk)
            terms["lowrank_kv"] = 2.0 * bh * n_c * f * d  # per chunk: phi(K_c)^T V_c
            terms["lowrank_num"] = 2.0 * bh * n_c * f * d  # phi(Q_c) S_{<c}
            terms["lowrank_den"] = 2.0 * bh * n_c * f  # phi(Q_c) z_{<c}
            terms["lowrank_intra_scores"] = 2.0 * bh * n_c * chunk * f  # phi(Q_c) phi(K_c)^T
            terms["lowrank_intra_values"] = 2.0 * bh * n_c * chunk * d  # tril(.) V_c

    if method in SPARSE_METHODS:
        b, rounds = budget.bucket_size, _rounds(budget)
        n_b = _pad(n, b)
        if method != "scatterbrain_local":
            terms["hash"] = 2.0 * 2 * bh * n * d * rounds  # q and k: [n, d] @ [d, R]
        terms["bucket_scores"] = 2.0 * bh * rounds * n_b * b * d  # per bucket [b,d]@[d,b]
        if budget.has_lowrank:
            # phi(q) . phi(k) on the bucketed pairs, subtracted to form the residual
            terms["bucket_lowrank"] = 2.0 * bh * rounds * n_b * b * budget.n_features
        terms["bucket_values"] = 2.0 * bh * rounds * n_b * b * d  # per bucket [b,b]@[b,d]
    fixed = fixed_pairs(problem, budget)
    if fixed:  # sink and window keys: [1, d] @ [d, sink + window] per query, and back
        terms["fixed_scores"] = 2.0 * bh * fixed * d
        if budget.has_lowrank:
            terms["fixed_lowrank"] = 2.0 * bh * fixed * budget.n_features
        terms["fixed_values"] = 2.0 * bh * fixed * d
    return terms


def fixed_pairs(problem: Problem, budget: Budget) -> int:
    """(query, key) pairs the sink and window keys add, per batch and head: every query
    attends to min(sink + window, n) of them (an efficient kernel computes the band, not
    the blocks around it; a sink key inside the window is counted once)."""
    keys = min(budget.sink + budget.window, problem.seq_len)
    return problem.seq_len * keys


def flops(problem: Problem, budget: Budget) -> float:
    """Matmul FLOPs of one forward call (sum of :func:`flop_terms`)."""
    return float(sum(flop_terms(problem, budget).values()))


def dense_equivalent_flops(problem: Problem) -> float:
    """FLOPs exact attention needs for the same problem: 4 BH P d. Dividing it by a
    method's time gives the "dense-equivalent" FLOP/s that compares methods."""
    return flops(problem, Budget("exact"))


# ---- bytes -----------------------------------------------------------------------------

def byte_terms(problem: Problem, budget: Budget) -> dict[str, float]:
    """Compulsory HBM traffic of an efficient implementation, by pass (see module doc).

    exact: one fused pass (FlashAttention): read Q, K, V, write O.
    performer: pass 1 reads K, V and writes the state S = phi(K)^T V [F, d] and
    z = phi(K)^T 1 [F] (float32); pass 2 reads Q and the state, writes O. Causal: one
    sequential pass carries the prefix state on chip. W is read by both passes.
    lsh / scatterbrain: hashing reads Q, K and writes R hash values per position; the sort
    reads them and writes sorted positions; each round's bucket pass reads the positions
    and gathers Q, K, V rows; with R = 1 it writes O, with R > 1 float32 partials
    (numerator, denominator, scale) that a combine pass reads to write O. Scatterbrain
    adds the low-rank state pass and reads the state in the passes that use phi(Q).
    scatterbrain_local: state pass, then one pass over contiguous blocks.
    scatterbrain_centroids: no projections; L Lloyd steps, each reading K twice
    (distances, cluster sums), and the final means reading it once more, each of the
    L + 1 writing and reading the one-hot assignment [n, C] (float32: the cluster sizes
    are its sums) and the centroids [C, d]; then the state pass of the others.
    """
    bh, n, d = problem.batch * problem.heads, problem.seq_len, problem.head_dim
    s = ELEMENT_BYTES[problem.dtype]
    a, i = ACC_BYTES, INDEX_BYTES
    method = budget.method
    terms: dict[str, float] = {}
    if method == "exact":
        terms["read_qkv"] = s * bh * n * 3 * d
        terms["write_out"] = s * bh * n * d
        return terms

    f = budget.n_features
    state = a * bh * f * (d + 1)  # S [F, d] and z [F], float32
    if method == "performer":
        terms["projections"] = 2.0 * s * (f // 2) * d
        terms["read_qkv"] = s * bh * n * 3 * d
        terms["write_out"] = s * bh * n * d
        if not problem.causal:
            terms["state_write_read"] = 2.0 * state
        return terms

    rounds = _rounds(budget)
    n_b = _pad(n, budget.bucket_size)
    if budget.has_lowrank and budget.lowrank == "centroids":
        passes = LLOYD_STEPS + 1
        # each Lloyd step reads K twice (distances, then the cluster sums), the final
        # means once more; the torch path reads the accumulation-dtype copy (a: its size)
        terms["lloyd_read_k"] = a * bh * (2 * LLOYD_STEPS + 1) * n * d
        terms["lloyd_onehot_write_read"] = 2.0 * a * bh * passes * n * f
        terms["centroids_write_read"] = 2.0 * a * bh * passes * f * d
    elif budget.has_lowrank:
        terms["projections"] = 2.0 * s * (f // 2) * d
    if budget.has_lowrank:
        terms["state_pass_read_kv"] = s * bh * n * 2 * d
        terms["state_write"] = state
    if method != "scatterbrain_local":
        terms["hash_read_qk"] = s * bh * n * 2 * d
        terms["hash_values_write_read"] = 2.0 * a * bh * 2 * rounds * n
        terms["sorted_positions_write"] = i * bh * 2 * rounds * n_b
        terms["sorted_positions_read"] = i * bh * 2 * rounds * n_b
    terms["bucket_gather_qkv"] = s * bh * rounds * n * 3 * d
    if budget.sink or budget.window:  # one more pass: q, the band of k and v (read once)
        terms["fixed_read_qkv"] = s * bh * n * 3 * d
    if budget.has_lowrank:
        terms["state_read"] = state * rounds
    if rounds == 1:
        terms["write_out"] = s * bh * n * d
    else:
        partials = a * bh * rounds * n * (d + 2)  # numerator [d], denominator, scale
        terms["partials_write_read"] = 2.0 * partials
        if budget.has_lowrank:  # the combine adds phi(Q) (S, z): reads Q, state
            terms["combine_read_q"] = s * bh * n * d
            terms["state_read"] += state
        terms["write_out"] = s * bh * n * d
    return terms


def bytes_moved(problem: Problem, budget: Budget) -> float:
    """HBM bytes of one forward call (sum of :func:`byte_terms`)."""
    return float(sum(byte_terms(problem, budget).values()))


def working_set_bytes(problem: Problem, budget: Budget) -> float:
    """Device memory an efficient implementation holds: inputs and output
    (s BH n 4d) plus every intermediate of :func:`byte_terms` (low-rank state, hash
    values, sorted positions, partials of several rounds). Summed over phases, so a
    bound: some are freed before others exist. The torch reference path holds more
    (float32 copies, per-chunk temporaries); the measured peak sits next to this."""
    bh, n, d = problem.batch * problem.heads, problem.seq_len, problem.head_dim
    s = ELEMENT_BYTES[problem.dtype]
    total = float(s * bh * n * 4 * d)  # Q, K, V, O
    method = budget.method
    if method == "exact":
        return total
    f = budget.n_features
    if budget.has_lowrank and budget.lowrank == "centroids":  # state, centroids, one-hot [n, C]
        total += ACC_BYTES * bh * f * (d + 1) + ACC_BYTES * bh * f * (d + n)
    elif budget.has_lowrank and not (method == "performer" and problem.causal):
        total += ACC_BYTES * bh * f * (d + 1) + s * (f // 2) * d
    if method in SPARSE_METHODS:
        rounds = _rounds(budget)
        n_b = _pad(n, budget.bucket_size)
        if method != "scatterbrain_local":
            total += ACC_BYTES * bh * 2 * rounds * n  # hash values
            total += INDEX_BYTES * bh * 2 * rounds * n_b  # sorted positions
        if rounds > 1:
            total += ACC_BYTES * bh * rounds * n * (d + 2)  # partials
    return total


# ---- roofline --------------------------------------------------------------------------

def peak_key(dtype: str, *, tf32: bool = False) -> str:
    """Which DeviceSpec.peak_flops entry bounds a problem of ``dtype``: float32 runs on
    the FP32 units unless ``tf32`` (torch.backends.cuda.matmul.allow_tf32 / Triton's
    default for float32 dots) puts it on tensor cores."""
    if dtype == "float32":
        return "tf32" if tf32 else "float32"
    if dtype not in ELEMENT_BYTES:
        raise ValueError(f"unknown dtype {dtype!r}; valid: {', '.join(ELEMENT_BYTES)}")
    return dtype


def roofline_time_s(problem: Problem, budget: Budget, device: DeviceSpec, *,
                    tf32: bool = False) -> float | None:
    """Lower bound on the time of one call: max(FLOPs / peak, bytes / bandwidth).

    None when the device does not know the peak for the problem's dtype or its memory
    bandwidth (the "cpu" profile until measured; V100 bfloat16; float64 on GPUs).
    """
    peak = device.peak_flops.get(peak_key(problem.dtype, tf32=tf32))
    bandwidth = device.mem_bandwidth_bytes_per_s
    if not peak or not bandwidth:
        return None
    return max(flops(problem, budget) / peak, bytes_moved(problem, budget) / bandwidth)


def arithmetic_intensity(problem: Problem, budget: Budget) -> float:
    """FLOPs per HBM byte: above the device's peak / bandwidth ridge it is compute-bound."""
    return flops(problem, budget) / bytes_moved(problem, budget)


def roofline_fraction(problem: Problem, budget: Budget, device: DeviceSpec,
                      measured_s: float, *, tf32: bool = False) -> float | None:
    """roofline time / measured time (1.0 = at the roofline); None if unknown."""
    bound = roofline_time_s(problem, budget, device, tf32=tf32)
    if bound is None or measured_s <= 0:
        return None
    return bound / measured_s


# ---- calibrated model ------------------------------------------------------------------

def method_family(method: str) -> str:
    """The family a device's efficiency factors are given for (devices.yaml)."""
    if method == "exact":
        return "exact"
    if method == "performer":
        return "lowrank"
    if method == "lsh":
        return "sparse"
    return "scatterbrain"


@dataclass(frozen=True)
class ModeledTime:
    """A modeled time and where it comes from.

    roofline_s: the lower bound (:func:`roofline_time_s`); time_s: roofline_s / efficiency
    when the device has a published efficiency for the method's family, else roofline_s;
    efficiency: that factor (None: uncalibrated); note: one line for reports, "modeled
    (calibrated on ...)" or "modeled (roofline; ...)"."""

    roofline_s: float | None
    time_s: float | None
    efficiency: float | None
    note: str


def modeled_time(problem: Problem, budget: Budget, device: DeviceSpec, *,
                 tf32: bool = False) -> ModeledTime:
    """The time a --model-only row reports: the roofline scaled by the device's measured
    efficiency for the method family (sbbench/data/devices.yaml, with its citation), or
    the bare roofline where no published measurement calibrates it."""
    roofline = roofline_time_s(problem, budget, device, tf32=tf32)
    family = method_family(budget.method)
    calibration = device.efficiency.get(family)
    if roofline is None:
        return ModeledTime(None, None, None, f"not modeled: the {device.name} profile has no "
                           f"peak for {problem.dtype}")
    if calibration is None:
        return ModeledTime(roofline, roofline, None,
                           f"modeled (roofline; no published {family} measurement on "
                           f"{device.name} to calibrate it)")
    return ModeledTime(roofline, roofline / calibration.factor, calibration.factor,
                       f"modeled (calibrated on {calibration.calibrated_on}: "
                       f"{calibration.factor:.2f} of the roofline)")
