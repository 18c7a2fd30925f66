"""Tuned tables: read, validate, write and look up ``tuning_configs/<device>.yaml``.

shape.py: the shape bucket; schema.py: the value types and validation; files.py: the
folder, loading and writing; lookup.py: the run-time lookups (exact shape bucket ->
nearest -> default); facade.py: what ``config="tuned"`` and
``ScatterbrainAttention.from_tuned`` receive.
"""

from sbbench.tuned.files import (
    ENV_DIR,
    canonical_device,
    dumps,
    file_for,
    load,
    plain,
    tuning_dir,
    write_section,
)
from sbbench.tuned.lookup import (
    TunedChoice,
    cpu_default,
    cpu_target,
    kernel_default,
    lookup_budget,
    lookup_cpu_config,
    lookup_kernel_config,
    tuned_choice,
)
from sbbench.tuned.schema import (
    CPU_TARGET_PREFIX,
    SCHEMA_VERSION,
    SECTIONS,
    SHAPE_KEYS,
    TOP_KEYS,
    BudgetEntry,
    Match,
    ShapeBucket,
    TunedBucket,
    TunedTable,
    TunedTarget,
    TuningFileError,
    parse,
)

__all__ = [
    "CPU_TARGET_PREFIX", "ENV_DIR", "SCHEMA_VERSION", "SECTIONS", "SHAPE_KEYS", "TOP_KEYS",
    "BudgetEntry", "Match", "ShapeBucket", "TunedBucket", "TunedChoice", "TunedTable",
    "TunedTarget", "TuningFileError", "canonical_device", "cpu_default", "cpu_target",
    "dumps", "file_for", "kernel_default", "load", "lookup_budget", "lookup_cpu_config",
    "lookup_kernel_config", "parse", "plain", "tuned_choice", "tuning_dir", "write_section",
]
