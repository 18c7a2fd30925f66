"""Old import path of the tuned tables, kept for importers: everything lives in
schema.py, files.py and lookup.py now (re-exported by ``sbbench.tuned``)."""

from sbbench.tuned import *  # noqa: F401,F403
from sbbench.tuned import __all__  # noqa: F401
