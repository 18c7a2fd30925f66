"""One dataclass is the table schema: a ``Record`` is one row of results.

Field order is column order, in the store, the DataFrame, the CSV and the reports. The
first fields (up to ``source``) are the key: a point is measured once per key, and a
rerun of a sweep skips the keys already in the store. Everything after the key is a
result. Units are in the names (``_ms``, ``_bytes``, ``_j``, ``_w``); a value that was not
measured is ``None`` (SQL NULL), never a made-up number.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields

from sbbench.core.provenance import code_version, now_utc  # noqa: F401 - re-exported
from sbbench.core.provenance import revision_text as git_revision  # noqa: F401
from sbbench.core.types import SPARSE_KINDS_OF

STATUSES = ("ok", "failed", "oom", "skipped")
# Method name of the calibration kernel's row (a matmul of known FLOPs timed in the same
# run, so regression checks can compare ratios instead of absolute times).
CALIBRATION = "calibration"
SOURCES = ("measured", "modeled")


@dataclass
class Record:
    """One benchmark point: its key (device ... source) and everything measured about it."""

    # --- key -------------------------------------------------------------------------
    device: str  # device profile name from the registry ("cpu", "h100-sxm", ...)
    method: str  # exact | performer | lsh | scatterbrain | scatterbrain_local
    #              | scatterbrain_centroids
    backend: str  # torch | triton
    seq_len: int
    head_dim: int
    batch: int
    heads: int
    dtype: str
    causal: bool
    n_features: int  # 0 if the method has no low-rank part
    bucket_size: int  # 0 if the method has no sparse part
    n_hashes: int  # 0 if the method has no sparse part
    # the sparse part's bucket kind (lsh | kmeans | local; "" if the method has none) and
    # the keys every query also attends to. Keyword-only with defaults, so rows of older
    # files (without them) still load: "" becomes the method's default kind.
    sparse: str = field(default="", kw_only=True)
    sink: int = field(default=0, kw_only=True)
    window: int = field(default=0, kw_only=True)
    kernel_config: str  # JSON of the kernel's tile sizes; "" = the backend's default
    inputs: str  # synthetic input regime, e.g. "clustered:t=1" (accuracy depends on it)
    code_version: str  # sbbench version + hash of its source: new code, new rows
    source: str  # measured | modeled (cost model only); never mixed silently
    # --- outcome ---------------------------------------------------------------------
    status: str = "ok"  # ok | failed | oom | skipped
    reason: str = ""  # why a point failed or was skipped; notes on an ok point
    timed_region: str = ""  # what the timed closure contains (setup is outside unless said)
    # --- time ------------------------------------------------------------------------
    time_median_ms: float | None = None
    time_p20_ms: float | None = None
    time_p80_ms: float | None = None
    time_samples_ms: list[float] = field(default_factory=list)  # every sample, untrimmed
    # the calibration kernel timed right after each sample (CPU sweeps): pairs 1:1 with
    # time_samples_ms, so a check can compare time ratios taken moments apart
    reference_samples_ms: list[float] = field(default_factory=list)
    n_warmup: int | None = None  # calls before the first sample (first call included)
    first_call_ms: float | None = None  # the first call alone (compilation, autotuning)
    timer: str = ""  # perf_counter_ns | thread_time_ns | cuda_event | roofline (modeled)
    l2_flushed: bool | None = None
    # --- memory ----------------------------------------------------------------------
    peak_memory_bytes: int | None = None  # CUDA allocator peak / child-process peak RSS
    baseline_memory_bytes: int | None = None  # same counter just before the call
    peak_memory_delta_bytes: int | None = None  # peak - baseline: what the call added
    memory_method: str = ""  # cuda_max_memory_allocated | child_peak_rss | ...
    working_set_bytes: int | None = None  # modeled (costmodel.working_set_bytes)
    # --- work and roofline -----------------------------------------------------------
    flops: float | None = None  # modeled (costmodel.flops)
    bytes_moved: float | None = None  # modeled (costmodel.bytes_moved)
    achieved_flops_per_s: float | None = None
    achieved_bytes_per_s: float | None = None
    roofline_time_ms: float | None = None  # modeled lower bound on this device
    roofline_fraction: float | None = None  # roofline_time / measured time
    speedup_vs_exact: float | None = None  # exact's median / this median, same shape
    # --- energy ----------------------------------------------------------------------
    energy_j: float | None = None  # per call
    avg_power_w: float | None = None
    max_power_w: float | None = None
    telemetry: str = ""  # "nvml", "unavailable: <reason>", window warnings
    noise: str = ""  # comma-separated flags: spread, load=<1-min load>, concurrent
    # --- accuracy (against exact attention on the same inputs) -------------------------
    error_mean: float | None = None  # relative Frobenius error of the output
    error_std: float | None = None
    attn_error_mean: float | None = None  # of the attention matrix, where it fits
    attn_error_std: float | None = None
    reference_dtype: str = ""  # float64, or float32 on large sizes
    n_seeds: int = 0
    # per head (mean over seeds and batch entries): real models' heads differ ~10x in how
    # approximable they are, so selection targets a statistic of this distribution
    error_heads: list[float] = field(default_factory=list)
    error_p50: float | None = None
    error_p90: float | None = None
    error_max: float | None = None
    # --- provenance ------------------------------------------------------------------
    device_state: dict = field(default_factory=dict)
    versions: dict = field(default_factory=dict)
    git_revision: str = ""
    timestamp: str = ""

    def __post_init__(self) -> None:
        if not self.sparse:  # "" or None (a store or file written before these columns)
            self.sparse = default_sparse(self.method)
        self.sink, self.window = int(self.sink or 0), int(self.window or 0)

    def key(self) -> tuple:
        return tuple(getattr(self, name) for name in KEY_FIELDS)

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, row: dict) -> Record:
        """Build from a dict (a store row, a worker's JSON); unknown keys are an error."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(row) - names)
        if unknown:
            raise ValueError(f"unknown Record fields: {', '.join(unknown)}")
        return cls(**row)


def default_sparse(method: str) -> str:
    """The bucket kind a row of ``method`` has when none is given ("" if no sparse part)."""
    kinds = SPARSE_KINDS_OF.get(method, ())
    return kinds[0] if kinds else ""


KEY_FIELDS: tuple[str, ...] = (
    "device", "method", "backend", "seq_len", "head_dim", "batch", "heads", "dtype",
    "causal", "n_features", "bucket_size", "n_hashes", "sparse", "sink", "window",
    "kernel_config", "inputs", "code_version", "source",
)
# Key fields added after the first stores were written: an older store or file lacks them
# and reads them as their defaults (``default_sparse(method)``, 0, 0).
ADDED_KEY_FIELDS: tuple[str, ...] = ("sparse", "sink", "window")
COLUMNS: tuple[str, ...] = tuple(f.name for f in fields(Record))
# Columns held as JSON text in the store (lists and dicts).
JSON_FIELDS: tuple[str, ...] = ("time_samples_ms", "reference_samples_ms", "device_state",
                                "versions", "error_heads")

assert COLUMNS[: len(KEY_FIELDS)] == KEY_FIELDS, "key fields must come first, in order"


def dumps(value) -> str:
    """Stable JSON for the store (sorted keys, so equal dicts give equal text)."""
    return json.dumps(value, sort_keys=True, default=str)
