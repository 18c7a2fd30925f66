"""Tuned tables: read, validate, write and look up ``tuning_configs/<device>.yaml``."""

from sbbench.tuned.table import *  # noqa: F401,F403
from sbbench.tuned.table import ENV_DIR  # noqa: F401
